"""Stage 5: full-ranking top-N evaluation of the model and strong baselines.

(This is the evaluation stage, not a test file: pytest's testpaths exclude it.)

For a window's splits (``data/sessions/<window>/``) it
1. tunes each baseline's few parameters on the validation split (MRR@20),
2. evaluates every baseline and the trained model (``data/models/<window>/``,
   when present) on the test split, on exactly the same events,
3. writes ``data/reports/results.{md,json}`` (method x metric with 95%
   bootstrap intervals, differences to the best baseline), ``results_bar.png``
   and ``results_by_prefix.png``, and the study's one-page
   ``data/reports/report.md``.

``--recommend`` shows the top-N tracks for a test session (``--session``) or
for tracks given by name (``--tracks "Artist - Title; Artist - Title"``), next
to what was played next.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

import baselines as bl
from common import (PipelineError, data_root, log, markdown_table, read_json, read_table,
                    run_main, stage_dir, write_json)
from metrics import (CUTOFFS, EvalResult, Events, bootstrap_ci, by_prefix_length, evaluate,
                     make_events, ranker_from_scorer, summarise)

REPORT_METRICS = [f"{m}@{n}" for n in CUTOFFS for m in ("HR", "MRR", "NDCG")]


def load_splits(window: str) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, dict]:
    d = data_root() / "sessions" / window
    if not (d / "meta.json").exists():
        raise PipelineError(f"{d}/meta.json not found: run sessionize.py (window {window}) first")
    splits = {s: read_table(d / f"{s}.parquet", "sessions", "sessionize.py")
              for s in ("train", "valid", "test")}
    vocab = read_table(d / "vocab.parquet", "vocab", "sessionize.py")
    return splits, vocab, read_json(d / "meta.json")


def tune_baselines(train: pd.DataFrame, valid_events: Events, n_items: int, names: list[str],
                   log_fn=log) -> list[tuple[bl.Baseline, dict]]:
    """Fit each grid point on train, keep the best by validation MRR@20 (then HR@20)."""
    chosen = []
    for grid in bl.GRIDS:
        if grid.cls.name not in names:
            continue
        best, best_key, tried = None, None, []
        for params in grid.values:
            model = grid.cls(**params).fit(train, n_items)
            res = evaluate(ranker_from_scorer(model.score), valid_events, n_items)
            key = (res.summary["MRR@20"], res.summary["HR@20"])
            tried.append({"params": params, "MRR@20": key[0], "HR@20": key[1]})
            if best_key is None or key > best_key:
                best, best_key = model, key
        log_fn(f"{best!r}: valid MRR@20 {best_key[0]:.4f} HR@20 {best_key[1]:.4f}")
        chosen.append((best, {"tried": tried}))
    return chosen


def hybrid_weights(config: dict) -> dict | None:
    """The transition hybrid's chosen weights in a model's config, or None (the model alone)."""
    t = config.get("transitions") or {}
    w = {"weight": t.get("weight", 0.0), "pop_weight": t.get("pop_weight", 0.0)}
    return w if any(w.values()) else None


def model_rankers(window: str, vocab_md5: str, exclude_seen: bool,
                  model_dir: Path | None = None) -> tuple[list, dict | None]:
    """The trained model's rankers, loaded once: [("", the network alone)], plus
    ("+transitions", the hybrid) when training chose one; ([], None) when no
    model was trained for ``window``."""
    path = (Path(model_dir) if model_dir else data_root() / "models" / window) / "model.keras"
    if not path.exists():
        if model_dir:
            raise PipelineError(f"--models {model_dir}: no model.keras there; run train.py --out")
        return [], None
    import train as trainer  # heavy import (Keras) only when a model exists

    model, config = trainer.load_trained(path, expected_vocab_md5=vocab_md5)
    rankers = [("", trainer.make_ranker(model, exclude_seen=exclude_seen))]
    trans = trainer.load_transitions(path.parent, config)
    if trans is not None:
        rankers.append(("+transitions", trainer.make_ranker(model, exclude_seen=exclude_seen,
                                                            transitions=trans)))
    return rankers, config


def model_ranker(window: str, vocab_md5: str, exclude_seen: bool, model_dir: Path | None = None):
    """The trained model's ranker (the hybrid when training chose one), or None."""
    rankers, config = model_rankers(window, vocab_md5, exclude_seen, model_dir)
    return (rankers[-1][1] if rankers else None), config


def events_md5(events: Events, vocab_md5: str, exclude_seen: bool, max_len: int) -> str:
    """Fingerprint of an evaluation: the events, the vocabulary and the protocol."""
    h = hashlib.md5(f"{vocab_md5}|{exclude_seen}|{max_len}".encode())
    for a in (events.sessions, events.positions, events.targets, events.prefixes):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save_ranks(path: Path, raw: dict, results: dict, fingerprint: str) -> None:
    """Per-event ranks and top-20 of every method evaluated, to merge elsewhere."""
    names = list(raw)
    meta = {"events_md5": fingerprint, "methods": names,
            "params": {n: results[n]["params"] for n in names},
            "seconds": {n: raw[n].seconds for n in names}}
    arrays = {}
    for i, n in enumerate(names):
        arrays[f"ranks_{i}"] = raw[n].ranks.astype(np.int32)
        arrays[f"topk_{i}"] = raw[n].topk.astype(np.int32)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)


def load_ranks(path: Path, fingerprint: str, events: Events) -> dict[str, tuple[EvalResult, dict]]:
    """Methods saved by ``--save-ranks``; refuses ranks of other events or protocol."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"--ranks-from {path}: file not found")
    z = None
    try:
        z = np.load(path)
        meta = json.loads(str(z["meta"]))
        names, saved_md5 = meta["methods"], meta["events_md5"]
    except (OSError, ValueError, KeyError, TypeError) as e:  # not a --save-ranks file
        if z is not None:
            z.close()
        raise PipelineError(f"--ranks-from {path}: not a file written by --save-ranks "
                            f"({type(e).__name__}: {e})") from e
    with z:
        if saved_md5 != fingerprint:
            raise PipelineError(
                f"--ranks-from {path}: saved for other test events, vocabulary, --max-len or "
                "--exclude-seen than this evaluation; evaluate on the same splits and options")
        out = {}
        for i, n in enumerate(names):
            res = EvalResult(z[f"ranks_{i}"].astype(np.int64), events.sessions, events.positions,
                             z[f"topk_{i}"].astype(np.int64), float(meta["seconds"][n]))
            if len(res.ranks) != len(events):
                raise PipelineError(f"--ranks-from {path}: {n} has {len(res.ranks)} events, "
                                    f"expected {len(events)}")
            out[n] = (res, meta["params"][n])
    return out


def run_evaluation(window: str, methods: list[str], exclude_seen: bool, max_len: int,
                   n_boot: int, tune_events: int, seed: int, use_model: bool,
                   model_dirs: list[Path] | None = None, ranks_from: list[Path] | None = None,
                   save_ranks_to: Path | None = None) -> dict:
    splits, vocab, meta = load_splits(window)
    n_items = len(vocab)
    pop = np.zeros(n_items + 1)
    pop[vocab["item_idx"].to_numpy()] = vocab["train_count"].to_numpy()
    test_events = make_events(splits["test"], max_len)
    valid_events = make_events(splits["valid"], max_len)
    if len(test_events) == 0:
        raise PipelineError(f"window {window}: the test split has no event")
    rng = np.random.default_rng(seed)
    if len(valid_events) > tune_events:
        valid_events = valid_events.subset(np.sort(rng.choice(len(valid_events), tune_events,
                                                              replace=False)))
    t0 = time.perf_counter()
    chosen = tune_baselines(splits["train"], valid_events, n_items, methods)
    t_tune = time.perf_counter() - t0
    results: dict[str, dict] = {}
    raw: dict[str, object] = {}
    for model, info in chosen:
        res = evaluate(ranker_from_scorer(model.score, exclude_seen), test_events, n_items, pop)
        results[model.name] = {"params": model.params, **res.summary, "tuning": info["tried"]}
        raw[model.name] = res
        log(f"{model!r}: test HR@20 {res.summary['HR@20']:.4f} MRR@20 "
            f"{res.summary['MRR@20']:.4f} ({res.summary['events_per_s']:,.0f} events/s)")
    for model_dir in (model_dirs or [None]) if use_model else []:
        rankers, config = model_rankers(window, meta["vocab_md5"], exclude_seen, model_dir)
        if not rankers:
            log(f"no trained model in data/models/{window}/ (run train.py); baselines only")
            continue
        name = "BiGRU-Att" + ("+tags" if config.get("use_tags") else "")
        suffix = f" ({Path(model_dir).name})" if model_dirs else ""  # --models: by folder
        params = {k: config[k] for k in ("model", "max_len", "best_epoch", "seed") if k in config}
        for variant, ranker in rankers:  # the network alone, then the hybrid if any
            label = name + variant + suffix
            res = evaluate(ranker, test_events, n_items, pop, batch_size=256)
            p = {**params, "transitions": hybrid_weights(config)} if variant else params
            results[label] = {"params": p, **res.summary}
            raw[label] = res
            log(f"{label}: test HR@20 {res.summary['HR@20']:.4f} "
                f"MRR@20 {res.summary['MRR@20']:.4f}")
    fingerprint = events_md5(test_events, meta["vocab_md5"], exclude_seen, max_len)
    if save_ranks_to:
        save_ranks(save_ranks_to, raw, results, fingerprint)
        log(f"saved per-event ranks of {', '.join(raw)} to {save_ranks_to}")
    for path in ranks_from or []:
        for name, (res, params) in load_ranks(path, fingerprint, test_events).items():
            if name in raw:
                if np.array_equal(raw[name].ranks, res.ranks):
                    log(f"{name} (from {path}): same ranks as evaluated here; kept once")
                    continue
                raise PipelineError(f"--ranks-from {path}: {name} was also evaluated here, "
                                    "with other ranks; rename or drop one")
            res.summary = summarise(res, n_items, pop)
            results[name] = {"params": params, **res.summary, "ranks_from": str(path)}
            raw[name] = res
            log(f"{name} (from {path}): test HR@20 {res.summary['HR@20']:.4f} "
                f"MRR@20 {res.summary['MRR@20']:.4f}")
    # Intervals, and differences to the best baseline (paired: same resamples).
    # Baselines evaluated here or merged from --ranks-from files.
    base_names = [n for n in results if n in {g.cls.name for g in bl.GRIDS}]
    best_base = max(base_names, key=lambda n: results[n]["MRR@20"]) if base_names else None
    for name, res in raw.items():
        results[name]["ci"] = bootstrap_ci(res.ranks, res.sessions, REPORT_METRICS,
                                           n_boot=n_boot, seed=seed)
        if best_base and name != best_base:
            results[name]["diff_vs_best_baseline"] = {
                "baseline": best_base,
                **{m: [results[name][m] - results[best_base][m], *bootstrap_ci(
                    res.ranks, res.sessions, (m,), n_boot=n_boot, seed=seed,
                    other_ranks=raw[best_base].ranks)[m]] for m in ("HR@20", "MRR@20")}}
    return {"window": window, "exclude_seen": exclude_seen, "max_len": max_len,
            "n_boot": n_boot, "tie_policy": "optimistic: rank = 1 + #higher scores",
            "n_items": n_items, "test_events": len(test_events),
            "test_sessions": int(len(np.unique(test_events.sessions))),
            "valid_events_for_tuning": len(valid_events), "tuning_seconds": round(t_tune, 1),
            "best_baseline": best_base, "methods": results,
            "_raw": raw}


def results_markdown(res: dict) -> str:
    rows = []
    for name, r in res["methods"].items():
        row = [name]
        for m in ("HR@1", "HR@5", "HR@10", "HR@20", "MRR@20", "NDCG@20"):
            lo, hi = r["ci"][m]
            row.append(f"{r[m]:.4f} [{lo:.4f}, {hi:.4f}]")
        row += [f"{r['coverage@20']:.3f}", f"{r.get('mean_pop@20', float('nan')):,.0f}"]
        rows.append(row)
    head = ["method", "HR@1", "HR@5", "HR@10", "HR@20", "MRR@20", "NDCG@20", "cov@20",
            "pop@20"]
    diffs = [[n, r["diff_vs_best_baseline"]["baseline"],
              "{:+.4f} [{:+.4f}, {:+.4f}]".format(*r["diff_vs_best_baseline"]["HR@20"]),
              "{:+.4f} [{:+.4f}, {:+.4f}]".format(*r["diff_vs_best_baseline"]["MRR@20"])]
             for n, r in res["methods"].items() if "diff_vs_best_baseline" in r]
    params = [[n, json.dumps(r["params"])] for n, r in res["methods"].items()]
    seen = "included (re-listening counts)" if not res["exclude_seen"] else "excluded"
    return (f"## Results: window {res['window']}, test split\n\n"
            f"Full ranking over {res['n_items']:,} tracks; {res['test_events']:,} events of "
            f"{res['test_sessions']:,} sessions; tracks already in the session {seen}; "
            f"tie policy {res['tie_policy']}; 95% bootstrap intervals over sessions "
            f"({res['n_boot']} resamples). Baseline parameters chosen on validation "
            f"MRR@20.\n\n" + markdown_table(head, rows)
            + "\n\nDifference to the best baseline (paired bootstrap):\n\n"
            + markdown_table(["method", "vs", "HR@20 diff [95% CI]", "MRR@20 diff [95% CI]"],
                             diffs)
            + "\n\nParameters:\n\n" + markdown_table(["method", "parameters"], params) + "\n")


def plot_results(res: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(res["methods"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, m in zip(axes, ("HR@20", "MRR@20")):
        v = np.array([res["methods"][n][m] for n in names])
        lo = np.array([res["methods"][n]["ci"][m][0] for n in names])
        hi = np.array([res["methods"][n]["ci"][m][1] for n in names])
        ax.bar(names, v, yerr=[v - lo, hi - v], capsize=4, color="#4c72b0")
        ax.set_title(f"{m} (95% CI)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out_dir / "results_bar.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, r in res["_raw"].items():
        df = by_prefix_length(r)
        for ax, m in zip(axes, ("HR@20", "MRR@20")):
            ax.plot(df["prefix_len"], df[m], marker=".", label=name)
    for ax, m in zip(axes, ("HR@20", "MRR@20")):
        ax.set_xlabel("prefix length (20 = 20 or more)")
        ax.set_title(f"{m} by prefix length")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "results_by_prefix.png", dpi=100)
    plt.close(fig)


def write_report(reports: Path) -> Path:
    """Gather every stage's tables and plots into ``reports/report.md``."""
    parts = ["# Last.fm-1K session-based next-track recommendation: report\n"]
    for name in ("preprocess_stats.md", "sessions.md", "tags.md", "training.md",
                 "training_notags.md", "results.md"):
        p = reports / name
        if p.exists():
            parts.append(p.read_text())
    for png in ("plays_per_user.png", "training_curves.png", "training_curves_notags.png",
                "results_bar.png", "results_by_prefix.png"):
        if (reports / png).exists():
            parts.append(f"![{png}]({png})\n")
    out = reports / "report.md"
    out.write_text("\n\n".join(parts))
    return out


# --------------------------------------------------------------------------- recommend
def _find_tracks(vocab: pd.DataFrame, spec: str) -> list[int]:
    """Item ids of 'Artist - Title; ...' (exact, case-insensitive)."""
    key = (vocab["artist_name"].astype(str).str.lower() + " - "
           + vocab["track_name"].astype(str).str.lower())
    lookup = dict(zip(key, vocab["item_idx"]))
    items = []
    for part in [p.strip() for p in spec.split(";") if p.strip()]:
        if part.lower() not in lookup:
            raise PipelineError(f"--tracks: {part!r} is not in the training vocabulary "
                                "(write 'Artist - Title', separated by ';')")
        items.append(int(lookup[part.lower()]))
    return items


def recommend(window: str, session: int | None, tracks: str | None, n: int,
              use_model: bool) -> str:
    splits, vocab, meta = load_splits(window)
    n_items = len(vocab)
    names = dict(zip(vocab["item_idx"], vocab["artist_name"].astype(str) + " - "
                     + vocab["track_name"].astype(str)))
    actual = []
    if tracks:
        prefix = _find_tracks(vocab, tracks)
    else:
        test = splits["test"]
        ids = test["session_id"].unique()
        sid = int(ids[0]) if session is None else session
        rows = test[test["session_id"] == sid]
        if rows.empty:
            raise PipelineError(f"--session {sid} is not a test session of window {window} "
                                f"(ids run {ids.min()}..{ids.max()})")
        items = rows["item_idx"].tolist()
        cut = max(1, len(items) // 2)
        prefix, actual = items[:cut], items[cut:]
    pre = np.zeros((1, 50), np.int32)
    p = prefix[-50:]
    pre[0, :len(p)] = p
    lengths = np.array([len(p)], np.int32)
    ranker, config = model_ranker(window, meta["vocab_md5"], False) if use_model else (None, None)
    if ranker is None:
        method = bl.VSKNN(k=100).fit(splits["train"], n_items)
        ranker, label = ranker_from_scorer(method.score), "V-SKNN (no trained model)"
    else:
        hybrid = hybrid_weights(config)
        label = "trained model" + (f" + transition counts {hybrid}" if hybrid else "")
    _, top = ranker(pre, lengths, np.array([prefix[-1]], np.int32))
    lines = ["Session so far:"] + [f"  {i + 1:2d}. {names[t]}" for i, t in enumerate(prefix)]
    lines += [f"Top {n} next tracks ({label}):"]
    lines += [f"  {i + 1:2d}. {names[int(t)]}" + ("   <- played next" if actual and
                                                   int(t) == actual[0] else "")
              for i, t in enumerate(top[0][:n])]
    if actual:
        lines += ["Actually played next:"] + [f"      {names[t]}" for t in actual[:5]]
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Full-ranking evaluation and recommendations.")
    ap.add_argument("--window", default="1m")
    ap.add_argument("--methods", default="POP,S-POP,SR,Item-kNN,V-SKNN",
                    help="baselines to run (comma-separated)")
    ap.add_argument("--no-model", action="store_true", help="baselines only")
    ap.add_argument("--models", help="comma-separated model folders (default data/models/<window>)")
    ap.add_argument("--save-ranks", metavar="NPZ",
                    help="also save every method's per-event ranks and top-20 (to merge with "
                         "--ranks-from, e.g. a model evaluated on a GPU machine)")
    ap.add_argument("--ranks-from", metavar="NPZ",
                    help="comma-separated --save-ranks files of the same test events: their "
                         "methods join the table, intervals and paired differences")
    ap.add_argument("--exclude-seen", action="store_true",
                    help="never recommend a track already in the session")
    ap.add_argument("--max-len", type=int, default=50, help="prefix length seen by methods")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--tune-events", type=int, default=20_000,
                    help="validation events (sampled) used to choose baseline parameters")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recommend", action="store_true")
    ap.add_argument("--session", type=int, help="test session id for --recommend")
    ap.add_argument("--tracks", help="'Artist - Title; ...' for --recommend")
    ap.add_argument("-n", type=int, default=10, help="recommendations to show")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.recommend:
        print(recommend(args.window, args.session, args.tracks, args.n, not args.no_model))
        return
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = [g.cls.name for g in bl.GRIDS]
    for m in methods:
        if m not in known:
            raise PipelineError(f"--methods: unknown baseline {m!r}; known: {known}")
    model_dirs = [Path(p) for p in args.models.split(",")] if args.models else None
    res = run_evaluation(args.window, methods, args.exclude_seen, args.max_len, args.n_boot,
                         args.tune_events, args.seed, not args.no_model, model_dirs,
                         [Path(p) for p in args.ranks_from.split(",")] if args.ranks_from else None,
                         Path(args.save_ranks) if args.save_ranks else None)
    reports = stage_dir("reports")
    md = results_markdown(res)
    (reports / "results.md").write_text(md)
    plot_results(res, reports)
    write_json(reports / "results.json", {k: v for k, v in res.items() if k != "_raw"})
    report = write_report(reports)
    print(md)
    log(f"wrote {reports / 'results.md'} and {report}")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
