"""Full-ranking next-item evaluation: the ranking contract, metrics, intervals.

Protocol: for every session of a split and every position t >= 1, the tracks
before t (the most recent ``prefix_len``) predict the track at t
(``data.make_events``). Each method gives a score to every track of the
training vocabulary (ids 1..V; id 0 is padding and never ranked). No sampling.

The ranking contract, written once (``count_ranks``, the ranking kernel): for each
event, the number of tracks scoring strictly higher than the target and the number of
other tracks scoring exactly as high (ties). One tie policy for every method,
``TIE_POLICY``: the average rank ``1 + higher + ties / 2`` (the target's expected rank
under a random order of the tied tracks); the optimistic (``1 + higher``) and
pessimistic (``1 + higher + ties``) ranks are kept beside it. No method gets a hidden
tie-break;
- column 0 (padding) is never counted;
- a NaN score never ranks above anything, and a target whose own score is NaN
  ranks last (V): a diverged network cannot look good;
- with ``exclude_seen`` the prefix's tracks score -inf (``seen_indices``,
  ``exclude_columns``), on every path.

The top-20 lists, written once (``topk``): best first, equal scores in the order of
their ids (the lower id, the more played track, first); a list holds only tracks the
method scored: never a NaN or -inf (excluded) score, and for sparse scores only the
tracks scored above the absent ones (score > 0: a track the method never scored is
never listed, so the list agrees with the ranks, where the unscored tracks tie far
below). A shorter list ends in id 0 (no track); coverage and popularity count listed
tracks only.

Every form of scores reaches both through a thin adapter (``score_rows``):
``DenseScores`` (numpy, or backend tensors on the device: ``device_ranker``),
``SparseScores`` (CSR, absent = 0) and ``SharedScores`` (``SharedPlusSparse``), neither
densified; the hybrid's weight grid (``hybrid.candidate_ranks``) calls the same two.

Metrics at N in (1, 5, 10, 20): HR@N = P(rank <= N); MRR@N = E[1/rank, 0 when
rank > N]; NDCG@N = E[1/log2(rank + 1), 0 when rank > N] (one relevant track).
Also catalogue coverage@20 (share of the vocabulary appearing in any top-20),
mean training popularity of recommended tracks, and the event count.
Confidence intervals: a percentile bootstrap over listeners, each drawn with all its
sessions (``bootstrap_draws``; one listener: over its sessions), for each metric and for
differences between methods (the same draws for both).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lastfm.common import PipelineError
from lastfm.data import Events, recent

CUTOFFS = (1, 5, 10, 20)
TOPK = 20


TIE_POLICY = (
    "average: rank = 1 + #tracks scoring higher + #other tracks scoring equal / 2; "
    "a NaN score ranks last"
)


# numpy under the names of keras.ops: the kernel and the top-k run on either.
def _np_scatter(idx, values, shape):
    out = np.zeros(shape, np.float32)
    np.add.at(out, (idx[:, 0], idx[:, 1]), values)
    return out


NUMPY_OPS = SimpleNamespace(
    take_along_axis=np.take_along_axis,
    sum=np.sum,
    where=np.where,
    isnan=np.isnan,
    cast=lambda x, dtype: x.astype(dtype),
    argsort=np.argsort,
    arange=np.arange,
    expand_dims=np.expand_dims,
    scatter=_np_scatter,
    concatenate=np.concatenate,
    full_like=np.full_like,
    convert_to_numpy=np.asarray,
)


def count_ranks(block, t, n_items: int, ops=NUMPY_OPS, weights=None, shared=None):
    """The ranking kernel: (higher (B,), ties (B,)) of the score ``t`` (B,) of each row's
    target among the scores of that row.

    ``block`` (B, C): scores, each column counted ``weights`` (B, C) times (default once;
    a weight stands for columns of equal score, a negative one takes a column back); a
    NaN score is never higher nor equal. ``shared`` (numpy only): a sorted 1-D array of
    scores every row also holds (NaN removed). The target must be counted exactly once
    among them: ties are the others. A NaN ``t`` gets higher = ``n_items`` - 1, ties = 0
    (it ranks last). Excluded columns are passed at -inf (``exclude_columns``); column 0
    (padding) is never passed. ``ops``: ``NUMPY_OPS`` or ``keras.ops``.
    """
    tt = ops.expand_dims(t, 1)
    if weights is None:
        higher, equal = _count(block > tt, 1, ops), _count(block == tt, 1, ops)
    else:
        higher = ops.sum(ops.where(block > tt, weights, 0), axis=1)
        equal = ops.sum(ops.where(block == tt, weights, 0), axis=1)
    if shared is not None:
        right = np.searchsorted(shared, t, side="right")
        higher = higher + (len(shared) - right)
        equal = equal + (right - np.searchsorted(shared, t, side="left"))
    nan = ops.isnan(t)
    return ops.where(nan, n_items - 1, higher), ops.where(nan, 0, equal - 1)


def topk(block, k: int, ops=NUMPY_OPS, ids=None, floor: float = -np.inf):
    """The top-k: (ids (B, k), scores (B, k)) of the best columns of ``block`` (B, C),
    best first; equal scores in the order of their ids, the lower id first (ids follow
    training popularity: the more played track). Only scores above ``floor`` are listed
    (never NaN, never -inf: an excluded column): a row with fewer ends in id 0 (no
    track; score -inf).

    ``ids`` (B, C): each column's track id, ascending along each row wherever a score is
    above ``floor`` (None: column j is track j + 1). Exact and deterministic on numpy and
    on every Keras backend (``ops``): the k-th best score is found first, the columns
    above it and the lowest-id columns equal to it are taken (``_take_k``; in keras.ops,
    which has no dynamic shapes, ``_take_k_ops``), then ordered.
    """
    v = ops.where(block > floor, block, -np.inf)  # NaN, -inf and the floor: never listed
    if block.shape[1] < k:  # fewer columns than places: the last places stay empty
        v = ops.concatenate([v] + [ops.full_like(v[:, :1], -np.inf)] * (k - v.shape[1]), axis=1)
        if ids is not None:
            ids = np.concatenate([ids, np.zeros((len(ids), k - ids.shape[1]), ids.dtype)], 1)
    pos = _take_k(v, k) if isinstance(v, np.ndarray) else _take_k_ops(v, k, ops)  # (B, k)
    vals = ops.take_along_axis(v, pos, axis=1)
    # best first, equal scores by position (= by id): each one's place, a permutation
    vi, vj = ops.expand_dims(vals, 2), ops.expand_dims(vals, 1)
    before = ops.expand_dims(pos, 1) < ops.expand_dims(pos, 2)  # [b, i, j]: j before i
    place = _count((vj > vi) | ((vj == vi) & before), 2, ops)
    order = ops.argsort(place, axis=1)
    pos, vals = ops.take_along_axis(pos, order, axis=1), ops.take_along_axis(vals, order, axis=1)
    out = pos + 1 if ids is None else ops.take_along_axis(ids, pos, axis=1)
    return ops.where(vals > -np.inf, out, 0), vals


def _take_k(v: np.ndarray, k: int) -> np.ndarray:
    """``topk``'s selection on numpy: the positions (B, k), ascending, of the columns
    above the k-th best score and of the first columns equal to it."""
    c = v.shape[1]
    kth = np.partition(v, c - k, axis=1)[:, c - k : c - k + 1]  # (B, 1) the k-th best
    gt, eq = v > kth, v == kth
    need = k - np.count_nonzero(gt, axis=1)  # (B,) taken among the equal ones
    tied = np.count_nonzero(eq, axis=1) > need  # rows where some equal ones stay out
    if tied.any():
        e = eq[tied]
        eq[tied] = e & (np.cumsum(e, axis=1) <= need[tied, None])
    return np.nonzero(gt | eq)[1].reshape(len(v), k)  # exactly k per row


def _take_k_ops(v, k: int, ops):
    """``_take_k`` in keras.ops (no dynamic shapes): the k largest, by ``top_k``; where a
    row's scores equal to the k-th best do not all fit (then ``top_k``'s choice among
    them is the backend's), the k largest of distinct keys instead: the columns above
    the k-th best score (fewer than k) before those equal to it, each by position."""
    c = v.shape[1]
    top_vals, top_pos = ops.top_k(v, k)
    kth = top_vals[:, k - 1 :]  # (B, 1) the k-th best

    def lowest_ids():
        pos = ops.arange(c, dtype="float32")
        key = ops.where(v > kth, 2 * c - pos, ops.where(v == kth, c - pos, 0.0))  # < 2**24
        return ops.cast(ops.top_k(key, k)[1], top_pos.dtype)

    straddle = ops.any(_count(v >= kth, 1, ops) > k)
    return ops.cond(straddle, lowest_ids, lambda: top_pos)


def _count(cond, axis: int, ops):
    """The True entries of ``cond`` along ``axis`` (the fastest way on each)."""
    if isinstance(cond, np.ndarray):
        return np.count_nonzero(cond, axis=axis)
    return ops.sum(ops.cast(cond, "int32"), axis=axis)


def exclude_columns(scores, exclude, ops=NUMPY_OPS):
    """``scores`` (B, V+1) with the entries ``exclude`` = (rows, columns) at -inf: the
    one exclusion rule (``seen_indices``: the prefix's tracks); numpy: a copy."""
    rows, cols = exclude
    if isinstance(scores, np.ndarray):
        out = np.array(scores, dtype=scores.dtype, copy=True)
        out[rows, cols] = -np.inf
        return out
    idx = np.stack([rows, cols], axis=1).astype(np.int32)
    seen = ops.scatter(idx, np.ones(len(idx), np.float32), tuple(scores.shape))
    return ops.where(seen > 0, -np.inf, scores)


def seen_indices(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns) of every track in the prefixes ``x`` (B, L) (padding included)."""
    return np.repeat(np.arange(len(x)), x.shape[1]), x.ravel()


def csr_rows(m) -> np.ndarray:
    """The row of each stored entry of a CSR matrix."""
    return np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))


# The three forms a batch's scores come in, each a thin adapter to ``count_ranks`` and
# ``topk``: ``counts(targets)``, ``counts_at(t)`` (any scores (B,) in place of the
# targets'), ``top(k)`` (ids, scores) and ``scores_at(cols)``.


class DenseScores:
    """Scores (B, V+1) as a numpy array or a backend tensor (``ops=keras.ops``: they stay
    on the device); column 0 (padding) dropped, the ``exclude`` entries at -inf."""

    def __init__(self, scores, exclude=None, ops=NUMPY_OPS):
        if isinstance(scores, np.ndarray) and scores.dtype not in (np.float32, np.float64):
            scores = scores.astype(np.float64)
        if exclude is not None:
            scores = exclude_columns(scores, exclude, ops)
        self.scores, self.ops = scores, ops
        self.block = scores[:, 1:]
        self.n_items = scores.shape[1] - 1

    def scores_at(self, cols):
        return self.ops.take_along_axis(self.scores, np.asarray(cols, np.int32), axis=1)

    def counts_at(self, t):
        return count_ranks(self.block, t, self.n_items, self.ops)

    def counts(self, targets):
        return self.counts_at(self.scores_at(np.asarray(targets)[:, None])[:, 0])

    def top(self, k: int = TOPK):
        if not isinstance(self.block, np.ndarray):
            return topk(self.block, k, self.ops)
        vals, ids = _dense_candidates(self.block, k)
        return topk(vals, k, ids=ids)


def _dense_candidates(s: np.ndarray, k: int, block: int | None = None):
    """(scores (B, C), ids (B, C) ascending) of a few columns of ``s`` (B, V) that hold
    every entry of its top k: several times faster than selecting over every column
    (bench/bench_eval.py). The k blocks (of ``block`` columns) listed first by ``topk`` of
    their maxima (ties: the lower block) hold the top k: an entry outside them has k
    chosen blocks, each with an entry above it or equal to it with a lower id. ``block``
    (default): about 1.5 sqrt(V / k), a power of 2 in 16..128, the fastest measured."""
    b, v = s.shape
    if block is None:
        block = int(np.clip(2 ** np.round(np.log2(1.5 * np.sqrt(v / k))), 16, 128))
    if v <= 4 * k * block:
        return s, None
    with np.errstate(invalid="ignore"):
        maxima = np.fmax.reduceat(s, np.arange(0, v, block), axis=1)  # NaN never a maximum
    best = np.sort(topk(maxima, k)[0], axis=1) - 1  # (B, k) ascending; -1: no block
    cand = (best[:, :, None] * block + np.arange(block)).reshape(b, -1)  # (B, k * block)
    outside = (np.repeat(best, block, axis=1) < 0) | (cand >= v)
    cand = np.where(outside, 0, cand)
    vals = np.take_along_axis(s, cand, axis=1)
    vals[outside] = -np.inf
    return vals, np.where(outside, 0, cand + 1)


def _entries(m, exclude=None):
    """The stored entries of a CSR matrix (B, V+1) as (keys row * (V+1) + column, sorted;
    values; excluded (bool)): column 0 dropped, each ``exclude`` (rows, columns) entry
    present (added where absent) and marked."""
    m = m.tocsr()
    m.sum_duplicates()
    width = m.shape[1]
    keys = csr_rows(m) * width + m.indices
    real = m.indices > 0
    keys, vals = keys[real], m.data[real]
    if m.data.dtype not in (np.float32, np.float64):
        vals = vals.astype(np.float64)
    excluded = np.zeros(len(keys), bool)
    if exclude is not None:
        rows, cols = (np.asarray(a, np.int64) for a in exclude)
        ex = np.unique((rows * width + cols)[cols > 0])
        excluded = np.isin(keys, ex)
        new = ex[~np.isin(ex, keys)]
        keys = np.concatenate([keys, new])
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        vals = np.concatenate([vals, np.zeros(len(new), vals.dtype)])[order]
        excluded = np.concatenate([excluded, np.ones(len(new), bool)])[order]
    return keys, vals, excluded


def _pad(rows: np.ndarray, b: int, *arrays, fill=()):
    """Ragged per-row entries (rows sorted) as (B, C) arrays, C = the most in a row."""
    n = np.bincount(rows, minlength=b)
    c = max(int(n.max(initial=0)), 1)
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(n) - n, n)
    out = []
    for a, f in zip(arrays, fill):
        p = np.full((b, c), f, a.dtype)
        p[rows, slot] = a
        out.append(p)
    return n, out


def _lookup(keys: np.ndarray, vals: np.ndarray, query: np.ndarray, default):
    """The value of each key in ``query`` among the sorted ``keys``, else ``default``."""
    if len(keys) == 0:
        return np.broadcast_to(default, query.shape).astype(vals.dtype)
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, vals[pos], default).astype(vals.dtype)


class SparseScores:
    """A CSR matrix (B, V+1) of scores whose absent entries score 0 (any sign, NaN
    allowed), never densified: each row's stored entries are compared one by one, its
    absent columns counted as one column of score 0 with their number as its weight.
    ``top`` lists the tracks the method scored above its absent ones (score > 0): a
    track it never scored is never listed, so a row's list can be shorter (ids 0 after)."""

    def __init__(self, scores, exclude=None):
        b, width = scores.shape
        self.keys, vals, excluded = _entries(scores, exclude)
        self.vals = np.where(excluded, -np.inf, vals).astype(vals.dtype)
        self.width, self.n_items = width, width - 1
        n, (self.block, self.ids) = _pad(
            self.keys // width, b, self.vals, self.keys % width, fill=(np.nan, 0)
        )
        # the absent columns as one more column: score 0, weighted by their number
        self.rank_block = np.concatenate([self.block, np.zeros((b, 1), self.vals.dtype)], 1)
        self.weights = np.concatenate(
            [np.ones(self.block.shape, np.int64), (self.n_items - n)[:, None]], axis=1
        )

    def scores_at(self, cols):
        cols = np.asarray(cols)
        query = np.arange(len(cols))[:, None] * self.width + cols
        return _lookup(self.keys, self.vals, query, 0)

    def counts_at(self, t):
        return count_ranks(self.rank_block, t, self.n_items, weights=self.weights)

    def counts(self, targets):
        return self.counts_at(self.scores_at(np.asarray(targets)[:, None])[:, 0])

    def top(self, k: int = TOPK):
        return topk(self.block, k, ids=self.ids, floor=0)


@dataclass
class SharedPlusSparse:
    """Scores of a batch as one vector every row shares plus sparse per-row additions
    (POP: popularity alone; S-POP: the session's counts on top of it)."""

    shared: np.ndarray  # (V+1,)
    extra: sp.csr_matrix  # (B, V+1), absent = 0

    def toarray(self) -> np.ndarray:
        return self.extra.toarray() + self.shared[None, :]


class SharedScores:
    """``SharedPlusSparse`` scores, never densified: the shared vector sorted once (NaN
    dropped: it never counts), each row's stored (or excluded) entries compared at their
    new score and taken back at their shared one (weight -1)."""

    def __init__(self, scores: SharedPlusSparse, exclude=None):
        u = scores.shared
        if u.dtype not in (np.float32, np.float64):
            u = u.astype(np.float64)
        b, width = scores.extra.shape
        keys, e, excluded = _entries(scores.extra, exclude)
        cols = keys % width
        new = np.where(excluded, -np.inf, u[cols] + e.astype(u.dtype)).astype(u.dtype)
        self.u, self.keys, self.new, self.width, self.n_items = u, keys, new, width, width - 1
        _, (self.block, old, self.ids) = _pad(
            keys // width, b, new, u[cols], cols, fill=(np.nan, np.nan, 0)
        )
        self.rank_block = np.concatenate([self.block, old], axis=1)
        ones = np.ones(self.block.shape, np.int64)
        self.weights = np.concatenate([ones, -ones], axis=1)
        su = np.sort(u[1:])
        self.shared_sorted = su[: len(su) - int(np.isnan(su).sum())]

    def scores_at(self, cols):
        cols = np.asarray(cols)
        query = np.arange(len(cols))[:, None] * self.width + cols
        return _lookup(self.keys, self.new, query, self.u[cols])

    def counts_at(self, t):
        return count_ranks(
            self.rank_block, t, self.n_items, weights=self.weights, shared=self.shared_sorted
        )

    def counts(self, targets):
        return self.counts_at(self.scores_at(np.asarray(targets)[:, None])[:, 0])

    def top(self, k: int = TOPK):
        """Among each row's entries and the shared vector's best k + (most entries in a
        row): at least k of those are not a row's entry."""
        b, c = self.block.shape
        best, best_vals = DenseScores(self.u[None, :]).top(k + c)  # (1, k + c)
        best = np.broadcast_to(best, (b, best.shape[1]))
        in_row = (best[:, :, None] == self.ids[:, None, :]).any(axis=2)
        ids = np.concatenate([best, self.ids], axis=1)
        vals = np.concatenate(
            [np.where(in_row | (best == 0), -np.inf, best_vals), self.block], axis=1
        )
        order = np.argsort(ids, axis=1, kind="stable")  # ids ascending, as topk wants
        return topk(
            np.take_along_axis(vals, order, axis=1), k, ids=np.take_along_axis(ids, order, axis=1)
        )


def score_rows(scores, exclude=None, ops=NUMPY_OPS):
    """The adapter of a batch's scores: ``SharedScores``, ``SparseScores`` (a scipy
    sparse matrix) or ``DenseScores`` (an array or a backend tensor)."""
    if isinstance(scores, SharedPlusSparse):
        return SharedScores(scores, exclude)
    if sp.issparse(scores):
        return SparseScores(scores, exclude)
    return DenseScores(scores if ops is not NUMPY_OPS else np.asarray(scores), exclude, ops)


def rank_counts(scores, targets, ops=NUMPY_OPS, exclude=None):
    """(higher, ties), each (B,): the tracks among columns 1..V of ``scores`` (B, V+1)
    scoring strictly higher than each target, and the other tracks scoring equal (the
    ``exclude`` entries at -inf). ``ops``: ``NUMPY_OPS`` for numpy arrays, ``keras.ops``
    for backend tensors. See ``count_ranks`` and the module's contract."""
    return score_rows(scores, exclude, ops).counts(targets)


def target_ranks(scores, targets, ops=NUMPY_OPS):
    """Average ranks (B,) float: ``1 + higher + ties / 2`` (see ``rank_counts``)."""
    higher, ties = rank_counts(scores, targets, ops)
    return 1.0 + ops.cast(higher, "float64") + ops.cast(ties, "float64") / 2.0


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
    times. Sparse scores (a CSR matrix, absent = 0) and shared + sparse scores
    (``SharedPlusSparse``) are ranked without densifying them, with or without
    ``exclude_seen``: the same ranks (``score_rows``). ``with_topk=False``: ranks only
    (the top-k lists come back empty)."""

    def flag(name: str) -> bool:
        return getattr(scorer, name, False) or getattr(
            getattr(scorer, "__self__", None), name, False
        )

    needs_times, needs_context = flag("needs_times"), flag("needs_context")

    def rank(prefixes, lengths, targets, times=None, users=None, sessions=None):
        if needs_context:
            s = scorer(prefixes, lengths, times, users, sessions)
        else:
            s = scorer(prefixes, lengths, times) if needs_times else scorer(prefixes, lengths)
        rows = score_rows(s, seen_indices(prefixes) if exclude_seen else None)
        higher, ties = rows.counts(targets)
        top = rows.top(TOPK)[0] if with_topk else no_topk(len(targets))
        return higher, ties, top

    rank.needs_context = needs_context
    return rank


def no_topk(n: int) -> np.ndarray:
    """Placeholder lists (all 0: no track) where only ranks are wanted (tuning)."""
    return np.zeros((n, TOPK), np.int64)


# Catalogues above this many tracks are ranked in chunks of CHUNK tracks (a batch of 512
# prefixes then holds 512 x CHUNK scores, 128 MB at float32, not 512 x V).
CHUNK_ABOVE = 262_144
CHUNK = 65_536


def device_ranker(
    model, exclude_seen: bool = False, boost=None, chunk: int | None = None
) -> Ranker:
    """The on-device ranker of a Keras model with ``predict_on_batch`` (prefixes of
    ``model.input_len`` tracks -> representation) and ``logits`` (-> (B, V+1), or the
    tracks ``start..stop-1`` with ``logits(rep, start, stop)``).

    ``boost``: optional ``x -> (indices (N, 2), values (N,))`` added to the
    scores (a hybrid's extra terms). ``exclude_seen``: the tracks of the whole prefix
    given (as the numpy path), not only of the network's ``input_len`` window. Scores,
    ranks and top-k stay on the backend's device; only (B,) counts and (B, 20) ids come
    back to the host. ``chunk``: score the catalogue ``chunk`` tracks at a time
    (``chunked_counts``: memory bounded by B x chunk, the same ranks and top-k); default:
    in chunks of ``CHUNK`` above ``CHUNK_ABOVE`` tracks, else all at once.
    """
    from keras import ops

    if chunk is None:
        chunk = CHUNK if model.n_items + 1 > CHUNK_ABOVE else 0

    def rank(prefixes, lengths, targets, times=None):
        x = recent(prefixes, lengths, model.input_len)
        exclude = seen_indices(prefixes) if exclude_seen else None
        rep = device_rep(model, x)
        extra = merge_terms(boost(x) if boost is not None else None, model_terms(model, rep, x))
        if chunk and chunk < model.n_items + 1:
            with no_gradients():
                higher, ties, top = chunked_counts(model, rep, targets, chunk, exclude, extra)
        else:
            logits = model.logits(rep)  # (B, V+1)
            if extra is not None:
                logits = logits + ops.scatter(*extra, (len(x), model.n_items + 1))
            rows = DenseScores(logits, exclude, ops)
            higher, ties = rows.counts(targets)
            top = rows.top(TOPK)[0]
        return (ops.convert_to_numpy(higher), ops.convert_to_numpy(ties), ops.convert_to_numpy(top))

    return rank


def no_gradients():
    """A context in which the backend records nothing for gradients (torch's autograd
    would otherwise keep each chunk's graph); nothing to do on the others."""
    import contextlib

    import keras

    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def chunked_counts(model, rep, targets, chunk: int, exclude=None, extra=None, k: int = TOPK):
    """(higher, ties, top-k ids) of each row's target over the whole catalogue, scored
    ``chunk`` tracks at a time (``model.logit_parts(rep, start, stop)``), never a (B, V+1)
    matrix: exact full ranking with memory bounded by B x chunk.

    First each target's score, made exactly as ``device_ranker``'s one matrix makes it
    (the same float operations on the same terms, taken at the target's column: the
    products, plus the offset, plus a hybrid's term, or -inf when excluded); then per
    chunk the scores above it and equal to it are counted and a running top-k is kept
    (earlier chunks hold lower ids, so on equal scores the lower id stays first, as in
    ``topk``). ``exclude`` (rows, columns) at -inf and ``extra`` (indices (N, 2), values
    (N,); a row's columns distinct) added, as in ``device_ranker``."""
    from keras import ops

    n_cols = model.n_items + 1
    b = int(rep.shape[0])
    targets = np.asarray(targets, np.int64)
    e_idx, e_val = (np.asarray(a) for a in extra) if extra is not None else (None, None)
    x_rows, x_cols = (np.asarray(a, np.int64) for a in exclude) if exclude is not None else (0, 0)

    t = ops.zeros((b,), "float32")  # the targets' scores
    for start in range(0, n_cols, chunk):
        stop = min(start + chunk, n_cols)
        inside = (targets >= start) & (targets < stop)
        if inside.any():
            products, offset = model.logit_parts(rep, start, stop)
            cols = np.clip(targets - start, 0, stop - start - 1).astype(np.int32)
            at = ops.take_along_axis(products, cols[:, None], axis=1)[:, 0]
            t = ops.where(inside, at + ops.take(offset, cols), t)
    if extra is not None:  # the hybrid's term at the target (0 where it has none)
        hit = e_idx[:, 1] == targets[e_idx[:, 0]]
        add = np.zeros(b, np.float32)
        np.add.at(add, e_idx[hit, 0], e_val[hit].astype(np.float32))
        t = t + ops.convert_to_tensor(add)
    if exclude is not None:
        seen = np.zeros(b, bool)
        seen[x_rows[x_cols == targets[x_rows]]] = True
        t = ops.where(seen, -np.inf, t)

    higher = equal = ops.zeros((b,), "int32")
    top_ids = top_vals = None
    tt = ops.expand_dims(t, 1)
    for start in range(0, n_cols, chunk):
        stop = min(start + chunk, n_cols)
        first = max(start, 1)  # column 0 (padding) is never counted
        if stop <= first:
            continue
        s = model.logits(rep, start, stop)  # (B, C)
        if extra is not None:
            sel = (e_idx[:, 1] >= start) & (e_idx[:, 1] < stop)
            if sel.any():
                shifted = e_idx[sel] - np.array([0, start], e_idx.dtype)
                s = s + ops.scatter(shifted, e_val[sel], (b, stop - start))
        if exclude is not None:
            sel = (x_cols >= start) & (x_cols < stop)
            if sel.any():
                s = exclude_columns(s, (x_rows[sel], x_cols[sel] - start), ops)
        if start == 0:
            s = s[:, 1:]
        higher = higher + _count(s > tt, 1, ops)
        equal = equal + _count(s == tt, 1, ops)
        ids, vals = _block_top(s, k, ops)
        ids = ops.where(ids > 0, ids + (first - 1), 0)
        if top_ids is None:
            top_ids, top_vals = ids, vals
        else:
            both = ops.concatenate([top_vals, vals], axis=1)
            top_ids, top_vals = topk(both, k, ops, ids=ops.concatenate([top_ids, ids], axis=1))
    nan = ops.isnan(t)
    return ops.where(nan, n_cols - 2, higher), ops.where(nan, 0, equal - 1), top_ids


def _block_top(s, k: int, ops, block: int = 128):
    """``topk(s, k, ops)`` of a wide (B, C) tensor, found among the columns of the k
    blocks of ``block`` columns with the best maxima (ties: the lower block), as
    ``_dense_candidates`` does on numpy: an entry outside them has k chosen blocks, each
    with an entry above it or equal to it with a lower id."""
    b, c = int(s.shape[0]), int(s.shape[1])
    if c <= 4 * k * block:
        return topk(s, k, ops)
    s = ops.where(s > -np.inf, s, -np.inf)  # NaN: never listed, never a block's maximum
    pad = (-c) % block
    if pad:
        s = ops.concatenate([s, ops.full((b, pad), -np.inf, dtype=s.dtype)], axis=1)
    maxima = ops.max(ops.reshape(s, (b, (c + pad) // block, block)), axis=2)
    chosen = ops.sort(topk(maxima, k, ops)[0] - 1, axis=1)  # (B, k) ascending; -1: none
    cand = ops.reshape(chosen[:, :, None] * block + ops.arange(block)[None, None, :], (b, -1))
    valid = ops.reshape(ops.repeat(chosen >= 0, block, axis=1), (b, -1)) & (cand < c)
    cand = ops.where(valid, cand, 0)
    vals = ops.where(valid, ops.take_along_axis(s, cand, axis=1), -np.inf)
    return topk(vals, k, ops, ids=ops.where(valid, cand + 1, 0))


def device_logits(model, x: np.ndarray):
    """Scores (B, V+1) of the prefixes ``x`` on the backend's device, the model's own
    terms at the prefix's tracks included (``model_terms``)."""
    from keras import ops

    rep = device_rep(model, x)
    logits = model.logits(rep)
    extra = model_terms(model, rep, x)
    if extra is not None:
        logits = logits + ops.scatter(*extra, (len(x), model.n_items + 1))
    return logits


def model_terms(model, rep, x: np.ndarray):
    """A network's own terms at its prefix's tracks (``NextItemModel.prefix_terms``: the
    ``--copy`` path) as a hybrid's are given: (indices (N, 2) int32, values (N,) float32),
    each (row, track) once; None when the network has none."""
    from keras import ops

    terms = model.prefix_terms(rep, x) if hasattr(model, "prefix_terms") else None
    if terms is None:
        return None
    ids, values = (ops.convert_to_numpy(a) for a in terms)
    rows = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)
    keep = ids > 0
    return np.stack([rows[keep], ids[keep]], 1).astype(np.int32), values[keep].astype(np.float32)


def merge_terms(*terms):
    """Several (indices (N, 2), values (N,)) terms as one, each (row, column) once (its
    values summed in float32), or None when none is given."""
    terms = [t for t in terms if t is not None]
    if len(terms) <= 1:
        return terms[0] if terms else None
    idx = np.concatenate([np.asarray(t[0], np.int64) for t in terms])
    val = np.concatenate([np.asarray(t[1], np.float32) for t in terms])
    key = idx[:, 0] * (int(idx[:, 1].max(initial=0)) + 1) + idx[:, 1]
    uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    summed = np.zeros(len(uniq), np.float32)
    np.add.at(summed, inverse, val)
    return idx[first].astype(np.int32), summed


def device_rep(model, x: np.ndarray):
    """The session vectors (B, E) of the prefixes ``x`` on the backend's device.
    ``predict_on_batch`` runs the backend's compiled inference step (jit on JAX,
    tf.function on TensorFlow) instead of op-by-op eager calls; under a data-parallel
    distribution the batch is padded to a multiple of its devices, the padding dropped."""
    from keras import ops

    from lastfm.devices import batch_multiple, pad_rows

    rep = ops.convert_to_tensor(model.predict_on_batch(pad_rows(x, batch_multiple())))
    return rep[: len(x)]


@dataclass
class EvalResult:
    higher: np.ndarray  # (E,) tracks scoring higher than the target
    ties: np.ndarray  # (E,) other tracks scoring equal
    sessions: np.ndarray  # (E,) session ids
    positions: np.ndarray  # (E,) target positions
    topk: np.ndarray  # (E, 20) recommended ids, best first (0: no track, a shorter list)
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
    events,
    n_items: int,
    popularity: np.ndarray | None = None,
    batch_size: int = 512,
) -> EvalResult:
    """Run ``ranker`` over ``events`` in batches; summarise the metrics. ``events``: an
    ``Events``, or chunks of them (``stream.EventStream``: a split read a part at a time,
    of which only the per-event results are kept)."""
    higher, ties, topk, sessions, positions = [], [], [], [], []
    t0 = time.perf_counter()
    for ev in [events] if isinstance(events, Events) else events:
        for i in range(0, len(ev), batch_size):
            sl = slice(i, i + batch_size)
            times = ev.times[sl] if ev.times is not None else None
            if getattr(ranker, "needs_context", False):  # session-aware: listener, session
                if ev.users is None:
                    raise PipelineError("a session-aware method needs each event's listener")
                context = (ev.users[sl], ev.sessions[sl])
                h, t, k = ranker(ev.prefixes[sl], ev.lengths[sl], ev.targets[sl], times, *context)
            else:
                h, t, k = ranker(ev.prefixes[sl], ev.lengths[sl], ev.targets[sl], times)
            higher.append(np.asarray(h, dtype=np.int64))
            ties.append(np.asarray(t, dtype=np.int64))
            topk.append(np.asarray(k, dtype=np.int64))
        sessions.append(ev.sessions)
        positions.append(ev.positions)
    seconds = time.perf_counter() - t0
    empty = np.zeros(0, np.int64)
    res = EvalResult(
        np.concatenate(higher) if higher else empty,
        np.concatenate(ties) if ties else empty,
        sessions[0] if len(sessions) == 1 else np.concatenate(sessions or [empty]),
        positions[0] if len(positions) == 1 else np.concatenate(positions or [empty]),
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
    listed = res.topk[:, :20][res.topk[:, :20] > 0]  # id 0: no track (a shorter list)
    out["coverage@20"] = float(len(np.unique(listed)) / n_items) if len(res.topk) else 0.0
    if popularity is not None and len(res.topk):
        out["mean_pop@20"] = float(popularity[listed].mean()) if len(listed) else float("nan")
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


def resample_units(sessions: np.ndarray, users: np.ndarray | None = None):
    """The units of ``bootstrap_draws``: (the session of each event (E,) as 0..S-1 with
    each listener's sessions together, each listener's first session (U,), its number of
    sessions (U,)). ``users`` None: every session is its own listener."""
    _, first, inv = np.unique(sessions, return_index=True, return_inverse=True)
    inv = inv.ravel()
    if users is None:
        sess_user = np.arange(len(first))
    else:
        users = np.asarray(users)
        if not np.array_equal(users, users[first][inv]):
            raise ValueError("a session holds events of more than one listener")
        sess_user = np.unique(users[first], return_inverse=True)[1].ravel()
    order = np.argsort(sess_user, kind="stable")  # sessions grouped by listener
    new_id = np.empty_like(order)
    new_id[order] = np.arange(len(order))
    per_user = np.bincount(sess_user)
    return new_id[inv], np.r_[0, np.cumsum(per_user)[:-1]], per_user


def bootstrap_draws(
    values: dict[str, np.ndarray],
    sessions: np.ndarray,
    users: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    max_picks: int = 2_000_000,
) -> dict[str, np.ndarray]:
    """``n_boot`` resampled means (n_boot,) of each per-event array of ``values``.

    Cluster bootstrap over listeners, the unit the data is drawn in: U listeners with
    replacement from the U listeners of ``users``, each drawn listener with all its
    sessions. A resample's mean is sum_s w_s * sum_s / sum_s w_s * count_s, with w_s = c_u
    the times session s's listener u was drawn, c ~ Multinomial(U, 1 / U). Sessions are
    not resampled again inside a drawn listener: that would count the within-listener
    variance twice (it is already in the spread of the listeners' means) and widen the
    intervals by up to ~40% when listeners differ little (Davison & Hinkley 1997, sec.
    3.8). One listener: its sessions are resampled instead (the only spread one listener
    can show, and labelled so by ``interval_unit``); ``users`` None: every session its own
    listener (the sessions bootstrap).

    The draws depend only on (``sessions``, ``users``, ``n_boot``, ``seed``), never on the
    values: two methods (and their difference) resampled with one seed get the same
    draws. Vectorised over chunks of draws, each about ``max_picks`` sessions drawn, so
    memory stays bounded whatever ``n_boot``.
    """
    ev_sess, start, per_user = resample_units(sessions, users)
    n_users, n_sess = len(per_user), int(per_user.sum())
    names = list(values)
    # (S, 1 + M): each session's event count, then its sum of each value
    table = np.stack(
        [np.bincount(ev_sess, minlength=n_sess).astype(np.float64)]
        + [np.bincount(ev_sess, weights=values[m], minlength=n_sess) for m in names],
        axis=1,
    )
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, len(names)))
    chunk = max(1, max_picks // max(n_users, n_sess, 1))
    for b0 in range(0, n_boot, chunk):
        b = min(chunk, n_boot - b0)
        drawn = rng.integers(0, n_users, size=(b, n_users)) + n_users * np.arange(b)[:, None]
        copies = np.bincount(drawn.ravel(), minlength=b * n_users)  # (b * U) per listener
        if n_users > 1:  # each session weighs as often as its listener was drawn
            w = np.repeat(copies.reshape(b, n_users), per_user, axis=1)
            tot = w @ table  # (b, 1 + M)
            out[b0 : b0 + b] = tot[:, 1:] / tot[:, :1]
            continue
        picks = copies * np.tile(per_user, b)  # one listener: its sessions, resampled
        # each session drawn: its listener's first session (offset by its draw's row) ...
        first = np.repeat(np.tile(start, b) + np.repeat(np.arange(b) * n_sess, n_users), picks)
        n_u = np.repeat(np.tile(per_user, b), picks)
        # ... plus one of the listener's n_u sessions, uniformly
        cell = first + np.minimum((rng.random(len(n_u)) * n_u).astype(np.int64), n_u - 1)
        w = np.bincount(cell, minlength=b * n_sess).reshape(b, n_sess)  # times drawn
        tot = w @ table  # (b, 1 + M)
        out[b0 : b0 + b] = tot[:, 1:] / tot[:, :1]
    return {m: out[:, i] for i, m in enumerate(names)}


def bootstrap_ci(
    ranks: np.ndarray,
    sessions: np.ndarray,
    metrics=("HR@20", "MRR@20"),
    n_boot: int = 1000,
    seed: int = 0,
    other_ranks: np.ndarray | None = None,
    alpha: float = 0.05,
    users: np.ndarray | None = None,
) -> dict[str, tuple[float, float]]:
    """Percentile CI of each metric (or of ``metric(ranks) - metric(other_ranks)``, paired:
    the same draws for both) over ``bootstrap_draws``' resamples: listeners (``users``),
    each with all its sessions; sessions alone where ``users`` is None."""
    vals = metric_values(ranks)
    other = metric_values(other_ranks) if other_ranks is not None else None
    draws = bootstrap_draws(
        {m: vals[m] - (other[m] if other is not None else 0.0) for m in metrics},
        sessions,
        users,
        n_boot=n_boot,
        seed=seed,
    )
    q = (100 * alpha / 2, 100 * (1 - alpha / 2))
    return {m: tuple(float(x) for x in np.percentile(draws[m], q)) for m in metrics}


# Where the test split holds one listener, every interval says so (``interval_unit``).
ONE_LISTENER = "one listener: interval over sessions only, says nothing about other listeners"


def interval_unit(
    sessions: np.ndarray, users: np.ndarray | None, n_boot: int, alpha: float = 0.05
) -> dict:
    """What the intervals resample, for results.json and every table that shows them:
    ``unit`` ("listeners", "sessions of one listener", or "sessions" where listeners are
    unknown), the counts, and ``text``, what a table's sentence states (without the
    resamples, which the segments draw fewer of)."""
    n_sess = int(len(np.unique(sessions)))
    pct = f"{100 * (1 - alpha):g}%"
    out = {"n_boot": n_boot, "alpha": alpha, "sessions": n_sess}
    if users is None:
        return {
            **out,
            "unit": "sessions",
            "listeners": None,
            "text": f"{pct} bootstrap intervals over {n_sess} sessions (listeners unknown: "
            "sessions of one listener taken as independent)",
        }
    n_users = int(len(np.unique(users)))
    if n_users == 1:
        return {
            **out,
            "unit": "sessions of one listener",
            "listeners": 1,
            "text": f"{pct} bootstrap intervals over the {n_sess} sessions of one listener "
            f"({ONE_LISTENER})",
        }
    return {
        **out,
        "unit": "listeners",
        "listeners": n_users,
        "text": f"{pct} bootstrap intervals over listeners (each with all its sessions), "
        f"{n_users} listeners ({n_sess} sessions)",
    }


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
    repeat = events.repeat_mask()
    return {
        "repeat": repeat,
        "new": ~repeat,
        "head": t_band == 0,
        "torso": t_band == 1,
        "tail": t_band == 2,
        "rare (<5 plays)": target_pop < 5,
    }


def segment_table(
    res: EvalResult,
    masks: dict[str, np.ndarray],
    n_boot: int = 200,
    seed: int = 0,
    users: np.ndarray | None = None,
) -> dict[str, dict]:
    """HR@20 and MRR@20 with 95% intervals within each segment (``bootstrap_ci``: over
    the listeners ``users`` (E,) of the events, each with all its sessions)."""
    out = {}
    for name, m in masks.items():
        if not m.any():
            out[name] = {"events": 0}
            continue
        vals = metric_values(res.ranks[m])
        ci = bootstrap_ci(
            res.ranks[m],
            res.sessions[m],
            ("HR@20", "MRR@20"),
            n_boot=n_boot,
            seed=seed,
            users=None if users is None else users[m],
        )
        out[name] = {
            "events": int(m.sum()),
            "share": float(m.mean()),
            **{k: float(vals[k].mean()) for k in ("HR@20", "MRR@20")},
            "ci": {k: list(v) for k, v in ci.items()},
        }
    return out
