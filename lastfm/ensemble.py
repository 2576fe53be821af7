"""The baseline comparators of the network + transitions hybrid (``lastfm.hybrid``).

- **The baseline ensemble** (``baseline_ensemble``), of the hybrid's own form: a
  baseline's scores, each row scaled to a maximum of 1, plus the hybrid's transition
  terms (``weight * log(1 + count) + pop_weight * log(1 + plays)`` over the last track's
  K most frequent training successors). Every tuned baseline (POP, S-POP, SR, AR,
  Item-kNN, V-SKNN, VSTAN) is a candidate base: each gets its two weights on the
  validation events over the hybrid's grid (``hybrid.fit_scores``), and the base and
  weights with the best validation MRR@20 (then HR@20, then the baselines' order) make
  the ensemble. The base is chosen by the ensemble's validation score, not the base's
  own; every candidate's figures are recorded.
- **The baseline blend** (``BaselineBlend``, row ``BLEND``): LambdaMART (LightGBM's
  lambdarank) over the union of every baseline's top candidates, fitted on one half of
  the validation events (by session) and early-stopped on the other half.
- ``hybrid_gains``: the share of each hybrid's gain over the best single baseline that
  survives against these comparators.

Neither comparator sees a test target: both are fitted on training sessions (through the
tuned baselines and the transition counts) and validation events only.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lastfm import hybrid
from lastfm.baselines import SequentialRules
from lastfm.common import log
from lastfm.data import Events, last_known_items, recent
from lastfm.metrics import TOPK, Ranker, SharedPlusSparse, csr_rows, ranker_from_scorer, score_rows

# The ensemble's row name: its base's name, then this.
ENSEMBLE = "+transitions (baseline ensemble)"
# The blend's row name.
BLEND = "baseline blend (LambdaMART)"
# Rows of the hybrids (``+transitions`` in their name, the ensemble excepted).
HYBRID_MARK = "+transitions"

# LightGBM's lambdarank, fixed (not tuned): the number of trees is early-stopped on the
# validation half the blend is not fitted on. One thread, deterministic: the same data
# gives the same model on any machine (and on 2 busy cores one thread was 4x faster than
# two: 50 trees on 384K candidate rows in 3.3 s against 13.1 s).
BLEND_PARAMS = {
    "objective": "lambdarank",
    "metric": "None",  # the selection metric is MRR@20 (``_mrr_at_20``)
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "lambdarank_truncation_level": 30,
    "force_row_wise": True,
    "deterministic": True,
    "num_threads": 1,
    "verbose": -1,
}
BLEND_ROUNDS = 400  # at most; early stopping after BLEND_PATIENCE rounds without a gain
BLEND_PATIENCE = 30


@dataclass
class Comparator:
    """A comparator fitted on validation: its row name, ranker, record (``params`` of
    its row in ``results.json``: no timing there, so that a rerun gives the same row),
    seconds its fit took, and evaluation batch size."""

    name: str
    ranker: Ranker
    record: dict
    seconds: float
    batch_size: int = 512


# ---------------------------------------------------------------------------------------
# The baseline ensemble


def scaled_scores(model, prefixes, lengths, times):
    """A baseline's scores with column 0 at 0 and each row scaled to a maximum of 1:
    a float32 CSR matrix for sparse scores, a dense array for shared + sparse ones
    (POP, S-POP: every track scored)."""
    s = model.scorer(prefixes, lengths, times)
    if isinstance(s, SharedPlusSparse):
        d = s.toarray().astype(np.float32)
        d[:, 0] = 0.0
        top = d.max(axis=1)
        d /= np.where(top > 0, top, np.float32(1.0))[:, None]
        return d
    s = s.tocsr().astype(np.float32)
    s.data[s.indices == 0] = 0.0
    s.eliminate_zeros()
    top = np.asarray(s.max(axis=1).todense(), np.float32).ravel()
    s.data /= np.where(top > 0, top, np.float32(1.0))[csr_rows(s)]
    return s


def _batch_size(model, valid: Events, times, n_items: int) -> int:
    """512 events for sparse scores, fewer for dense rows (POP, S-POP) of many tracks."""
    probe = model.scorer(valid.prefixes[:1], valid.lengths[:1], times[:1])
    return 512 if sp.issparse(probe) else max(16, min(512, 2**24 // (n_items + 1)))


def baseline_ensemble(
    chosen,
    train: pd.DataFrame,
    valid: Events,
    n_items: int,
    *,
    transitions: int,
    prefix_len: int,
    exclude_seen: bool,
) -> Comparator | None:
    """The hybrid's comparator of its own form (see the module docstring): every tuned
    baseline a candidate base, the base and both weights chosen by the ensemble's
    validation MRR@20. None when no baseline was run.

    ``chosen``: ``evaluate.tune_baselines``' (baseline, info) pairs; ``transitions``:
    successors per track. The record lists every candidate (``candidates``: the base,
    its own validation MRR@20, the ensemble's chosen weights and validation figures)."""
    if not chosen or len(valid) == 0:
        return None
    t0 = time.perf_counter()
    trans = hybrid.Transitions.from_train(train, n_items, transitions)
    times = valid.times if valid.times is not None else np.zeros(len(valid), np.int64)
    cands = []
    for model, info in chosen:

        def base(x, sl, m=model):
            return scaled_scores(m, valid.prefixes[sl], valid.lengths[sl], times[sl])

        fit = hybrid.fit_scores(
            base,
            hybrid.numpy_ops(),
            prefix_len,
            n_items,
            trans,
            valid,
            batch_size=_batch_size(model, valid, times, n_items),
        )
        point = next(
            r
            for r in fit["tried"]
            if (r["weight"], r["pop_weight"]) == (fit["weight"], fit["pop_weight"])
        )
        cands.append(
            {
                "base": repr(model),
                "base_valid_MRR@20": max(t["MRR@20"] for t in info["tried"]),
                "weight": fit["weight"],
                "pop_weight": fit["pop_weight"],
                "valid_MRR@20": point["valid_MRR@20"],
                "valid_HR@20": point["valid_HR@20"],
                "grid_size": len(fit["tried"]),
            }
        )
    win = max(
        range(len(cands)), key=lambda i: (cands[i]["valid_MRR@20"], cands[i]["valid_HR@20"], -i)
    )
    own = max(range(len(cands)), key=lambda i: (cands[i]["base_valid_MRR@20"], -i))
    best, c = chosen[win][0], cands[win]
    trans.weight, trans.pop_weight = c["weight"], c["pop_weight"]
    record = {
        "base": c["base"],
        "chosen_by": "the ensemble's validation MRR@20 over every baseline as its base",
        "base_by_own_validation": cands[own]["base"],
        "weight": c["weight"],
        "pop_weight": c["pop_weight"],
        "valid_MRR@20": c["valid_MRR@20"],
        "valid_HR@20": c["valid_HR@20"],
        "grid_size": c["grid_size"],
        "candidates": cands,
    }
    seconds = round(time.perf_counter() - t0, 1)
    log(
        f"baseline ensemble: base {best.name} (validation MRR@20 {c['valid_MRR@20']:.4f}; "
        + ", ".join(f"{x['base'].split('(')[0]} {x['valid_MRR@20']:.4f}" for x in cands)
        + f"), fitted in {seconds} s"
    )

    def scorer(prefixes, lengths, times=None):
        s = scaled_scores(best, prefixes, lengths, times)
        idx, add = trans.boost(recent(prefixes, lengths, prefix_len))
        if sp.issparse(s):
            return s + sp.csr_matrix((add, (idx[:, 0], idx[:, 1])), shape=s.shape)
        np.add.at(s, (idx[:, 0], idx[:, 1]), add)
        return s

    scorer.needs_times = True
    return Comparator(
        best.name + ENSEMBLE,
        ranker_from_scorer(scorer, exclude_seen),
        record,
        seconds,
        _batch_size(best, valid, times, n_items),
    )


# ---------------------------------------------------------------------------------------
# The baseline blend (LambdaMART)


def _values(s, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The scores ``s`` (CSR or shared + sparse) at the pairs (rows, cols), float64."""
    if isinstance(s, SharedPlusSparse):
        extra = np.asarray(s.extra.tocsr()[rows, cols], np.float64).ravel() if len(rows) else 0.0
        return s.shared[cols].astype(np.float64) + extra
    if not len(rows):
        return np.zeros(0)
    return np.asarray(s.tocsr()[rows, cols], np.float64).ravel()


def _top(s, n: int) -> np.ndarray:
    """Each row's ``n`` best-scored tracks (B, n), best first, as the ranking contract
    lists them (``metrics.score_rows(s).top``): sparse scores list only the tracks they
    score above 0 (0 in the slots after: a track a method does not score is no candidate)."""
    return np.asarray(score_rows(s).top(n)[0])


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray, missing) -> np.ndarray:
    """``values`` at the positions of ``query`` in the unique ``keys``, else ``missing``."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    pos = np.minimum(np.searchsorted(k, query), max(len(k) - 1, 0))
    found = (k[pos] == query) if len(k) else np.zeros(len(query), bool)
    out = np.full(len(query), missing, np.float64)
    out[found] = values[order][pos[found]]
    return out


class BaselineBlend:
    """The baseline blend (LambdaMART): a learning-to-rank model over the tuned baselines.

    What it sees, for each event: the prefix (and the time of its last play, for VSTAN)
    and nothing else of the event. Its candidates are the union of every tuned baseline's
    ``top_n`` best-scored tracks (sparse methods: only tracks they score above 0; POP's
    top ``top_n`` are always among them when POP was run). Each (event, candidate) pair has
    the features ``feature_names``: for every baseline its score, its score divided by the
    event's best score of that baseline, and the candidate's rank in that baseline's top
    ``top_n`` (``top_n + 1`` outside); the track's training plays (log1p); its plays in
    the prefix; how many plays back it was last played in the prefix (missing when not
    in it); the one-step training transition count from the prefix's last known track
    (log1p, unpruned); the prefix length. The baselines and the counts come from the
    training sessions only.

    Fitted (``fit``) with LightGBM's lambdarank on one half of the validation events (by
    session; events whose target is not a candidate give no gradient and are left out),
    the number of trees early-stopped on the other half's MRR@20 (the average-rank tie
    policy among the candidates; a target outside the candidates counts 0). The test
    split is never seen by the fit.

    Ranking (``scorer``): every track is ranked. The candidates get the model's score
    shifted per event to lie above 0 (the order kept); every other track scores 0, tied
    at the bottom, so that ``metrics.ranker_from_scorer`` ranks the CSR scores with the
    same kernel and tie policy as every sparse method (a target outside the candidates:
    the average rank over the tied tracks below them).
    """

    name = BLEND

    def __init__(
        self, models: list, train: pd.DataFrame, n_items: int, top_n: int = 50, seed: int = 0
    ):
        self.models, self.n_items, self.top_n, self.seed = list(models), n_items, top_n, seed
        rules = SequentialRules(steps=1, pruning=0).fit(train, n_items)
        self.counts, self.plays = rules.table.tocsr(), rules.pop
        self.feature_names = [
            f"{m.name} {part}" for m in self.models for part in ("score", "score/max", "rank")
        ] + ["log plays", "prefix plays", "plays back", "log transitions", "prefix length"]
        self.booster, self.trees, self.seconds = None, 0, 0.0

    def features(self, prefixes, lengths, times=None):
        """The candidates (rows, cols; sorted by row, then track) of a batch of prefixes
        and their features (N, F) float32 (see the class docstring)."""
        b, w = len(prefixes), self.n_items + 1
        scores = [m.scorer(prefixes, lengths, times) for m in self.models]
        tops = [_top(s, self.top_n) for s in scores]
        ids = np.concatenate(tops, axis=1) if tops else np.zeros((b, 0), np.int64)
        keys = np.unique((np.arange(b)[:, None] * w + ids)[ids > 0])
        rows, cols = keys // w, keys % w
        cols_f = []
        for s, top in zip(scores, tops):
            v = _values(s, rows, cols)
            best = _values(s, np.arange(b), top[:, 0])
            best = np.where((top[:, 0] > 0) & (best > 0), best, 1.0)
            held = top > 0
            rank_keys = (np.arange(b)[:, None] * w + top)[held]
            ranks = np.broadcast_to(np.arange(1, top.shape[1] + 1), top.shape)[held]
            cols_f += [v, v / best[rows], _lookup(rank_keys, ranks, keys, self.top_n + 1)]
        # The prefix: each track's plays in it and how many plays back it was last played.
        L = prefixes.shape[1]
        real = (np.arange(L)[None, :] < lengths[:, None]) & (prefixes > 0)
        r, p = np.nonzero(real)
        pk = r * w + prefixes[r, p].astype(np.int64)
        uniq, n_plays = np.unique(pk, return_counts=True)
        last_p = np.zeros(len(uniq), np.int64)
        np.maximum.at(last_p, np.searchsorted(uniq, pk), p)
        back = lengths[uniq // w] - last_p
        last = last_known_items(prefixes, lengths)
        trans = np.asarray(self.counts[last[rows], cols], np.float64).ravel() if len(rows) else []
        cols_f += [
            np.log1p(self.plays[cols]),
            _lookup(uniq, n_plays, keys, 0.0),
            _lookup(uniq, back, keys, np.nan),
            np.log1p(np.asarray(trans, np.float64)),
            lengths[rows].astype(np.float64),
        ]
        x = np.stack(cols_f, axis=1).astype(np.float32) if len(rows) else None
        return rows, cols, (x if x is not None else np.zeros((0, len(cols_f)), np.float32))

    def _dataset(self, events: Events, batch_size: int = 512):
        """Features, labels (the target) and query sizes of the events whose target is
        among their candidates; and how many events that is."""
        xs, ys, groups = [], [], []
        for start in range(0, len(events), batch_size):
            sl = slice(start, start + batch_size)
            times = events.times[sl] if events.times is not None else None
            rows, cols, x = self.features(events.prefixes[sl], events.lengths[sl], times)
            label = cols == events.targets[sl][rows]
            held = np.bincount(rows[label], minlength=len(events.targets[sl])) > 0
            keep = held[rows]
            xs.append(x[keep])
            ys.append(label[keep].astype(np.float32))
            groups.append(np.bincount(rows[keep], minlength=len(held))[held])
        n_width = len(self.feature_names)
        x = np.concatenate(xs) if xs else np.zeros((0, n_width), np.float32)
        y = np.concatenate(ys) if ys else np.zeros(0, np.float32)
        g = np.concatenate(groups) if groups else np.zeros(0, np.int64)
        return x, y, g

    def fit(self, valid: Events) -> dict | None:
        """Fit on one half of ``valid``'s sessions, early-stop on the other half; the
        record (None when either half holds no event with its target among the
        candidates)."""
        import lightgbm as lgb

        t0 = time.perf_counter()
        sessions = np.unique(valid.sessions)
        rng = np.random.default_rng(self.seed)
        fit_sessions = rng.permutation(sessions)[: len(sessions) // 2]
        in_fit = np.isin(valid.sessions, fit_sessions)
        halves = [valid.subset(np.flatnonzero(part)) for part in (in_fit, ~in_fit)]
        (xf, yf, gf), (xs, ys, gs) = (self._dataset(h) for h in halves)
        if not len(gf) or not len(gs):
            log("baseline blend: a validation half holds no target among the candidates; no blend")
            return None
        names = [n.replace(" ", "_").replace("/", "_per_") for n in self.feature_names]
        fit_set = lgb.Dataset(xf, yf, group=gf, feature_name=names, free_raw_data=True)
        select_set = lgb.Dataset(xs, ys, group=gs, reference=fit_set)
        params = {**BLEND_PARAMS, "seed": self.seed}
        booster = lgb.train(
            params,
            fit_set,
            num_boost_round=BLEND_ROUNDS,
            valid_sets=[select_set],
            valid_names=["select"],
            feval=_mrr_at_20(ys, gs, len(halves[1])),
            callbacks=[lgb.early_stopping(BLEND_PATIENCE, first_metric_only=True, verbose=False)],
        )
        self.booster, self.trees = (
            booster,
            int(booster.best_iteration or booster.current_iteration()),
        )
        select_mrr = _mrr_at_20(ys, gs, len(halves[1]))(self._predict(xs), None)[1]
        gain = booster.feature_importance("gain", iteration=self.trees)
        importance = sorted(
            zip(self.feature_names, gain / max(gain.sum(), 1e-12)), key=lambda t: -t[1]
        )
        record = {
            "model": "LightGBM lambdarank",
            "lightgbm": lgb.__version__,
            "baselines": [repr(m) for m in self.models],
            "candidates_per_baseline": self.top_n,
            "features": self.feature_names,
            "fit_events": len(halves[0]),
            "select_events": len(halves[1]),
            "fit_events_with_target_candidate": len(gf),
            "select_events_with_target_candidate": len(gs),
            "candidate_recall": round((len(gf) + len(gs)) / max(len(valid), 1), 4),
            "mean_candidates": round((len(yf) + len(ys)) / max(len(gf) + len(gs), 1), 1),
            "trees": self.trees,
            "params": {**params, "num_boost_round": BLEND_ROUNDS, "patience": BLEND_PATIENCE},
            "select_MRR@20": round(float(select_mrr), 4),
            "importance_gain": {n: round(float(v), 4) for n, v in importance if v > 0},
            "model_md5": hashlib.md5(
                booster.model_to_string(num_iteration=self.trees).encode()
            ).hexdigest(),
        }
        self.seconds = round(time.perf_counter() - t0, 1)
        log(
            f"{BLEND}: {self.trees} trees, MRR@20 {record['select_MRR@20']:.4f} on the "
            f"selection half ({len(halves[1]):,} events; candidates hold "
            f"{record['candidate_recall']:.1%} of targets), fitted in {self.seconds} s"
        )
        return record

    def _predict(self, x: np.ndarray) -> np.ndarray:
        if not len(x):
            return np.zeros(0)
        return self.booster.predict(x, num_iteration=self.trees)

    def scorer(self, prefixes, lengths, times=None):
        """Scores (B, V+1) float64 CSR: the candidates above 0 in the model's order, every
        other track 0 (see the class docstring)."""
        rows, cols, x = self.features(prefixes, lengths, times)
        pred = self._predict(x)
        low = np.full(len(prefixes), np.inf)
        np.minimum.at(low, rows, pred)
        data = pred - low[rows] + 1.0  # > 0; monotone in pred within a row
        return sp.csr_matrix((data, (rows, cols)), shape=(len(prefixes), self.n_items + 1))

    scorer.needs_times = True


def _mrr_at_20(labels: np.ndarray, groups: np.ndarray, n_events: int):
    """LightGBM's evaluation function: MRR@20 over ``n_events`` events from the scores of
    the queries (``groups``: their sizes; one target each, ``labels`` 1), the average
    rank among tied candidates; events without the target among the candidates count 0."""
    q = np.repeat(np.arange(len(groups)), groups)
    pos = labels > 0

    def feval(preds, _data):
        t = np.zeros(len(groups))
        t[q[pos]] = preds[pos]
        higher = np.bincount(q, weights=preds > t[q], minlength=len(groups))
        equal = np.bincount(q, weights=preds == t[q], minlength=len(groups)) - 1
        rank = 1.0 + higher + equal / 2.0
        return "MRR@20", float(np.where(rank <= TOPK, 1.0 / rank, 0.0).sum() / n_events), True

    return feval


def baseline_blend(
    chosen,
    train: pd.DataFrame,
    valid: Events,
    n_items: int,
    *,
    exclude_seen: bool,
    candidates: int = 50,
    seed: int = 0,
) -> Comparator | None:
    """The baseline blend (``BaselineBlend``) of every tuned baseline in ``chosen``
    (``evaluate.tune_baselines``' pairs), fitted on the validation events; None when no
    baseline was run or no blend could be fitted."""
    if not chosen or len(valid) == 0:
        return None
    blend = BaselineBlend([m for m, _ in chosen], train, n_items, candidates, seed)
    record = blend.fit(valid)
    if record is None:
        return None
    return Comparator(BLEND, ranker_from_scorer(blend.scorer, exclude_seen), record, blend.seconds)


# ---------------------------------------------------------------------------------------
# What survives of the hybrids' gains


def hybrid_gains(results: dict, references: dict | None) -> list[dict]:
    """For each network + transitions hybrid in ``results`` (method -> entry with
    ``HR@20`` and ``MRR@20``): its gain over the reference baseline of each metric
    (``references``: metric -> baseline, chosen on validation) and over each comparator
    (the baseline ensemble, the baseline blend), and the share of the reference gain that
    survives each comparator: (hybrid - comparator) / (hybrid - reference), None where
    the hybrid does not beat the reference."""
    if not references:
        return []
    comparators = [n for n in results if n.endswith(ENSEMBLE) or n == BLEND]
    hybrids = [  # session-aware hybrids (their own table) are not the comparators' to face
        n
        for n in results
        if HYBRID_MARK in n and not n.endswith(ENSEMBLE) and not results[n].get("session_aware")
    ]
    out = []
    for h in hybrids:
        entry: dict = {"hybrid": h}
        for m in ("HR@20", "MRR@20"):
            ref = references.get(m)
            if ref not in results:
                continue
            gain = results[h][m] - results[ref][m]
            entry[m] = {
                "hybrid": results[h][m],
                "reference": ref,
                "gain_vs_reference": gain,
                "comparators": {
                    c: {
                        "comparator": results[c][m],
                        "gain": results[h][m] - results[c][m],
                        "share_surviving": (results[h][m] - results[c][m]) / gain
                        if gain > 0
                        else None,
                    }
                    for c in comparators
                },
            }
        out.append(entry)
    return out
