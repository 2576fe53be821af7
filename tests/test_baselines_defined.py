"""The baselines as their papers define them: hand-computed toy cases, and V-SKNN / VSTAN
against plain loop implementations of their definitions on random sessions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lastfm import baselines as bl
from lastfm.data import Events
from lastfm.metrics import evaluate, ranker_from_scorer


def sessions(lists, times=None):
    rows = []
    for s, items in enumerate(lists):
        t0 = (times[s] if times else 100 * s) - len(items) + 1
        rows += [(s, i, t0 + p) for p, i in enumerate(items)]
    return pd.DataFrame(rows, columns=["session_id", "item_idx", "ts_s"])


def score_of(model, prefix, time=None):
    pre = np.array([prefix], np.int32)
    n = np.array([len(prefix)])
    if model.needs_times:
        return np.asarray(model.score(pre, n, np.array([time])))[0]
    return np.asarray(model.score(pre, n))[0]


def test_item_knn_support_shrinkage_by_hand():
    # supp(1) = 3, supp(2) = 1, supp(3) = 5; co(1, 2) = 1, co(1, 3) = 2
    train = sessions([[1, 2], [1, 3], [1, 3], [3], [3], [3]])
    s = score_of(bl.ItemKNN(k=10, lam=0.0, alpha=0.5).fit(train, 3), [1])
    assert s[2] == pytest.approx(1 / math.sqrt(3 * 1)) and s[3] == pytest.approx(2 / math.sqrt(15))
    assert s[2] > s[3]  # without shrinkage the rare track wins
    s = score_of(bl.ItemKNN(k=10, lam=20.0, alpha=0.5).fit(train, 3), [1])
    assert s[2] == pytest.approx(1 / math.sqrt(23 * 21), rel=1e-5)
    assert s[3] == pytest.approx(2 / math.sqrt(23 * 25), rel=1e-5) and s[3] > s[2]
    s = score_of(bl.ItemKNN(k=10, lam=20.0, alpha=1.0).fit(train, 3), [1])
    assert s[3] == pytest.approx(2 / 23, rel=1e-5)  # alpha 1: confidence
    assert score_of(bl.ItemKNN(k=1, lam=20.0).fit(train, 3), [1])[2] == 0  # k nearest only


def test_item_knn_counts_plays_as_session_rec_by_hand():
    """session-rec's iknn.py with in-session repeats: supp_i is i's plays, and each play of
    i adds 1 for every distinct item of its session (a count that is not symmetric)."""
    # plays: supp(1) = 3, supp(2) = 2, supp(3) = 4
    # co(1, 2) = 2 (1 played twice in [1, 2, 1]), co(1, 3) = 1, co(2, 1) = 1 (not 2:
    # each play of 2 adds 1 for 1 once), co(3, 1) = 1 ([3, 3, 3] holds no 1), co(2, 3) = 0
    train = sessions([[1, 2, 1], [1, 3], [3, 3, 3], [2]])
    m = bl.ItemKNN(k=10, lam=0.0, alpha=0.5).fit(train, 3)
    s1, s2, s3 = (score_of(m, [i]) for i in (1, 2, 3))
    assert s1[2] == pytest.approx(2 / math.sqrt(3 * 2), rel=1e-6)  # sessions: 1 / sqrt(2 * 2)
    assert s1[3] == pytest.approx(1 / math.sqrt(3 * 4), rel=1e-6)  # sessions: 1 / sqrt(2 * 2)
    assert s1[1] == 0 and s2[2] == 0 and s3[3] == 0  # no self-similarity
    assert s2[1] == pytest.approx(1 / math.sqrt(2 * 3), rel=1e-6) and s2[3] == 0
    assert s3[1] == pytest.approx(1 / math.sqrt(4 * 3), rel=1e-6) and s3[2] == 0
    m = bl.ItemKNN(k=10, lam=20.0, alpha=0.75).fit(train, 3)
    s1 = score_of(m, [1])  # (supp_i + lambda)^alpha (supp_j + lambda)^(1 - alpha)
    assert s1[2] == pytest.approx(2 / (23**0.75 * 22**0.25), rel=1e-5)
    assert s1[3] == pytest.approx(1 / (23**0.75 * 24**0.25), rel=1e-5)
    s2 = score_of(m, [2])
    assert s2[1] == pytest.approx(1 / (22**0.75 * 23**0.25), rel=1e-5)
    s1 = score_of(bl.ItemKNN(k=1, lam=0.0).fit(train, 3), [1])
    assert s1[3] == 0 and s1[2] > 0  # only the k most similar keep a score


def ref_iknn(lists, n_items, k, lam, alpha):
    """Item-kNN as session-rec's iknn.py fits it, with loops: for each item i and each
    training play of i, +1 for every distinct item of that play's session; i's own entry
    zeroed; divided by (supp_i + lambda)^alpha (supp_j + lambda)^(1 - alpha) (a zero norm
    read as 1); the k largest of the row kept."""
    supp = np.bincount([i for items in lists for i in items], minlength=n_items + 1)
    table = np.zeros((n_items + 1, n_items + 1))
    for i in range(1, n_items + 1):
        row = np.zeros(n_items + 1)
        for items in lists:
            for item in items:
                if item == i:
                    row[sorted(set(items))] += 1
        row[i] = 0
        norm = (supp[i] + lam) ** alpha * (supp + lam) ** (1 - alpha)
        norm[norm == 0] = 1
        row = row / norm
        keep = np.argsort(-row, kind="stable")[:k]
        table[i, keep] = row[keep]
    return table


@pytest.mark.parametrize("seed", [0, 1])
def test_item_knn_equals_a_loop_implementation_of_session_rec(seed):
    rng = np.random.default_rng(seed)
    n = 12  # few items, long sessions: many in-session repeats
    lists = [list(rng.integers(1, n + 1, size=rng.integers(1, 10))) for _ in range(50)]
    train = sessions(lists)
    pre = np.arange(n + 1, dtype=np.int32)[:, None]
    for k, lam, alpha in ((n, 0.0, 0.5), (n, 20.0, 0.75), (n, 5.0, 1.0), (3, 20.0, 0.5)):
        got = bl.ItemKNN(k=k, lam=lam, alpha=alpha).fit(train, n).score(pre, np.ones(n + 1, int))
        want = ref_iknn(lists, n, k, lam, alpha)
        if k >= n:
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        else:  # ties at the cut may keep other columns: compare each row's kept values
            for r in range(n + 1):
                np.testing.assert_allclose(
                    np.sort(got[r])[::-1][:k], np.sort(want[r])[::-1][:k], rtol=1e-5, atol=1e-7
                )


def test_sequential_rules_weightings_and_pruning_by_hand():
    train = sessions([[1, 2, 3]])
    lin = bl.SequentialRules(steps=2, weighting="linear", pruning=0).fit(train, 3)
    assert lin.table[1, 2] == pytest.approx(0.9) and lin.table[1, 3] == pytest.approx(0.8)
    quad = bl.SequentialRules(steps=2, weighting="quadratic", pruning=0).fit(train, 3)
    assert quad.table[1, 3] == pytest.approx(0.25) and quad.table[2, 3] == pytest.approx(1.0)
    log = bl.SequentialRules(steps=2, weighting="log", pruning=0).fit(train, 3)
    assert log.table[1, 3] == pytest.approx(1 / math.log10(3.7))
    pruned = bl.SequentialRules(steps=2, pruning=1).fit(train, 3)
    assert pruned.table[1, 2] == 1 and pruned.table[1, 3] == 0  # only its strongest rule
    one = bl.SequentialRules(steps=1, pruning=0).fit(train, 3)
    assert one.table[1, 3] == 0 and one.table[3].nnz == 0


def test_association_rules_count_pairs_of_positions_by_hand():
    ar = bl.AssociationRules(pruning=0).fit(sessions([[1, 2, 1], [2, 3]]), 3)
    t = ar.table.toarray()
    assert t[1, 2] == 2 and t[2, 1] == 2 and t[1, 1] == 2  # session 0: (1,2), (1,1), (2,1)
    assert t[2, 3] == 1 and t[3, 2] == 1 and t[2, 2] == 0 and t[1, 3] == 0


# the V-SKNN / VSTAN toy: last play times 10, 20, 30, 40
TOY = [[1, 2], [3, 4], [1, 3, 5], [6]]


def test_vsknn_by_hand():
    train = sessions(TOY, times=[10, 20, 30, 40])
    s = score_of(bl.VSKNN(k=10, sample=2).fit(train, 6), [1, 3])
    # candidates: the 2 most recent sessions sharing an item: [1,3,5] (t 30), [3,4] (t 20);
    # similarity (1/2 + 1) / 2 = 0.75 and 1 / 2 = 0.5; both hold the last item: decay 1
    assert s[5] == pytest.approx(0.75) and s[4] == pytest.approx(0.5)
    assert s[3] == pytest.approx(1.25) and s[1] == pytest.approx(0.75) and s[2] == 0
    s = score_of(bl.VSKNN(k=10, sample=0).fit(train, 6), [1, 3])
    # all candidates: [1,2] adds sim 0.25 x 1/2 (its most recent shared item is 2nd last)
    assert s[2] == pytest.approx(0.125) and s[1] == pytest.approx(0.875)
    s = score_of(bl.VSKNN(k=1, sample=0).fit(train, 6), [1, 3])
    assert s[4] == 0 and s[5] == pytest.approx(0.75)  # only the nearest neighbour votes
    s = score_of(bl.VSKNN(k=10, sample=0).fit(train, 6), [3, 1, 3])
    # a repeated track keeps its latest weight: 3 -> 3/3, 1 -> 2/3 (not 1/3 + 3/3)
    assert s[4] == pytest.approx(1 / 2)  # [3,4]: 1 / 2 distinct, decay 1


def test_vstan_by_hand():
    train = sessions(TOY, times=[10, 20, 30, 40])
    m = bl.VSTAN(
        k=10,
        sample=0,
        lambda_spw=1.0,
        lambda_snh=1e9,
        lambda_inh=1.0,
        lambda_ipw=1.0,
        lambda_idf=0.0,
    ).fit(train, 6)
    s = score_of(m, [1, 3], time=50)
    w1, w3 = math.exp(-1), 1.0
    norm = math.sqrt(w1**2 + w3**2)
    sim0, sim1 = w1 / (norm * math.sqrt(2)), w3 / (norm * math.sqrt(2))
    sim2 = (w1 + w3) / (norm * math.sqrt(3))
    e = math.exp
    assert s[5] == pytest.approx(sim2 * e(-1), rel=1e-5)
    assert s[2] == pytest.approx(sim0 * e(-1) * e(-1), rel=1e-5)  # ipw: shared item 1 is 2nd last
    assert s[4] == pytest.approx(sim1 * e(-1), rel=1e-5)
    assert s[1] == pytest.approx(sim0 * e(-1) + sim2 * e(-1), rel=1e-5)
    assert s[3] == pytest.approx(sim1 + sim2, rel=1e-5)
    # the time decay: a neighbour 20 s older than another weighs exp(-20 / lambda_snh) less
    m = bl.VSTAN(
        k=10,
        sample=0,
        lambda_spw=1.0,
        lambda_snh=40 / 86400,
        lambda_inh=1.0,
        lambda_ipw=1.0,
        lambda_idf=0.0,
    ).fit(train, 6)
    s2 = score_of(m, [1, 3], time=50)
    assert s2[5] == pytest.approx(sim2 * e(-1) * e(-(50 - 30) / 40), rel=1e-5)


def ref_vsknn(train_lists, times, prefix, k, sample):
    """V-SKNN by its definition, with loops (div weights, div score decay)."""
    L = len(prefix)
    w = {}
    for p, item in enumerate(prefix, 1):
        w[item] = p / L
    cands = [s for s, items in enumerate(train_lists) if set(items) & set(prefix)]
    if sample and len(cands) > sample:
        cands = sorted(cands, key=lambda s: (times[s], s))[-sample:]
    sims = [(sum(w[i] for i in set(train_lists[s]) & set(prefix)) / len(w), s) for s in cands]
    sims = sorted(sims, key=lambda x: (-x[0], -times[x[1]]))[:k]  # ties: more recent
    scores = {}
    for sim, s in sims:
        items = set(train_lists[s])
        step = next(d for d, i in enumerate(reversed(prefix), 1) if i in items)
        for i in items:
            scores[i] = scores.get(i, 0.0) + sim / step
    return scores


def ref_vstan(train_lists, times, prefix, t, k, sample, spw, snh, inh, ipw, lidf, n_items):
    L = len(prefix)
    w = {}
    for p, item in enumerate(prefix, 1):
        w[item] = math.exp((p - L) / spw)
    norm = math.sqrt(sum(v * v for v in w.values()))
    plays = np.bincount([i for items in train_lists for i in items], minlength=n_items + 1)
    idf = {i: math.log(len(train_lists) / plays[i]) for i in range(1, n_items + 1) if plays[i]}
    cands = [s for s, items in enumerate(train_lists) if set(items) & set(prefix)]
    if sample and len(cands) > sample:
        cands = sorted(cands, key=lambda s: (times[s], s))[-sample:]
    sims = []
    for s in cands:
        items = set(train_lists[s])
        sim = sum(w[i] for i in items & set(prefix)) / (norm * math.sqrt(len(items)))
        sims.append((sim * math.exp(-(t - times[s]) / (snh * 86400)), s))
    sims = sorted(sims, key=lambda x: (-x[0], -times[x[1]]))[:k]  # ties: more recent
    scores = {}
    for sim, s in sims:
        lst = train_lists[s]
        last = {i: p for p, i in enumerate(lst, 1)}
        star = max(p for p, i in enumerate(lst, 1) if i in set(prefix))
        pstar = max(p for p, i in enumerate(prefix, 1) if i in set(lst))
        for i, pos in last.items():
            v = sim * math.exp(-abs(pos - star) / inh) * math.exp((pstar - L) / ipw)
            scores[i] = scores.get(i, 0.0) + v * (1 + idf[i] * lidf)
    return scores


def random_sessions(seed, n_sessions=60, n_items=25):
    rng = np.random.default_rng(seed)
    lists = [list(rng.integers(1, n_items + 1, size=rng.integers(2, 8))) for _ in range(n_sessions)]
    times = list(rng.permutation(n_sessions) * 1000 + 5000)
    return lists, times, n_items


@pytest.mark.parametrize("seed", [0, 1])
def test_vsknn_and_vstan_equal_loop_implementations_of_their_definitions(seed):
    lists, times, n = random_sessions(seed)
    train = sessions(lists, times)
    rng = np.random.default_rng(seed + 10)
    prefixes = [list(rng.integers(1, n + 1, size=rng.integers(1, 6))) for _ in range(40)]
    width = max(map(len, prefixes))
    pre = np.zeros((len(prefixes), width), np.int32)
    for r, p in enumerate(prefixes):
        pre[r, : len(p)] = p
    lengths = np.array([len(p) for p in prefixes])
    t = np.full(len(prefixes), 70_000)
    for k, sample in ((5, 10), (50, 0)):
        got = bl.VSKNN(k=k, sample=sample).fit(train, n).score(pre, lengths)
        vst = (
            bl.VSTAN(
                k=k,
                sample=sample,
                lambda_spw=2.0,
                lambda_snh=0.5,
                lambda_inh=2.0,
                lambda_ipw=3.0,
                lambda_idf=1.0,
            )
            .fit(train, n)
            .score(pre, lengths, t)
        )
        for r, p in enumerate(prefixes):
            want = ref_vsknn(lists, times, p, k, sample)
            row = np.zeros(n + 1)
            for i, v in want.items():
                row[i] = v
            np.testing.assert_allclose(got[r], row, rtol=1e-4, atol=1e-6)
            want = ref_vstan(lists, times, p, 70_000, k, sample, 2.0, 0.5, 2.0, 3.0, 1.0, n)
            row = np.zeros(n + 1)
            for i, v in want.items():
                row[i] = v
            np.testing.assert_allclose(vst[r], row, rtol=1e-4, atol=1e-6)


def test_every_baseline_follows_the_one_tie_policy():
    """For every method: its evaluated rank is 1 + #higher + #equal / 2 of its own scores."""
    lists, times, n = random_sessions(3)
    train = sessions(lists, times)
    rng = np.random.default_rng(4)
    pre = rng.integers(1, n + 1, size=(30, 3)).astype(np.int32)
    ev = Events(
        pre,
        np.full(30, 3, np.int32),
        rng.integers(1, n + 1, 30).astype(np.int32),
        np.arange(30),
        np.full(30, 3, np.int32),
        np.full(30, 70_000),
    )
    tied = []
    for grid in bl.GRIDS:
        m = grid.cls(**grid.values[0]).fit(train, n)
        res = evaluate(ranker_from_scorer(m.score), ev, n)
        s = (
            np.asarray(m.score(pre, ev.lengths, ev.times))
            if m.needs_times
            else np.asarray(m.score(pre, ev.lengths))
        )
        for r in range(30):
            row, tgt = s[r, 1:], s[r, ev.targets[r]]
            want = 1 + (row > tgt).sum() + ((row == tgt).sum() - 1) / 2
            assert res.ranks[r] == pytest.approx(want), (m, r)
        tied.append(bool((res.ties > 0).any()))
    assert sum(tied) >= 4  # most methods have ties on the toy
