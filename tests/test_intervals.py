"""Intervals by listener (lastfm.metrics.bootstrap_draws / bootstrap_ci / interval_unit),
paired differences on the same draws, and reference baselines chosen on validation
(lastfm.evaluate.choose_references; lastfm.report's tables)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest

import test_model as evaluation
from lastfm.evaluate import choose_references
from lastfm.metrics import (
    ONE_LISTENER,
    bootstrap_ci,
    bootstrap_draws,
    interval_unit,
    metric_values,
    resample_units,
)
from lastfm.report import results_markdown

LISTENER_TEXT = "95% bootstrap intervals over listeners (each with all its sessions), {} listeners"


def correlated_listeners(n_users=40, sessions_per_user=5, events_per_session=4, seed=0):
    """Every event of a listener has the same rank (a hit at rank 1 or a miss at 100):
    its sessions are perfectly alike."""
    rng = np.random.default_rng(seed)
    per_user = sessions_per_user * events_per_session
    users = np.repeat(np.arange(n_users), per_user)
    sessions = np.repeat(np.arange(n_users * sessions_per_user), events_per_session)
    ranks = np.repeat(np.where(rng.random(n_users) < 0.5, 1.0, 100.0), per_user)
    return ranks, sessions, users


def width(ci):
    return ci[1] - ci[0]


def test_listener_interval_is_wider_than_the_session_interval_when_sessions_are_alike():
    ranks, sessions, users = correlated_listeners()
    by_listener = bootstrap_ci(ranks, sessions, ("HR@20",), n_boot=2000, seed=1, users=users)
    by_session = bootstrap_ci(ranks, sessions, ("HR@20",), n_boot=2000, seed=1)
    # 5 identical sessions per listener: the session bootstrap is about sqrt(5) too narrow
    assert width(by_listener["HR@20"]) > 1.6 * width(by_session["HR@20"])
    # Independent computation: the sessions of a listener add nothing, so the draws'
    # sd is the listener bootstrap's, sd(listener means) * sqrt((U - 1) / U) / sqrt(U).
    draws = bootstrap_draws(
        {"HR@20": metric_values(ranks)["HR@20"]}, sessions, users, n_boot=4000, seed=2
    )["HR@20"]
    hits = (ranks[::20] == 1.0).astype(float)
    assert draws.std() == pytest.approx(hits.std() / np.sqrt(len(hits)), rel=0.1)


def test_listener_draws_match_a_plain_loop_in_distribution():
    """Listeners with 1, 2 and 4 sessions of different sizes: the vectorised draws and a
    direct loop (draw listeners, keep each drawn listener's events) agree in mean and sd."""
    rng = np.random.default_rng(4)
    sess_user = np.array([0, 1, 1, 2, 2, 2, 2])
    sizes = np.array([3, 1, 5, 2, 2, 6, 1])
    sessions = np.repeat(np.arange(7) * 10, sizes)  # ids need not be 0..S-1
    users = np.repeat(sess_user + 7, sizes)
    values = rng.random(len(sessions))
    fast = bootstrap_draws({"v": values}, sessions, users, n_boot=20_000, seed=3)["v"]
    slow = np.empty(20_000)
    loop_rng = np.random.default_rng(5)
    for b in range(len(slow)):
        ev = np.concatenate([np.flatnonzero(users == u + 7) for u in loop_rng.integers(0, 3, 3)])
        slow[b] = values[ev].mean()
    assert fast.mean() == pytest.approx(slow.mean(), abs=4 * slow.std() / np.sqrt(len(slow)))
    assert fast.std() == pytest.approx(slow.std(), rel=0.05)


def test_sessions_are_not_resampled_again_inside_a_drawn_listener():
    """No listener effect (every event independent): the interval's spread is the plain
    standard error of the mean, not inflated by a second stage over sessions."""
    rng = np.random.default_rng(8)
    users = np.repeat(np.arange(300), 12)
    sessions = np.repeat(np.arange(300 * 4), 3)
    values = rng.random(len(users))
    draws = bootstrap_draws({"v": values}, sessions, users, n_boot=4000, seed=1)["v"]
    # listeners' means vary only through their 12 independent events: se = sd / sqrt(E)
    assert draws.std() == pytest.approx(values.std() / np.sqrt(len(values)), rel=0.1)


def test_one_listener_is_the_session_bootstrap_and_says_so():
    ranks, sessions, _ = correlated_listeners(n_users=1, sessions_per_user=30)
    ranks = np.random.default_rng(0).integers(1, 40, size=len(ranks)).astype(float)
    users = np.zeros(len(ranks), int)
    one = bootstrap_ci(ranks, sessions, ("MRR@20",), n_boot=4000, seed=0, users=users)
    plain = bootstrap_ci(ranks, sessions, ("MRR@20",), n_boot=4000, seed=0)
    # the listener draw is always the one listener: only its sessions are resampled
    assert width(one["MRR@20"]) == pytest.approx(width(plain["MRR@20"]), rel=0.1)
    unit = interval_unit(sessions, users, 4000)
    assert unit["unit"] == "sessions of one listener" and unit["listeners"] == 1
    assert ONE_LISTENER in unit["text"] and "over listeners" not in unit["text"]
    many = interval_unit(*correlated_listeners()[1:], 1000)
    assert many["unit"] == "listeners" and many["text"].startswith(LISTENER_TEXT.format(40))
    assert interval_unit(sessions, None, 10)["unit"] == "sessions"


def test_same_seed_same_interval_and_draws_independent_of_the_values():
    ranks, sessions, users = correlated_listeners(seed=3)
    ranks = ranks + np.random.default_rng(1).integers(0, 30, size=len(ranks))
    a = bootstrap_ci(ranks, sessions, n_boot=300, seed=7, users=users)
    assert a == bootstrap_ci(ranks, sessions, n_boot=300, seed=7, users=users)
    assert a != bootstrap_ci(ranks, sessions, n_boot=300, seed=8, users=users)
    v = metric_values(ranks)
    one = bootstrap_draws({"HR@20": v["HR@20"]}, sessions, users, n_boot=300, seed=7)
    two = bootstrap_draws(
        {"MRR@20": v["MRR@20"], "HR@20": v["HR@20"]}, sessions, users, n_boot=300, seed=7
    )
    assert np.array_equal(one["HR@20"], two["HR@20"])


def test_paired_differences_use_identical_draws():
    ranks, sessions, users = correlated_listeners(seed=5)
    other = np.random.default_rng(2).integers(1, 40, size=len(ranks)).astype(float)
    same = bootstrap_ci(ranks, sessions, ("HR@20", "MRR@20"), 200, other_ranks=ranks, users=users)
    assert same == {"HR@20": (0.0, 0.0), "MRR@20": (0.0, 0.0)}
    # the interval of a - b is the percentiles of (a's draw - b's draw), draw by draw
    va, vb = metric_values(ranks)["MRR@20"], metric_values(other)["MRR@20"]
    draws = bootstrap_draws({"a": va, "b": vb}, sessions, users, n_boot=500, seed=4)
    diff = bootstrap_ci(
        ranks, sessions, ("MRR@20",), n_boot=500, seed=4, other_ranks=other, users=users
    )["MRR@20"]
    assert diff == pytest.approx(tuple(np.percentile(draws["a"] - draws["b"], (2.5, 97.5))))


def test_draws_in_small_chunks_and_a_session_of_two_listeners():
    ranks, sessions, users = correlated_listeners(seed=6)
    v = {"HR@20": metric_values(ranks)["HR@20"]}
    whole = bootstrap_draws(v, sessions, users, n_boot=3000, seed=0)["HR@20"]
    chunked = bootstrap_draws(v, sessions, users, n_boot=3000, seed=0, max_picks=500)["HR@20"]
    assert len(chunked) == 3000 and np.isfinite(chunked).all()
    assert chunked.std() == pytest.approx(whole.std(), rel=0.1)
    ev_sess, start, per_user = resample_units(sessions, users)
    assert per_user.tolist() == [5] * 40 and start[:3].tolist() == [0, 5, 10]
    bad = users.copy()
    bad[1] = 39  # the first session now holds events of two listeners
    with pytest.raises(ValueError, match="more than one listener"):
        resample_units(sessions, bad)


def test_bootstrap_is_fast_at_full_scale():
    """~30K events, ~1K listeners, 1000 draws: well under a second here (limit generous)."""
    rng = np.random.default_rng(0)
    sess_user = np.repeat(np.arange(1000), rng.poisson(4, 1000) + 1)
    sessions = np.repeat(np.arange(len(sess_user)), rng.geometric(1 / 6, len(sess_user)))
    ranks = rng.integers(1, 60, size=len(sessions)).astype(float)
    t0 = time.perf_counter()
    bootstrap_ci(ranks, sessions, n_boot=1000, users=sess_user[sessions])
    assert time.perf_counter() - t0 < 10


def test_references_are_chosen_on_validation_per_metric():
    def row(test_mrr, valid_hr, valid_mrr):
        return {"MRR@20": test_mrr, "valid": {"HR@20": valid_hr, "MRR@20": valid_mrr}}

    results = {
        "SR": row(0.30, 0.50, 0.40),
        "AR": row(0.35, 0.60, 0.30),  # the best on test: never the reason for a choice
        "POP": row(0.10, 0.20, 0.10),
        "BiGRU-Att": {"MRR@20": 0.9},  # not a baseline
        "VSTAN": {"MRR@20": 0.5, "valid": None},  # merged, its configuration off the grid
    }
    assert choose_references(results) == {"chosen_on": "validation", "HR@20": "AR", "MRR@20": "SR"}
    assert choose_references({"BiGRU-Att": {"MRR@20": 0.9}}) is None


def test_evaluation_of_one_listener_labels_every_interval(pipeline_data, tmp_path, monkeypatch):
    """A test split holding one listener: every table that shows an interval says it is
    over that listener's sessions only; references and their validation scores recorded."""
    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    test = data / "sessions" / "1m" / "test.parquet"
    split = pd.read_parquet(test)
    busiest = split["user_idx"].value_counts().index[0]
    split[split["user_idx"] == busiest].to_parquet(test)
    monkeypatch.setenv("LASTFM_DATA_DIR", str(data))
    evaluation.main(["--methods", "POP,SR,AR", "--no-model", "--no-ensemble", "--n-boot", "50"])
    res = json.loads((data / "reports" / "results.json").read_text())
    assert res["intervals"]["unit"] == "sessions of one listener"
    assert res["intervals"]["listeners"] == 1
    refs = res["reference_baselines"]
    assert refs["chosen_on"] == "validation" and "best_baseline" not in res
    valid = {n: res["methods"][n]["valid"] for n in ("POP", "SR", "AR")}
    for m in ("HR@20", "MRR@20"):
        assert valid[refs[m]][m] == max(v[m] for v in valid.values())
        for n, r in res["methods"].items():
            d = r.get("diff_vs_reference", {})
            assert (m in d) == (n != refs[m])
            if m in d:
                assert d[m][0] == pytest.approx(r[m] - res["methods"][refs[m]][m])
                assert d["baseline"][m] == refs[m]
    md = (data / "reports" / "results.md").read_text()
    assert md.count(ONE_LISTENER) >= 3  # the results, the differences, the segments
    assert "over listeners" not in md and "chosen on validation" in md


def test_results_tables_name_the_listeners_and_old_files_still_render():
    method = {
        "HR@1": 0.1,
        "HR@5": 0.2,
        "HR@10": 0.3,
        "HR@20": 0.4,
        "MRR@20": 0.2,
        "NDCG@20": 0.25,
        "coverage@20": 0.1,
        "ci": {m: [0.0, 1.0] for m in ("HR@1", "HR@5", "HR@10", "HR@20", "MRR@20", "NDCG@20")},
        "params": {},
    }
    base = {
        "window": "1m",
        "n_items": 10,
        "test_events": 100,
        "test_sessions": 20,
        "exclude_seen": False,
        "tie_policy": "average",
        "n_boot": 100,
    }
    new = {
        **base,
        "intervals": interval_unit(np.arange(20), np.arange(20) // 4, 100),
        "reference_baselines": {"chosen_on": "validation", "HR@20": "AR", "MRR@20": "SR"},
        "methods": {
            "SR": {
                **method,
                "valid": {"HR@20": 0.3, "MRR@20": 0.2},
                "diff_vs_reference": {
                    "baseline": {"HR@20": "AR", "MRR@20": "SR"},
                    "HR@20": [-0.01, -0.02, 0.0],
                },
            },
            "AR": {
                **method,
                "valid": {"HR@20": 0.4, "MRR@20": 0.1},
                "diff_vs_reference": {
                    "baseline": {"HR@20": "AR", "MRR@20": "SR"},
                    "MRR@20": [-0.1, -0.2, 0.0],
                },
            },
        },
    }
    md = results_markdown(new)
    assert md.count(LISTENER_TEXT.format(5)) == 2  # the results and the differences
    assert "HR@20 against AR (the best validation HR@20, 0.4000)" in md
    assert "| SR | AR / SR | -0.0100 [-0.0200, +0.0000] | (reference) |" in md
    old = {
        **base,
        "best_baseline": "SR",
        "methods": {
            "SR": method,
            "AR": {
                **method,
                "diff_vs_best_baseline": {
                    "baseline": "SR",
                    "HR@20": [0.1, 0.0, 0.2],
                    "MRR@20": [-0.1, -0.2, 0.0],
                },
            },
        },
    }
    md = results_markdown(old)
    assert "95% bootstrap intervals over sessions; 100 resamples" in md
    assert "best baseline on test MRR@20" in md and "| AR | SR | +0.1000" in md


def test_seed_groups_list_the_seeds_of_their_own_rows():
    """A seed without a hybrid: the hybrid's group names only the seeds that have one, in
    the order of its rows (review finding: the lists had been every member's)."""
    from lastfm.evaluate import group_seeds

    records, results = {}, {}
    for seed, has_hybrid in ((0, True), (1, False), (2, True)):
        record = {
            "model": {"arch": "gru4rec"},
            # each seed's --other-out names its own folder: not a configuration
            "train": {"lr": 0.006, "seed": seed, "other_out": f"d{seed}_HR"},
            "history": [{}] * (3 + seed),
            "stopped": "epochs",
        }
        labels = [f"GRU4Rec (s{seed})"] + ([f"GRU4Rec+transitions (s{seed})"] if has_hybrid else [])
        records[f"d{seed}"] = (record, labels)
        for i, label in enumerate(labels):
            results[label] = {"HR@20": 0.5 + seed / 100 + i / 10, "MRR@20": 0.3 + seed / 100}
    alone, hybrid = group_seeds(records, results)
    assert alone["seeds"] == [0, 1, 2] and alone["epochs"] == [3, 4, 5]
    assert hybrid["rows"] == ["GRU4Rec+transitions (s0)", "GRU4Rec+transitions (s2)"]
    assert hybrid["seeds"] == [0, 2] and hybrid["epochs"] == [3, 5]
