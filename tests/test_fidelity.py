"""The fidelity figures on a toy history computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from lastfm import fidelity as fid


def test_behaviour_on_a_hand_computed_history():
    # One user: tracks 0 (artist 0), 0, 1 (artist 0) in one session; 2 (artist 1), 0
    # in the next (a 2,600 s gap > 20 minutes). Every play in the hour 00:00 UTC.
    ts = np.array([0, 200, 400, 3000, 3100])
    track = np.array([0, 0, 1, 2, 0])
    artist = np.array([0, 0, 0, 1, 0])
    row = fid.behaviour(np.zeros(5, np.int64), ts, artist, track).iloc[0]
    assert row["sessions"] == 2 and row["session_mean"] == 2.5 and row["session_median"] == 2.5
    assert row["same_artist"] == pytest.approx(2 / 3)  # 0->0, 0->1 same; 2->0 not
    assert row["repeat"] == pytest.approx(1 / 3)
    assert row["relisten"] == pytest.approx(2 / 5)
    assert row["window_plays"] == 2.5  # windows [0, 1200) and [2400, 3600)
    assert row["play_gap_s"] == 200  # gaps 200, 200, 100
    assert row["session_gap_h"] == pytest.approx(2600 / 3600)
    assert row["top4_hours"] == 1.0


def test_session_counts_clock_windows_and_day_of_month_keys():
    when = [
        "2009-01-05T10:01:00",
        "2009-01-05T10:19:00",  # same 20-minute window
        "2009-02-05T10:05:00",  # a month later: a new window, the same day-of-month key
        "2009-02-06T10:05:00",
        "2009-01-05T10:21:00",
    ]
    ts = np.sort(np.array([np.datetime64(w, "s").astype(np.int64) for w in when]))
    user = np.zeros(len(ts), np.int64)
    assert fid.fixed_window_sessions(user, ts).tolist() == [4]
    assert fid.day_of_month_slots(user, ts) == 3
    # A second user's identical times are that user's own windows.
    both = np.r_[user, user + 1]
    assert fid.day_of_month_slots(both, np.r_[ts, ts]) == 6


def test_spread_compares_users_of_a_similar_size_and_bands():
    import pandas as pd

    per_user = pd.DataFrame(
        {"plays": [10, 1000, 1100, 5000], **{b.key: [9.0, 1.0, 3.0, 9.0] for b in fid.BEHAVIOUR}}
    )
    s = fid.spread(per_user, (500, 2000))
    assert s["users"] == 2 and s["relisten"]["median"] == 2.0
    assert fid.within_band(0.80, 0.84, 0.05, relative=False)
    assert not fid.within_band(10.0, 11.6, 0.15, relative=True)


def test_the_repeat_figures_on_a_hand_computed_history():
    """The figures that drive repeat behaviour: the top tracks' share, repeats inside a
    session that are not back to back, single-play sessions, the weekend's share."""
    # Session 1: tracks 5, 6, 5, 5, 7 (the first 5 -> 5 is back to back, 6 -> 5 is not);
    # session 2: 8 alone (an hour later); session 3: 5, 9 (the next day, a Saturday).
    day = 86_400
    sat = 2 * day  # 1970-01-03 was a Saturday
    ts = np.array([0, 100, 200, 300, 400, 4000, sat, sat + 100])
    track = np.array([5, 6, 5, 5, 7, 8, 5, 9])
    row = fid.behaviour(np.zeros(8, np.int64), ts, np.zeros(8, np.int64), track).iloc[0]
    assert row["sessions"] == 3
    # plays after their session's first: 6, 5, 5, 7 | 9 -> only the second play of 5
    # (position 2 of session 1) repeats a track of its session without following it
    assert row["session_repeat"] == pytest.approx(1 / 5)
    assert row["single_sessions"] == pytest.approx(1 / 3)
    assert row["weekend"] == pytest.approx(2 / 8)
    assert row["top10_tracks"] == 1.0  # fewer than 10 tracks: all of them
    many = np.arange(12)  # 12 tracks, track 0 played 3 times: the top 10 hold 12 of 14
    t = np.r_[many, 0, 0]
    row = fid.behaviour(np.zeros(14, np.int64), np.arange(14) * 100, t * 0, t).iloc[0]
    assert row["top10_tracks"] == pytest.approx(12 / 14)
