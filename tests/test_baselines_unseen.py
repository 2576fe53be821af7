"""sessionize.py --unseen keep: the rules of the last known track (SR, AR, Item-kNN) step
back over kept unseen plays (id 0), as the networks and the hybrid do."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lastfm import baselines as bl
from lastfm.data import last_known_items

TRAIN = pd.DataFrame(
    {
        "session_id": [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 5],
        "item_idx": [1, 2, 5, 1, 2, 3, 4, 5, 3, 4, 5, 5, 5, 6],
    }
)
N = 6
LAST_ITEM = (
    lambda: bl.SequentialRules(steps=2),
    lambda: bl.AssociationRules(pruning=0),
    lambda: bl.ItemKNN(k=10),
)


def test_last_known_items():
    pre = np.array([[5, 0, 3, 0], [0, 0, 0, 0], [4, 0, 0, 0], [7, 8, 0, 0], [2, 6, 0, 0]])
    lengths = np.array([4, 3, 2, 1, 0])
    assert last_known_items(pre, lengths).tolist() == [3, 0, 4, 7, 0]
    assert last_known_items(np.zeros((2, 0), np.int32), np.zeros(2, int)).tolist() == [0, 0]


@pytest.mark.parametrize("make", LAST_ITEM)
def test_a_last_unseen_play_scores_as_the_prefix_without_it(make):
    m = make().fit(TRAIN, N)
    with_zeros = np.array([[1, 0, 0], [3, 1, 0], [4, 0, 0], [2, 0, 0]], np.int32)
    lengths = np.array([2, 3, 3, 1])
    without = np.array([[1, 0, 0], [3, 1, 0], [4, 0, 0], [2, 0, 0]], np.int32)
    want = np.asarray(m.score(without, np.array([1, 2, 1, 1])))
    got = np.asarray(m.score(with_zeros, lengths))
    assert got[:, 1:].any(axis=1).all()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("make", LAST_ITEM)
def test_a_prefix_of_only_unseen_plays_scores_nothing(make):
    m = make().fit(TRAIN, N)
    s = np.asarray(m.score(np.array([[0, 0, 0], [0, 0, 0]], np.int32), np.array([3, 1])))
    assert s.shape == (2, N + 1) and not s.any()
