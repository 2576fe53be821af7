"""sessionize.py: session boundaries, filters, the time split, vocabulary, outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import sessionize
from lastfm.common import PipelineError
from lastfm.data import SCHEMAS
from sessionize import SessionConfig, build_sessions, session_starts


def plays(rows):
    return pd.DataFrame(rows, columns=["user_idx", "ts_s", "track_idx"])


def test_gap_boundary_is_strictly_more_than_the_gap():
    user = np.array([0, 0, 0, 0, 1])
    ts = np.array([0, 1200, 2401, 2500, 2600])
    assert session_starts(user, ts, SessionConfig()).tolist() == [True, False, True, False, True]


def test_fixed_windows_cut_at_clock_boundaries():
    user = np.zeros(4, dtype=int)
    ts = np.array([0, 1199, 1200, 1300])
    got = session_starts(user, ts, SessionConfig(mode="window"))
    assert got.tolist() == [True, False, True, False]
    with pytest.raises(PipelineError, match="--mode"):
        session_starts(user, ts, SessionConfig(mode="nope"))


def test_filters_cap_singletons_repeats_and_users():
    rows = []
    # user 0: 3 sessions: lengths 5, 1, 2 (repeat inside); user 1: one session.
    rows += [(0, t, 10 + t) for t in range(5)]
    rows += [(0, 10_000, 1)]
    rows += [(0, 20_000, 7), (0, 20_001, 7), (0, 20_002, 8)]
    rows += [(1, 5, 3), (1, 6, 4)]
    cfg = SessionConfig(max_session_len=3, min_len=2, min_user_sessions=2, collapse_repeats=True)
    out, counts = build_sessions(plays(rows), cfg)
    assert counts["sessions"] == 4 and counts["collapsed_repeats"] == 1
    assert counts["short_sessions_dropped"] == 1 and counts["users_dropped"] == 1
    assert out["user_idx"].unique().tolist() == [0]
    first = out[out["sess"] == 0]
    assert first["track_idx"].tolist() == [12, 13, 14]  # the most recent 3 kept
    assert first["position"].tolist() == [0, 1, 2]
    assert out[out["sess"] == 1]["track_idx"].tolist() == [7, 8]


def test_sessions_numbered_by_start_time_and_input_order_irrelevant():
    rows = [(1, 100, 1), (1, 101, 2), (0, 50, 3), (0, 51, 4), (0, 9000, 5), (0, 9001, 6)]
    cfg = SessionConfig(min_user_sessions=1)
    a, _ = build_sessions(plays(rows), cfg)
    b, _ = build_sessions(plays(rows[::-1]), cfg)
    pd.testing.assert_frame_equal(a, b)
    starts = a.groupby("sess")["ts_s"].min()
    assert starts.is_monotonic_increasing and starts.tolist() == [50, 100, 9000]


def test_split_is_by_time_and_vocab_from_train(pipeline_data):
    d = pipeline_data / "sessions" / "1m"
    parts = {s: pd.read_parquet(d / f"{s}.parquet") for s in sessionize.SPLITS}
    meta = json.loads((d / "meta.json").read_text())
    vocab = pd.read_parquet(d / "vocab.parquet")
    for name, df in parts.items():
        assert set(SCHEMAS["sessions"]) == set(df.columns), name
        assert len(df) > 0, name
    ends = {n: df.groupby("session_id")["ts_s"].max() for n, df in parts.items()}
    # A session belongs to the split where its last play falls; removing tracks unseen in
    # training can move a validation or test session's last kept play earlier, so only
    # the upper bounds are exact here (build_sessions' toy tests check the rest).
    bounds = meta["split_bounds"]
    assert ends["train"].max() < bounds["valid_from_s"] <= ends["valid"].max()
    assert ends["valid"].max() < bounds["test_from_s"] <= ends["test"].max()
    # Vocabulary: training tracks only, ids 1..V by popularity; others mapped into it.
    assert vocab["item_idx"].tolist() == list(range(1, len(vocab) + 1))
    assert vocab["train_count"].is_monotonic_decreasing
    assert set(parts["train"]["item_idx"]) == set(vocab["item_idx"])
    for name in ("valid", "test"):
        assert parts[name]["item_idx"].isin(vocab["item_idx"]).all()
        assert parts[name].groupby("session_id").size().min() >= 2
    counts = parts["train"]["item_idx"].value_counts()
    assert (vocab.set_index("item_idx")["train_count"] == counts.reindex(vocab["item_idx"])).all()
    # Sessions never mix users; positions run 0..n-1.
    for df in parts.values():
        assert (df.groupby("session_id")["user_idx"].nunique() == 1).all()
        pos = df.groupby("session_id")["position"]
        assert ((pos.max() + 1) == pos.size()).all() and (pos.min() == 0).all()


def test_tsv_export_matches_parquet(pipeline_data):
    d = pipeline_data / "sessions" / "1m"
    for split in sessionize.SPLITS:
        tsv = pd.read_csv(d / f"{split}.tsv", sep="\t")
        pq = pd.read_parquet(d / f"{split}.parquet")
        assert tsv.columns.tolist() == ["SessionId", "ItemId", "Time"]
        assert (tsv["ItemId"].to_numpy() == pq["item_idx"].to_numpy()).all()
        assert (tsv["Time"].to_numpy() == pq["ts_s"].to_numpy()).all()


def test_unknown_window_and_missing_input(pipeline_data, data_dir):
    with pytest.raises(PipelineError, match="run preprocess.py first"):
        sessionize.main([])
    with pytest.raises(PipelineError, match="unknown window '9m'"):
        sessionize.main(["--data-dir", str(pipeline_data), "--windows", "9m"])


def test_window_mode_makes_shorter_sessions(pipeline_data, tmp_path):
    src = pipeline_data / "preprocessed" / "3m.parquet"
    df = pd.read_parquet(src)[["user_idx", "ts_s", "track_idx"]]
    gap, _ = build_sessions(df, SessionConfig(max_session_len=0, min_len=1, min_user_sessions=1))
    win, _ = build_sessions(
        df, SessionConfig(mode="window", max_session_len=0, min_len=1, min_user_sessions=1)
    )
    assert len(gap) == len(win) == len(df)
    assert gap["sess"].nunique() < win["sess"].nunique()


def test_unscored_events_are_accounted_on_a_toy_case():
    """Unseen tracks removed and counted: targets unseen, prefixes lost, splices."""
    vocab = pd.DataFrame({"item_idx": [1, 2, 3], "track_idx": [10, 20, 30]})
    # session 0: 10 X 20 30 (X = 99 unseen): events X (unseen target), 20 (spliced), 30
    # (spliced); session 1: X 20: 20 loses its prefix; session 2: 10 20: one event
    part = pd.DataFrame(
        {
            "sess": [0, 0, 0, 0, 1, 1, 2, 2],
            "track_idx": [10, 99, 20, 30, 99, 20, 10, 20],
            "position": [0, 1, 2, 3, 0, 1, 0, 1],
        }
    )
    out, acct = sessionize.apply_vocab(part, vocab, min_len=2)
    assert acct == {
        "plays": 8,
        "unseen_plays": 2,
        "sessions_dropped": 1,
        "events_before_filtering": 5,
        "events_unseen_target": 1,
        "events_scored": 3,
        "events_spliced": 2,
        "events_after_unseen": 2,
        "events_unscorable": 1,
    }
    assert out["item_idx"].tolist() == [1, 2, 3, 1, 2]
    # --unseen keep: X stays as id 0 in its place, never a target; session 1 keeps its
    # event (20 after X); the same unseen-target count, nothing lost, nothing spliced
    out, acct = sessionize.apply_vocab(part, vocab, min_len=2, keep_unseen=True)
    assert out["item_idx"].tolist() == [1, 0, 2, 3, 0, 2, 1, 2]
    assert out["position"].tolist() == [0, 1, 2, 3, 0, 1, 0, 1]
    assert acct == {
        "plays": 8,
        "unseen_plays": 2,
        "sessions_dropped": 0,
        "events_before_filtering": 5,
        "events_unseen_target": 1,
        "events_scored": 4,
        "events_spliced": 0,
        "events_after_unseen": 3,
        "events_unscorable": 0,
    }
    from lastfm.data import make_events

    ev = make_events(out.rename(columns={"sess": "session_id"}), 3)
    assert ev.targets.tolist() == [2, 3, 2, 2]  # X (0) is never a target
    assert ev.prefixes.tolist() == [[1, 0, 0], [1, 0, 2], [0, 0, 0], [1, 0, 0]]
    assert ev.lengths.tolist() == [2, 3, 1, 1]


def test_the_user_filter_never_counts_test_sessions():
    """A user with 2 sessions before the test period and 3 in it is dropped at >= 3."""
    ts = [0, 10_000, 90_000, 91_000, 92_000]  # one play per session (gap > 20 min)
    plays = pd.DataFrame({"user_idx": [0] * 5, "ts_s": ts, "track_idx": [1, 2, 3, 4, 5]})
    cfg = SessionConfig(min_len=1, min_user_sessions=3)
    kept, _ = build_sessions(plays, cfg, count_before=50_000)
    assert len(kept) == 0
    kept, _ = build_sessions(plays, cfg)
    assert len(kept) == 5
