"""One ranking kernel and one top-k (``lastfm.metrics.count_ranks`` / ``topk``): every
path - dense numpy, CSR, shared + sparse, the device's keras.ops, the hybrid's candidates
- gives the same counts and the same top-20 lists as an independent loop, on random
scores with planted ties, NaNs, unscored rows and excluded (seen) tracks."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from lastfm import hybrid
from lastfm.data import Events
from lastfm.metrics import TOPK, SharedPlusSparse, evaluate, ranker_from_scorer

B, L = 60, 6


def reference(scores, targets, prefixes=None, floor=-np.inf):
    """(higher, ties, top-20 ids) by loops: excluded tracks at -inf; a NaN target ranks
    last; lists hold the tracks scoring above ``floor`` (never NaN), best first, equal
    scores by lower id, then 0."""
    s = scores.astype(np.float64)
    v = s.shape[1] - 1
    higher, ties, tops = [], [], []
    for i, t in enumerate(targets):
        row = s[i].copy()
        if prefixes is not None:
            row[prefixes[i]] = -np.inf
        row = row[1:]
        st = row[t - 1]
        if np.isnan(st):
            higher.append(v - 1)
            ties.append(0)
        else:
            higher.append(int((row > st).sum()))
            ties.append(int((row == st).sum()) - 1)
        listed = sorted((-row[j], j + 1) for j in range(v) if row[j] > floor)[:TOPK]
        tops.append([j for _, j in listed] + [0] * (TOPK - len(listed)))
    return np.array(higher), np.array(ties), np.array(tops)


def planted(rng, v):
    """Sparse-like scores (B, V+1): few levels (ties), mostly 0 (unscored), NaNs, rows
    scoring nothing or fewer than 20 tracks, padding outscoring all; targets, some NaN-
    or 0-scored or in their own prefix; prefixes (B, L) with padding inside."""
    s = (rng.integers(1, max(5, v // 50), size=(B, v + 1)) / 2).astype(np.float32)
    s[rng.random((B, v + 1)) < 0.8] = 0.0
    s[rng.random((B, v + 1)) < 0.03] = np.nan
    s[:4] = 0.0  # scores nothing
    s[4:8] *= rng.random((4, v + 1)) < 12 / v  # fewer than 20 tracks scored
    s[:, 0] = 99.0  # padding: never counted, never listed
    targets = rng.integers(1, v + 1, size=B)
    s[np.arange(10, 14), targets[10:14]] = np.nan  # NaN targets rank last
    targets[20:40] = np.nanargmax(s[20:40, 1:], axis=1) + 1  # among the best, tied
    prefixes = rng.integers(0, v + 1, size=(B, L))
    prefixes[::5, 2] = targets[::5]  # a repeat: the target itself excluded
    prefixes[:, -1] = np.where(np.arange(B) % 3 == 0, 0, prefixes[:, -1])
    return s, targets, prefixes


def shared_planted(rng, v):
    """Shared + sparse scores: a shared vector with ties and NaNs plus sparse extras."""
    u = (rng.integers(0, 6, size=v + 1) / 4).astype(np.float32)
    u[rng.choice(np.arange(1, v + 1), 3, replace=False)] = np.nan
    extra = sp.random(B, v + 1, density=0.05, random_state=int(rng.integers(1 << 30)))
    extra = extra.tocsr().astype(np.float32)
    extra.data = np.ceil(extra.data * 3).astype(np.float32)
    return u, extra


class FixedScores:
    """A stand-in Keras model whose logits are given (``device_ranker``'s interface)."""

    input_len = 1

    def __init__(self, scores):
        self.scores, self.n_items = scores, scores.shape[1] - 1

    def predict_on_batch(self, x):
        return np.zeros(len(x), np.float32)

    def logits(self, rep):
        from keras import ops

        return ops.convert_to_tensor(self.scores)


def paths(dense, csr=None, shared=None, device=True):
    """Each path's ranker of the same scores."""
    out = {"dense": lambda ex: ranker_from_scorer(lambda p, n: dense, ex)}
    if csr is not None:
        out["sparse"] = lambda ex: ranker_from_scorer(lambda p, n: csr.copy(), ex)
    if shared is not None:
        out["shared"] = lambda ex: ranker_from_scorer(lambda p, n: SharedPlusSparse(*shared), ex)
    if device:
        from lastfm.metrics import device_ranker

        out["device"] = lambda ex: device_ranker(FixedScores(dense), exclude_seen=ex)
    return out


@pytest.mark.parametrize("v", [60, 3000])  # 3000: the dense top-k's two-stage path too
@pytest.mark.parametrize("exclude", [False, True])
def test_every_path_gives_the_same_counts_and_lists(v, exclude):
    pytest.importorskip("keras")
    rng = np.random.default_rng(v + exclude)
    lengths = np.full(B, L)
    # sparse-like scores: dense, CSR (absent = 0) and device paths
    s, targets, prefixes = planted(rng, v)
    ex = prefixes if exclude else None
    h, t, top = reference(s, targets, ex)
    _, _, scored_top = reference(s, targets, ex, floor=0.0)
    csr = sp.csr_matrix(s)
    assert np.isnan(csr.data).any()
    for name, make in paths(s, csr=csr).items():
        got_h, got_t, got_top = make(exclude)(prefixes, lengths, targets)
        assert np.array_equal(got_h, h) and np.array_equal(got_t, t), name
        # a CSR's lists hold the tracks it scored (above its absent 0): the dense list,
        # cut where the scored tracks end
        want = scored_top if name == "sparse" else top
        assert np.array_equal(got_top, want), name
    assert (t > 0).any() and (h == v - 1).any() and (scored_top == 0).any()
    # shared + sparse scores: dense, shared and device paths
    u, extra = shared_planted(rng, v)
    s = (u[None, :] + extra.toarray()).astype(np.float32)
    h, t, top = reference(s, targets, ex)
    for name, make in paths(s, shared=(u, extra)).items():
        got = make(exclude)(prefixes, lengths, targets)
        assert np.array_equal(got[0], h) and np.array_equal(got[1], t), name
        assert np.array_equal(got[2], top), name
    assert (t > 0).any()


@pytest.mark.parametrize("v", [60, 3000])
def test_the_hybrid_candidates_rank_and_list_as_the_kernel(v):
    """The weight grid's candidate path (no exclusion there): its ranks equal the
    kernel's wherever they count (<= 20), its 21 best columns start with the top-20."""
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(v)
    s, targets, _ = planted(rng, v)
    succ = np.stack([rng.permutation(np.arange(1, v + 1))[:4] for _ in range(B)])
    succ[rng.random(succ.shape) < 0.3] = 0
    succ[::4, 0] = targets[::4]  # boosted targets (a repeat slot sums its boosts)
    add = (rng.integers(0, 3, size=succ.shape) / 2).astype(np.float32)
    boosted = s.copy()
    rows = np.repeat(np.arange(B), succ.shape[1])
    np.add.at(boosted, (rows, succ.ravel()), np.where(succ.ravel() > 0, add.ravel(), 0))
    boosted[:, 0] = s[:, 0]
    h, t, _ = reference(boosted, targets)
    want = 1.0 + h + t / 2.0
    _, _, top = reference(s, targets)
    _, _, scored_top = reference(s, targets, floor=0.0)
    for c, lists in (
        (hybrid.batch_candidates(s, targets, succ, hybrid.numpy_ops()), top),
        (hybrid.batch_candidates(keras.ops.convert_to_tensor(s), targets, succ, keras.ops), top),
        (hybrid.sparse_batch_candidates(sp.csr_matrix(s), targets, succ), scored_top),
    ):
        got = hybrid.candidate_ranks(c, targets, succ, add)
        counted = want <= 20
        assert np.array_equal(got[counted], want[counted]) and (got[~counted] > 20).all()
        assert np.array_equal(np.where(lists > 0, c["top_ids"][:, :TOPK], 0), lists)
    assert counted.sum() > B // 3


def test_a_sparse_top20_holds_only_the_tracks_the_method_scored():
    """Each row scores 3 tracks (a CSR, absent = 0): its list holds those 3, then no
    track (0), never popular tracks it never scored; so coverage and popularity count
    what the ranks see: a listed target is a hit at 20, an unlisted one is not."""
    v, rng = 400, np.random.default_rng(1)
    cols = np.stack([rng.permutation(np.arange(1, v + 1))[:3] for _ in range(40)])
    vals = rng.integers(1, 4, size=cols.shape).astype(np.float32)

    def scorer(prefixes, lengths):
        n = len(prefixes)
        return sp.csr_matrix(
            (vals[:n].ravel(), (np.repeat(np.arange(n), 3), cols[:n].ravel())), shape=(n, v + 1)
        )

    targets = np.where(np.arange(40) % 2 == 0, cols[:, 0], (cols[:, 0] + 7) % v + 1)
    ev = Events(
        np.ones((40, 2), np.int32),
        np.full(40, 2),
        targets,
        np.arange(40),
        np.ones(40, np.int32),
    )
    pop = np.arange(v + 1, 0, -1).astype(float)  # lower ids more played
    res = evaluate(ranker_from_scorer(scorer), ev, v, pop)
    assert res.topk.shape == (40, TOPK)
    for i in range(40):
        assert sorted(res.topk[i, :3].tolist()) == sorted(cols[i].tolist())
        assert not res.topk[i, 3:].any()
    listed = (res.topk == targets[:, None]).any(axis=1)
    assert np.array_equal(listed, res.ranks <= 20)
    assert res.summary["coverage@20"] == len(np.unique(cols)) / v
    assert res.summary["mean_pop@20"] == pytest.approx(pop[cols].mean())


def test_decisions_state_the_average_tie_policy():
    """docs/DECISIONS.md's ranking contract states the policy of lastfm/metrics.py."""
    from lastfm.metrics import TIE_POLICY

    text = (Path(__file__).resolve().parents[1] / "docs" / "DECISIONS.md").read_text()
    contract = re.search(r"\*\*One ranking contract\*\*(.+?)(?=\n- \*\*|\n## )", text, re.S)
    assert contract, "DECISIONS.md: the ranking-contract entry"
    said = " ".join(contract.group(1).split())
    assert TIE_POLICY.startswith("average")
    assert "average rank" in said and "optimistic" in said and "pessimistic" in said
    assert not re.search(r"tie policy is (still )?the optimistic", said)
