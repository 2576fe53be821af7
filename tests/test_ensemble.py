"""The baseline comparators of the hybrid (lastfm.ensemble): the ensemble's base chosen by
the ensemble's own validation score, the blend fitted on validation only and ranking
every track by the one ranking contract, and the share of a hybrid's gain that survives."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lastfm import ensemble
from lastfm.baselines import Baseline, SequentialRules
from lastfm.data import Events, load_splits, make_events, popularity, sample_events
from lastfm.evaluate import EvalConfig, evaluate_ensemble, tune_baselines
from lastfm.metrics import evaluate, ranker_from_scorer, target_ranks
from lastfm.paths import Layout


class FirstTrack(Baseline):
    """Scores the prefix's first track 1: what the toy's returning listeners play next."""

    name = "FIRST"

    def sparse_scores(self, prefixes, lengths, times=None):
        b = len(prefixes)
        ones = np.ones(b, np.float32)
        return sp.csr_matrix((ones, (np.arange(b), prefixes[:, 0])), shape=(b, self.n_items + 1))


def toy():
    """Training sessions a, a+1, a+2, a+3 (40 tracks); validation prefixes a, a+1, a+2
    followed by a+3 (3 events in 5: what the transition counts know) or by a (2 in 5)."""
    starts = np.tile(np.arange(1, 38), 3)
    items = (starts[:, None] + np.arange(4)).ravel()
    train = pd.DataFrame(
        {
            "session_id": np.repeat(np.arange(len(starts)), 4),
            "item_idx": items,
            "ts_s": np.arange(len(items)),
        }
    )
    n = 50
    a = 1 + np.arange(n) % 30
    targets = np.where(np.arange(n) % 5 < 3, a + 3, a)
    valid = Events(
        prefixes=(a[:, None] + np.arange(3)).astype(np.int32),
        lengths=np.full(n, 3, np.int32),
        targets=targets.astype(np.int32),
        sessions=np.arange(n),
        positions=np.full(n, 3, np.int32),
        times=np.zeros(n, np.int64),
    )
    return train, valid, 40


def test_the_ensemble_base_is_chosen_by_the_ensembles_validation_score():
    """SR alone is the better baseline (MRR@20 0.6 against 0.4), but its ensemble adds
    nothing (the transition counts are its own rules); the first-track baseline's
    ensemble knows both patterns (0.8): it is the base, and its row says so."""
    train, valid, n_items = toy()
    chosen = []
    for model in (
        SequentialRules(steps=1, pruning=0).fit(train, n_items),
        FirstTrack().fit(train, n_items),
    ):
        s = evaluate(ranker_from_scorer(model.scorer), valid, n_items).summary
        own = {"MRR@20": s["MRR@20"], "HR@20": s["HR@20"]}
        chosen.append((model, {"tried": [{"params": {}, **own}], "valid": own}))
    assert [info["valid"]["MRR@20"] for _, info in chosen] == pytest.approx([0.6, 0.4])
    c = ensemble.baseline_ensemble(
        chosen, train, valid, n_items, transitions=4, prefix_len=3, exclude_seen=False
    )
    assert c.name == "FIRST" + ensemble.ENSEMBLE
    rec = c.record
    assert rec["base"] == "FIRST()" and rec["base_by_own_validation"].startswith("SR(")
    by_base = {x["base"].split("(")[0]: x for x in rec["candidates"]}
    assert by_base["SR"]["valid_MRR@20"] == pytest.approx(0.6)
    assert by_base["FIRST"]["valid_MRR@20"] == pytest.approx(0.8)
    assert by_base["SR"]["base_valid_MRR@20"] == pytest.approx(0.6)
    assert rec["valid_MRR@20"] == pytest.approx(0.8) and (rec["weight"] or rec["pop_weight"])
    # the ranker at the chosen weights gives the recorded validation figure
    assert evaluate(c.ranker, valid, n_items).summary["MRR@20"] == pytest.approx(0.8)


@pytest.fixture(scope="module")
def tuned(pipeline_data):
    """The tiny generated window's splits and its tuned baselines (a few, for speed)."""
    splits, vocab, _ = load_splits(Layout.at(pipeline_data), "1m")
    n_items = len(vocab)
    valid = sample_events(make_events(splits["valid"], 50), 20_000, 0)
    test = make_events(splits["test"], 50)
    names = ["POP", "S-POP", "SR", "Item-kNN", "VSTAN"]
    chosen = tune_baselines(splits["train"], valid, n_items, names, log_fn=lambda _: None)
    return splits, n_items, popularity(vocab), valid, test, chosen


def test_the_comparators_are_fitted_on_validation_only(tuned):
    """Corrupted test targets change the test figures, never what was fitted."""
    splits, n_items, pop, valid, test, chosen = tuned
    ec = EvalConfig(model=False, n_boot=10)
    rows, seconds = evaluate_ensemble(chosen, splits["train"], valid, test, n_items, pop, ec)
    assert ensemble.BLEND in rows and len(rows) == 2  # the blend and the ensemble
    assert set(seconds) == set(rows) and all(s["fit"] >= 0 for s in seconds.values())
    rng = np.random.default_rng(0)
    bad = Events(**{**vars(test), "targets": rng.permutation(test.targets).astype(np.int32)})
    again, _ = evaluate_ensemble(chosen, splits["train"], valid, bad, n_items, pop, ec)
    assert set(again) == set(rows)
    for name in rows:
        assert again[name][0]["params"] == rows[name][0]["params"]
        assert not np.array_equal(again[name][1].ranks, rows[name][1].ranks)
    blend = rows[ensemble.BLEND][0]["params"]
    assert blend["fit_events"] + blend["select_events"] == len(valid)
    assert blend["trees"] >= 1 and len(blend["model_md5"]) == 32
    ens = next(r for n, r in rows.items() if n.endswith(ensemble.ENSEMBLE))[0]["params"]
    assert [c["base"].split("(")[0] for c in ens["candidates"]] == [m.name for m, _ in chosen]
    best = max(ens["candidates"], key=lambda c: c["valid_MRR@20"])
    assert ens["valid_MRR@20"] == best["valid_MRR@20"]


def test_the_blend_ranks_every_track_by_the_ranking_contract(tuned):
    """Every event gets a finite rank; the sparse scores rank as their dense form does
    (the one kernel); a target outside the candidates ties with every other track
    outside them, at the bottom."""
    splits, n_items, _, valid, test, chosen = tuned
    blend = ensemble.BaselineBlend([m for m, _ in chosen], splits["train"], n_items)
    assert blend.fit(valid) is not None
    res = evaluate(ranker_from_scorer(blend.scorer), test, n_items)
    assert np.isfinite(res.ranks).all() and (res.ranks <= n_items).all()
    assert len(res.ranks) == len(test)
    sl = slice(0, min(300, len(test)))
    scores = blend.scorer(test.prefixes[sl], test.lengths[sl], test.times[sl])
    assert scores.data.min() > 0
    dense = scores.toarray()
    targets = test.targets[sl]
    assert np.array_equal(target_ranks(dense, targets), res.ranks[sl])
    n_cand = (dense[:, 1:] > 0).sum(axis=1)
    outside = dense[np.arange(len(targets)), targets] == 0
    assert outside.any() and (~outside).any()
    bottom = 1 + n_cand + (n_items - n_cand - 1) / 2
    assert np.array_equal(res.ranks[sl][outside], bottom[outside])
    # the top-20 lists hold candidates only
    top = res.topk[sl]
    assert all((dense[i, top[i][top[i] > 0]] > 0).all() for i in range(len(top)))


def test_the_share_of_a_hybrids_gain_that_survives_the_comparators():
    results = {
        "SR": {"HR@20": 0.60, "MRR@20": 0.40},
        "VSTAN": {"HR@20": 0.70, "MRR@20": 0.20},
        "VSTAN" + ensemble.ENSEMBLE: {"HR@20": 0.72, "MRR@20": 0.46},
        ensemble.BLEND: {"HR@20": 0.74, "MRR@20": 0.49},
        "Net+transitions": {"HR@20": 0.69, "MRR@20": 0.48},
    }
    (g,) = ensemble.hybrid_gains(results, {"HR@20": "VSTAN", "MRR@20": "SR"})
    m = g["MRR@20"]
    assert g["hybrid"] == "Net+transitions" and m["reference"] == "SR"
    assert m["gain_vs_reference"] == pytest.approx(0.08)
    ens = m["comparators"]["VSTAN" + ensemble.ENSEMBLE]
    assert ens["gain"] == pytest.approx(0.02) and ens["share_surviving"] == pytest.approx(0.25)
    blend = m["comparators"][ensemble.BLEND]
    assert blend["share_surviving"] == pytest.approx(-0.125)
    # HR@20: the hybrid does not beat its reference, so no share
    assert g["HR@20"]["comparators"][ensemble.BLEND]["share_surviving"] is None
    assert ensemble.hybrid_gains(results, None) == []


def test_the_report_names_the_winning_base_and_the_surviving_share():
    from lastfm.report import comparators_markdown

    ens_name = "VSTAN" + ensemble.ENSEMBLE
    cand = {"weight": 8.0, "pop_weight": 0.0, "valid_HR@20": 0.7, "grid_size": 104}
    methods = {
        "SR": {"HR@20": 0.60, "MRR@20": 0.40},
        ens_name: {
            "HR@20": 0.72,
            "MRR@20": 0.46,
            "params": {
                "base": "VSTAN(k=100)",
                "base_by_own_validation": "SR(steps=10)",
                "valid_MRR@20": 0.47,
                "candidates": [
                    {
                        "base": "SR(steps=10)",
                        "base_valid_MRR@20": 0.45,
                        **cand,
                        "valid_MRR@20": 0.45,
                    },
                    {
                        "base": "VSTAN(k=100)",
                        "base_valid_MRR@20": 0.24,
                        **cand,
                        "valid_MRR@20": 0.47,
                    },
                ],
            },
        },
        ensemble.BLEND: {"HR@20": 0.74, "MRR@20": 0.49},
        "Net+transitions": {"HR@20": 0.69, "MRR@20": 0.48},
    }
    gains = ensemble.hybrid_gains(methods, {"HR@20": "SR", "MRR@20": "SR"})
    md = comparators_markdown(
        {
            "methods": methods,
            "hybrid_gains": gains,
            "comparator_seconds": {ens_name: {"fit": 1.5, "test": 0.2}},
        }
    )
    assert "VSTAN(k=100) won on the ensemble's validation MRR@20 (0.4700)" in md
    assert "SR(steps=10) would have been chosen" in md and "fitted in 1.5 s" in md
    assert "| Net+transitions | SR | +0.0800 | +0.0200 (25%) | -0.0100 (-13%) |" in md
