"""Baselines on hand-made sessions, and against POP on generated data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lastfm import baselines as bl
from lastfm.data import make_events
from lastfm.metrics import evaluate, ranker_from_scorer

# items 1..6; 1 -> 2 always; 3 and 4 co-occur; 5 popular
TRAIN = pd.DataFrame(
    {
        "session_id": [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5],
        "item_idx": [1, 2, 5, 1, 2, 3, 4, 5, 3, 4, 5, 5, 5, 6],
    }
)
N = 6


def top(model, prefix):
    pre = np.array([prefix], np.int32)
    s = np.array(model.score(pre, np.array([len(prefix)])), dtype=float)
    s[:, 0] = -np.inf
    return int(np.argmax(s[0]))


def test_pop_and_spop():
    assert top(bl.Pop().fit(TRAIN, N), [1]) == 5
    assert top(bl.SessionPop().fit(TRAIN, N), [6, 6, 1]) == 6


def test_sequential_rules_follow_transitions():
    sr = bl.SequentialRules(steps=1).fit(TRAIN, N)
    assert top(sr, [3, 1]) == 2
    assert sr.table[1, 2] == 2 and sr.table[2, 1] == 0
    sr2 = bl.SequentialRules(steps=2).fit(TRAIN, N)
    assert sr2.table[1, 5] == pytest.approx(0.5)  # two steps apart: weight 1/2


def test_item_knn_cooccurrence():
    knn = bl.ItemKNN(k=10).fit(TRAIN, N)
    assert top(knn, [3]) == 4 and top(knn, [4]) == 3


def test_vsknn_neighbour_sessions_vote():
    v = bl.VSKNN(k=10).fit(TRAIN, N)
    s3 = v.score(np.array([[3, 0]], np.int32), np.array([1]))
    assert s3[0, 4] > s3[0, 1] and s3[0, 4] > s3[0, 6]  # 4 shares both sessions of 3
    s = v.score(np.array([[6, 0]], np.int32), np.array([1]))
    assert s[0, 5] > s[0, 1]  # 5 shares a session with 6; 1 does not


def test_a_kept_unseen_play_holds_a_position_and_has_no_rules():
    """sessionize.py --unseen keep: an unseen play (0) inside a prefix holds its position
    in the session-kNN weights but adds no item; as the last play, the rules of the last
    known track (SR, AR, Item-kNN) score (tests/test_baselines_unseen.py); S-POP never
    counts it."""
    lin = bl.POSITION_WEIGHTS["linear"]
    w = bl._prefix_weights(np.array([[5, 0, 3]]), np.array([3]), lin, N)
    spliced = bl._prefix_weights(np.array([[5, 3, 0]]), np.array([2]), lin, N)
    assert sorted(w.indices.tolist()) == sorted(spliced.indices.tolist()) == [3, 5]
    assert w[0, 5] < spliced[0, 5] and w[0, 3] == spliced[0, 3] == 1.0
    for m in (bl.SequentialRules(steps=1), bl.AssociationRules(), bl.ItemKNN(k=10)):
        m.fit(TRAIN, N)
        last_unseen = np.asarray(m.score(np.array([[1, 0]], np.int32), np.array([2])))
        only_seen = np.asarray(m.score(np.array([[1, 0]], np.int32), np.array([1])))
        assert only_seen[0, 2] > 0
        np.testing.assert_array_equal(last_unseen, only_seen)
    sp = bl.SessionPop().fit(TRAIN, N)
    a = np.asarray(sp.score(np.array([[6, 0, 6]], np.int32), np.array([3])))
    b = np.asarray(sp.score(np.array([[6, 6, 0]], np.int32), np.array([2])))
    np.testing.assert_array_equal(a[:, 1:], b[:, 1:])


def test_keep_top_k():
    import scipy.sparse as sp

    m = sp.csr_matrix(np.array([[1, 5, 3, 0], [0, 0, 2, 1]], float))
    kept = bl._keep_top_k(m, 2).toarray()
    assert kept.tolist() == [[0, 5, 3, 0], [0, 0, 2, 1]]


def test_every_baseline_beats_pop_on_generated_data(pipeline_data):
    d = pipeline_data / "sessions" / "3m"
    train, test = pd.read_parquet(d / "train.parquet"), pd.read_parquet(d / "test.parquet")
    n = len(pd.read_parquet(d / "vocab.parquet"))
    ev = make_events(test, 50)
    res = {}
    for m in (bl.Pop(), bl.SessionPop(), bl.SequentialRules(), bl.ItemKNN(), bl.VSKNN()):
        m.fit(train, n)
        res[m.name] = evaluate(ranker_from_scorer(m.score), ev, n).summary
    for name in ("S-POP", "SR", "Item-kNN", "V-SKNN"):
        assert res[name]["HR@20"] > res["POP"]["HR@20"] + 0.1, (name, res)


def test_sparse_scores_rank_as_their_dense_scores(pipeline_data):
    """The evaluator ranks sparse scores without densifying them: the same counts."""
    d = pipeline_data / "sessions" / "3m"
    train, test = pd.read_parquet(d / "train.parquet"), pd.read_parquet(d / "test.parquet")
    n = len(pd.read_parquet(d / "vocab.parquet"))
    ev = make_events(test, 50)
    for m in (
        bl.SequentialRules(),
        bl.AssociationRules(),
        bl.ItemKNN(),
        bl.VSKNN(weighting="linear", score_weighting="linear"),
        bl.VSTAN(),
    ):
        m.fit(train, n)
        assert m.scorer == m.sparse_scores
        sparse = evaluate(ranker_from_scorer(m.scorer), ev, n)
        dense = evaluate(ranker_from_scorer(m.score), ev, n)
        assert np.array_equal(sparse.higher, dense.higher), m.name
        assert np.array_equal(sparse.ties, dense.ties), m.name


def test_equal_counts_tie_without_a_hidden_popularity_prior():
    # 1 -> 2 and 1 -> 3 once each; 3 is more popular. No method gets a popularity
    # tie-break any more: both targets share the average rank 1.5.
    train = pd.DataFrame(
        {"session_id": [0, 0, 1, 1, 2] + [3] * 10, "item_idx": [1, 2, 1, 3, 3] + [4] * 10}
    )
    sr = bl.SequentialRules(steps=1).fit(train, 4)
    rank = ranker_from_scorer(sr.score)
    pre, n = np.array([[1], [1]], np.int32), np.array([1, 1])
    higher, ties, _ = rank(pre, n, np.array([3, 2]))
    assert higher.tolist() == [0, 0] and ties.tolist() == [1, 1]
