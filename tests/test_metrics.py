"""metrics.py: hand-computed cases, ties, and an independent computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lastfm.data import Events, make_events
from lastfm.metrics import (
    DenseScores,
    bootstrap_ci,
    evaluate,
    metric_values,
    rank_counts,
    ranker_from_scorer,
    target_ranks,
)


def topk_from_scores(scores, k=20):
    """The dense path's top-k ids (``DenseScores.top``)."""
    return DenseScores(scores).top(k)[0]


def test_ranks_hand_computed_with_ties():
    # column 0 is padding and never ranked
    scores = np.array([[9.0, 0.5, 0.9, 0.1, 0.9], [9.0, 0.2, 0.2, 0.2, 0.2]])
    targets = np.array([2, 3])
    assert target_ranks(scores, targets).tolist() == [1.5, 2.5]  # average over ties
    assert target_ranks(scores, np.array([1, 1])).tolist() == [3.0, 2.5]
    higher, ties = rank_counts(scores, targets)
    assert higher.tolist() == [0, 0] and ties.tolist() == [1, 3]


def test_metric_values_hand_computed():
    v = metric_values(np.array([1, 3, 25]))
    assert v["HR@1"].tolist() == [1, 0, 0]
    assert v["HR@5"].tolist() == [1, 1, 0]
    assert v["MRR@5"].tolist() == pytest.approx([1, 1 / 3, 0])
    assert v["NDCG@5"].tolist() == pytest.approx([1, 0.5, 0])
    assert v["HR@20"].tolist() == [1, 1, 0] and v["MRR@20"][2] == 0


def test_ranks_and_topk_agree_with_argsort_on_random_scores():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(200, 51))
    targets = rng.integers(1, 51, size=200)
    order = np.argsort(-scores[:, 1:], axis=1) + 1  # independent: full sort
    expected = np.array([np.flatnonzero(order[i] == targets[i])[0] + 1 for i in range(200)])
    assert (target_ranks(scores, targets) == expected).all()
    assert (topk_from_scores(scores, 20) == order[:, :20]).all()
    hr = (expected <= 20).mean()
    assert metric_values(target_ranks(scores, targets))["HR@20"].mean() == pytest.approx(hr)


def test_make_events_prefixes_and_truncation():
    split = pd.DataFrame({"session_id": [5, 5, 5, 5, 9, 9], "item_idx": [1, 2, 3, 4, 7, 8]})
    ev = make_events(split, prefix_len=2)
    assert ev.targets.tolist() == [2, 3, 4, 8]
    assert ev.lengths.tolist() == [1, 2, 2, 1]
    assert ev.prefixes.tolist() == [[1, 0], [1, 2], [2, 3], [7, 0]]  # most recent kept
    assert ev.sessions.tolist() == [5, 5, 5, 9] and ev.positions.tolist() == [1, 2, 3, 1]


def test_exclude_seen_and_padding_never_recommended():
    def scorer(prefixes, lengths):
        s = np.tile(np.arange(6, dtype=np.float32), (len(prefixes), 1))
        s[:, 0] = 100.0  # padding gets the top raw score and must still be excluded
        return s

    pre = np.array([[5, 4, 0]])
    h_in, t_in, top_in = ranker_from_scorer(scorer)(pre, np.array([2]), np.array([5]))
    h_ex, t_ex, top_ex = ranker_from_scorer(scorer, exclude_seen=True)(
        pre, np.array([2]), np.array([3])
    )
    assert h_in.tolist() == [0] and t_in.tolist() == [0] and top_in[0, :3].tolist() == [5, 4, 3]
    assert h_ex.tolist() == [0] and t_ex.tolist() == [0] and top_ex[0, :3].tolist() == [3, 2, 1]


def test_bootstrap_intervals():
    rng = np.random.default_rng(0)
    ranks = rng.integers(1, 40, size=3000)
    sessions = np.repeat(np.arange(300), 10)
    ci = bootstrap_ci(ranks, sessions, ("HR@20", "MRR@20"), n_boot=300, seed=1)
    point = metric_values(ranks)
    for m in ("HR@20", "MRR@20"):
        lo, hi = ci[m]
        assert lo < point[m].mean() < hi and hi - lo < 0.1
    same = bootstrap_ci(ranks, sessions, ("HR@20",), n_boot=100, other_ranks=ranks)
    assert same["HR@20"] == (0.0, 0.0)
    better = bootstrap_ci(np.ones_like(ranks), sessions, ("HR@20",), n_boot=100, other_ranks=ranks)
    assert better["HR@20"][0] > 0
    assert bootstrap_ci(ranks, sessions, n_boot=50, seed=4) == bootstrap_ci(
        ranks, sessions, n_boot=50, seed=4
    )


def test_evaluate_summary_fields():
    ev = Events(
        np.array([[1, 0], [1, 2]], np.int32),
        np.array([1, 2], np.int32),
        np.array([2, 3], np.int32),
        np.array([0, 0]),
        np.array([1, 2], np.int32),
    )
    pop = np.array([0, 5, 3, 1], float)
    res = evaluate(ranker_from_scorer(lambda p, n: np.tile(pop, (len(p), 1))), ev, 3, pop)
    assert res.ranks.tolist() == [2, 3]
    assert res.summary["HR@1"] == 0 and res.summary["MRR@20"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert res.summary["coverage@20"] == 1.0 and res.summary["events"] == 2
    assert res.summary["mean_pop@20"] == pytest.approx(3.0)


def test_two_stage_topk_matches_full_sort_on_wide_rows():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=(64, 30_001)).astype(np.float32)
    scores[3, 29_000:29_030] = 50.0 + np.arange(30)  # the top 20 packed in one block
    order = np.argsort(-scores[:, 1:], axis=1, kind="stable")[:, :20] + 1
    assert (topk_from_scores(scores, 20) == order).all()


def test_sparse_ranking_equals_dense_ranking_with_ties():
    import scipy.sparse as sp

    from lastfm.metrics import SparseScores

    rng = np.random.default_rng(5)
    b, v = 200, 300
    dense = (rng.integers(0, 4, size=(b, v + 1)) * (rng.random((b, v + 1)) < 0.05)).astype(
        np.float32
    )
    dense[:5, 0] = 7.0  # padding never counts
    dense[5:10] = 0.0  # rows with no stored score at all
    dense[3, 4] = 0.0
    coo = sp.csr_matrix(dense).tocoo()
    m = sp.csr_matrix(  # with an explicit zero at (3, 4): still a zero
        (np.r_[coo.data, 0.0].astype(np.float32), (np.r_[coo.row, 3], np.r_[coo.col, 4])),
        shape=dense.shape,
    )
    assert m[3, 4] == 0 and m.nnz == coo.nnz + 1
    targets = rng.integers(1, v + 1, size=b)
    targets[:40] = np.argmax(dense[:40, 1:], axis=1) + 1  # some targets score above 0
    ref = dense.copy()
    ref[:, 0] = -np.inf
    for got, want in zip(SparseScores(m).counts(targets), rank_counts(ref, targets)):
        assert np.array_equal(got, want)
    top = SparseScores(m).top()[0]
    dense_top = topk_from_scores(ref)
    for i in range(b):
        n_pos = min(int((ref[i, 1:] > 0).sum()), 20)
        # the dense list (ties by lower id) cut where the scored tracks end: a track the
        # method never scored (absent, 0) is never listed
        assert top[i, :n_pos].tolist() == dense_top[i, :n_pos].tolist()
        assert (ref[i, top[i, :n_pos]] > 0).all() and not top[i, n_pos:].any()


def test_shared_plus_sparse_ranks_as_dense_and_pop_baselines_use_it():
    import pandas as pd
    import scipy.sparse as sp

    from lastfm import baselines as bl
    from lastfm.metrics import (
        SharedPlusSparse,
        SharedScores,
        evaluate,
        rank_counts,
        ranker_from_scorer,
    )

    rng = np.random.default_rng(9)
    b, v = 120, 200
    shared = rng.integers(0, 5, size=v + 1).astype(np.float64) / 8  # many ties
    extra = sp.random(b, v + 1, density=0.03, random_state=1, format="csr")
    extra.data = np.ceil(extra.data * 3)
    scores = SharedPlusSparse(shared, extra)
    targets = rng.integers(1, v + 1, size=b)
    ref = scores.toarray()
    ref[:, 0] = -np.inf
    for got, want in zip(SharedScores(scores).counts(targets), rank_counts(ref, targets)):
        assert np.array_equal(got, want)
    top = SharedScores(scores).top()[0]
    assert np.array_equal(top, topk_from_scores(ref))  # the same lists, ties by lower id
    for i in range(b):
        want = sorted(ref[i, 1:], reverse=True)[:20]
        assert np.array_equal(ref[i, top[i]], want) and len(set(top[i].tolist())) == 20
    # POP and S-POP rank the same through their shared + sparse scores as densely.
    train = pd.DataFrame(
        {"session_id": np.repeat(np.arange(60), 5), "item_idx": rng.integers(1, 40, size=300)}
    )
    prefixes = rng.integers(0, 40, size=(50, 6))
    prefixes[:, 0] = np.maximum(prefixes[:, 0], 1)
    from lastfm.data import Events

    ev = Events(
        prefixes, (prefixes > 0).sum(1), rng.integers(1, 40, 50), np.arange(50), np.ones(50)
    )
    ev.prefixes = np.array([np.r_[p[p > 0], p[p == 0]] for p in prefixes])
    for m in (bl.Pop().fit(train, 40), bl.SessionPop().fit(train, 40)):
        fast = evaluate(ranker_from_scorer(m.scorer), ev, 40)
        slow = evaluate(ranker_from_scorer(m.score), ev, 40)
        assert m.scorer == m.sparse_scores
        assert np.array_equal(fast.higher, slow.higher) and np.array_equal(fast.ties, slow.ties)
