"""Session-aware baselines (lastfm/session_aware.py): each listener's earlier sessions only,
extend / boost / remind as session-rec defines them, and their own table in the stage."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

import test_model as evaluation
from lastfm.baselines import VSKNN, VSTAN, SequentialRules
from lastfm.common import PipelineError
from lastfm.metrics import evaluate, ranker_from_scorer
from lastfm.session_aware import (
    NETWORK_REMINDS,
    SESSION_AWARE_GRIDS,
    ListenerHistory,
    NetworkReminders,
    SessionAware,
    history_ranker,
    rule_owners,
    with_history,
)

V = 9


def plays(rows) -> pd.DataFrame:
    """(user, session, [items], start time): one play a minute."""
    out = []
    for user, sid, items, t0 in rows:
        for p, it in enumerate(items):
            out.append((sid, user, p, it, t0 + 60 * p))
    return pd.DataFrame(out, columns=["session_id", "user_idx", "position", "item_idx", "ts_s"])


TRAIN = plays(
    [
        (0, 1, [1, 2, 3], 0),
        (1, 2, [1, 4, 5], 1000),
        (0, 3, [6, 7], 5000),
        (1, 4, [8, 1, 4], 9000),
    ]
)
LATER = plays([(0, 5, [1, 9], 20000), (0, 6, [2, 3], 30000), (1, 7, [4, 4], 40000)])


def test_history_is_every_earlier_session_and_never_the_current_or_a_later_one():
    h = ListenerHistory([TRAIN, LATER])
    # listener 0 in session 6: sessions 1, 3 and 5 (not 6, not listener 1's)
    assert h.tails([0], [6], np.array([99]))[0].tolist() == [1, 2, 3, 6, 7, 1, 9]
    assert h.tails([0], [6], np.array([3]))[0].tolist() == [7, 1, 9]
    assert h.tails([0], [1], np.array([5]))[0].tolist() == []  # the first session: nothing
    rem = h.recency([0], [5], [20060], V).toarray()[0]
    # IRec = t / (t - t_i), divided by its largest: (t - T) / (t - t_i), T = 5060 (track 7)
    t = 20060.0
    last = {1: 0, 2: 60, 3: 120, 6: 5000, 7: 5060}
    want = np.zeros(V + 1)
    for i, ti in last.items():
        want[i] = (t - 5060) / (t - ti)
    np.testing.assert_allclose(rem, want)
    # a later session's plays change nothing before it
    other = LATER.copy()
    other.loc[other["session_id"] == 6, "item_idx"] = 8
    h2 = ListenerHistory([TRAIN, other])
    np.testing.assert_array_equal(h2.recency([0], [5], [t], V).toarray(), rem[None])


def test_sr_boost_multiplies_the_listeners_own_rules():
    train = plays([(0, 1, [1, 2], 0), (1, 2, [1, 3], 100)])
    sr = SequentialRules(steps=1).fit(train, V)
    h = ListenerHistory([train])
    owners = rule_owners(train, 1, V)
    aware = SessionAware(sr, h, boost=1.0, owners=owners)
    pre, n = np.array([[1, 0]]), np.array([1])
    for user, own, other in ((0, 2, 3), (1, 3, 2)):
        s = aware.sparse_scores(pre, n, np.array([500]), np.array([user]), np.array([9])).toarray()
        assert s[0, own] == pytest.approx(1.0) and s[0, other] == pytest.approx(0.5)
    with pytest.raises(PipelineError, match="owners"):
        SessionAware(sr, h, boost=1.0)
    with pytest.raises(PipelineError, match="extend applies"):
        SessionAware(sr, h, extend=3, owners=owners)


@pytest.mark.parametrize("cls", [VSKNN, VSTAN])
def test_knn_boost_keeps_the_listeners_own_neighbour(cls):
    # two neighbours equally similar to the prefix [1] and ending at the same time; with
    # k = 1 the tie keeps the later-indexed one (the other listener's, holding 3), unless
    # the own one (holding 2) is boosted
    train = plays([(0, 1, [1, 2], 0), (1, 2, [1, 3], 0)])
    base = cls(k=1).fit(train, V)
    h = ListenerHistory([train])
    pre, n, t, u, s = np.array([[1]]), np.array([1]), np.array([100]), np.array([0]), np.array([9])
    plain = SessionAware(base, h).sparse_scores(pre, n, t, u, s).toarray()[0]
    boosted = SessionAware(base, h, boost=1.0).sparse_scores(pre, n, t, u, s).toarray()[0]
    assert plain[3] > 0 and plain[2] == 0
    assert boosted[2] > 0 and boosted[3] == 0


def test_extend_puts_the_listeners_last_plays_in_front_of_a_short_prefix():
    base = VSKNN(k=10, sample=0).fit(TRAIN, V)
    h = ListenerHistory([TRAIN, LATER])
    aware = SessionAware(base, h, extend=4)
    # listener 0, session 6, prefix [2]: extended to [1, 9] + ... the last 3 earlier plays
    got = aware.sparse_scores(
        np.array([[2, 0, 0]]), np.array([1]), np.array([30000]), np.array([0]), np.array([6])
    )
    want = base.sparse_scores(np.array([[7, 1, 9, 2]]), np.array([4]))
    want = want.toarray() / want.toarray().max()
    np.testing.assert_allclose(got.toarray(), want, rtol=1e-6)
    # a prefix as long as ``extend`` is left alone
    long = np.array([[2, 3, 1, 4]])
    got = aware.sparse_scores(long, np.array([4]), np.array([9]), np.array([0]), np.array([6]))
    plain = base.sparse_scores(long, np.array([4])).toarray()
    np.testing.assert_allclose(got.toarray(), plain / plain.max(), rtol=1e-6)


def test_reminders_find_a_track_only_the_listeners_history_holds():
    # the target (5) never follows 1 in training: SR cannot rank it; the listener played
    # it in an earlier session, so reminding puts it high
    train = plays([(0, 1, [6, 5], 0), (1, 2, [1, 2], 100), (1, 3, [1, 2], 200)])
    test = plays([(0, 4, [1, 5], 10_000)])
    sr = SequentialRules(steps=1).fit(train, V)
    h = ListenerHistory([train, test])

    class Ev:  # one event: prefix [1] of listener 0's session 4, target 5
        prefixes, lengths, targets = np.array([[1]]), np.array([1]), np.array([5])
        sessions, positions, times, users = np.array([4]), np.array([1]), np.array([10_000]), None

    from lastfm.data import Events

    ev = Events(
        Ev.prefixes, Ev.lengths, Ev.targets, Ev.sessions, Ev.positions, Ev.times, np.array([0])
    )
    ranks = {}
    for w in (0.0, 2.0):
        model = SessionAware(sr, h, remind=w, owners=rule_owners(train, 1, V))
        ranks[w] = evaluate(ranker_from_scorer(model.scorer), ev, V).ranks[0]
    assert ranks[2.0] == 1.0 < ranks[0.0]


def test_the_stage_reports_them_in_their_own_table(pipeline_data, monkeypatch):
    monkeypatch.setenv("LASTFM_DATA_DIR", str(pipeline_data))
    rep = pipeline_data / "reports"
    evaluation.main(
        [
            "--window",
            "1m",
            "--no-model",
            "--n-boot",
            "50",
            "--methods",
            "SR,V-SKNN,VSTAN",
            "--session-aware",
            "--no-ensemble",
            "--no-blend",
        ]
    )
    res = json.loads((rep / "results.json").read_text())
    aware = {n: r for n, r in res["methods"].items() if r.get("session_aware")}
    assert set(aware) == {"SR_BR", "V-SKNN_EBR", "VSTAN_EBR"}
    for name, r in aware.items():
        base = r["session_aware"]["base"]
        assert name.startswith(base) and r["diff_vs_base"]["baseline"] == base
        assert len(r["tuning"]) == len(SESSION_AWARE_GRIDS[base])
        assert r["events"] == res["test_events"]
        # the grid holds the session-based method itself: validation never below the base
        assert r["valid"]["MRR@20"] >= res["methods"][base]["valid"]["MRR@20"] - 1e-12
    assert set(res["reference_baselines"].values()) - {"validation"} <= {"SR", "V-SKNN", "VSTAN"}
    md = (rep / "results.md").read_text()
    main_table = md.split("Paired differences")[0]
    assert "SR_BR" not in main_table and "Session-aware baselines" in md


def test_session_aware_needs_the_splits_in_memory(tmp_path):
    with pytest.raises(PipelineError, match="--session-aware reads the splits in memory"):
        evaluation.main(["--data-dir", str(tmp_path), "--session-aware", "--stream"])


def test_network_reminders_add_the_listeners_recency_to_the_softmax_over_its_max():
    h = ListenerHistory([TRAIN, LATER])
    z = np.log(np.array([[0.0, 1, 2, 4, 1, 1, 1, 1, 1, 8]]) + 1e-300)

    def logits(prefixes, lengths):
        return z

    args = (np.array([[2]]), np.array([1]), np.array([30000]), np.array([0]), np.array([6]))
    alone = NetworkReminders(logits, h, V, 0.0).score(*args)
    np.testing.assert_allclose(alone[0, 1:], np.exp(z[0, 1:]) / 8)
    both = NetworkReminders(logits, h, V, 0.5).score(*args)
    rem = h.recency([0], [6], [30000], V).toarray()
    np.testing.assert_allclose(both[0, 1:], alone[0, 1:] + 0.5 * rem[0, 1:])


def test_networks_with_reminders_and_with_history_in_the_table(
    pipeline_data, tmp_path, monkeypatch
):
    pytest.importorskip("keras")
    import train

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    monkeypatch.setenv("LASTFM_DATA_DIR", str(data))
    tiny = ["--emb-dim", "8", "--hidden", "8", "--fc-dim", "8", "--verbose", "0"]
    tiny += ["--no-tensorboard", "--valid-events", "300", "--max-train-examples", "3000"]
    plain, hist = data / "models" / "plain", data / "models" / "hist"
    for out, extra in ((plain, []), (hist, ["--history", "5", "--transitions", "2"])):
        train.main(["--window", "1m", "--epochs", "1", "--out", str(out), *tiny, *extra])
    assert json.loads((hist / "config.json").read_text())["model"]["history"] == 5
    evaluation.main(
        ["--window", "1m", "--methods", "SR", "--session-aware", "--n-boot", "20"]
        + ["--no-ensemble", "--no-blend", "--models", f"{plain},{hist}"]
    )
    res = json.loads((data / "reports" / "results.json").read_text())
    row = res["methods"]["BiGRU-Att+reminders (plain)"]
    assert row["session_aware"]["base"] == "BiGRU-Att (plain)"
    assert [t["params"]["remind"] for t in row["tuning"]] == list(NETWORK_REMINDS)
    assert row["diff_vs_base"]["baseline"] == "BiGRU-Att (plain)"
    assert row["events"] == res["test_events"]
    for name in ("BiGRU-Att+history (hist)", "BiGRU-Att+history+transitions (hist)"):
        assert res["methods"][name]["session_aware"] == {"base": None}
        assert res["methods"][name]["events"] == res["test_events"]
    assert not any("+history+reminders" in n for n in res["methods"])
    md = (data / "reports" / "results.md").read_text()
    assert "BiGRU-Att+history (hist)" not in md.split("Paired differences")[0]
    with pytest.raises(PipelineError, match="--history network"):
        evaluation.main(
            ["--window", "1m", "--methods", "SR", "--exclude-seen", "--models", str(hist)]
        )


def test_with_history_continues_a_prefix_into_the_listeners_earlier_sessions():
    h = ListenerHistory([TRAIN, LATER])
    users, sessions = np.array([0, 0, 1, 0]), np.array([6, 6, 7, 1])
    pre = np.array([[2, 0, 0, 0], [2, 3, 1, 4], [4, 0, 0, 0], [1, 2, 0, 0]])
    lengths = np.array([1, 4, 1, 2])
    p, n = with_history(pre, lengths, users, sessions, h, n=3, width=5)
    # listener 0 before session 6: 1 2 3 | 6 7 | 1 9 -> its last 3, then the session's
    assert p[0].tolist() == [7, 1, 9, 2, 0] and n[0] == 4
    assert p[1].tolist() == [9, 2, 3, 1, 4] and n[1] == 5  # only 1 fits in the width
    assert p[2].tolist() == [8, 1, 4, 4, 0] and n[2] == 4  # listener 1: 1 4 5 | 8 1 4
    assert p[3].tolist() == [1, 2, 0, 0, 0] and n[3] == 2  # the first session: nothing before
    p, n = with_history(pre, lengths, users, sessions, h, n=0, width=5)
    assert (n == lengths).all()


def test_history_ranker_hands_the_network_the_continued_prefixes():
    h = ListenerHistory([TRAIN, LATER])
    seen = {}

    def ranker(prefixes, lengths, targets, times=None):
        seen["p"], seen["n"] = prefixes, lengths
        return np.zeros(1), np.zeros(1), np.zeros((1, 20))

    rank = history_ranker(ranker, h, 2, 4)
    assert rank.needs_context
    rank(np.array([[2, 0]]), np.array([1]), np.array([3]), None, np.array([0]), np.array([6]))
    assert seen["p"].tolist() == [[1, 9, 2, 0]] and seen["n"].tolist() == [3]
    with pytest.raises(PipelineError, match="listener"):
        rank(np.array([[2, 0]]), np.array([1]), np.array([3]))


def test_a_network_with_history_learns_what_only_the_listeners_past_shows():
    """Each of 20 listeners has a track of its own that ends every session of theirs,
    after a random shared track: from the session alone it is 1 in 20, from the
    listener's earlier sessions it is known."""
    keras = pytest.importorskip("keras")
    from lastfm.data import make_events
    from lastfm.metrics import device_ranker
    from lastfm.session_aware import extend_events
    from model import ModelConfig, build_model
    from train import FusedAdam

    rng = np.random.default_rng(0)
    rows, sid = [], 0
    for s in range(40):
        for u in range(20):
            sid += 1
            rows.append((u, sid, [int(rng.integers(21, 41)), u + 1], s * 10_000 + u * 100))
    frame = plays(rows)
    cut = frame["session_id"] > 20 * 34  # the last 6 sessions of each listener
    h = ListenerHistory([frame])
    mrr = {}
    for n in (0, 4):
        train_ev = make_events(frame[~cut], 6)
        test_ev = make_events(frame[cut], 6)
        if n:
            train_ev, test_ev = (extend_events(e, h, n, 6) for e in (train_ev, test_ev))
        keras.utils.set_random_seed(0)
        cfg = ModelConfig(arch="gru4rec", input_len=6, emb_dim=16, hidden=32, tags=False)
        m = build_model(40, cfg, seed=0)
        m.compile(optimizer=FusedAdam(0.01))
        m.fit(train_ev.prefixes, train_ev.targets, batch_size=32, epochs=8, verbose=0)
        mrr[n] = evaluate(device_ranker(m), test_ev, 40).summary["MRR@20"]
    assert mrr[4] > 0.8 and mrr[0] < 0.35, mrr


def test_history_is_refused_where_it_cannot_apply(pipeline_data, tmp_path, monkeypatch):
    import train

    monkeypatch.setenv("LASTFM_DATA_DIR", str(pipeline_data))
    with pytest.raises(PipelineError, match="--history reads the splits in memory"):
        train.main(["--window", "1m", "--history", "5", "--stream", "--out", str(tmp_path / "m")])
    with pytest.raises(PipelineError, match="--history"):
        train.main(["--window", "1m", "--history", "-1", "--out", str(tmp_path / "m")])


def test_bounds_at_the_edges():
    h = ListenerHistory([TRAIN, LATER])
    lo, hi = h.bounds([0, 1, 0, 5, 1], [1, 2, 10**9, 3, 7])
    assert (hi - lo).tolist() == [0, 0, 9, 0, 6]  # first sessions; past every one; unknown
    assert h.item[lo[2] : hi[2]].tolist() == [1, 2, 3, 6, 7, 1, 9, 2, 3]
    assert h.item[lo[4] : hi[4]].tolist() == [1, 4, 5, 8, 1, 4]


def test_with_history_matches_a_direct_reading_of_the_listeners_plays():
    """Random listeners, sessions and unseen plays (0): each continued prefix is the last
    known plays of the listener's earlier sessions, then the session's own most recent
    plays (as ``recent`` cuts them), within the width; never a later session's."""
    from lastfm.data import make_events, recent

    rng = np.random.default_rng(3)
    rows, sid = [], 0
    for _ in range(60):
        sid += 1
        items = rng.integers(0, V + 1, rng.integers(2, 30)).tolist()
        rows.append((int(rng.integers(0, 4)), sid, items, sid * 10_000))
    frame = plays(rows)
    h = ListenerHistory([frame])
    ev = make_events(frame, 50)
    width, n = 20, 7
    got, lengths = with_history(ev.prefixes, ev.lengths, ev.users, ev.sessions, h, n, width)
    own = recent(ev.prefixes, ev.lengths, width)
    for e in range(len(ev)):
        before = frame[(frame["user_idx"] == ev.users[e]) & (frame["session_id"] < ev.sessions[e])]
        known = before.sort_values(["session_id", "position"])["item_idx"]
        known = known[known > 0].tolist()
        m = min(ev.lengths[e], width)
        k = min(n, width - m, len(known))
        want = known[len(known) - k :] + own[e, :m].tolist()
        assert got[e, : lengths[e]].tolist() == want and lengths[e] == k + m
        assert not got[e, lengths[e] :].any()


def test_session_aware_rows_stay_marked_through_save_and_merge(
    pipeline_data, monkeypatch, tmp_path
):
    monkeypatch.setenv("LASTFM_DATA_DIR", str(pipeline_data))
    rep = pipeline_data / "reports"
    saved = tmp_path / "aware.npz"
    only = ["--no-ensemble", "--no-blend", "--no-model", "--n-boot", "20"]
    evaluation.main(["--methods", "SR", "--session-aware", "--save-ranks", str(saved)] + only)
    evaluation.main(["--methods", "POP", "--ranks-from", str(saved)] + only)
    res = json.loads((rep / "results.json").read_text())
    assert res["methods"]["SR_BR"]["session_aware"] == {"base": "SR"}
    assert "session_aware" not in res["methods"]["SR"]
