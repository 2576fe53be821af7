"""Stage 4: train the next-track model on a window's training split.

Examples: every prefix of every training session (its most recent
``--max-len`` tracks) predicts the next track. Adam with global-norm gradient
clipping, dropout, full softmax by default (``--sampled N``: in-batch plus N
popularity-sampled negatives with the log-Q correction). After each epoch:
validation HR@20 / MRR@20 (full ranking, ``metrics.py``), time and examples/s;
early stopping on validation MRR@20 keeps the best weights. Then (``--transitions
K``) the weights of the model + transition counts hybrid (``Transitions``) are
chosen on the same validation events.

Outputs in ``data/models/<window>/``: ``model.keras``, ``config.json``
(resolved configuration, vocabulary checksum, seed, backend, the hybrid's
weights and grid), ``transitions.npz`` (its tables), ``history.csv``
(and TensorBoard logs with the TensorFlow backend); in ``data/reports/``:
``training_curves.png`` and ``training.md`` (with ``--out DIR``: in DIR).

Backend: Keras 3 with TensorFlow by default; ``KERAS_BACKEND=jax`` or
``torch`` runs the same code. It uses a GPU whenever the backend sees one.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from common import (PipelineError, data_root, log, markdown_table, read_json, run_main,
                    stage_dir, write_json)
from metrics import TOPK, Events, evaluate, make_events


class FusedAdam(keras.optimizers.Adam):
    """Keras' Adam, with each variable's update as one fused kernel on TensorFlow.

    Keras composes Adam's update from ~10 element-wise ops, each a pass over
    the variable; for the (V+1, E) track tables that is several milliseconds a
    step on the CPU. With the TensorFlow backend this applies TensorFlow's own
    ``ResourceApplyAdam`` (the same update: m, v, then the bias-corrected
    step); other backends (and amsgrad) use Keras' update unchanged (under JAX
    XLA fuses it anyway). Gradient clipping, schedules and loss scaling stay
    Keras' own: they happen before ``update_step``.
    """

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        def handle(v):  # a Keras variable or (inside Keras' TF update) its tf.Variable
            return (v.value if isinstance(v, keras.Variable) else v).handle

        dtype = variable.dtype
        i = self._get_variable_index(variable)
        t = tf.cast(self.iterations + 1, dtype)
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=handle(variable), m=handle(self._momentums[i]), v=handle(self._velocities[i]),
            beta1_power=tf.pow(b1, t), beta2_power=tf.pow(b2, t),
            lr=tf.cast(learning_rate, dtype), beta1=b1, beta2=b2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(tf.convert_to_tensor(gradient), dtype))  # IndexedSlices: densified


def load_tag_tables(window: str, n_items: int, k: int) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(V+1, K) tag ids and weights from ``data/tags/<window>/``, or None."""
    d = data_root() / "tags" / window
    path = d / "track_tags.parquet"
    if not path.exists():
        return None
    from common import read_table

    tt = read_table(path, "track_tags", "fetch_tags.py")
    n_tags = len(read_table(d / "tags.parquet", "tags", "fetch_tags.py"))
    tt = tt[(tt["item_idx"] >= 1) & (tt["item_idx"] <= n_items)]
    tt = tt.sort_values(["item_idx", "weight"], ascending=[True, False], kind="stable")
    tt["rank"] = tt.groupby("item_idx").cumcount()
    tt = tt[tt["rank"] < k]
    ids = np.zeros((n_items + 1, k), np.int32)
    w = np.zeros((n_items + 1, k), np.float32)
    ids[tt["item_idx"].to_numpy(), tt["rank"].to_numpy()] = tt["tag_idx"].to_numpy()
    w[tt["item_idx"].to_numpy(), tt["rank"].to_numpy()] = tt["weight"].to_numpy()
    return ids, w, n_tags


def recent(prefixes: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
    """The most recent ``max_len`` items of right-padded prefixes, right-padded."""
    out = np.zeros((len(prefixes), max_len), np.int32)
    if prefixes.shape[1] <= max_len:
        out[:, :prefixes.shape[1]] = prefixes
        return out
    keep = np.minimum(lengths, max_len)
    for j in range(max_len):
        ok = j < keep
        src = lengths - keep + j
        out[ok, j] = prefixes[np.flatnonzero(ok), src[ok]]
    return out


class LengthBuckets(keras.utils.PyDataset):
    """Training batches of prefixes of similar length, each cut to its own width.

    Prefixes are right-padded to ``max_len`` but average ~9 plays (sessions are
    short), so a recurrent layer run over all ``max_len`` steps mostly reads
    padding. Each epoch the examples are shuffled, stably sorted by length and
    cut into batches, and the batch order is shuffled; a batch is trimmed to
    its longest prefix, rounded up to a multiple of ``step`` (1 with
    TensorFlow, which traces one graph for any width; 4 with JAX, which
    compiles once per width). Padding never changes the model's output (a
    tested property), so the examples and the loss are those of plain
    fixed-width batches; only the GRU steps over padding are skipped.
    ``step=0`` keeps the full width (plain shuffled batches).
    """

    def __init__(self, prefixes: np.ndarray, lengths: np.ndarray, targets: np.ndarray,
                 batch_size: int, seed: int = 0, step: int = 1):
        super().__init__()
        self.x, self.lengths, self.y = prefixes, np.asarray(lengths), targets
        self.batch_size, self.step = batch_size, step
        self.rng = np.random.default_rng(seed)
        self.plan()

    def plan(self) -> None:
        """Draw this epoch's batches (lists of example indices) and their widths."""
        order = self.rng.permutation(len(self.y))
        if self.step:
            order = order[np.argsort(self.lengths[order], kind="stable")]
        batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        batches = [batches[i] for i in self.rng.permutation(len(batches))]
        full = self.x.shape[1]
        if self.step:
            longest = np.array([self.lengths[b].max() for b in batches])
            widths = np.minimum(-(-longest // self.step) * self.step, full)
        else:
            widths = np.full(len(batches), full)
        # Keras (TensorFlow) fixes the input signature from the first two batches:
        # give them different widths so that the width stays free.
        other = np.flatnonzero(widths != widths[0])
        if len(other) and widths[1] == widths[0]:
            j = int(other[0])
            batches[1], batches[j] = batches[j], batches[1]
            widths[[1, j]] = widths[[j, 1]]
        self.batches, self.widths = batches, widths

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int):
        idx = self.batches[i]
        return self.x[idx, :self.widths[i]], self.y[idx]

    def on_epoch_end(self) -> None:
        self.plan()


def bucket_step(requested: int = -1) -> int:
    """Width rounding of LengthBuckets: ``requested`` if >= 0, else the
    backend's default (4 with JAX, 1 otherwise; see LengthBuckets)."""
    if requested >= 0:
        return requested
    return 4 if keras.backend.backend() == "jax" else 1


def top_successors(session_ids: np.ndarray, items: np.ndarray, n_items: int,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each track's ``k`` most frequent next tracks in the training plays
    (``items`` in play order, grouped by ``session_ids``): ids (V+1, k) int32,
    ties by track id, 0 in the slots of tracks with fewer successors; and
    their counts (V+1, k) float32 (SR's first-order rules, steps 1)."""
    sid, items = np.asarray(session_ids), np.asarray(items, np.int64)
    same = sid[1:] == sid[:-1]
    src, dst = items[:-1][same], items[1:][same]
    pair, count = np.unique(src * (n_items + 1) + dst, return_counts=True)
    src, dst = pair // (n_items + 1), pair % (n_items + 1)
    order = np.lexsort((dst, -count, src))                        # by track, most frequent first
    src, dst, count = src[order], dst[order], count[order]
    first = np.r_[0, np.flatnonzero(src[1:] != src[:-1]) + 1]
    rank = np.arange(len(src)) - np.repeat(first, np.diff(np.r_[first, len(src)]))
    keep = rank < k
    ids = np.zeros((n_items + 1, k), np.int32)
    counts = np.zeros((n_items + 1, k), np.float32)
    ids[src[keep], rank[keep]] = dst[keep]
    counts[src[keep], rank[keep]] = count[keep]
    return ids, counts


@dataclass
class Transitions:
    """The model + transition counts hybrid (Jannach & Ludewig 2017's weighted
    hybrid of an RNN with a neighbourhood method). Each of the last track's
    ``K`` most frequent training successors j gets ``weight * log(1 +
    count(last -> j)) + pop_weight * log(1 + plays(j))`` added to its score;
    the other tracks keep the model's. Both weights chosen on validation."""
    ids: np.ndarray        # (V+1, K) int32 successors, 0 = empty slot (top_successors)
    counts: np.ndarray     # (V+1, K) float32 training counts of (track -> successor)
    plays: np.ndarray      # (V+1,) training plays of each track
    weight: float = 0.0
    pop_weight: float = 0.0

    def boost(self, x: np.ndarray, weight: float | None = None,
              pop_weight: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scatter indices (B*K, 2) and values (B*K,) for prefixes ``x`` (B, L)."""
        w = self.weight if weight is None else weight
        v = self.pop_weight if pop_weight is None else pop_weight
        last = x[np.arange(len(x)), np.maximum((x > 0).sum(axis=1) - 1, 0)]
        succ, cnt = self.ids[last], self.counts[last]                # (B, K)
        rows = np.repeat(np.arange(len(x)), succ.shape[1])
        idx = np.stack([rows, succ.ravel()], axis=1).astype(np.int32)
        add = (w * np.log1p(cnt) + v * np.log1p(self.plays[succ])) * (succ > 0)
        return idx, add.ravel().astype(np.float32)


def target_ranks(scores, targets: np.ndarray):
    """1 + the number of tracks scoring strictly higher than each target: (B,)."""
    from keras import ops

    t = ops.convert_to_tensor(targets.astype(np.int32))[:, None]
    tgt = ops.take_along_axis(scores, t, axis=1)                    # (B, 1)
    return 1 + ops.sum(ops.cast(scores > tgt, "int32"), axis=1)


def make_ranker(model, exclude_seen: bool = False, max_len: int | None = None,
                transitions: Transitions | None = None):
    """(prefixes, lengths, targets) -> (ranks, top-20), computed with keras.ops.

    ``transitions``: the hybrid's weights and tables (see ``Transitions``).
    Scores, ranks and top-k stay on the backend's device; only (B,) ranks and
    (B, 20) ids come back to the host.
    """
    from keras import ops

    L = max_len or model.max_len

    def rank(prefixes, lengths, targets):
        x = recent(prefixes, lengths, L)
        # predict_on_batch runs the backend's compiled inference step (jit on JAX,
        # tf.function on TensorFlow) instead of op-by-op eager calls.
        rep = model.predict_on_batch(x)                             # (B, E) or (B, 2E)
        logits = model.logits(ops.convert_to_tensor(rep))           # (B, V+1)
        if transitions is not None and (transitions.weight or transitions.pop_weight):
            idx, add = transitions.boost(x)
            logits = logits + ops.scatter(idx, add, (len(x), model.n_items + 1))
        if exclude_seen:  # (B, V+1) mask of the prefix's tracks, by scatter (no one-hot)
            rows = np.repeat(np.arange(len(x)), x.shape[1])
            idx = np.stack([rows, x.ravel()], axis=1).astype(np.int32)
            seen = ops.scatter(idx, np.ones(len(idx), np.float32), (len(x), model.n_items + 1))
            logits = ops.where(seen > 0, -np.inf, logits)
        ranks = target_ranks(logits, targets)
        top = ops.top_k(logits, TOPK)[1]
        return ops.convert_to_numpy(ranks), ops.convert_to_numpy(top)

    return rank


def load_trained(path: Path, expected_vocab_md5: str | None = None):
    """Load ``model.keras`` and its ``config.json``; refuse a vocabulary mismatch."""
    import model as _model  # noqa: F401  registers SessionRecommender

    path = Path(path)
    cfg_path = path.with_name("config.json")
    if not path.exists() or not cfg_path.exists():
        raise PipelineError(f"{path} or its config.json not found: run train.py first")
    config = read_json(cfg_path)
    if expected_vocab_md5 is not None and config.get("vocab_md5") != expected_vocab_md5:
        raise PipelineError(
            f"{path} was trained on another vocabulary (window {config.get('window')}, "
            f"vocab {config.get('vocab_md5')}) than the current splits ({expected_vocab_md5}); "
            "rerun train.py on the current splits")
    m = keras.saving.load_model(path, compile=False)
    m.max_len = int(config["max_len"])
    return m, config


# Doubling grids wide enough to hold the limits: the model alone (0, 0); the counts
# first, the model breaking ties (large weight, pop_weight 0); the counts, then
# popularity, then the model (weight >> pop_weight >> the model's score range),
# which is SR (steps 1) with the model ranking the tracks SR cannot score.
TRANSITION_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0,
                      1024.0)
POP_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def validation_events(valid, max_len: int, n: int, seed: int) -> Events:
    """The validation events of training: all, or ``n`` drawn with ``seed``."""
    ev = make_events(valid, max_len)
    if len(ev) > n:
        rng = np.random.default_rng(seed)
        ev = ev.subset(np.sort(rng.choice(len(ev), n, replace=False)))
    return ev


def fit_transitions(out: Path, train_split, valid_ev: Events, n_items: int, k: int,
                    weights=TRANSITION_WEIGHTS, pop_weights=POP_WEIGHTS,
                    batch_size: int = 512) -> dict:
    """Choose the hybrid's two weights (see ``Transitions``) for the model in
    ``out`` on validation MRR@20 over the grid ``weights`` x ``pop_weights``
    (ties: the first, so (0, 0), the model alone, unless a hybrid is better);
    save the tables to ``out/transitions.npz``; return what ``config.json``
    records. The model scores each validation batch once for the whole grid."""
    from keras import ops

    from metrics import metric_values

    model, config = load_trained(out / "model.keras")
    ids, counts = top_successors(train_split["session_id"].to_numpy(),
                                 train_split["item_idx"].to_numpy(), n_items, k)
    plays = np.bincount(train_split["item_idx"].to_numpy(), minlength=n_items + 1)
    tr = Transitions(ids, counts, plays.astype(np.float32))
    grid = [(w, v) for w in weights for v in pop_weights]
    ranks = np.zeros((len(grid), len(valid_ev)), np.int64)
    L = int(config["max_len"])
    for start in range(0, len(valid_ev), batch_size):
        sl = slice(start, start + batch_size)
        x = recent(valid_ev.prefixes[sl], valid_ev.lengths[sl], L)
        logits = model.logits(ops.convert_to_tensor(model.predict_on_batch(x)))
        for g, (w, v) in enumerate(grid):
            s = logits
            if w or v:
                idx, add = tr.boost(x, w, v)
                s = logits + ops.scatter(idx, add, (len(x), n_items + 1))
            ranks[g, sl] = ops.convert_to_numpy(target_ranks(s, valid_ev.targets[sl]))
    rows = []
    for g, (w, v) in enumerate(grid):
        m = metric_values(ranks[g])
        rows.append({"weight": w, "pop_weight": v,
                     "valid_HR@20": round(float(m["HR@20"].mean()), 4),
                     "valid_MRR@20": round(float(m["MRR@20"].mean()), 4)})
    best = max(range(len(grid)), key=lambda g: (rows[g]["valid_MRR@20"], -g))
    np.savez_compressed(out / "transitions.npz", ids=ids, counts=counts, plays=tr.plays)
    chosen = rows[best]
    log(f"transitions: weight {chosen['weight']}, pop_weight {chosen['pop_weight']} chosen "
        f"(validation MRR@20 {chosen['valid_MRR@20']:.4f}; the model alone "
        f"{rows[0]['valid_MRR@20']:.4f})")
    return {"k": k, "weight": chosen["weight"], "pop_weight": chosen["pop_weight"],
            "valid_MRR@20": chosen["valid_MRR@20"], "tried": rows, "table": "transitions.npz"}


def load_transitions(model_dir: Path, config: dict) -> Transitions | None:
    """The hybrid of a model folder whose chosen weights are not both 0, else None."""
    t = config.get("transitions")
    if not t or not (t.get("weight") or t.get("pop_weight")):
        return None
    path = Path(model_dir) / t["table"]
    if not path.exists():
        raise PipelineError(f"{path} not found, but {model_dir}/config.json gives transition "
                            "weights: rerun train.py --transitions-only --out " + str(model_dir))
    z = np.load(path)
    return Transitions(z["ids"], z["counts"], z["plays"], float(t["weight"]),
                       float(t["pop_weight"]))


def transitions_md(t: dict | None) -> str:
    if not t:
        return ""
    best = sorted(t["tried"], key=lambda r: -r["valid_MRR@20"])[:10]
    return (f"\nModel + transition counts (each track's {t['k']} most frequent training "
            "successors get weight * log(1 + count) + pop_weight * log(1 + plays)); chosen on "
            f"validation: weight {t['weight']}, pop_weight {t['pop_weight']}. The model alone "
            "(0, 0) and the ten best of the grid:\n\n"
            + markdown_table(list(best[0].keys()), [list(r.values()) for r in
                                                      [t["tried"][0]] + best]) + "\n")


def transitions_only(window: str, args) -> dict:
    """Refit the transition weight of the trained model in ``--out`` (or the
    window's model folder): same validation events as its training."""
    from test_model import load_splits

    out = Path(args.out) if args.out else stage_dir("models", window)
    splits, vocab, meta = load_splits(window)
    config_path = out / "config.json"
    if not config_path.exists():
        raise PipelineError(f"{config_path} not found: train a model there first")
    config = read_json(config_path)
    if config.get("vocab_md5") != meta["vocab_md5"]:
        raise PipelineError(f"{out}: trained on another vocabulary than the current splits")
    targs = config["train_args"]
    valid_ev = validation_events(splits["valid"], int(config["max_len"]), targs["valid_events"],
                                 targs["seed"])
    config["transitions"] = fit_transitions(out, splits["train"], valid_ev, len(vocab),
                                            args.transitions)
    write_json(config_path, config)
    return config


def train(window: str, args) -> dict:
    from model import ModelConfig, build_model
    from test_model import load_splits

    if args.mixed_precision:
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    keras.utils.set_random_seed(args.seed)
    splits, vocab, meta = load_splits(window)
    n_items = len(vocab)
    train_ev = make_events(splits["train"], args.max_len)
    if args.max_train_examples and len(train_ev) > args.max_train_examples:
        train_ev = train_ev.subset(np.arange(len(train_ev) - args.max_train_examples, len(train_ev)))
    valid_ev = validation_events(splits["valid"], args.max_len, args.valid_events, args.seed)
    if len(train_ev) == 0 or len(valid_ev) == 0:
        raise PipelineError(f"window {window}: no training or validation event")
    cfg = ModelConfig(emb_dim=args.emb_dim, hidden=args.hidden, fc_dim=args.fc_dim,
                      dropout=args.dropout, output=args.output, sampled=args.sampled,
                      use_tags=not args.no_tags, last_item=not args.no_last_item,
                      successor=not args.no_successor,
                      successor_output=args.successor_output)
    available = load_tag_tables(window, n_items, args.tags_per_track)
    tags = available if cfg.use_tags else None
    if cfg.use_tags and tags is None:
        log(f"no tags in data/tags/{window}/ (run fetch_tags.py); training without tags")
        cfg.use_tags = False
    model = build_model(n_items, cfg, n_tags=tags[2] if tags else 0,
                        tags_per_track=args.tags_per_track if tags else 0, seed=args.seed,
                        max_len=args.max_len)
    pop = np.zeros(n_items + 1)
    pop[vocab["item_idx"].to_numpy()] = vocab["train_count"].to_numpy()
    model.set_tables(*(tags[:2] if tags else (None, None)), popularity=pop)
    model.max_len = args.max_len
    steps = int(np.ceil(len(train_ev) / args.batch_size)) * args.epochs
    lr = keras.optimizers.schedules.CosineDecay(args.lr, steps, alpha=0.1) \
        if args.cosine else args.lr
    model.compile(optimizer=FusedAdam(lr, global_clipnorm=args.clip_norm or None))
    out = Path(args.out) if args.out else stage_dir("models", window)
    out.mkdir(parents=True, exist_ok=True)
    config = {"window": window, "vocab_md5": meta["vocab_md5"], "n_items": n_items,
              "max_len": args.max_len, "seed": args.seed, "backend": keras.backend.backend(),
              "use_tags": cfg.use_tags, "n_tags": tags[2] if tags else 0,
              "model": asdict(cfg), "train_args": {k: v for k, v in vars(args).items()},
              "train_examples": len(train_ev), "valid_events": len(valid_ev)}
    cb = ValidationCallback(model, valid_ev, n_items, args.patience, out / "model.keras",
                            out / "history.csv", len(train_ev))
    callbacks = [cb]
    if keras.backend.backend() == "tensorflow" and not args.no_tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(out / "tensorboard")))
    write_json(out / "config.json", config)
    batches = LengthBuckets(train_ev.prefixes, train_ev.lengths, train_ev.targets,
                            args.batch_size, seed=args.seed, step=bucket_step(args.bucket_step))
    model.fit(batches, epochs=args.epochs, callbacks=callbacks, verbose=args.verbose)
    config["best_epoch"], config["best_valid"] = cb.best_epoch, cb.best
    config["history"] = cb.rows
    if args.transitions:
        config["transitions"] = fit_transitions(out, splits["train"], valid_ev, n_items,
                                                args.transitions)
    write_json(out / "config.json", config)
    suffix = "" if cfg.use_tags or available is None else "_notags"
    # A run with --out (an experiment) keeps its report beside its model, so that it
    # never overwrites the report of record in data/reports/.
    reports = out if args.out else stage_dir("reports")
    plot_history(cb.rows, reports / f"training_curves{suffix}.png")
    md = (f"## Training{' (without tags)' if suffix else ''}\n\n"
          + f"Window {window}; {len(train_ev):,} training examples; "
          f"backend {config['backend']}; tags {'on' if cfg.use_tags else 'off'}; "
          f"best epoch {cb.best_epoch} (validation MRR@20 {cb.best:.4f}).\n\n"
          + markdown_table(list(cb.rows[0].keys()), [list(r.values()) for r in cb.rows]) + "\n"
          + transitions_md(config.get("transitions")))
    (reports / f"training{suffix}.md").write_text(md)
    return config


class ValidationCallback(keras.callbacks.Callback):
    """Per epoch: validation HR@20/MRR@20, timing; early stopping; best model saved."""

    def __init__(self, rec_model, valid: Events, n_items: int, patience: int, path: Path,
                 csv_path: Path, n_train: int):
        super().__init__()
        self.rec_model, self.valid, self.n_items = rec_model, valid, n_items
        self.patience, self.path, self.csv_path, self.n_train = patience, path, csv_path, n_train
        self.best, self.best_epoch, self.wait, self.rows = -1.0, 0, 0, []

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        secs = time.perf_counter() - self.t0
        res = evaluate(make_ranker(self.rec_model), self.valid, self.n_items, batch_size=512)
        row = {"epoch": epoch + 1, "loss": round(float(logs.get("loss", np.nan)), 4),
               "valid_HR@20": round(res.summary["HR@20"], 4),
               "valid_MRR@20": round(res.summary["MRR@20"], 4),
               "train_s": round(secs, 1), "examples_per_s": round(self.n_train / secs, 0),
               "valid_s": round(res.seconds, 1)}
        self.rows.append(row)
        log(json.dumps(row))
        with open(self.csv_path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(row))
            w.writeheader()
            w.writerows(self.rows)
        if res.summary["MRR@20"] > self.best:
            self.best, self.best_epoch, self.wait = res.summary["MRR@20"], epoch + 1, 0
            self.rec_model.save(self.path)
        else:
            self.wait += 1
            if self.wait >= self.patience:
                log(f"early stop: no validation MRR@20 gain for {self.patience} epoch(s)")
                self.rec_model.stop_training = True


def plot_history(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.3))
    ax[0].plot(ep, [r["loss"] for r in rows], marker="o")
    ax[0].set_title("training loss")
    for m in ("valid_HR@20", "valid_MRR@20"):
        ax[1].plot(ep, [r[m] for r in rows], marker="o", label=m)
    ax[1].legend()
    ax[1].set_title("validation")
    for a in ax:
        a.set_xlabel("epoch")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Train the Bi-GRU + attention next-track model.")
    ap.add_argument("--window", default="1m")
    ap.add_argument("--max-len", type=int, default=20, help="prefix length L (most recent)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--bucket-step", type=int, default=-1,
                    help="batches of similar prefix length, cut to a multiple of this width "
                         "(-1: 1 on TensorFlow, 4 on JAX; 0: full-width shuffled batches)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--cosine", action="store_true", help="cosine learning-rate decay")
    ap.add_argument("--clip-norm", type=float, default=1.0, help="global-norm clip (0: off)")
    ap.add_argument("--emb-dim", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--fc-dim", type=int, default=128)
    ap.add_argument("--dropout", type=float, default=0.25)
    ap.add_argument("--output", choices=["tied", "dense"], default="tied",
                    help="scores against the input track embeddings (tied) or an own matrix")
    ap.add_argument("--sampled", type=int, default=0,
                    help="sampled softmax: popularity negatives per batch (0: full softmax)")
    ap.add_argument("--no-tags", action="store_true", help="train without tags")
    ap.add_argument("--no-last-item", action="store_true",
                    help="do not feed the last track's embedding to the FC layer")
    ap.add_argument("--no-successor", action="store_true",
                    help="no per-track successor vectors (FPMC's item-to-item factor)")
    ap.add_argument("--successor-output", choices=["tied", "own"], default="tied",
                    help="successor vectors scored against their own output vectors (own) "
                         "or added to the session vector (tied)")
    ap.add_argument("--transitions", type=int, default=16,
                    help="after training, choose on validation the model + transition counts "
                         "hybrid: the last track's K most frequent training successors get "
                         "weight * log(1 + count) + pop_weight * log(1 + plays) (both 0: the "
                         "model alone); 0: off")
    ap.add_argument("--transitions-only", action="store_true",
                    help="only refit the transition weight of the trained model in --out")
    ap.add_argument("--tags-per-track", type=int, default=5)
    ap.add_argument("--patience", type=int, default=2)
    ap.add_argument("--valid-events", type=int, default=20_000)
    ap.add_argument("--max-train-examples", type=int, default=0,
                    help="use only the most recent N training examples (0: all)")
    ap.add_argument("--mixed-precision", action="store_true", help="float16 compute (GPU)")
    ap.add_argument("--no-tensorboard", action="store_true",
                    help="skip TensorBoard logs (written with the TensorFlow backend)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="model folder (default data/models/<window>)")
    ap.add_argument("--verbose", type=int, default=2)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out) if args.out else data_root() / "models" / args.window
    if args.transitions_only:
        if not args.transitions:
            raise PipelineError("--transitions-only needs --transitions K > 0")
        t = transitions_only(args.window, args)["transitions"]
        log(f"transition weights {t['weight']}, {t['pop_weight']} (validation MRR@20 "
            f"{t['valid_MRR@20']:.4f}) recorded in {out / 'config.json'}")
        return
    config = train(args.window, args)
    log(f"best epoch {config['best_epoch']}: validation MRR@20 {config['best_valid']:.4f}; "
        f"saved {out / 'model.keras'}")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
