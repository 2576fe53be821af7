"""The hybrid's weight grid ranks from a few candidate columns: the same ranks as
scoring every column, wherever a rank counts (at most 20), ties and NaN included."""

from __future__ import annotations

import numpy as np
import pytest

from lastfm import hybrid
from lastfm.metrics import target_ranks


def dense_ranks(base, targets, succ, add):
    s = base.copy()
    rows = np.repeat(np.arange(len(base)), succ.shape[1])
    values = np.where(succ.ravel() > 0, add.ravel(), 0).astype(np.float32)
    np.add.at(s, (rows, succ.ravel()), values)
    return target_ranks(s, targets)


@pytest.mark.parametrize("levels", [3, 8, 1000])
def test_candidate_ranks_equal_dense_ranks_up_to_20(levels):
    rng = np.random.default_rng(levels)
    b, v, k = 300, 60, 6
    # Few score levels: many ties, at the 21st best score too; some NaN.
    base = (rng.integers(0, levels, size=(b, v + 1)) / 2).astype(np.float32)
    base[rng.random((b, v + 1)) < 0.02] = np.nan
    base[:, 0] = 99.0  # padding never counts
    targets = rng.integers(1, v + 1, size=b)
    succ = np.stack([rng.permutation(np.arange(1, v + 1))[:k] for _ in range(b)])
    succ[rng.random((b, k)) < 0.2] = 0  # empty slots
    succ[::7, 0] = targets[::7]  # some targets are boosted successors
    ops = hybrid.numpy_ops()
    c = hybrid.batch_candidates(base, targets, succ, ops)
    for w in (0.0, 0.5, 1.0, 4.0):
        add = (w * rng.integers(0, 3, size=(b, k))).astype(np.float32)
        want = dense_ranks(base, targets, succ, add)
        got = hybrid.candidate_ranks(c, targets, succ, add)
        counted = want <= 20
        assert np.array_equal(got[counted], want[counted])
        assert np.all(got[~counted] > 20)


def test_fit_scores_chooses_as_the_dense_grid_would():
    rng = np.random.default_rng(1)
    n_items, n = 40, 200
    from lastfm.data import Events

    prefixes = rng.integers(1, n_items + 1, size=(n, 5))
    ev = Events(
        prefixes=prefixes,
        lengths=np.full(n, 5),
        targets=rng.integers(1, n_items + 1, size=n),
        sessions=np.arange(n),
        positions=np.full(n, 5),
    )
    base = (rng.integers(0, 4, size=(n, n_items + 1)) / 4).astype(np.float32)
    ids = np.stack([rng.permutation(np.arange(1, n_items + 1))[:4] for _ in range(n_items + 1)])
    trans = hybrid.Transitions(
        ids.astype(np.int32),
        rng.integers(1, 5, size=ids.shape).astype(np.float32),
        rng.integers(1, 50, size=n_items + 1).astype(np.float32),
    )
    rec = hybrid.fit_scores(lambda x, sl: base[sl], hybrid.numpy_ops(), 5, n_items, trans, ev)
    from lastfm.metrics import metric_values

    best = None
    for w in hybrid.WEIGHTS:
        for v in hybrid.POP_WEIGHTS:
            idx, add = trans.boost(prefixes, w, v)
            s = base.copy()
            np.add.at(s, (idx[:, 0], idx[:, 1]), add)
            mrr = round(float(metric_values(target_ranks(s, ev.targets))["MRR@20"].mean()), 4)
            if best is None or mrr > best[0]:
                best = (mrr, w, v)
    assert (rec["valid_MRR@20"], rec["weight"], rec["pop_weight"]) == best


def test_sparse_candidates_rank_as_dense_ones():
    import scipy.sparse as sp

    rng = np.random.default_rng(4)
    b, v, k = 200, 80, 5
    base = (rng.integers(0, 3, size=(b, v + 1)) * (rng.random((b, v + 1)) < 0.1)).astype(np.float32)
    base[:, 0] = 0.0
    base[:20] = 0.0  # rows without any score: the 21st best is a zero
    targets = rng.integers(1, v + 1, size=b)
    succ = np.stack([rng.permutation(np.arange(1, v + 1))[:k] for _ in range(b)])
    add = rng.integers(0, 3, size=(b, k)).astype(np.float32)
    dense_c = hybrid.batch_candidates(base, targets, succ, hybrid.numpy_ops())
    sparse_c = hybrid.sparse_batch_candidates(sp.csr_matrix(base), targets, succ)
    want = hybrid.candidate_ranks(dense_c, targets, succ, add)
    got = hybrid.candidate_ranks(sparse_c, targets, succ, add)
    assert np.array_equal(got, want)
    assert np.array_equal(got[want <= 20], dense_ranks(base, targets, succ, add)[want <= 20])
