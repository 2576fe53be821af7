"""Stage 4: train the next-track model on a window's training split.

Examples: every prefix of every training session (its most recent
``--input-len`` tracks) predicts the next track. Adam with global-norm
gradient clipping, dropout, full softmax. After each epoch: validation HR@20 /
MRR@20 (full ranking, ``lastfm.metrics``), time and examples/s; early stopping
on validation MRR@20 keeps the best weights. Then (``--transitions K``) the
weights of the network + transition counts hybrid (``lastfm.hybrid``) are
chosen on the same validation events.

Outputs in ``<data>/models/<window>/`` (or ``--out``): ``model.keras``,
``config.json`` (the model's and the training's configuration, vocabulary
checksum, backend, history, the hybrid's weights and grid; written last),
``transitions.npz`` (the hybrid's tables), ``history.csv`` (and TensorBoard
logs with the TensorFlow backend); in ``<data>/reports/``:
``training_curves.png`` and ``training.md`` (with ``--out``: in that folder).

Backend: Keras 3 with TensorFlow by default; ``KERAS_BACKEND=jax`` or
``torch`` runs the same code. It uses a GPU whenever the backend sees one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from lastfm import config as cfgs
from lastfm import hybrid
from lastfm.baselines import SplitFiles
from lastfm.common import (
    PipelineError,
    code_provenance,
    folder_lock,
    log,
    markdown_table,
    outputs_record,
    read_json,
    run_main,
    write_json,
    write_text,
)
from lastfm.config import option
from lastfm.data import (
    SPLITS,
    Events,
    load_splits,
    load_tag_tables,
    make_events,
    popularity,
    sample_events,
)
from lastfm.devices import batch_multiple, data_parallel, devices_in_use, even_batch
from lastfm.metrics import device_ranker, evaluate
from lastfm.paths import Layout, make
from lastfm.session_aware import ListenerHistory, extend_events
from lastfm.stream import ShuffleStream, split_files
from model import ModelConfig, build_model, load_trained

MODEL_FILES = ("config.json", "model.keras", hybrid.TABLE, "history.csv")


@dataclass
class TrainConfig:
    """How the network is trained (its own hyperparameters: ``model.ModelConfig``)."""

    window: str = option("1m", "window to train on (sessionize.py's folder name)")
    epochs: int = option(10, "maximum epochs (early stopping may end sooner)")
    batch_size: int = option(256, "examples per batch")
    bucket_step: int = option(
        -1,
        "batches of similar prefix length, cut to a multiple of "
        "this width (-1: 1 on TensorFlow, 4 on JAX; 0: full width)",
    )
    lr: float = option(2e-3, "Adam learning rate")
    cosine: bool = option(False, "cosine learning-rate decay to 0.1 x lr")
    clip_norm: float = option(1.0, "global-norm gradient clip (0: off)")
    patience: int = option(2, "epochs without a gain of the --monitor metric before stopping")
    monitor: str = option(
        "MRR@20",
        "the validation metric that keeps the best epoch and stops training early "
        "(a protocol that chooses networks on HR@20 trains them on HR@20 too)",
        choices=["MRR@20", "HR@20"],
    )
    other_out: str | None = option(
        None,
        "also keep the best epoch by the other validation metric (HR@20 for --monitor "
        "MRR@20, and the reverse) as a model folder of its own in DIR: the epoch that run "
        "with that --monitor and this seed keeps, from the same training (which goes on "
        "until neither metric gains for --patience epochs)",
    )
    time_budget: float = option(
        0.0,
        "seconds for training (0: no limit): no epoch starts that the last one's "
        "time says would end past it; the stop is recorded",
    )
    valid_events: int = option(20_000, "validation events (drawn with --seed) per epoch")
    max_train_examples: int = option(0, "use only the most recent N examples (0: all)")
    stream: bool = option(
        False,
        "read the training examples from the session files through a shuffle buffer "
        "(splits larger than memory; lastfm/stream.py) instead of all at once",
    )
    shuffle_buffer: int = option(1_000_000, "examples held by the --stream shuffle buffer")
    devices: int = option(
        1,
        "data-parallel training over N devices, --batch-size the global batch (JAX: "
        "keras.distribution.DataParallel; TensorFlow: MirroredStrategy; 0: all devices)",
    )
    shard_tracks: int = option(
        1,
        "JAX: split the track tables' embedding dimension over groups of K of the "
        "--devices (keras.distribution.ModelParallel), for tables too large for one device",
    )
    transitions: int = option(
        16,
        "after training, choose on validation the network + "
        "transition counts hybrid over each track's K most frequent "
        "successors (0: off)",
    )
    transitions_only: bool = option(False, "only refit the hybrid of the model in --out")
    mixed_precision: bool = option(False, "float16 compute (GPU)")
    tensorboard: bool = option(True, "TensorBoard logs (TensorFlow backend)")
    seed: int = option(0, "seed of initialisation, dropout, batches and validation draw")
    out: str | None = option(None, "model folder (default <data>/models/<window>)")
    verbose: int = option(2, "Keras progress output (0, 1, 2)")

    def check(self) -> None:
        cfgs.require_at_least(self, 1, "epochs", "batch_size", "patience", "valid_events")
        cfgs.require_at_least(
            self, 0, "max_train_examples", "transitions", "clip_norm", "time_budget", "devices"
        )
        cfgs.require_at_least(self, 1, "shard_tracks", "shuffle_buffer")
        cfgs.require_above(self, 0, "lr")
        if self.stream and self.max_train_examples:
            raise PipelineError("--max-train-examples needs the whole split: not with --stream")
        if self.stream and self.shuffle_buffer < self.batch_size:
            raise PipelineError(
                f"--shuffle-buffer {self.shuffle_buffer}: at least --batch-size {self.batch_size}"
            )
        if self.other_out is not None and self.transitions_only:
            raise PipelineError("--other-out: for training, not with --transitions-only")
        if self.transitions_only and not self.transitions:
            raise PipelineError("--transitions-only needs --transitions K > 0")

    def other_monitor(self) -> str:
        return "HR@20" if self.monitor == "MRR@20" else "MRR@20"


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

        if tf.distribute.has_strategy():  # mirrored variables: Keras' own update
            return super().update_step(gradient, variable, learning_rate)

        def handle(v):  # a Keras variable or (inside Keras' TF update) its tf.Variable
            return (v.value if isinstance(v, keras.Variable) else v).handle

        dtype = variable.dtype
        i = self._get_variable_index(variable)
        t = tf.cast(self.iterations + 1, dtype)
        b1, b2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=handle(variable),
            m=handle(self._momentums[i]),
            v=handle(self._velocities[i]),
            beta1_power=tf.pow(b1, t),
            beta2_power=tf.pow(b2, t),
            lr=tf.cast(learning_rate, dtype),
            beta1=b1,
            beta2=b2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(tf.convert_to_tensor(gradient), dtype),
        )  # IndexedSlices: densified


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

    def __init__(
        self,
        prefixes: np.ndarray,
        lengths: np.ndarray,
        targets: np.ndarray,
        batch_size: int,
        seed: int = 0,
        step: int = 1,
    ):
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
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
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

    multiple = 1  # > 1: each batch padded to a multiple of the devices (devices.even_batch)

    def __getitem__(self, i: int):
        idx = self.batches[i]
        x, y = self.x[idx, : self.widths[i]], self.y[idx]
        return even_batch(x, y, self.multiple) if self.multiple > 1 else (x, y)

    def on_epoch_end(self) -> None:
        self.plan()


class StreamBatches(keras.utils.PyDataset):
    """A ``ShuffleStream``'s batches for ``model.fit`` (``--stream``): asked in order, an
    epoch at a time. Keras asks for the first two batches once more before an epoch (to
    read their shapes): those two are kept."""

    multiple = 1  # as LengthBuckets.multiple

    def __init__(self, stream: ShuffleStream):
        super().__init__()
        self.stream, self.number = stream, 0
        self.start()

    def start(self) -> None:
        self.batches, self.next, self.kept = self.stream.epoch(self.number), 0, {}

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, i: int):
        if i in self.kept:
            return self.kept[i]
        if i != self.next:
            raise PipelineError(f"streamed batch {i} asked before batch {self.next}")
        batch = next(self.batches)
        if self.multiple > 1:
            batch = even_batch(*batch, self.multiple)
        self.next += 1
        if i < 2:
            self.kept[i] = batch
        return batch

    def on_epoch_end(self) -> None:
        self.number += 1
        self.start()


def bucket_step(requested: int = -1, devices: int = 1) -> int:
    """Width rounding of LengthBuckets: ``requested`` if >= 0, else the
    backend's default (4 with JAX, 1 otherwise; see LengthBuckets). On several
    devices with TensorFlow, 0 (full width): MirroredStrategy's replicas meet in their
    all-reduces by the order of the collectives each traced step holds, and steps traced
    for other widths break that order."""
    if devices > 1 and keras.backend.backend() == "tensorflow":
        return 0
    if requested >= 0:
        return requested
    return 4 if keras.backend.backend() == "jax" else 1


def model_folder(layout: Layout, tc: TrainConfig) -> Path:
    return Path(tc.out) if tc.out else layout.models(tc.window)


def train(layout: Layout, mc: ModelConfig, tc: TrainConfig) -> dict:
    """Train, choose the hybrid, write the model folder and reports; return its record.
    The model folder is held for the whole run (``folder_lock``): one writer at a time."""
    if mc.emb_dim % tc.shard_tracks:
        raise PipelineError(f"--shard-tracks {tc.shard_tracks}: must divide --emb-dim {mc.emb_dim}")
    if tc.other_out:
        a, b = Path(tc.other_out).resolve(), model_folder(layout, tc).resolve()
        if a == b or a in b.parents or b in a.parents:
            raise PipelineError(
                f"--other-out {tc.other_out}: the model's own folder, inside it or around it; "
                "give a folder of its own"
            )
    with contextlib.ExitStack() as held:
        out = held.enter_context(folder_lock(model_folder(layout, tc)))
        other = held.enter_context(folder_lock(Path(tc.other_out))) if tc.other_out else None
        held.enter_context(data_parallel(tc.devices, tc.shard_tracks))
        return train_into(out, layout, mc, tc, other)


def train_into(
    out: Path, layout: Layout, mc: ModelConfig, tc: TrainConfig, other: Path | None = None
) -> dict:
    """``train`` into the model folder ``out`` (and with ``--other-out`` the folder
    ``other``), which the caller holds."""
    if mc.history and tc.stream:
        raise PipelineError("--history reads the splits in memory: not with --stream")
    if tc.mixed_precision:
        keras.mixed_precision.set_dtype_policy("mixed_float16")
    keras.utils.set_random_seed(tc.seed)
    splits, vocab, meta = load_splits(layout, tc.window, ("valid",) if tc.stream else SPLITS)
    n_items = len(vocab)
    if tc.stream:  # examples read file by file, every epoch (lastfm/stream.py)
        train_files = split_files(layout.sessions(tc.window) / "train.parquet")
        stream = ShuffleStream(
            train_files,
            mc.input_len,
            tc.batch_size,
            tc.shuffle_buffer,
            tc.seed,
        )
        n_train = stream.n_examples
    else:
        train_ev = make_events(splits["train"], mc.input_len)
        if tc.max_train_examples and len(train_ev) > tc.max_train_examples:
            keep = np.arange(len(train_ev) - tc.max_train_examples, len(train_ev))
            train_ev = train_ev.subset(keep)
        n_train = len(train_ev)
    valid_ev = sample_events(make_events(splits["valid"], mc.input_len), tc.valid_events, tc.seed)
    if n_train == 0 or len(valid_ev) == 0:
        raise PipelineError(f"window {tc.window}: no training or validation event")
    if mc.history:  # prefixes continue into the listener's earlier sessions
        listeners = ListenerHistory([splits[s] for s in SPLITS])
        train_ev = extend_events(train_ev, listeners, mc.history, mc.input_len)
        valid_ev = extend_events(valid_ev, listeners, mc.history, mc.input_len)
    available = load_tag_tables(
        layout, tc.window, n_items, mc.tags_per_track, vocab_md5=meta["vocab_md5"]
    )
    if mc.tags and available is None:
        log(f"no tags in {layout.tags(tc.window)} (run fetch_tags.py); training without tags")
        mc = dataclasses.replace(mc, tags=False)
    tags = available if mc.tags else None
    model = build_model(n_items, mc, n_tags=tags[2] if tags else 0, seed=tc.seed)
    if tags:
        model.set_tags(tags[0], tags[1])
    if mc.counts:  # --counts: the training transitions inside the network
        src = SplitFiles(train_files) if tc.stream else splits["train"]
        trans = hybrid.Transitions.from_train(src, n_items, mc.count_k)
        model.set_transitions(trans.ids, trans.counts, trans.plays)
    if mc.loss == "sampled":
        model.set_sampler(popularity(vocab))
    steps = int(np.ceil(n_train / tc.batch_size)) * tc.epochs
    lr = keras.optimizers.schedules.CosineDecay(tc.lr, steps, alpha=0.1) if tc.cosine else tc.lr
    model.compile(optimizer=FusedAdam(lr, global_clipnorm=tc.clip_norm or None))
    works = {out: out / ".partial"}  # each folder's files, moved in once all are written
    if other is not None:
        works[other] = other / ".partial"
    for work in works.values():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
    watches = [Watch(tc.monitor, works[out] / "model.keras")]
    if other is not None:
        watches.append(Watch(tc.other_monitor(), works[other] / "model.keras"))
    cb = ValidationCallback(
        model,
        valid_ev,
        n_items,
        tc.patience,
        works[out] / "history.csv",
        n_train,
        tc.time_budget,
        watches,
    )
    callbacks = [cb]
    if keras.backend.backend() == "tensorflow" and tc.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(out / "tensorboard")))
    if tc.stream:
        batches = StreamBatches(stream)
    else:
        batches = LengthBuckets(
            train_ev.prefixes,
            train_ev.lengths,
            train_ev.targets,
            tc.batch_size,
            seed=tc.seed,
            step=bucket_step(tc.bucket_step, batch_multiple()),
        )
    batches.multiple = batch_multiple()  # > 1 under a JAX data-parallel distribution
    # a stream is read in its own order (Keras would shuffle the batch indices)
    model.fit(
        batches,
        epochs=tc.epochs,
        callbacks=callbacks,
        verbose=tc.verbose,
        shuffle=not tc.stream,
    )
    common = {
        "window": tc.window,
        "vocab_md5": meta["vocab_md5"],
        "n_items": n_items,
        "n_tags": tags[2] if tags else 0,
        "backend": keras.backend.backend(),
        "devices": devices_in_use(),
        "provenance": run_provenance(meta, layout.tags(tc.window) if tags else None),
        "model": cfgs.as_dict(mc),
        "train_examples": n_train,
        "valid_events": len(valid_ev),
    }
    src = train_files if tc.stream else splits["train"]
    fit = (model, src, valid_ev, n_items, available)
    # A run with --out (an experiment) keeps its report beside its model, so that it
    # never overwrites the report of record in <data>/reports/.
    reports = out if tc.out else make(layout.reports())
    record = finish_folder(out, works[out], common, tc, watches[0], fit, cb, reports)
    if other is not None:  # the folder a run with --monitor the other metric would write
        otc = dataclasses.replace(tc, monitor=watches[1].metric, out=tc.other_out, other_out=None)
        extra = {"trained_beside": str(out)}  # the same training as out's model
        finish_folder(other, works[other], {**common, **extra}, otc, watches[1], fit, cb, other)
    running = [(w, f) for w, f in zip(watches, works, strict=True) if not w.last_epoch]
    if cb.diverged and running:  # after the reports, which show the epochs before it
        kept = "; ".join(f"epoch {w.best_epoch} ({w.metric}) in {f}" for w, f in running)
        raise PipelineError(
            f"{cb.diverged}: training stopped; the best model before it is saved: {kept}; "
            "try a lower --lr"
        )
    return record


def finish_folder(
    out: Path,
    work: Path,
    common: dict,
    tc: TrainConfig,
    watch: Watch,
    fit: tuple,
    cb: ValidationCallback,
    reports: Path,
) -> dict:
    """Write the model folder ``out`` of one watched metric from its files in ``work``:
    its hybrid (``--transitions``), config.json (last); its training report in
    ``reports``."""
    model, train_src, valid_ev, n_items, available = fit
    rows = cb.rows[: watch.last_epoch or len(cb.rows)]  # the epochs its own run would see
    record = {
        **common,
        "train": cfgs.as_dict(tc),
        "best_epoch": watch.best_epoch,
        "monitor": watch.metric,
        "best_valid": watch.best,
        "stopped": watch.stopped or cb.stopped,
        "history": rows,
    }
    if rows:
        write_csv(work / "history.csv", rows)
    if not (work / "model.keras").exists():
        raise PipelineError(
            f"{cb.diverged or 'no epoch gave a finite validation ' + watch.metric}; nothing "
            f"saved in {out}; try a lower --lr"
        )
    if tc.transitions:
        model.load_weights(work / "model.keras")  # the best epoch's weights
        record["transitions"] = fit_hybrid(model, train_src, valid_ev, n_items, tc, work)
    parts = [n for n in MODEL_FILES if n != "config.json" and (work / n).exists()]
    record["outputs"] = outputs_record(work, parts)  # what load_trained checks
    write_json(work / "config.json", record)
    # The previous run's files stay until this one's replace them (a run that fails or is
    # killed before leaves the old model whole); config.json goes last, and until it does
    # the old one's checksums refuse the new files (model.check_folder).
    for name in MODEL_FILES[::-1]:
        if (work / name).exists():
            os.replace(work / name, out / name)
        elif name != "config.json":  # a part this run has not (no hybrid): not the old one
            (out / name).unlink(missing_ok=True)
    shutil.rmtree(work)
    mc_tags = record["model"]["tags"]
    suffix = "" if mc_tags or available is None else "_notags"
    plot_history(rows, reports / f"training_curves{suffix}.png")
    md = (
        f"## Training{' (without tags)' if suffix else ''}\n\n"
        + f"Window {tc.window}; {common['train_examples']:,} training examples; "
        f"backend {record['backend']}; tags {'on' if mc_tags else 'off'}; "
        f"best epoch {watch.best_epoch} (validation {watch.metric} {watch.best:.4f}).\n\n"
        + markdown_table(list(rows[0].keys()), [list(r.values()) for r in rows])
        + "\n"
        + hybrid.markdown(record.get("transitions"))
    )
    write_text(reports / f"training{suffix}.md", md)
    return record


def fit_hybrid(
    model, train_split, valid_ev: Events, n_items: int, tc: TrainConfig, out: Path
) -> dict:
    """Choose the hybrid's weights for ``model`` and save its tables in ``out``.
    ``train_split``: the plays, or (``--stream``) the split's files, read one at a time."""
    if isinstance(train_split, list):
        trans = hybrid.Transitions.from_files(train_split, n_items, tc.transitions)
    else:
        trans = hybrid.Transitions.from_train(train_split, n_items, tc.transitions)
    record = hybrid.fit(model, trans, valid_ev)
    trans.save(out)
    return record


def transitions_only(layout: Layout, tc: TrainConfig) -> dict:
    """Refit the hybrid of the trained model in ``--out`` (or the window's model
    folder) on the same validation events as its training.

    The new table replaces the old one atomically and ``config.json`` (its weights, its
    ``k`` and the table's checksum) follows it: a run killed between the two leaves a
    folder whose checksum check fails, never a pair that disagrees unnoticed."""
    with folder_lock(model_folder(layout, tc)) as out:
        splits, vocab, meta = load_splits(layout, tc.window)
        # the table is what this run replaces: a damaged or mismatched one is no obstacle
        model, record = load_trained(
            out, expected_vocab_md5=meta["vocab_md5"], skip_check=(hybrid.TABLE,)
        )
        # folders trained before --other-out: without it
        saved = {"other_out": None, **record["train"]}
        saved = cfgs.load(TrainConfig, saved, str(out / "config.json"))
        valid_ev = sample_events(
            make_events(splits["valid"], model.input_len), saved.valid_events, saved.seed
        )
        n_hist = record["model"].get("history", 0)
        if n_hist:  # as in training: prefixes into the listener's earlier sessions
            listeners = ListenerHistory([splits[s] for s in SPLITS])
            valid_ev = extend_events(valid_ev, listeners, n_hist, model.input_len)
        record["transitions"] = fit_hybrid(model, splits["train"], valid_ev, len(vocab), tc, out)
        record["train"]["transitions"] = tc.transitions  # the table's K, for seed groups
        record["outputs"].update(outputs_record(out, [hybrid.TABLE]))
        write_json(out / "config.json", record)
        return record


def run_provenance(sessions_meta: dict, tags_dir: Path | None = None) -> dict:
    """Where a model comes from: the code (commit, clean tree, library versions) and the
    data (the vocabulary's and every split file's MD5, from sessionize.py's manifest, and
    the tag tables' MD5s, from fetch_tags.py's, when it trained with tags)."""
    outputs = sessions_meta.get("outputs", {})
    names = ("train.parquet", "valid.parquet", "test.parquet", "vocab.parquet")
    data = {"vocab_md5": sessions_meta.get("vocab_md5")}
    data.update({n: outputs.get(n, {}).get("md5") for n in names})
    if tags_dir is not None:
        tag_outputs = read_json(tags_dir / "meta.json").get("outputs", {})
        data.update({f"tags/{n}": r.get("md5") for n, r in tag_outputs.items()})
    return {**code_provenance(), "data": data}


@dataclass
class Watch:
    """One validation metric that keeps its best epoch's model at ``path`` and its own
    patience: ``last_epoch`` is the epoch after which a run monitoring only it would have
    stopped early (0: it did not), and after it nothing more is kept for it."""

    metric: str
    path: Path
    best: float = -1.0
    best_epoch: int = 0
    wait: int = 0
    last_epoch: int = 0
    stopped: str = ""

    def see(self, value: float, epoch: int, patience: int, model) -> None:
        if self.last_epoch:  # stopped: a run of its own would have ended here
            return
        if value > self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            model.save(self.path)
            return
        self.wait += 1
        if self.wait >= patience:
            self.last_epoch, self.stopped = epoch, "early stopping"
            log(f"early stop: no validation {self.metric} gain for {patience} epoch(s)")


class ValidationCallback(keras.callbacks.Callback):
    """Per epoch: validation HR@20/MRR@20, timing; early stopping and the best model
    saved by each watched metric (``Watch``: the --monitor one, and with --other-out the
    other); training stops once every watched metric has stopped.

    ``stopped`` says why training ended: ``early stopping``, ``time budget``
    (the next epoch, timed as the last one's batches, would end past ``time_budget``
    seconds from the start of training) or ``epochs`` (all ran)."""

    def __init__(
        self,
        rec_model,
        valid: Events,
        n_items: int,
        patience: int,
        csv_path: Path,
        n_train: int,
        time_budget: float,
        watches: list[Watch],
    ):
        super().__init__()
        if not watches:
            raise ValueError("ValidationCallback: no metric to watch")
        self.watches = watches
        self.rec_model, self.valid, self.n_items = rec_model, valid, n_items
        self.patience, self.csv_path, self.n_train = patience, csv_path, n_train
        self.rows = []
        self.time_budget, self.stopped = time_budget, "epochs"
        self.diverged = ""  # why training stopped on a loss that is not finite

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = self.batch_end = time.perf_counter()
        self.batch_s = []

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.batch_s.append(now - self.batch_end)
        self.batch_end = now
        loss = float((logs or {}).get("loss", 0.0))
        if not np.isfinite(loss):  # never evaluated, never saved
            self.diverged = f"the training loss became {loss} at batch {batch + 1}"
            self.rec_model.stop_training, self.stopped = True, "loss not finite"

    def next_epoch_s(self, valid_s: float) -> float:
        """The next epoch's expected time: the median time between batches times the
        batches (compiling, which slows an epoch's first batches, left out), plus this
        epoch's validation time."""
        return float(np.median(self.batch_s)) * len(self.batch_s) + valid_s

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged:
            self.diverged += f" of epoch {epoch + 1}"
            log(self.diverged)
            return
        secs = time.perf_counter() - self.t0
        res = evaluate(device_ranker(self.rec_model), self.valid, self.n_items, batch_size=512)
        row = {
            "epoch": epoch + 1,
            "loss": round(float(logs.get("loss", np.nan)), 4),
            "valid_HR@20": round(res.summary["HR@20"], 4),
            "valid_MRR@20": round(res.summary["MRR@20"], 4),
            "train_s": round(secs, 1),
            "examples_per_s": round(self.n_train / secs, 0),
            "valid_s": round(res.seconds, 1),
        }
        self.rows.append(row)
        log(json.dumps(row))
        write_csv(self.csv_path, self.rows)
        for w in self.watches:
            w.see(res.summary[w.metric], epoch + 1, self.patience, self.rec_model)
        if all(w.last_epoch for w in self.watches):
            self.rec_model.stop_training, self.stopped = True, "early stopping"
            return
        if not self.time_budget or not self.batch_s or epoch + 1 >= self.params.get("epochs", 0):
            return
        spent = time.perf_counter() - self.start
        if spent + self.next_epoch_s(res.seconds) > self.time_budget:
            log(f"stop: another epoch would end past --time-budget {self.time_budget:g} s")
            self.rec_model.stop_training, self.stopped = True, "time budget"


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot_history(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

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
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not fractions
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_args(argv=None) -> tuple[Layout, ModelConfig, TrainConfig]:
    ap = cfgs.parser("Train the Bi-GRU + attention next-track model.")
    cfgs.add_data_dir(ap)
    cfgs.add_flags(ap, TrainConfig, "training")
    cfgs.add_flags(ap, ModelConfig, "model (model.ModelConfig)")
    args = ap.parse_args(argv)
    return (
        Layout.at(args.data_dir),
        cfgs.from_args(ModelConfig, args),
        cfgs.from_args(TrainConfig, args),
    )


def main(argv=None) -> None:
    layout, mc, tc = parse_args(argv)
    out = model_folder(layout, tc)
    if tc.transitions_only:
        t = transitions_only(layout, tc)["transitions"]
        log(
            f"transition weights {t['weight']}, {t['pop_weight']} (validation MRR@20 "
            f"{t['valid_MRR@20']:.4f}) recorded in {out / 'config.json'}"
        )
        return
    record = train(layout, mc, tc)
    log(
        f"best epoch {record['best_epoch']}: validation {record['monitor']} "
        f"{record['best_valid']:.4f}; "
        f"saved {out / 'model.keras'}"
    )


if __name__ == "__main__":
    raise SystemExit(run_main(main))
