"""The evaluation stage's work (``test_model.py`` is its thin command line).

For a window's splits: tune each baseline's few parameters on validation
(``tune_baselines``), evaluate every baseline, the baseline ensemble
(``lastfm.ensemble``) and the trained networks on the test split on exactly the same
events (``run_evaluation``), merge methods evaluated elsewhere (``lastfm.ranks``), then
intervals over listeners (each with all its sessions), paired differences (``paired_diff``) to
the reference baselines chosen on validation (``choose_references``), seed groups
(``group_seeds``) and segments; ``evaluate_slices`` does it for every time slice of a window.

Loading a trained network is the stage's (``model.load_trained``, which imports Keras):
it is handed in as ``load_trained`` wherever a network is evaluated.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from lastfm import baselines as bl
from lastfm import common
from lastfm import config as cfgs
from lastfm.common import PipelineError, log, write_json, write_text
from lastfm.config import option
from lastfm.data import Events, load_splits, make_events, popularity, recent, sample_events
from lastfm.ensemble import (
    BLEND,
    ENSEMBLE,
    HYBRID_MARK,
    baseline_blend,
    baseline_ensemble,
    hybrid_gains,
)
from lastfm.metrics import (
    TIE_POLICY,
    EvalResult,
    bootstrap_ci,
    evaluate,
    interval_unit,
    ranker_from_scorer,
    segment_table,
    segments,
    summarise,
)
from lastfm.paths import Layout, make, slice_name
from lastfm.ranks import events_md5, load_ranks, save_ranks
from lastfm.report import REPORT_METRICS, log_test_evaluation, prefix_bins, slices_markdown
from lastfm.session_aware import (
    NETWORK_REMINDS,
    SESSION_AWARE_GRIDS,
    ListenerHistory,
    NetworkReminders,
    history_ranker,
    session_aware_forms,
)
from lastfm.stream import EventStream, split_files

# model.load_trained(model_dir, expected_vocab_md5=...) -> (Keras model, its record)
LoadTrained = Callable[..., tuple]
# Rows of the results: a method's name -> (its results entry, its per-event result).
Rows = dict[str, tuple[dict, EvalResult]]


@dataclass
class EvalConfig:
    """What is evaluated and how (``--recommend``: which recommendations are shown)."""

    window: str = option("1m", "window to evaluate (sessionize.py's folder name)")
    methods: str = option("POP,S-POP,SR,AR,Item-kNN,V-SKNN,VSTAN", "baselines (comma-separated)")
    model: bool = option(True, "evaluate the trained model(s) too")
    models: str | None = option(
        None,
        "comma-separated model folders (default <data>/models/<window>); {window} in a path "
        "is the evaluated window (with --slices: each slice's)",
    )
    save_ranks: str | None = option(
        None,
        "also save every method's per-event ranks and top-20 "
        "(to merge with --ranks-from, e.g. from a GPU machine)",
    )
    ranks_from: str | None = option(
        None,
        "comma-separated --save-ranks files of the same test events: their methods join the table",
    )
    exclude_seen: bool = option(False, "never recommend a track already in the session")
    session_aware: bool = option(
        False,
        "also evaluate the session-aware baselines (SR_BR, V-SKNN_EBR, VSTAN_EBR: each "
        "listener's earlier sessions extend, boost and remind; lastfm/session_aware.py), "
        "tuned on validation, reported in their own table",
    )
    stream: bool = option(
        False,
        "read the training and test splits file by file (splits larger than memory): "
        "count baselines summed part by part, V-SKNN/VSTAN from a session index kept on "
        "disk (<window>/index), test events streamed; validation is held in memory",
    )
    scheduler: str | None = option(
        None,
        "with --stream: a Dask scheduler address or scheduler file whose workers "
        "compute the count baselines' tables (default: here, one part at a time)",
    )
    prefix_len: int = option(50, "most recent tracks of a prefix every method sees")
    n_boot: int = option(1000, "bootstrap resamples for the intervals")
    tune_events: int = option(20_000, "validation events (drawn with --seed) for tuning")
    seed: int = option(0, "seed of the validation draw and the bootstrap")
    slices: int = option(
        0,
        "N > 0: evaluate the time slices <window>.slice1..N "
        "(sessionize.py --slices N): each slice's results and their mean and sd",
    )
    ensemble: bool = option(
        True,
        "also evaluate the baseline ensemble of the hybrid's form (a baseline + "
        "transition counts; the base chosen by the ensemble's validation MRR@20)",
    )
    transitions: int = option(16, "successors per track in the baseline ensemble")
    blend: bool = option(
        True,
        "also evaluate the baseline blend (LambdaMART over every baseline's top "
        "candidates, fitted on validation)",
    )
    blend_candidates: int = option(50, "each baseline's top tracks among the blend's candidates")
    recommend: bool = option(False, "show recommendations instead of evaluating")
    session: int | None = option(None, "test session id for --recommend")
    tracks: str | None = option(None, "'Artist - Title; ...' for --recommend")
    n: int = option(10, "recommendations to show")

    def check(self) -> None:
        cfgs.require_at_least(
            self, 1, "prefix_len", "n_boot", "tune_events", "n", "blend_candidates"
        )
        known = [g.cls.name for g in bl.GRIDS]
        for m in self.method_list():
            if m not in known:
                raise PipelineError(f"--methods: unknown baseline {m!r}; known: {known}")
        if self.scheduler and not self.stream:
            raise PipelineError("--scheduler only applies with --stream")
        given = [f"--{f}" for f in ("tracks", "session") if getattr(self, f) is not None]
        if given and not self.recommend:
            raise PipelineError(f"{' and '.join(given)} only apply with --recommend")
        if self.session_aware and self.stream:
            raise PipelineError("--session-aware reads the splits in memory: not with --stream")

    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    def model_dirs(self) -> list[Path] | None:
        """--models' folders, ``{window}`` replaced by the evaluated window: with --slices one
        list names each slice's networks (their folder names, the rows' labels, shared)."""
        if not self.models:
            return None
        return [Path(p.replace("{window}", self.window)) for p in self.models.split(",")]

    def ranks_files(self) -> list[Path]:
        return [Path(p) for p in self.ranks_from.split(",")] if self.ranks_from else []


def best_on_validation(models, valid_events: Events, n_items: int, log_fn=log):
    """Of ``models`` (pairs (params, a function fitting that grid point)), the best by
    validation MRR@20 (then HR@20) on ``valid_events``, with what was tried."""
    best, best_key, tried = None, None, []
    for params, build in models:
        model = build()
        res = evaluate(ranker_from_scorer(model.scorer, with_topk=False), valid_events, n_items)
        key = (res.summary["MRR@20"], res.summary["HR@20"])
        tried.append({"params": params, "MRR@20": key[0], "HR@20": key[1]})
        if best_key is None or key > best_key:
            best, best_key = model, key
    log_fn(f"{best!r}: valid MRR@20 {best_key[0]:.4f} HR@20 {best_key[1]:.4f}")
    return best, {"tried": tried, "valid": {"HR@20": best_key[1], "MRR@20": best_key[0]}}


def tune_baselines(
    train: pd.DataFrame, valid_events: Events, n_items: int, names: list[str], log_fn=log
) -> list[tuple[bl.Baseline, dict]]:
    """Fit each grid point on train, keep the best by validation MRR@20 (then HR@20)."""
    chosen = []
    for grid in bl.GRIDS:
        if grid.cls.name not in names:
            continue
        prev = [None]  # a grid's earlier point, whose parameter-free structures are reused

        def fit(params, grid=grid, prev=prev):
            prev[0] = grid.cls(**params).fit(train, n_items, like=prev[0])
            return prev[0]

        points = [(p, lambda p=p, fit=fit: fit(p)) for p in grid.values]
        chosen.append(best_on_validation(points, valid_events, n_items, log_fn))
    return chosen


def tune_session_aware(
    chosen,
    train: pd.DataFrame,
    history: ListenerHistory,
    valid_events: Events,
    n_items: int,
    log_fn=log,
) -> list[tuple[bl.Baseline, dict]]:
    """The session-aware form of each tuned base with one (``lastfm.session_aware``): its
    grid tried on ``valid_events`` with the base at its own choice, the best kept by
    validation MRR@20 (then HR@20), as ``tune_baselines`` does."""
    forms = session_aware_forms(chosen, train, history)
    return [
        best_on_validation(
            [(p, lambda p=p, f=form: f(p)) for p in SESSION_AWARE_GRIDS[name]],
            valid_events,
            n_items,
            log_fn,
        )
        for name, form in forms.items()
    ]


def listener_history(splits: dict[str, pd.DataFrame]) -> ListenerHistory:
    """Every split's plays by listener: the session-aware methods' history."""
    return ListenerHistory([splits[s] for s in ("train", "valid", "test") if s in splits])


def evaluate_network_reminders(
    dirs: list[Path],
    history: ListenerHistory,
    vocab_md5: str,
    valid_events: Events,
    events: Events,
    n_items: int,
    pop: np.ndarray,
    ec: EvalConfig,
    load_trained: LoadTrained,
) -> Rows:
    """Each trained network alone with the session-aware reminders
    (``session_aware.NetworkReminders``), the weight chosen on validation MRR@20 over
    ``NETWORK_REMINDS`` (0 included: the network alone), on the test events."""
    from keras import ops

    from lastfm.metrics import device_logits

    rows: Rows = {}
    for model_dir in dirs:
        model, record = load_trained(model_dir, expected_vocab_md5=vocab_md5)
        if record["model"].get("history"):  # already session-aware: its own row
            continue

        def logits(prefixes, lengths, model=model):
            x = recent(prefixes, lengths, model.input_len)
            return ops.convert_to_numpy(device_logits(model, x))

        best, info = tune_network_reminders(logits, history, valid_events, n_items)
        base = network_name(record) + (f" ({model_dir.name})" if ec.models else "")
        label = network_name(record) + "+reminders" + (f" ({model_dir.name})" if ec.models else "")
        ranker = ranker_from_scorer(best.scorer, ec.exclude_seen)
        res = evaluate(ranker, events, n_items, pop, batch_size=256)
        entry = {"params": best.params, **res.summary, "tuning": info["tried"]}
        entry.update(valid=info["valid"], session_aware={"base": base})
        rows[label] = (entry, res)
        log(f"{label}: test HR@20 {res.summary['HR@20']:.4f} MRR@20 {res.summary['MRR@20']:.4f}")
    return rows


def tune_network_reminders(logits, history: ListenerHistory, valid: Events, n_items: int):
    """``NetworkReminders``' weight chosen on ``valid`` by MRR@20 (then HR@20) over
    ``NETWORK_REMINDS``, as ``best_on_validation`` chooses, the network scored once per
    batch for every weight."""
    from lastfm.metrics import metric_values, score_rows

    ranks: dict[float, list] = {w: [] for w in NETWORK_REMINDS}
    for i in range(0, len(valid), 256):
        ev = valid.subset(np.arange(i, min(i + 256, len(valid))))
        z = np.asarray(logits(ev.prefixes, ev.lengths), np.float64)
        base = np.exp(z - z[:, 1:].max(axis=1, keepdims=True))
        rem = history.recency(ev.users, ev.sessions, ev.times, n_items).tocoo()
        for w in NETWORK_REMINDS:
            s = base.copy()
            s[rem.row, rem.col] += w * rem.data
            higher, ties = score_rows(s).counts(ev.targets)
            ranks[w].append(1.0 + higher + ties / 2.0)
    best, best_key, tried = None, None, []
    for w in NETWORK_REMINDS:
        vals = metric_values(np.concatenate(ranks[w]))
        key = (float(vals["MRR@20"].mean()), float(vals["HR@20"].mean()))
        tried.append({"params": {"remind": w}, "MRR@20": key[0], "HR@20": key[1]})
        if best_key is None or key > best_key:
            best, best_key = w, key
    log(f"reminders({best}): valid MRR@20 {best_key[0]:.4f} HR@20 {best_key[1]:.4f}")
    model = NetworkReminders(logits, history, n_items, best)
    return model, {"tried": tried, "valid": {"HR@20": best_key[1], "MRR@20": best_key[0]}}


def validation_scores(
    name: str, params: dict, train: pd.DataFrame, valid_events: Events, n_items: int
) -> dict | None:
    """HR@20 and MRR@20 on ``valid_events`` of the baseline ``name`` at its configuration
    ``params`` (its ``Baseline.params``), fitted on ``train``: what ``tune_baselines``
    records for a baseline it tuned, for one merged from a --ranks-from file. None when
    ``params`` is no point of its grid."""
    grid = next((g for g in bl.GRIDS if g.cls.name == name), None)
    key = json.dumps(params, sort_keys=True, default=str)
    kwargs = next(
        (
            v
            for v in (grid.values if grid else [])
            if json.dumps(grid.cls(**v).params, sort_keys=True, default=str) == key
        ),
        None,
    )
    if kwargs is None:
        return None
    model = grid.cls(**kwargs).fit(train, n_items)
    res = evaluate(ranker_from_scorer(model.scorer, with_topk=False), valid_events, n_items)
    return {"HR@20": res.summary["HR@20"], "MRR@20": res.summary["MRR@20"]}


ARCH_NAMES = {
    "bigru_att": "BiGRU-Att",
    "narm": "NARM",
    "gru4rec": "GRU4Rec",
    "sasrec": "SASRec",
    "stamp": "STAMP",
}


def network_name(record: dict) -> str:
    """A trained network's row name: its architecture, "+copy" / "+counts" with the copy
    or count path (each a different model from the pure network), "+tags" when it was
    given tags."""
    m = record["model"]
    return (
        ARCH_NAMES.get(m["arch"], m["arch"])
        + ("+copy" if m.get("copy") else "")
        + ("+counts" if m.get("counts") else "")
        + ("+history" if m.get("history") else "")
        + ("+tags" if m["tags"] and record.get("n_tags") else "")
    )


def hybrid_weights(record: dict) -> dict | None:
    """The transition hybrid's chosen weights in a model's record, or None (the model alone)."""
    t = record.get("transitions") or {}
    w = {"weight": t.get("weight", 0.0), "pop_weight": t.get("pop_weight", 0.0)}
    return w if any(w.values()) else None


def model_rankers(
    model_dir: Path,
    vocab_md5: str,
    exclude_seen: bool,
    load_trained: LoadTrained | None,
    listeners: Callable[[], ListenerHistory] | None = None,
) -> tuple[list, dict]:
    """The trained model's rankers, loaded once (by ``load_trained``, the stage's
    ``model.load_trained``): [("", the network alone)], plus ("+transitions", the hybrid)
    when training chose one."""
    from lastfm import hybrid
    from lastfm.metrics import device_ranker

    if load_trained is None:
        raise ValueError(f"{model_dir}: a trained model to evaluate but no load_trained given")
    model, record = load_trained(model_dir, expected_vocab_md5=vocab_md5)
    rankers = [("", device_ranker(model, exclude_seen=exclude_seen))]
    trans = hybrid.load(model_dir, record.get("transitions"))
    if trans is not None:
        rankers.append(("+transitions", device_ranker(model, exclude_seen, trans.boost)))
    n_hist = record["model"].get("history", 0)
    if n_hist:  # --history: prefixes continue into the listener's earlier sessions
        if listeners is None:
            raise PipelineError(
                f"{model_dir}: a network with --history needs the listeners' earlier "
                "sessions in memory (not with --stream or --recommend)"
            )
        if exclude_seen:
            raise PipelineError(f"{model_dir}: --exclude-seen with a --history network")
        history = listeners()
        rankers = [(v, history_ranker(r, history, n_hist, model.input_len)) for v, r in rankers]
    return rankers, record


def default_model_dirs(layout: Layout, ec: EvalConfig) -> list[Path]:
    """--models, or the window's model folder when a model was trained there."""
    dirs = ec.model_dirs()
    if dirs:
        for d in dirs:
            if not (d / "model.keras").exists():
                raise PipelineError(f"--models {d}: no model.keras there; run train.py --out")
        return dirs
    d = layout.models(ec.window)
    if (d / "model.keras").exists():
        return [d]
    log(f"no trained model in {d} (run train.py); baselines only")
    return []


def run_evaluation(layout: Layout, ec: EvalConfig, load_trained: LoadTrained | None = None) -> dict:
    """Tune the baselines on validation; evaluate them, the baseline ensemble and the
    trained networks (loaded by ``load_trained``) on the test split; merge ``--ranks-from``
    files; add intervals, paired differences, seed groups and segments. The results as
    ``results.json`` holds them, plus ``_raw``: each method's per-event ``EvalResult``."""
    with contextlib.ExitStack() as stack:
        client = None
        if ec.scheduler:
            from lastfm.dask_stages import cluster

            client = stack.enter_context(cluster(ec.scheduler))
        return _run_evaluation(layout, ec, load_trained, client)


def _run_evaluation(layout: Layout, ec: EvalConfig, load_trained, client) -> dict:
    if ec.stream:  # the splits' files read one at a time (lastfm/stream.py, SplitFiles)
        splits, vocab, meta = load_splits(layout, ec.window, ("valid",))
        folder = layout.sessions(ec.window)
        train = bl.SplitFiles(split_files(folder / "train.parquet"), folder / "index", client)
        test_events = EventStream(split_files(folder / "test.parquet"), ec.prefix_len).scan()
    else:
        splits, vocab, meta = load_splits(layout, ec.window)
        train = splits["train"]
        test_events = make_events(splits["test"], ec.prefix_len)
    n_items = len(vocab)
    pop = popularity(vocab)
    if len(test_events) == 0:
        raise PipelineError(f"window {ec.window}: the test split has no event")
    valid_events = sample_events(
        make_events(splits["valid"], ec.prefix_len), ec.tune_events, ec.seed
    )
    t0 = time.perf_counter()
    chosen = tune_baselines(train, valid_events, n_items, ec.method_list())
    t_tune = time.perf_counter() - t0
    results: dict[str, dict] = {}
    raw: dict[str, EvalResult] = {}

    def add(rows: Rows) -> None:
        for name, (entry, res) in rows.items():
            results[name], raw[name] = entry, res

    cache: dict = {}

    def listeners() -> ListenerHistory:  # built once, when a method needs it
        if "history" not in cache:
            cache["history"] = listener_history(splits)
        return cache["history"]

    add(evaluate_baselines(chosen, test_events, n_items, pop, ec.exclude_seen))
    if ec.session_aware:  # each listener's earlier sessions: their own table
        aware = tune_session_aware(chosen, train, listeners(), valid_events, n_items)
        rows = evaluate_baselines(aware, test_events, n_items, pop, ec.exclude_seen)
        for model, _ in aware:
            rows[model.name][0]["session_aware"] = {"base": model.base.name}
        add(rows)
    comparator_seconds: dict = {}
    if ec.ensemble or ec.blend:
        rows, comparator_seconds = evaluate_ensemble(
            chosen, train, valid_events, test_events, n_items, pop, ec
        )
        add(rows)
    dirs = default_model_dirs(layout, ec) if ec.model else []
    rows, model_records = evaluate_models(
        dirs,
        meta["vocab_md5"],
        test_events,
        n_items,
        pop,
        ec,
        load_trained,
        None if ec.stream else listeners,
    )
    add(rows)
    if ec.session_aware and dirs:
        add(
            evaluate_network_reminders(
                dirs,
                listeners(),
                meta["vocab_md5"],
                valid_events,
                test_events,
                n_items,
                pop,
                ec,
                load_trained,
            )
        )
    fingerprint = events_md5(test_events, meta["vocab_md5"], ec.exclude_seen, ec.prefix_len)
    if ec.save_ranks:
        save_ranks(Path(ec.save_ranks), raw, results, fingerprint, model_records)
        log(f"saved per-event ranks of {', '.join(raw)} to {ec.save_ranks}")
    for path in ec.ranks_files():
        rows, records = merge_ranks_file(path, fingerprint, test_events, raw, n_items, pop)
        model_records.update(records)
        add(rows)
    for name, entry in results.items():  # merged baselines: their validation scores here
        if name in BASELINES and "valid" not in entry and entry.get("params") is not None:
            entry["valid"] = validation_scores(name, entry["params"], train, valid_events, n_items)
    references = add_intervals_and_differences(results, raw, ec, test_events.users)
    gains = add_comparator_gains(results, raw, references, ec, test_events.users)
    for name, entry in results.items():  # each session-aware form against its base
        base = (entry.get("session_aware") or {}).get("base")
        if base in raw:
            entry["diff_vs_base"] = paired_diff(results, raw, name, base, ec, test_events.users)
    seed_groups = group_seeds(model_records, results)
    add_segments(results, raw, test_events, pop, meta, ec.seed)
    outputs = meta.get("outputs") or {}
    return {
        "window": ec.window,
        # the data evaluated: the vocabulary's and each split file's MD5 (sessionize.py)
        "data": {
            "vocab_md5": meta["vocab_md5"],
            **{
                n: (outputs.get(n) or {}).get("md5")
                for n in sorted(outputs)
                if n.endswith(".parquet")
            },
            "test_events_md5": fingerprint,
        },
        "accounting": meta.get("accounting"),
        "unseen": (meta.get("params") or {}).get("unseen", "splice"),
        "exclude_seen": ec.exclude_seen,
        "prefix_len": ec.prefix_len,
        "n_boot": ec.n_boot,
        "intervals": interval_unit(test_events.sessions, test_events.users, ec.n_boot),
        "tie_policy": TIE_POLICY,
        "n_items": n_items,
        "test_events": len(test_events),
        "test_sessions": int(len(np.unique(test_events.sessions))),
        "valid_events_for_tuning": len(valid_events),
        "tuning_seconds": round(t_tune, 1),
        "comparator_seconds": comparator_seconds,
        "reference_baselines": references,
        "hybrid_gains": gains,
        "seed_groups": seed_groups,
        "methods": results,
        "_raw": raw,
    }


def evaluate_baselines(
    chosen, events: Events, n_items: int, pop: np.ndarray, exclude_seen: bool
) -> Rows:
    """Each tuned baseline (``tune_baselines``' choice) on the test events."""
    rows: Rows = {}
    for model, info in chosen:
        res = evaluate(ranker_from_scorer(model.scorer, exclude_seen), events, n_items, pop)
        entry = {"params": model.params, **res.summary, "tuning": info["tried"]}
        rows[model.name] = ({**entry, "valid": info["valid"]}, res)
        log(
            f"{model!r}: test HR@20 {res.summary['HR@20']:.4f} MRR@20 "
            f"{res.summary['MRR@20']:.4f} ({res.summary['events_per_s']:,.0f} events/s)"
        )
    return rows


def evaluate_ensemble(
    chosen,
    train: pd.DataFrame,
    valid: Events,
    events: Events,
    n_items: int,
    pop: np.ndarray,
    ec: EvalConfig,
) -> tuple[Rows, dict]:
    """The baseline comparators (``lastfm.ensemble``), fitted on the validation events
    only, on the test events: the baseline ensemble (``--ensemble``) and the baseline
    blend (``--blend``); no row where no baseline was run. Also the seconds each took
    (name -> fit, test), kept out of the rows: a rerun gives the same rows."""
    comparators = []
    if ec.ensemble:
        comparators.append(
            baseline_ensemble(
                chosen,
                train,
                valid,
                n_items,
                transitions=ec.transitions,
                prefix_len=ec.prefix_len,
                exclude_seen=ec.exclude_seen,
            )
        )
    if ec.blend:
        comparators.append(
            baseline_blend(
                chosen,
                train,
                valid,
                n_items,
                exclude_seen=ec.exclude_seen,
                candidates=ec.blend_candidates,
                seed=ec.seed,
            )
        )
    rows: Rows = {}
    seconds = {}
    for c in comparators:
        if c is None:
            continue
        res = evaluate(c.ranker, events, n_items, pop, batch_size=c.batch_size)
        rows[c.name] = ({"params": c.record, **res.summary}, res)
        seconds[c.name] = {"fit": c.seconds, "test": round(res.seconds, 1)}
        log(
            f"{c.name}: test HR@20 {res.summary['HR@20']:.4f} MRR@20 "
            f"{res.summary['MRR@20']:.4f} ({res.summary['events_per_s']:,.0f} events/s)"
        )
    return rows, seconds


def add_comparator_gains(
    results: dict, raw: dict, references: dict | None, ec: EvalConfig, users=None
) -> list[dict]:
    """Each hybrid's paired difference to the baseline blend (``diff_vs_blend``), added to
    ``results``; returns ``ensemble.hybrid_gains``: each hybrid's gain over the reference
    baselines and the share of it that survives the baseline ensemble and the blend."""
    if BLEND in raw:
        for name in raw:
            if HYBRID_MARK in name and not name.endswith(ENSEMBLE):
                results[name]["diff_vs_blend"] = paired_diff(results, raw, name, BLEND, ec, users)
    return hybrid_gains(results, references)


def evaluate_models(
    dirs: list[Path],
    vocab_md5: str,
    events: Events,
    n_items: int,
    pop: np.ndarray,
    ec: EvalConfig,
    load_trained: LoadTrained | None,
    listeners: Callable[[], ListenerHistory] | None = None,
) -> tuple[Rows, dict[str, tuple[dict, list[str]]]]:
    """Each trained network in ``dirs`` on the test events, alone and as its hybrid when
    training chose one; with ``model_records``: each folder's record and row names."""
    rows: Rows = {}
    model_records: dict[str, tuple[dict, list[str]]] = {}
    for model_dir in dirs:
        rankers, record = model_rankers(
            model_dir, vocab_md5, ec.exclude_seen, load_trained, listeners
        )
        name = network_name(record)
        if record["model"].get("history") and ec.prefix_len < record["model"]["input_len"]:
            raise PipelineError(
                f"{model_dir}: --prefix-len {ec.prefix_len} is below the --history network's "
                f"--input-len {record['model']['input_len']}: it would see another prefix "
                "than in training"
            )
        suffix = f" ({model_dir.name})" if ec.models else ""  # --models: by folder
        params = {
            "model": record["model"],
            "best_epoch": record.get("best_epoch"),
            "seed": record["train"]["seed"],
            # where the row's model comes from: its code (commit, clean tree, versions,
            # backend) and the data it was trained on (split and vocabulary MD5s)
            "provenance": {**(record.get("provenance") or {}), "backend": record.get("backend")},
        }
        model_records[str(model_dir)] = (record, [name + v + suffix for v, _ in rankers])
        for variant, ranker in rankers:  # the network alone, then the hybrid if any
            label = name + variant + suffix
            res = evaluate(ranker, events, n_items, pop, batch_size=256)
            p = {**params, "transitions": hybrid_weights(record)} if variant else params
            rows[label] = ({"params": p, **res.summary}, res)
            if record["model"].get("history"):  # reads the listener's earlier sessions
                rows[label][0]["session_aware"] = {"base": None}
            log(
                f"{label}: test HR@20 {res.summary['HR@20']:.4f} MRR@20 {res.summary['MRR@20']:.4f}"
            )
    return rows, model_records


def merge_ranks_file(
    path: Path, fingerprint: str, events: Events, raw: dict, n_items: int, pop: np.ndarray
) -> tuple[Rows, dict]:
    """The methods of a ``--ranks-from`` file, summarised here, and its networks' records;
    a method also evaluated here (in ``raw``) is kept once when its ranks are the same,
    an error otherwise."""
    loaded, records = load_ranks(path, fingerprint, events)
    rows: Rows = {}
    for name, (res, params, aware) in loaded.items():
        if name in raw:
            if np.array_equal(raw[name].ranks, res.ranks):
                log(f"{name} (from {path}): same ranks as evaluated here; kept once")
                continue
            raise PipelineError(
                f"--ranks-from {path}: {name} was also evaluated here, "
                "with other ranks; rename or drop one"
            )
        res.summary = summarise(res, n_items, pop)
        rows[name] = ({"params": params, **res.summary, "ranks_from": str(path)}, res)
        if aware is None and ((params or {}).get("model") or {}).get("history"):
            aware = {"base": None}  # a --history network saved before the marker was
        if aware is not None:
            rows[name][0]["session_aware"] = aware
        log(
            f"{name} (from {path}): test HR@20 {res.summary['HR@20']:.4f} "
            f"MRR@20 {res.summary['MRR@20']:.4f}"
        )
    return rows, records


# The baselines' row names, and the metrics a reference baseline is chosen for (each
# compared against its own reference).
BASELINES = frozenset(g.cls.name for g in bl.GRIDS)
REFERENCE_METRICS = ("HR@20", "MRR@20")


def choose_references(results: dict) -> dict | None:
    """The reference baselines, chosen on validation, never on test: for each metric of
    ``REFERENCE_METRICS``, the baseline whose tuned configuration scores best on the
    validation events of tuning (``valid``; ties: the other metric, then the first row).
    None when no baseline has validation scores."""
    names = [n for n in results if n in BASELINES and results[n].get("valid")]
    if not names:
        return None
    refs: dict = {"chosen_on": "validation"}
    for m in REFERENCE_METRICS:
        other = next(x for x in REFERENCE_METRICS if x != m)
        refs[m] = max(names, key=lambda n: (results[n]["valid"][m], results[n]["valid"][other]))
    return refs


def add_intervals_and_differences(
    results: dict, raw: dict, ec: EvalConfig, users: np.ndarray | None = None
) -> dict | None:
    """Each method's intervals (over the listeners ``users`` (E,) of the test events, then
    their sessions: ``bootstrap_ci``), its paired differences (the same draws for both
    methods) to the reference baselines chosen on validation (``choose_references``: each
    metric against its own reference, ``diff_vs_reference``) and each hybrid's to the
    baseline ensemble (``diff_vs_ensemble``), added to ``results``; returns the references
    (baselines evaluated here or merged from --ranks-from files), or None."""
    refs = choose_references(results)
    for name, res in raw.items():
        results[name]["ci"] = bootstrap_ci(
            res.ranks, res.sessions, REPORT_METRICS, n_boot=ec.n_boot, seed=ec.seed, users=users
        )
        if refs:
            diffs = {
                m: paired_diff(results, raw, name, refs[m], ec, users, (m,))[m]
                for m in REFERENCE_METRICS
                if refs[m] != name and refs[m] in raw
            }
            if diffs:
                baseline = {m: refs[m] for m in REFERENCE_METRICS}
                results[name]["diff_vs_reference"] = {"baseline": baseline, **diffs}
    ens_name = next((n for n in results if n.endswith(ENSEMBLE)), None)
    for name in raw:  # the hybrids against the ensemble of their own form
        if ens_name and "+transitions" in name and name != ens_name:
            results[name]["diff_vs_ensemble"] = paired_diff(results, raw, name, ens_name, ec, users)
    return refs


def add_segments(
    results: dict, raw: dict, events: Events, pop: np.ndarray, meta: dict, seed: int
) -> None:
    """Each method's segment table, its table by prefix-length bin (``by_prefix``:
    ``report.PREFIX_BINS``, what ``results_by_prefix.png`` draws) and its figures counting
    the unscored test events (unseen targets, events left without a prefix) as misses,
    added to ``results``."""
    masks = segments(events, pop)
    bins = prefix_bins(events.positions)
    acct = (meta.get("accounting") or {}).get("test")
    total = acct.get("events_before_filtering") if acct else None
    for name, res in raw.items():
        results[name]["segments"] = segment_table(res, masks, seed=seed, users=events.users)
        results[name]["by_prefix"] = segment_table(res, bins, seed=seed, users=events.users)
        if total:  # unseen targets and events left without a prefix count as misses
            results[name]["with_unscored_as_misses"] = {
                m: results[name][m] * len(events) / total for m in ("HR@20", "MRR@20")
            }


def paired_diff(
    results: dict,
    raw: dict,
    name: str,
    other: str,
    ec: EvalConfig,
    users: np.ndarray | None = None,
    metrics=REFERENCE_METRICS,
) -> dict:
    """``name`` minus ``other`` on ``metrics``, with paired bootstrap intervals: the
    difference of their per-event values resampled by one seed's draws (over the listeners
    ``users``, each with all its sessions), the same draws as each method's own interval."""
    res = raw[name]
    return {
        "baseline": other,
        **{
            m: [
                results[name][m] - results[other][m],
                *bootstrap_ci(
                    res.ranks,
                    res.sessions,
                    (m,),
                    n_boot=ec.n_boot,
                    seed=ec.seed,
                    other_ranks=raw[other].ranks,
                    users=users,
                )[m],
            ]
            for m in metrics
        },
    }


# Training options that are not part of a configuration: runs differing only in them
# are seeds of one configuration (a time budget only limits a run; each run's stop and
# epochs are listed in its group; --other-out only names where the other metric's epoch
# went).
NOT_CONFIGURATION = ("seed", "out", "other_out", "time_budget", "verbose", "tensorboard")


def group_seeds(model_records: dict, results: dict) -> list[dict]:
    """Models whose configurations differ only in their seed, as groups: mean and sd of
    each row (network alone, hybrid) over seeds, and whether its paired difference to the
    reference baseline of each metric (and to the baseline ensemble) is positive for
    every seed."""
    groups: dict[str, list] = {}
    for record, labels in model_records.values():
        train = {k: v for k, v in record["train"].items() if k not in NOT_CONFIGURATION}
        model = {"history": 0, **record["model"]}  # folders trained before --history: 0
        key = json.dumps({"model": model, "train": train}, sort_keys=True)
        groups.setdefault(key, []).append((record, labels))
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        for variant in range(max(len(labels) for _, labels in members)):
            # the members that have this variant (a seed without a hybrid has none)
            having = [(record, labels) for record, labels in members if len(labels) > variant]
            if len(having) < 2:
                continue
            rows = [results[labels[variant]] for _, labels in having]
            g = {
                "rows": [labels[variant] for _, labels in having],
                "seeds": [record["train"]["seed"] for record, _ in having],
                "epochs": [len(record.get("history") or []) or None for record, _ in having],
                "stopped": [record.get("stopped") for record, _ in having],
            }
            for m in ("HR@20", "MRR@20"):
                v = np.array([r[m] for r in rows])
                g[m] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1))}
                for key in ("diff_vs_reference", "diff_vs_ensemble"):
                    if all(m in r.get(key, {}) for r in rows):
                        g[f"{m} {key} holds for every seed"] = all(r[key][m][1] > 0 for r in rows)
            out.append(g)
    return out


def provenance(argv: list[str] | None, ec: EvalConfig) -> dict:
    """The command, commit and date of a results file (docs/RESULTS.md shows them)."""
    command = "python test_model.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return {**common.provenance(command), "config": cfgs.as_dict(ec)}


def evaluate_slices(
    layout: Layout, ec: EvalConfig, argv, load_trained: LoadTrained | None = None
) -> str:
    """Evaluate every time slice; write ``results_slices.{json,md}`` (per slice and mean +-
    sd over slices) and each slice's full results under ``reports/slices/``."""
    reports = make(layout.reports())
    per: dict[str, dict] = {}
    for k in range(1, ec.slices + 1):
        name = slice_name(ec.window, k)
        res = run_evaluation(layout, replace(ec, window=name, slices=0), load_trained)
        prov = provenance(argv, ec)
        write_json(
            make(reports / "slices") / f"{name}.json",
            {**{k2: v for k2, v in res.items() if k2 != "_raw"}, "provenance": prov},
        )
        log_test_evaluation(reports, res, prov)
        per[name] = {m: {x: r[x] for x in ("HR@20", "MRR@20")} for m, r in res["methods"].items()}
    summary = slices_summary(per)
    write_json(
        reports / "results_slices.json",
        {
            "window": ec.window,
            "per_slice": per,
            "summary": summary,
            "provenance": provenance(argv, ec),
        },
    )
    md = slices_markdown({"window": ec.window, "per_slice": per, "summary": summary})
    write_text(reports / "results_slices.md", md)
    return md


def slices_summary(per: dict[str, dict]) -> dict:
    """Each method's HR@20 and MRR@20 over the slices (``per``: slice -> method -> metric):
    mean, sd and the number of slices it was evaluated on."""
    methods = list(dict.fromkeys(m for r in per.values() for m in r))
    summary = {}
    for m in methods:
        vals = {
            x: np.array([per[s][m][x] for s in per if m in per[s]]) for x in ("HR@20", "MRR@20")
        }
        summary[m] = {
            x: {
                "mean": float(v.mean()),
                "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "slices": len(v),
            }
            for x, v in vals.items()
        }
    return summary
