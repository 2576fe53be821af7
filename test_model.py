"""Stage 5: full-ranking top-N evaluation of the model and strong baselines.

(This is the evaluation stage, not a test file: pytest's testpaths exclude it.)

For a window's splits (``<data>/sessions/<window>/``) it
1. tunes each baseline's few parameters on the validation split (MRR@20),
2. evaluates every baseline and the trained model (``<data>/models/<window>/``,
   when present, or ``--models``) on the test split, on exactly the same
   events, with the ranking contract of ``lastfm.metrics``,
3. writes ``<data>/reports/results.{md,json}`` (method x metric with 95%
   bootstrap intervals, differences to the best baseline), ``results_bar.png``
   and ``results_by_prefix.png``, and the study's one-page ``report.md``.

``--recommend`` shows the top-N tracks for a test session (``--session``) or
for tracks given by name (``--tracks "Artist - Title; Artist - Title"``), next
to what was played next.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lastfm import baselines as bl
from lastfm import common
from lastfm import config as cfgs
from lastfm.common import PipelineError, log, markdown_table, run_main, write_json, write_text
from lastfm.config import option
from lastfm.data import Events, load_splits, make_events, popularity, recent, sample_events
from lastfm.metrics import (
    CUTOFFS,
    TIE_POLICY,
    EvalResult,
    bootstrap_ci,
    by_prefix_length,
    csr_rows,
    evaluate,
    ranker_from_scorer,
    segment_table,
    segments,
    summarise,
)
from lastfm.paths import Layout, make, slice_name

REPORT_METRICS = [f"{m}@{n}" for n in CUTOFFS for m in ("HR", "MRR", "NDCG")]


@dataclass
class EvalConfig:
    """What is evaluated and how (``--recommend``: which recommendations are shown)."""

    window: str = option("1m", "window to evaluate (sessionize.py's folder name)")
    methods: str = option("POP,S-POP,SR,AR,Item-kNN,V-SKNN,VSTAN", "baselines (comma-separated)")
    model: bool = option(True, "evaluate the trained model(s) too")
    models: str | None = option(
        None, "comma-separated model folders (default <data>/models/<window>)"
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
        "also evaluate the baseline ensemble of the hybrid's form "
        "(the best neighbourhood baseline + transition counts)",
    )
    transitions: int = option(16, "successors per track in the baseline ensemble")
    recommend: bool = option(False, "show recommendations instead of evaluating")
    session: int | None = option(None, "test session id for --recommend")
    tracks: str | None = option(None, "'Artist - Title; ...' for --recommend")
    n: int = option(10, "recommendations to show")

    def check(self) -> None:
        cfgs.require_at_least(self, 1, "prefix_len", "n_boot", "tune_events", "n")
        known = [g.cls.name for g in bl.GRIDS]
        for m in self.method_list():
            if m not in known:
                raise PipelineError(f"--methods: unknown baseline {m!r}; known: {known}")

    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    def model_dirs(self) -> list[Path] | None:
        return [Path(p) for p in self.models.split(",")] if self.models else None

    def ranks_files(self) -> list[Path]:
        return [Path(p) for p in self.ranks_from.split(",")] if self.ranks_from else []


def tune_baselines(
    train: pd.DataFrame, valid_events: Events, n_items: int, names: list[str], log_fn=log
) -> list[tuple[bl.Baseline, dict]]:
    """Fit each grid point on train, keep the best by validation MRR@20 (then HR@20)."""
    chosen = []
    for grid in bl.GRIDS:
        if grid.cls.name not in names:
            continue
        best, best_key, tried, prev = None, None, [], None
        for params in grid.values:
            model = prev = grid.cls(**params).fit(train, n_items, like=prev)
            res = evaluate(ranker_from_scorer(model.scorer, with_topk=False), valid_events, n_items)
            key = (res.summary["MRR@20"], res.summary["HR@20"])
            tried.append({"params": params, "MRR@20": key[0], "HR@20": key[1]})
            if best_key is None or key > best_key:
                best, best_key = model, key
        log_fn(f"{best!r}: valid MRR@20 {best_key[0]:.4f} HR@20 {best_key[1]:.4f}")
        chosen.append((best, {"tried": tried}))
    return chosen


NEIGHBOURHOODS = ("AR", "Item-kNN", "V-SKNN", "VSTAN")
ARCH_NAMES = {
    "bigru_att": "BiGRU-Att",
    "narm": "NARM",
    "gru4rec": "GRU4Rec",
    "sasrec": "SASRec",
    "stamp": "STAMP",
}
ENSEMBLE = "+transitions (baseline ensemble)"


def baseline_ensemble(chosen, train, valid: Events, n_items: int, ec: EvalConfig):
    """The network hybrid's comparator, of the same form: the best neighbourhood
    baseline on validation (its scores scaled to a row maximum of 1) plus the same
    transition counts and popularity terms, both weights chosen on the same validation
    events over the same grid. None when no neighbourhood baseline was run."""
    from lastfm import hybrid

    cands = [(m, info) for m, info in chosen if m.name in NEIGHBOURHOODS]
    if not cands:
        return None
    best, _ = max(cands, key=lambda c: max(t["MRR@20"] for t in c[1]["tried"]))

    def base_scores(prefixes, lengths, times):
        """The base's sparse scores, column 0 dropped, each row scaled to a maximum of 1."""
        s = best.sparse_scores(prefixes, lengths, times).tocsr().astype(np.float32)
        s.data[s.indices == 0] = 0.0
        s.eliminate_zeros()
        top = np.asarray(s.max(axis=1).todense(), np.float32).ravel()
        s.data /= np.where(top > 0, top, np.float32(1.0))[csr_rows(s)]
        return s

    trans = hybrid.Transitions.from_train(train, n_items, ec.transitions)
    times = valid.times if valid.times is not None else np.zeros(len(valid))
    record = hybrid.fit_scores(
        lambda x, sl: base_scores(valid.prefixes[sl], valid.lengths[sl], times[sl]),
        hybrid.numpy_ops(),
        ec.prefix_len,
        n_items,
        trans,
        valid,
    )
    record = {
        "base": repr(best),
        "weight": record["weight"],
        "pop_weight": record["pop_weight"],
        "valid_MRR@20": record["valid_MRR@20"],
        "grid_size": len(record["tried"]),
    }

    def scorer(prefixes, lengths, times=None):
        s = base_scores(prefixes, lengths, times)
        idx, add = trans.boost(recent(prefixes, lengths, ec.prefix_len))
        return s + sp.csr_matrix((add, (idx[:, 0], idx[:, 1])), shape=s.shape)

    scorer.needs_times = True
    return best.name + ENSEMBLE, ranker_from_scorer(scorer, ec.exclude_seen), record


def hybrid_weights(record: dict) -> dict | None:
    """The transition hybrid's chosen weights in a model's record, or None (the model alone)."""
    t = record.get("transitions") or {}
    w = {"weight": t.get("weight", 0.0), "pop_weight": t.get("pop_weight", 0.0)}
    return w if any(w.values()) else None


def model_rankers(model_dir: Path, vocab_md5: str, exclude_seen: bool) -> tuple[list, dict]:
    """The trained model's rankers, loaded once: [("", the network alone)], plus
    ("+transitions", the hybrid) when training chose one."""
    from lastfm import hybrid
    from lastfm.metrics import device_ranker
    from model import load_trained  # Keras is imported only when a model is evaluated

    model, record = load_trained(model_dir, expected_vocab_md5=vocab_md5)
    rankers = [("", device_ranker(model, exclude_seen=exclude_seen))]
    trans = hybrid.load(model_dir, record.get("transitions"))
    if trans is not None:
        rankers.append(("+transitions", device_ranker(model, exclude_seen, trans.boost)))
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


def events_md5(events: Events, vocab_md5: str, exclude_seen: bool, prefix_len: int) -> str:
    """Fingerprint of an evaluation: the events, the vocabulary and the protocol."""
    h = hashlib.md5(f"{vocab_md5}|{exclude_seen}|{prefix_len}".encode())
    for a in (events.sessions, events.positions, events.targets, events.prefixes):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# Each method i of a --save-ranks file: arrays <part>_i (int32, one row per event).
RANK_PARTS = ("higher", "ties", "topk")


def write_ranks_file(path: Path, meta: dict, methods: list[dict]) -> None:
    """A ``--save-ranks`` file, written atomically: ``meta`` (JSON; its ``methods`` names
    ``methods`` in order) and each method's ``RANK_PARTS`` arrays."""

    def write(tmp: Path) -> None:
        arrays = {
            f"{part}_{i}": np.asarray(m[part]).astype(np.int32)
            for i, m in enumerate(methods)
            for part in RANK_PARTS
        }
        with open(tmp, "wb") as fh:  # a file object: np.savez adds no ".npz" to the name
            np.savez_compressed(fh, meta=np.array(json.dumps(meta)), **arrays)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    common.write_atomic(Path(path), write)


def read_ranks_file(path: Path) -> tuple[dict, list[dict]]:
    """The meta and per-method arrays (``RANK_PARTS``) of a ``--save-ranks`` file; a
    one-line error for a missing file, another file, or one written before tie counts."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"--ranks-from {path}: file not found")
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files}
        missing = [k for k in ("methods", "events_md5", "params", "seconds") if k not in meta]
        if missing:
            raise KeyError(missing[0])
        names = meta["methods"]
    except (OSError, ValueError, KeyError, TypeError) as e:  # not a --save-ranks file
        raise PipelineError(
            f"--ranks-from {path}: not a file written by --save-ranks ({type(e).__name__}: {e})"
        ) from e
    if any(f"higher_{i}" not in arrays for i in range(len(names))):
        raise PipelineError(
            f"--ranks-from {path}: written before the tie counts were "
            "kept; evaluate that method again with --save-ranks"
        )
    return meta, [{part: arrays[f"{part}_{i}"] for part in RANK_PARTS} for i in range(len(names))]


def save_ranks(
    path: Path, raw: dict, results: dict, fingerprint: str, model_records: dict | None = None
) -> None:
    """Per-event ranks and top-20 of every method evaluated, to merge elsewhere; with each
    network's configuration (``model_records``) so that its seeds group where it merges."""
    names = list(raw)
    meta = {
        "events_md5": fingerprint,
        "methods": names,
        "params": {n: results[n]["params"] for n in names},
        "seconds": {n: raw[n].seconds for n in names},
        "model_records": {
            d: [{k: rec.get(k) for k in RECORD_KEYS}, labels]
            for d, (rec, labels) in (model_records or {}).items()
        },
    }
    write_ranks_file(
        path, meta, [{part: getattr(raw[n], part) for part in RANK_PARTS} for n in names]
    )


def load_ranks(
    path: Path, fingerprint: str, events: Events
) -> tuple[dict[str, tuple[EvalResult, dict]], dict]:
    """Methods saved by ``--save-ranks`` and the networks' records (as ``model_records``,
    keyed by the file and folder); refuses ranks of other events or protocol."""
    meta, methods = read_ranks_file(path)
    if meta["events_md5"] != fingerprint:
        raise PipelineError(
            f"--ranks-from {path}: saved for other test events, vocabulary, --prefix-len or "
            "--exclude-seen than this evaluation; evaluate on the same splits and options"
        )
    out = {}
    for n, m in zip(meta["methods"], methods):
        res = EvalResult(
            m["higher"].astype(np.int64),
            m["ties"].astype(np.int64),
            events.sessions,
            events.positions,
            m["topk"].astype(np.int64),
            float(meta["seconds"][n]),
        )
        if len(res.ranks) != len(events):
            raise PipelineError(
                f"--ranks-from {path}: {n} has {len(res.ranks)} events, expected {len(events)}"
            )
        out[n] = (res, meta["params"][n])
    records = {f"{path}:{d}": tuple(v) for d, v in meta.get("model_records", {}).items()}
    return out, records


def run_evaluation(layout: Layout, ec: EvalConfig) -> dict:
    splits, vocab, meta = load_splits(layout, ec.window)
    n_items = len(vocab)
    pop = popularity(vocab)
    test_events = make_events(splits["test"], ec.prefix_len)
    if len(test_events) == 0:
        raise PipelineError(f"window {ec.window}: the test split has no event")
    valid_events = sample_events(
        make_events(splits["valid"], ec.prefix_len), ec.tune_events, ec.seed
    )
    t0 = time.perf_counter()
    chosen = tune_baselines(splits["train"], valid_events, n_items, ec.method_list())
    t_tune = time.perf_counter() - t0
    results: dict[str, dict] = {}
    raw: dict[str, EvalResult] = {}
    for model, info in chosen:
        res = evaluate(ranker_from_scorer(model.scorer, ec.exclude_seen), test_events, n_items, pop)
        results[model.name] = {"params": model.params, **res.summary, "tuning": info["tried"]}
        raw[model.name] = res
        log(
            f"{model!r}: test HR@20 {res.summary['HR@20']:.4f} MRR@20 "
            f"{res.summary['MRR@20']:.4f} ({res.summary['events_per_s']:,.0f} events/s)"
        )
    if ec.ensemble:
        ens = baseline_ensemble(chosen, splits["train"], valid_events, n_items, ec)
        if ens is not None:
            name, ranker, record = ens
            res = evaluate(ranker, test_events, n_items, pop)
            results[name] = {"params": record, **res.summary}
            raw[name] = res
            log(f"{name}: test HR@20 {res.summary['HR@20']:.4f} MRR@20 {res.summary['MRR@20']:.4f}")
    model_records: dict[str, tuple[dict, list[str]]] = {}
    for model_dir in default_model_dirs(layout, ec) if ec.model else []:
        rankers, record = model_rankers(model_dir, meta["vocab_md5"], ec.exclude_seen)
        name = ARCH_NAMES.get(record["model"]["arch"], record["model"]["arch"]) + (
            "+tags" if record["model"]["tags"] and record.get("n_tags") else ""
        )
        suffix = f" ({model_dir.name})" if ec.models else ""  # --models: by folder
        params = {
            "model": record["model"],
            "best_epoch": record.get("best_epoch"),
            "seed": record["train"]["seed"],
        }
        model_records[str(model_dir)] = (record, [name + v + suffix for v, _ in rankers])
        for variant, ranker in rankers:  # the network alone, then the hybrid if any
            label = name + variant + suffix
            res = evaluate(ranker, test_events, n_items, pop, batch_size=256)
            p = {**params, "transitions": hybrid_weights(record)} if variant else params
            results[label] = {"params": p, **res.summary}
            raw[label] = res
            log(
                f"{label}: test HR@20 {res.summary['HR@20']:.4f} MRR@20 {res.summary['MRR@20']:.4f}"
            )
    fingerprint = events_md5(test_events, meta["vocab_md5"], ec.exclude_seen, ec.prefix_len)
    if ec.save_ranks:
        save_ranks(Path(ec.save_ranks), raw, results, fingerprint, model_records)
        log(f"saved per-event ranks of {', '.join(raw)} to {ec.save_ranks}")
    for path in ec.ranks_files():
        loaded, records = load_ranks(path, fingerprint, test_events)
        model_records.update(records)
        for name, (res, params) in loaded.items():
            if name in raw:
                if np.array_equal(raw[name].ranks, res.ranks):
                    log(f"{name} (from {path}): same ranks as evaluated here; kept once")
                    continue
                raise PipelineError(
                    f"--ranks-from {path}: {name} was also evaluated here, "
                    "with other ranks; rename or drop one"
                )
            res.summary = summarise(res, n_items, pop)
            results[name] = {"params": params, **res.summary, "ranks_from": str(path)}
            raw[name] = res
            log(
                f"{name} (from {path}): test HR@20 {res.summary['HR@20']:.4f} "
                f"MRR@20 {res.summary['MRR@20']:.4f}"
            )
    # Intervals, and differences to the best baseline (paired: same resamples).
    # Baselines evaluated here or merged from --ranks-from files.
    base_names = [n for n in results if n in {g.cls.name for g in bl.GRIDS}]
    best_base = max(base_names, key=lambda n: results[n]["MRR@20"]) if base_names else None
    for name, res in raw.items():
        results[name]["ci"] = bootstrap_ci(
            res.ranks, res.sessions, REPORT_METRICS, n_boot=ec.n_boot, seed=ec.seed
        )
        if best_base and name != best_base:
            results[name]["diff_vs_best_baseline"] = paired_diff(results, raw, name, best_base, ec)
    ens_name = next((n for n in results if n.endswith(ENSEMBLE)), None)
    for name in raw:  # the hybrids against the ensemble of their own form
        if ens_name and "+transitions" in name and name != ens_name:
            results[name]["diff_vs_ensemble"] = paired_diff(results, raw, name, ens_name, ec)
    seed_groups = group_seeds(model_records, results)
    masks = segments(test_events, pop)
    acct = (meta.get("accounting") or {}).get("test")
    total = acct.get("events_before_filtering") if acct else None
    for name, res in raw.items():
        results[name]["segments"] = segment_table(res, masks, seed=ec.seed)
        if total:  # unseen targets and events left without a prefix count as misses
            results[name]["with_unscored_as_misses"] = {
                m: results[name][m] * len(test_events) / total for m in ("HR@20", "MRR@20")
            }
    return {
        "window": ec.window,
        "accounting": meta.get("accounting"),
        "unseen": (meta.get("params") or {}).get("unseen", "splice"),
        "exclude_seen": ec.exclude_seen,
        "prefix_len": ec.prefix_len,
        "n_boot": ec.n_boot,
        "tie_policy": TIE_POLICY,
        "n_items": n_items,
        "test_events": len(test_events),
        "test_sessions": int(len(np.unique(test_events.sessions))),
        "valid_events_for_tuning": len(valid_events),
        "tuning_seconds": round(t_tune, 1),
        "best_baseline": best_base,
        "seed_groups": seed_groups,
        "methods": results,
        "_raw": raw,
    }


def paired_diff(results: dict, raw: dict, name: str, other: str, ec: EvalConfig) -> dict:
    """``name`` minus ``other`` on HR@20 and MRR@20, with paired bootstrap intervals."""
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
                )[m],
            ]
            for m in ("HR@20", "MRR@20")
        },
    }


# What of a trained model's record a --save-ranks file keeps (for its seed group).
RECORD_KEYS = ("model", "train", "best_epoch", "stopped", "history")
# Training options that are not part of a configuration: runs differing only in them
# are seeds of one configuration (a time budget only limits a run; each run's stop and
# epochs are listed in its group).
NOT_CONFIGURATION = ("seed", "out", "time_budget", "verbose", "tensorboard")


def group_seeds(model_records: dict, results: dict) -> list[dict]:
    """Models whose configurations differ only in their seed, as groups: mean and sd of
    each row (network alone, hybrid) over seeds, and whether its paired difference to the
    best baseline (and to the baseline ensemble) is positive for every seed."""
    groups: dict[str, list] = {}
    for record, labels in model_records.values():
        train = {k: v for k, v in record["train"].items() if k not in NOT_CONFIGURATION}
        key = json.dumps({"model": record["model"], "train": train}, sort_keys=True)
        groups.setdefault(key, []).append((record, labels))
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        for variant in range(len(members[0][1])):
            rows = [results[labels[variant]] for _, labels in members if len(labels) > variant]
            g = {
                "rows": [labels[variant] for _, labels in members if len(labels) > variant],
                "seeds": [record["train"]["seed"] for record, _ in members],
                "epochs": [len(record.get("history") or []) or None for record, _ in members],
                "stopped": [record.get("stopped") for record, _ in members],
            }
            for m in ("HR@20", "MRR@20"):
                v = np.array([r[m] for r in rows])
                g[m] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1))}
                for key in ("diff_vs_best_baseline", "diff_vs_ensemble"):
                    if all(key in r for r in rows):
                        g[f"{m} {key} holds for every seed"] = all(r[key][m][1] > 0 for r in rows)
            out.append(g)
    return out


def provenance(argv: list[str] | None, ec: EvalConfig) -> dict:
    """The command, commit and date of a results file (docs/RESULTS.md shows them)."""
    command = "python test_model.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return {**common.provenance(command), "config": cfgs.as_dict(ec)}


def results_markdown(res: dict) -> str:
    rows = []
    for name, r in res["methods"].items():
        row = [name]
        for m in ("HR@1", "HR@5", "HR@10", "HR@20", "MRR@20", "NDCG@20"):
            lo, hi = r["ci"][m]
            row.append(f"{r[m]:.4f} [{lo:.4f}, {hi:.4f}]")
        row += [f"{r['coverage@20']:.3f}", f"{r.get('mean_pop@20', float('nan')):,.0f}"]
        rows.append(row)
    head = ["method", "HR@1", "HR@5", "HR@10", "HR@20", "MRR@20", "NDCG@20", "cov@20", "pop@20"]
    diffs = [
        [
            n,
            r[key]["baseline"],
            "{:+.4f} [{:+.4f}, {:+.4f}]".format(*r[key]["HR@20"]),
            "{:+.4f} [{:+.4f}, {:+.4f}]".format(*r[key]["MRR@20"]),
        ]
        for key in ("diff_vs_best_baseline", "diff_vs_ensemble")
        for n, r in res["methods"].items()
        if key in r
    ]
    params = [[n, json.dumps(r["params"])] for n, r in res["methods"].items() if r.get("params")]
    seen = "included (re-listening counts)" if not res["exclude_seen"] else "excluded"
    tracks = f"{res['n_items']:,}" if res.get("n_items") else "all training"
    return (
        f"## Results: window {res['window']}, test split\n\n"
        f"Full ranking over {tracks} tracks; {res['test_events']:,} events of "
        f"{res['test_sessions']:,} sessions; tracks already in the session {seen}; "
        f"tie policy {res['tie_policy']}; 95% bootstrap intervals over sessions "
        f"({res['n_boot']} resamples). Baseline parameters chosen on validation "
        f"MRR@20.\n\n"
        + markdown_table(head, rows)
        + "\n\nDifference to the best baseline (paired bootstrap):\n\n"
        + markdown_table(["method", "vs", "HR@20 diff [95% CI]", "MRR@20 diff [95% CI]"], diffs)
        + (
            "\n\nParameters:\n\n" + markdown_table(["method", "parameters"], params)
            if params
            else ""
        )
        + extra_markdown(res)
        + "\n"
    )


def extra_markdown(res: dict) -> str:
    """Other tie policies, the accounting of unscored events, segments, tuning budgets."""
    methods = res["methods"]
    parts = []
    if all("optimistic" in m for m in methods.values()):
        parts.append(
            "Other tie policies (HR@20 / MRR@20): optimistic (1 + #higher) and "
            "pessimistic (1 + #higher + #equal); share of events with a tied target:\n\n"
            + markdown_table(
                ["method", "optimistic", "pessimistic", "tied events"],
                [
                    [
                        n,
                        f"{m['optimistic']['HR@20']:.4f} / {m['optimistic']['MRR@20']:.4f}",
                        f"{m['pessimistic']['HR@20']:.4f} / {m['pessimistic']['MRR@20']:.4f}",
                        f"{m.get('tied_events', 0):.3f}",
                    ]
                    for n, m in methods.items()
                ],
            )
        )
    acct = (res.get("accounting") or {}).get("test")
    if acct and acct.get("events_before_filtering"):
        tot = acct["events_before_filtering"]
        kept = res.get("unseen") == "keep"
        after = acct.get("events_after_unseen", acct["events_spliced"])
        parts.append(
            f"Not scored (test split): {acct['unseen_plays']:,} of {acct['plays']:,} plays "
            f"({acct['unseen_plays'] / max(acct['plays'], 1):.1%}) are tracks unseen in training "
            + (
                "and stay in the prefixes as id 0 (`sessionize.py --unseen keep`)"
                if kept
                else "and were removed"
            )
            + f"; of {tot:,} next-play events, "
            f"{acct['events_unseen_target']:,} ({acct['events_unseen_target'] / tot:.1%}) have an "
            f"unseen target and {acct['events_unscorable']:,} lost their prefix; of the "
            f"{acct['events_scored']:,} scored, {after:,} "
            f"({after / max(acct['events_scored'], 1):.1%}) "
            + (
                "have an unseen play earlier in their session"
                if kept
                else "predict across a removed track"
            )
            + ". Counting every unscored event as a miss:\n\n"
            + markdown_table(
                ["method", "HR@20", "MRR@20"],
                [
                    [
                        n,
                        m["with_unscored_as_misses"]["HR@20"],
                        m["with_unscored_as_misses"]["MRR@20"],
                    ]
                    for n, m in methods.items()
                    if "with_unscored_as_misses" in m
                ],
            )
        )
    seg_names = next((list(m["segments"]) for m in methods.values() if "segments" in m), [])
    if seg_names:
        first = next(m["segments"] for m in methods.values() if "segments" in m)
        head = ["method"] + [f"{s} ({first[s].get('share', 0):.0%})" for s in seg_names]
        rows = []
        for n, m in methods.items():
            row = [n]
            for sname in seg_names:
                g = m["segments"][sname]
                row.append(
                    f"{g['MRR@20']:.4f} [{g['ci']['MRR@20'][0]:.4f}, {g['ci']['MRR@20'][1]:.4f}]"
                    if g.get("events")
                    else ""
                )
            rows.append(row)
        parts.append(
            "MRR@20 by segment (share of test events; 95% intervals): the target "
            "already in the session (repeat) or new to it; its training popularity "
            "(head, torso, tail: the tracks holding the top, middle and last third of "
            "training plays; rare: fewer than 5 plays):\n\n" + markdown_table(head, rows)
        )
    if res.get("seed_groups"):
        rows = []
        for g in res["seed_groups"]:
            holds = [k.split(" holds")[0] for k, v in g.items() if k.endswith("every seed") and v]
            rows.append(
                [
                    ", ".join(g["rows"]),
                    len(g["seeds"]),
                    f"{g['HR@20']['mean']:.4f} +- {g['HR@20']['sd']:.4f}",
                    f"{g['MRR@20']['mean']:.4f} +- {g['MRR@20']['sd']:.4f}",
                    "; ".join(holds) or "none",
                    ", ".join(
                        f"{e}{' (' + stop + ')' if stop and stop != 'epochs' else ''}"
                        for e, stop in zip(g.get("epochs") or [], g.get("stopped") or [])
                    ),
                ]
            )
        parts.append(
            "Seeds (the same configuration trained with different seeds; mean +- sd; "
            "a claim holds only where the paired difference's interval is above 0 for "
            "every seed):\n\n"
            + markdown_table(
                ["rows", "seeds", "HR@20", "MRR@20", "holds for every seed", "epochs (stop)"],
                rows,
            )
        )
    budgets = [[n, len(m["tuning"])] for n, m in methods.items() if m.get("tuning")]
    if budgets:
        parts.append(
            "Validation budget (configurations tried):\n\n"
            + markdown_table(["method", "configurations"], budgets)
        )
    return "".join("\n\n" + p for p in parts)


def evaluate_slices(layout: Layout, ec: EvalConfig, argv) -> str:
    """Evaluate every time slice; write ``results_slices.{json,md}`` (per slice and mean +-
    sd over slices) and each slice's full results under ``reports/slices/``."""
    from dataclasses import replace

    reports = make(layout.reports())
    per: dict[str, dict] = {}
    for k in range(1, ec.slices + 1):
        name = slice_name(ec.window, k)
        res = run_evaluation(layout, replace(ec, window=name, slices=0))
        prov = provenance(argv, ec)
        write_json(
            make(reports / "slices") / f"{name}.json",
            {**{k2: v for k2, v in res.items() if k2 != "_raw"}, "provenance": prov},
        )
        log_test_evaluation(reports, res, prov)
        per[name] = {m: {x: r[x] for x in ("HR@20", "MRR@20")} for m, r in res["methods"].items()}
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


def slices_markdown(res: dict) -> str:
    """The table of a ``results_slices.json``: MRR@20 per slice, mean +- sd over slices."""
    per, summary = res["per_slice"], res["summary"]
    rows = [
        [m]
        + [f"{per[s][m]['MRR@20']:.4f}" if m in per[s] else "" for s in per]
        + [
            f"{summary[m]['MRR@20']['mean']:.4f} +- {summary[m]['MRR@20']['sd']:.4f}",
            f"{summary[m]['HR@20']['mean']:.4f} +- {summary[m]['HR@20']['sd']:.4f}",
        ]
        for m in summary
    ]
    return (
        f"## Results over {len(per)} time slices of window {res['window']}\n\n"
        "Each slice has its own train / validation / test split by time and its own "
        "tuning; MRR@20 per slice, then the mean +- sd over slices:\n\n"
        + markdown_table(["method"] + list(per) + ["MRR@20", "HR@20"], rows)
        + "\n"
    )


def log_test_evaluation(reports: Path, res: dict, prov: dict) -> None:
    """Append one line per method to ``test_log.jsonl``: how often the test split was
    looked at, by what, when."""
    lines = []
    for name, m in res["methods"].items():
        lines.append(
            json.dumps(
                {
                    "time": prov["date"],
                    "commit": prov["commit"],
                    "command": prov["command"],
                    "window": res["window"],
                    "method": name,
                    "params": m.get("params"),
                    **{k: m[k] for k in REPORT_METRICS if k in m},
                },
                default=str,
            )
        )
    with open(reports / "test_log.jsonl", "a") as fh:
        fh.write("\n".join(lines) + "\n")


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
        err = np.maximum(0.0, [v - lo, hi - v])  # a one-session interval can round below 0
        ax.bar(names, v, yerr=err, capsize=4, color="#4c72b0")
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
    for name in (
        "preprocess_stats.md",
        "sessions.md",
        "tags.md",
        "training.md",
        "training_notags.md",
        "results.md",
    ):
        p = reports / name
        if p.exists():
            parts.append(p.read_text())
    for png in (
        "plays_per_user.png",
        "training_curves.png",
        "training_curves_notags.png",
        "results_bar.png",
        "results_by_prefix.png",
    ):
        if (reports / png).exists():
            parts.append(f"![{png}]({png})\n")
    out = reports / "report.md"
    write_text(out, "\n\n".join(parts))
    return out


# --------------------------------------------------------------------------- recommend
def _find_tracks(vocab: pd.DataFrame, spec: str) -> list[int]:
    """Item ids of 'Artist - Title; ...' (exact, case-insensitive)."""
    key = (
        vocab["artist_name"].astype(str).str.lower()
        + " - "
        + vocab["track_name"].astype(str).str.lower()
    )
    lookup = dict(zip(key, vocab["item_idx"]))
    items = []
    parts = [p.strip() for p in spec.split(";") if p.strip()]
    if not parts:
        raise PipelineError(
            f"--tracks {spec!r}: no track given (write 'Artist - Title', separated by ';')"
        )
    for part in parts:
        if part.lower() not in lookup:
            raise PipelineError(
                f"--tracks: {part!r} is not in the training vocabulary "
                "(write 'Artist - Title', separated by ';')"
            )
        items.append(int(lookup[part.lower()]))
    return items


def recommend(layout: Layout, ec: EvalConfig) -> str:
    splits, vocab, meta = load_splits(layout, ec.window)
    n_items = len(vocab)
    names = dict(
        zip(
            vocab["item_idx"],
            vocab["artist_name"].astype(str) + " - " + vocab["track_name"].astype(str),
        )
    )
    actual = []
    if ec.tracks:
        prefix = _find_tracks(vocab, ec.tracks)
    else:
        test = splits["test"]
        ids = test["session_id"].unique()
        if len(ids) == 0:
            raise PipelineError(f"window {ec.window}: the test split has no session")
        sid = int(ids[0]) if ec.session is None else ec.session
        rows = test[test["session_id"] == sid]
        if rows.empty:
            raise PipelineError(
                f"--session {sid} is not a test session of window {ec.window} "
                f"(ids run {ids.min()}..{ids.max()})"
            )
        items = rows["item_idx"].tolist()
        cut = max(1, len(items) // 2)
        prefix, actual = items[:cut], items[cut:]
    p = prefix[-ec.prefix_len :]
    pre = np.zeros((1, ec.prefix_len), np.int32)
    pre[0, : len(p)] = p
    lengths = np.array([len(p)], np.int32)
    dirs = default_model_dirs(layout, ec) if ec.model else []
    if dirs:
        rankers, record = model_rankers(dirs[0], meta["vocab_md5"], False)
        ranker = rankers[-1][1]  # the hybrid when training chose one
        hybrid = hybrid_weights(record)
        label = "trained model" + (f" + transition counts {hybrid}" if hybrid else "")
    else:
        method = bl.VSKNN(k=100).fit(splits["train"], n_items)
        ranker, label = ranker_from_scorer(method.score), "V-SKNN (no trained model)"
    *_, top = ranker(pre, lengths, np.array([prefix[-1]], np.int32))
    lines = ["Session so far:"] + [f"  {i + 1:2d}. {names[t]}" for i, t in enumerate(prefix)]
    lines += [f"Top {ec.n} next tracks ({label}):"]
    lines += [
        f"  {i + 1:2d}. {names[int(t)]}"
        + ("   <- played next" if actual and int(t) == actual[0] else "")
        for i, t in enumerate(top[0][: ec.n])
    ]
    if actual:
        lines += ["Actually played next:"] + [f"      {names[t]}" for t in actual[:5]]
    return "\n".join(lines)


def parse_args(argv=None) -> tuple[Layout, EvalConfig]:
    ap = argparse.ArgumentParser(description="Full-ranking evaluation and recommendations.")
    cfgs.add_data_dir(ap)
    cfgs.add_flags(ap, EvalConfig, "evaluation")
    args = ap.parse_args(argv)
    return Layout.at(args.data_dir), cfgs.from_args(EvalConfig, args)


def main(argv=None) -> None:
    layout, ec = parse_args(argv)
    if ec.recommend:
        print(recommend(layout, ec))
        return
    if ec.slices:
        print(evaluate_slices(layout, ec, argv))
        return
    res = run_evaluation(layout, ec)
    reports = make(layout.reports())
    md = results_markdown(res)
    plot_results(res, reports)  # before the tables, so a failure leaves no half-new set
    prov = provenance(argv, ec)
    write_json(
        reports / "results.json",
        {**{k: v for k, v in res.items() if k != "_raw"}, "provenance": prov},
    )
    log_test_evaluation(reports, res, prov)
    write_text(reports / "results.md", md)
    report = write_report(reports)
    print(md)
    log(f"wrote {reports / 'results.md'} and {report}")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
