"""Full-ranking next-item evaluation: the ranking contract, metrics, intervals.

Protocol: for every session of a split and every position t >= 1, the tracks
before t (the most recent ``prefix_len``) predict the track at t
(``data.make_events``). Each method gives a score to every track of the
training vocabulary (ids 1..V; id 0 is padding and never ranked). No sampling.

The ranking contract (``rank_counts``, the one place it is written; the numpy
path for scorers and the on-device path for Keras models both call it): for each
event, the number of tracks scoring strictly higher than the target and the
number of other tracks scoring exactly as high (ties). One tie policy for every
method, ``TIE_POLICY``: the average rank ``1 + higher + ties / 2`` (the
target's expected rank under a random order of the tied tracks); the
optimistic (``1 + higher``) and pessimistic (``1 + higher + ties``) ranks are
kept beside it. No method gets a hidden tie-break;
- column 0 (padding) is never counted;
- a NaN score never ranks above anything, and a target whose own score is NaN
  ranks last (V): a diverged network cannot look good;
- with ``exclude_seen`` the prefix's tracks score -inf (``seen_indices``).

Metrics at N in (1, 5, 10, 20): HR@N = P(rank <= N); MRR@N = E[1/rank, 0 when
rank > N]; NDCG@N = E[1/log2(rank + 1), 0 when rank > N] (one relevant track).
Also catalogue coverage@20 (share of the vocabulary appearing in any top-20),
mean training popularity of recommended tracks, and the event count.
Confidence intervals: percentile bootstrap over sessions (events of one
session stay together), for each metric and for differences between methods.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lastfm.data import Events, recent

CUTOFFS = (1, 5, 10, 20)
TOPK = 20


TIE_POLICY = (
    "average: rank = 1 + #tracks scoring higher + #other tracks scoring equal / 2; "
    "a NaN score ranks last"
)

# numpy under the names of keras.ops, so that target_ranks runs on either.
NUMPY_OPS = SimpleNamespace(
    take_along_axis=np.take_along_axis,
    sum=np.sum,
    where=np.where,
    isnan=np.isnan,
    cast=lambda x, dtype: x.astype(dtype),
)


def rank_counts(scores, targets, ops=NUMPY_OPS):
    """(higher, ties), each (B,): the tracks among columns 1..V of ``scores`` (B, V+1)
    scoring strictly higher than each target, and the other tracks scoring equal.

    ``ops``: ``NUMPY_OPS`` for numpy arrays, ``keras.ops`` for backend tensors (the
    scores then never leave the device). A NaN score is never higher nor equal; a NaN
    target gets higher = V - 1, ties = 0: it ranks last. See the module's contract.
    """
    t = ops.take_along_axis(scores, np.asarray(targets, np.int32)[:, None], axis=1)  # (B, 1)
    pad = scores[:, :1]  # column 0 (padding) never counts
    higher = ops.sum(ops.cast(scores > t, "int32"), axis=1) - ops.cast(pad[:, 0] > t[:, 0], "int32")
    equal = ops.sum(ops.cast(scores == t, "int32"), axis=1) - ops.cast(
        pad[:, 0] == t[:, 0], "int32"
    )
    nan = ops.isnan(t[:, 0])
    return ops.where(nan, scores.shape[1] - 2, higher), ops.where(nan, 0, equal - 1)


def target_ranks(scores, targets, ops=NUMPY_OPS):
    """Average ranks (B,) float: ``1 + higher + ties / 2`` (see ``rank_counts``)."""
    higher, ties = rank_counts(scores, targets, ops)
    return 1.0 + ops.cast(higher, "float64") + ops.cast(ties, "float64") / 2.0


def seen_indices(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of every track in the prefixes ``x`` (B, L) (padding included)."""
    return np.repeat(np.arange(len(x)), x.shape[1]), x.ravel()


def topk_from_scores(scores: np.ndarray, k: int = TOPK, block: int = 128) -> np.ndarray:
    """Top-k item ids (1-based) per row, best first; column 0 (padding) excluded.

    Two stages, much faster than ``np.argpartition`` over 100K columns (measured
    in bench/bench_eval.py): the k
    blocks (of ``block`` columns) with the largest maxima hold every top-k
    entry (a top-k entry's block maximum is at least that entry, and k other
    blocks with larger maxima would give it k larger entries); the exact top k
    is then taken among those k * block candidates.
    """
    s = scores[:, 1:]
    b, v = s.shape
    k = min(k, v)
    if v <= 4 * k * block:
        cand = np.broadcast_to(np.arange(v), (b, v))
        vals = s
    else:
        maxima = np.maximum.reduceat(s, np.arange(0, v, block), axis=1)  # (B, nb)
        best = np.argpartition(-maxima, k - 1, axis=1)[:, :k]  # (B, k)
        cand = (best[:, :, None] * block + np.arange(block)).reshape(b, -1)  # (B, k*block)
        outside = cand >= v  # last block's tail
        cand = np.minimum(cand, v - 1)
        vals = np.take_along_axis(s, cand, axis=1)
        vals[outside] = -np.inf
    part = np.argpartition(-vals, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(vals, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(np.take_along_axis(cand, part, axis=1), order, axis=1) + 1


def csr_rows(m) -> np.ndarray:
    """The row of each stored entry of a CSR matrix."""
    return np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))


def rank_counts_sparse(scores, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rank_counts`` of a CSR matrix (B, V+1) whose absent entries score 0, in time
    proportional to its stored entries: the absent columns are counted, not compared.
    Column 0 (padding) never counts."""
    m = scores.tocsr()
    m.sum_duplicates()
    b, width = m.shape
    targets = np.asarray(targets)
    real = m.indices > 0
    rows, vals = csr_rows(m)[real], m.data[real]
    t_val = np.asarray(m[np.arange(b), targets]).ravel().astype(m.dtype)
    tv = t_val[rows]
    gt = np.bincount(rows, weights=vals > tv, minlength=b).astype(np.int64)
    eq = np.bincount(rows, weights=vals == tv, minlength=b).astype(np.int64)
    absent = (width - 1) - np.bincount(rows, minlength=b)
    higher = gt + np.where(t_val < 0, absent, 0)
    ties = eq + np.where(t_val == 0, absent, 0) - 1
    nan = np.isnan(t_val)
    return np.where(nan, width - 2, higher), np.where(nan, 0, ties)


@dataclass
class SharedPlusSparse:
    """Scores of a batch as one vector every row shares plus sparse per-row additions
    (POP: popularity alone; S-POP: the session's counts on top of it)."""

    shared: np.ndarray  # (V+1,)
    extra: sp.csr_matrix  # (B, V+1), absent = 0

    def toarray(self) -> np.ndarray:
        return self.extra.toarray() + self.shared[None, :]


def rank_counts_shared(scores: SharedPlusSparse, targets: np.ndarray):
    """``rank_counts`` of shared + sparse scores: the shared vector's order is sorted once,
    each row's stored entries correct it. Column 0 (padding) never counts."""
    u = scores.shared
    m = scores.extra.tocsr()
    m.sum_duplicates()
    b, width = m.shape
    targets = np.asarray(targets)
    su = np.sort(u[1:])
    s_t = u[targets] + np.asarray(m[np.arange(b), targets]).ravel().astype(u.dtype)
    right = np.searchsorted(su, s_t, side="right")
    higher = (width - 1) - right
    ties = right - np.searchsorted(su, s_t, side="left") - 1
    real = m.indices > 0
    rows, cols, e = csr_rows(m)[real], m.indices[real], m.data[real].astype(u.dtype)
    old, new, st = u[cols], u[cols] + e, s_t[rows]
    higher = higher + np.bincount(rows, weights=(new > st).astype(int) - (old > st), minlength=b)
    ties = ties + np.bincount(rows, weights=(new == st).astype(int) - (old == st), minlength=b)
    return higher.astype(np.int64), ties.astype(np.int64)


def topk_shared(scores: SharedPlusSparse, k: int = TOPK) -> np.ndarray:
    """Top-k ids of shared + sparse scores (ties: lower id): among each row's stored
    entries and the shared vector's best ``k`` + (most stored entries in a row)."""
    m = scores.extra.tocsr()
    m.sum_duplicates()
    b, width = m.shape
    k = min(k, width - 1)
    u = scores.shared
    per_row = np.diff(m.indptr)
    n_stored = max(int(per_row.max(initial=0)), 1)
    best = np.lexsort((np.arange(1, width), -u[1:]))[: min(width - 1, k + n_stored)] + 1
    # Each row's stored entries (B, n_stored), with their summed scores; -inf pads.
    stored = np.zeros((b, n_stored), np.int64)
    stored_vals = np.full((b, n_stored), -np.inf)
    rows, slot = csr_rows(m), np.arange(m.nnz) - np.repeat(m.indptr[:-1], per_row)
    stored[rows, slot] = m.indices
    stored_vals[rows, slot] = np.where(
        m.indices > 0, u[m.indices] + m.data.astype(u.dtype), -np.inf
    )
    # The shared best, except where a row's stored entry already holds the id.
    in_row = (best[None, :, None] == stored[:, None, :]).any(axis=2)
    best_vals = np.where(in_row, -np.inf, u[best])
    cand = np.concatenate([np.broadcast_to(best, (b, len(best))), stored], axis=1)
    vals = np.concatenate([best_vals, stored_vals], axis=1)
    pick = np.lexsort((cand, -vals), axis=1)[:, :k]
    return np.take_along_axis(cand, pick, axis=1)


def topk_sparse(scores, k: int = TOPK) -> np.ndarray:
    """Top-k ids (B, k) of a CSR matrix of non-negative scores (absent = 0), best first:
    the positive entries by score (ties: lower id), then the lowest ids scoring 0 (the
    most popular tracks: ids follow training popularity)."""
    m = scores.tocsr()
    m.sum_duplicates()
    b, width = m.shape
    k = min(k, width - 1)
    rows = csr_rows(m)
    pos = (m.data > 0) & (m.indices > 0)
    r, c, v = rows[pos], m.indices[pos].astype(np.int64), m.data[pos]
    order = np.lexsort((c, -v, r))
    r, c = r[order], c[order]
    first = np.searchsorted(r, np.arange(b))
    rank = np.arange(len(r)) - first[r]
    out = np.zeros((b, k), np.int64)
    keep = rank < k
    out[r[keep], rank[keep]] = c[keep]
    n_pos = np.minimum(np.bincount(r, minlength=b), k)
    if (n_pos < k).any():
        cand = np.arange(1, min(2 * k, width - 1) + 1)  # (C,) enough unless all are positive
        keys = np.sort(r * width + c)
        taken = np.isin((np.arange(b)[:, None] * width + cand[None, :]).ravel(), keys).reshape(
            b, -1
        )
        free_rank = np.cumsum(~taken, axis=1) - 1  # (B, C) rank among free candidates
        slot = n_pos[:, None] + free_rank
        put = ~taken & (slot < k)
        out[np.nonzero(put)[0], slot[put]] = np.broadcast_to(cand, taken.shape)[put]
    return out


# A scorer takes (prefixes (B, L), lengths (B,)) and returns scores (B, V+1).
Scorer = Callable[..., np.ndarray]
# A ranker returns (higher (B,), ties (B,), top-k ids (B, k)) given prefixes, lengths,
# targets and (optionally) the time of each prefix's last play.
Ranker = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


def ranker_from_scorer(
    scorer: Scorer, exclude_seen: bool = False, with_topk: bool = True
) -> Ranker:
    """The numpy ranker of a scorer (B, V+1 scores per batch of prefixes). A scorer with
    ``needs_times`` (or the method of an object with it) also gets the prefixes' last
    times. Sparse non-negative scores (a CSR matrix, absent = 0) and shared + sparse
    scores (``SharedPlusSparse``) are ranked without densifying them: the same ranks.
    ``with_topk=False``: ranks only (the top-k lists come back empty)."""
    needs_times = getattr(scorer, "needs_times", False) or getattr(
        getattr(scorer, "__self__", None), "needs_times", False
    )

    def rank(prefixes, lengths, targets, times=None):
        s = scorer(prefixes, lengths, times) if needs_times else scorer(prefixes, lengths)
        if isinstance(s, SharedPlusSparse) and not exclude_seen:
            if np.isfinite(s.shared).all() and np.isfinite(s.extra.data).all():
                top = topk_shared(s) if with_topk else no_topk(len(targets))
                return (*rank_counts_shared(s, targets), top)
        if sp.issparse(s) and not exclude_seen and s.dtype in (np.float32, np.float64):
            data = s.tocsr().data
            if not (data < 0).any() and not np.isnan(data).any():
                top = topk_sparse(s) if with_topk else no_topk(len(targets))
                return (*rank_counts_sparse(s, targets), top)
        s = s.toarray() if isinstance(s, SharedPlusSparse) or sp.issparse(s) else np.asarray(s)
        # A copy (column 0 and seen tracks are overwritten) in the scorer's own float
        # precision (float32 stays: upcasting adds no information and slows the evaluator).
        scores = s.astype(s.dtype if s.dtype in (np.float32, np.float64) else np.float64)
        scores[:, 0] = -np.inf
        if exclude_seen:
            scores[seen_indices(prefixes)] = -np.inf
        top = topk_from_scores(scores) if with_topk else no_topk(len(targets))
        return (*rank_counts(scores, targets), top)

    return rank


def no_topk(n: int) -> np.ndarray:
    """Placeholder lists (all 0) where only ranks are wanted (tuning)."""
    return np.zeros((n, TOPK), np.int64)


def device_ranker(model, exclude_seen: bool = False, boost=None) -> Ranker:
    """The on-device ranker of a Keras model with ``predict_on_batch`` (prefixes of
    ``model.input_len`` tracks -> representation) and ``logits`` (-> (B, V+1)).

    ``boost``: optional ``x -> (indices (N, 2), values (N,))`` added to the
    scores (a hybrid's extra terms). Scores, ranks and top-k stay on the
    backend's device; only (B,) ranks and (B, 20) ids come back to the host.
    """
    from keras import ops

    def rank(prefixes, lengths, targets, times=None):
        x = recent(prefixes, lengths, model.input_len)
        logits = device_logits(model, x)  # (B, V+1)
        shape = (len(x), model.n_items + 1)
        if boost is not None:
            logits = logits + ops.scatter(*boost(x), shape)
        if exclude_seen:  # (B, V+1) mask of the prefix's tracks, by scatter (no one-hot)
            idx = np.stack(seen_indices(x), axis=1).astype(np.int32)
            seen = ops.scatter(idx, np.ones(len(idx), np.float32), shape)
            logits = ops.where(seen > 0, -np.inf, logits)
        higher, ties = rank_counts(logits, targets, ops)
        top = ops.top_k(logits, min(TOPK, model.n_items))[1]
        return (ops.convert_to_numpy(higher), ops.convert_to_numpy(ties), ops.convert_to_numpy(top))

    return rank


def device_logits(model, x: np.ndarray):
    """Scores (B, V+1) of the prefixes ``x`` on the backend's device."""
    from keras import ops

    # predict_on_batch runs the backend's compiled inference step (jit on JAX,
    # tf.function on TensorFlow) instead of op-by-op eager calls.
    return model.logits(ops.convert_to_tensor(model.predict_on_batch(x)))


@dataclass
class EvalResult:
    higher: np.ndarray  # (E,) tracks scoring higher than the target
    ties: np.ndarray  # (E,) other tracks scoring equal
    sessions: np.ndarray  # (E,) session ids
    positions: np.ndarray  # (E,) target positions
    topk: np.ndarray  # (E, 20) recommended ids
    seconds: float
    summary: dict = field(default_factory=dict)

    @property
    def ranks(self) -> np.ndarray:
        """Ranks under the tie policy (average)."""
        return 1.0 + self.higher + self.ties / 2.0

    def ranks_under(self, policy: str) -> np.ndarray:
        extra = {"optimistic": 0.0, "average": 0.5, "pessimistic": 1.0}[policy]
        return 1.0 + self.higher + extra * self.ties


def evaluate(
    ranker: Ranker,
    events: Events,
    n_items: int,
    popularity: np.ndarray | None = None,
    batch_size: int = 512,
) -> EvalResult:
    """Run ``ranker`` over ``events`` in batches; summarise the metrics."""
    higher, ties, topk = [], [], []
    t0 = time.perf_counter()
    for i in range(0, len(events), batch_size):
        sl = slice(i, i + batch_size)
        times = events.times[sl] if events.times is not None else None
        h, t, k = ranker(events.prefixes[sl], events.lengths[sl], events.targets[sl], times)
        higher.append(np.asarray(h, dtype=np.int64))
        ties.append(np.asarray(t, dtype=np.int64))
        topk.append(np.asarray(k, dtype=np.int64))
    seconds = time.perf_counter() - t0
    empty = np.zeros(0, np.int64)
    res = EvalResult(
        np.concatenate(higher) if higher else empty,
        np.concatenate(ties) if ties else empty,
        events.sessions,
        events.positions,
        np.concatenate(topk) if topk else np.zeros((0, TOPK), np.int64),
        seconds,
    )
    res.summary = summarise(res, n_items, popularity)
    return res


def metric_values(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """Per-event metric values (the mean of each is the metric)."""
    r = ranks.astype(np.float64)
    out = {}
    for n in CUTOFFS:
        hit = r <= n
        out[f"HR@{n}"] = hit.astype(np.float64)
        out[f"MRR@{n}"] = np.where(hit, 1.0 / r, 0.0)
        out[f"NDCG@{n}"] = np.where(hit, 1.0 / np.log2(r + 1.0), 0.0)
    return out


def summarise(res: EvalResult, n_items: int, popularity: np.ndarray | None) -> dict:
    vals = metric_values(res.ranks)
    out = {k: float(v.mean()) if len(v) else float("nan") for k, v in vals.items()}
    out["coverage@20"] = float(len(np.unique(res.topk[:, :20])) / n_items) if len(res.topk) else 0.0
    if popularity is not None and len(res.topk):
        out["mean_pop@20"] = float(popularity[res.topk[:, :20]].mean())
    for policy in ("optimistic", "pessimistic"):  # the other tie policies, for reference
        v = metric_values(res.ranks_under(policy))
        out[policy] = {
            m: float(v[m].mean()) if len(v[m]) else float("nan")
            for m in ("HR@1", "HR@20", "MRR@20", "NDCG@20")
        }
    out["tied_events"] = float((res.ties > 0).mean()) if len(res.ties) else 0.0
    out["events"] = int(len(res.ranks))
    out["sessions"] = int(len(np.unique(res.sessions)))
    out["events_per_s"] = float(len(res.ranks) / res.seconds) if res.seconds > 0 else float("nan")
    return out


def bootstrap_ci(
    ranks: np.ndarray,
    sessions: np.ndarray,
    metrics=("HR@20", "MRR@20"),
    n_boot: int = 1000,
    seed: int = 0,
    other_ranks: np.ndarray | None = None,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """Percentile CI of each metric (or of ``metric(ranks) - metric(other_ranks)``).

    Sessions are resampled with replacement; a metric on a resample is the
    ratio of summed event values to summed event counts over the drawn sessions.
    """
    rng = np.random.default_rng(seed)
    vals = metric_values(ranks)
    other = metric_values(other_ranks) if other_ranks is not None else None
    _, inv = np.unique(sessions, return_inverse=True)
    counts = np.bincount(inv).astype(np.float64)  # events per session
    sums = {
        m: np.bincount(inv, weights=vals[m] - (other[m] if other is not None else 0.0))
        for m in metrics
    }
    n_sess = len(counts)
    draws = {m: np.empty(n_boot) for m in metrics}
    chunk = max(1, 20_000_000 // max(1, n_sess))
    for b0 in range(0, n_boot, chunk):
        b = min(chunk, n_boot - b0)
        idx = rng.integers(0, n_sess, size=(b, n_sess))
        w = counts[idx].sum(axis=1)
        for m in metrics:
            draws[m][b0 : b0 + b] = sums[m][idx].sum(axis=1) / w
    q = (100 * alpha / 2, 100 * (1 - alpha / 2))
    return {m: tuple(float(x) for x in np.percentile(draws[m], q)) for m in metrics}


def by_prefix_length(res: EvalResult, cap: int = 20) -> pd.DataFrame:
    """HR@20 and MRR@20 by prefix length (positions above ``cap`` pooled)."""
    vals = metric_values(res.ranks)
    df = pd.DataFrame(
        {
            "prefix_len": np.minimum(res.positions, cap),
            "HR@20": vals["HR@20"],
            "MRR@20": vals["MRR@20"],
        }
    )
    return (
        df.groupby("prefix_len")
        .agg(events=("HR@20", "size"), **{"HR@20": ("HR@20", "mean"), "MRR@20": ("MRR@20", "mean")})
        .reset_index()
    )


def segments(events: Events, popularity: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks (E,) of event segments, where the methods (and tags) may differ:
    the target already in the prefix (repeat) or new to it; the target's training
    popularity: head / torso / tail (the tracks holding the top, middle and last third
    of training plays) and rare (fewer than 5 training plays)."""
    target_pop = popularity[events.targets]
    order = np.argsort(-popularity[1:], kind="stable") + 1
    share = np.cumsum(popularity[order]) / max(popularity.sum(), 1)
    band = np.empty(len(popularity), np.int8)
    band[order] = np.where(share <= 1 / 3, 0, np.where(share <= 2 / 3, 1, 2))
    band[0] = 2
    t_band = band[events.targets]
    repeat = (events.prefixes == events.targets[:, None]).any(axis=1)
    return {
        "repeat": repeat,
        "new": ~repeat,
        "head": t_band == 0,
        "torso": t_band == 1,
        "tail": t_band == 2,
        "rare (<5 plays)": target_pop < 5,
    }


def segment_table(
    res: EvalResult, masks: dict[str, np.ndarray], n_boot: int = 200, seed: int = 0
) -> dict[str, dict]:
    """HR@20 and MRR@20 with 95% intervals within each segment."""
    out = {}
    for name, m in masks.items():
        if not m.any():
            out[name] = {"events": 0}
            continue
        vals = metric_values(res.ranks[m])
        ci = bootstrap_ci(
            res.ranks[m], res.sessions[m], ("HR@20", "MRR@20"), n_boot=n_boot, seed=seed
        )
        out[name] = {
            "events": int(m.sum()),
            "share": float(m.mean()),
            **{k: float(vals[k].mean()) for k in ("HR@20", "MRR@20")},
            "ci": {k: list(v) for k, v in ci.items()},
        }
    return out
