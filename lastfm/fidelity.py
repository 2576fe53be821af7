"""How closely generated plays resemble the real ones: the figures and their bands.

Two kinds of figure (``bench/fidelity.py`` measures both and writes the report):
- population figures of the whole dataset, from the study's published tables and
  the dataset's README (``lastfm.study``), compared within ``POPULATION_BAND``;
- per-user behaviour (``behaviour``), where the only real figures are those of
  the real sample's one user: the generated users' median is compared with it
  within each figure's stated band, and the spread across users is reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lastfm.data import session_starts

POPULATION_BAND = 0.10  # relative: |generated / real - 1| <= 10%


@dataclass(frozen=True)
class Behaviour:
    """A per-user figure: its name, its meaning and its band around the real one."""

    key: str
    meaning: str
    band: float  # allowed |generated median - real| (absolute, in the figure's unit)
    relative: bool = False  # band is relative to the real value instead
    fitted: bool = True  # False: reported beside the real value, the generator not yet fitted


BEHAVIOUR = [
    Behaviour("relisten", "share of plays of a track the user played before", 0.05),
    Behaviour("same_artist", "next play by the same artist, within a session", 0.05),
    Behaviour("repeat", "same track again back to back, within a session", 0.01),
    Behaviour("session_mean", "plays per session (20-minute gaps), mean", 0.15, True),
    Behaviour("session_median", "plays per session (20-minute gaps), median", 0.15, True),
    Behaviour("window_plays", "plays per fixed 20-minute window", 0.15, True),
    Behaviour("play_gap_s", "seconds between plays within a session, median", 0.15, True),
    Behaviour("session_gap_h", "hours between sessions, median", 0.5, True),
    Behaviour("top4_hours", "share of plays in the user's 4 busiest hours of the day", 0.10),
    # What drives repeat behaviour
    Behaviour("top10_tracks", "share of plays of the user's 10 most played tracks", 0.02),
    Behaviour(
        "session_repeat",
        "a track already in its session, not back to back (share of plays after the first)",
        0.05,
    ),
    # Reported beside the real value, not fitted
    Behaviour(
        "month_artists",
        "share of the user's artists played in a month (median over months of 100+ plays)",
        0.05,
        False,
        False,
    ),
    Behaviour(
        "single_sessions", "sessions of one play (20-minute gaps), share", 0.05, False, False
    ),
    Behaviour("weekend", "share of plays on Saturday or Sunday (UTC)", 0.05, False, False),
]


def _per_user_median(user: np.ndarray, values: np.ndarray, n_users: int) -> np.ndarray:
    out = np.full(n_users, np.nan)
    if len(values):
        med = pd.Series(values).groupby(user).median()
        out[med.index.to_numpy()] = med.to_numpy()
    return out


def behaviour(
    user: np.ndarray, ts: np.ndarray, artist: np.ndarray, track: np.ndarray, gap_s: int = 1200
) -> pd.DataFrame:
    """One row per user (``user`` codes 0..U-1) of the per-user figures.

    Plays must be sorted by user, then time; ``artist`` and ``track`` are integer
    keys (a track's key is unique across artists).
    """
    n_users = int(user.max()) + 1 if len(user) else 0
    plays = np.bincount(user, minlength=n_users).astype(float)
    new = session_starts(user, ts, "gap", gap_s)
    sess = np.cumsum(new) - 1
    lens = np.bincount(sess)
    sess_user = user[new]
    n_sess = np.bincount(sess_user, minlength=n_users)
    inner = ~new[1:]  # consecutive plays of one session
    pair_user = user[1:][inner]
    pairs = np.bincount(pair_user, minlength=n_users).astype(float)
    same_artist = (artist[1:] == artist[:-1])[inner]
    repeat = (track[1:] == track[:-1])[inner]
    seen = pd.DataFrame({"u": user, "t": track}).duplicated().to_numpy()
    windows = fixed_window_sessions(user, ts, gap_s // 60)
    hour = (ts // 3600) % 24
    by_hour = np.bincount(user * 24 + hour, minlength=n_users * 24).reshape(n_users, 24)
    top4 = np.sort(by_hour, axis=1)[:, -4:].sum(axis=1)
    new_user = np.r_[True, user[1:] != user[:-1]] if len(user) else np.zeros(0, bool)
    between = new & ~new_user  # session starts after the user's first
    gaps = np.diff(ts, prepend=ts[:1] if len(ts) else ts)
    # each user's plays per track, most played first: the share of the top 10
    counts = pd.DataFrame({"u": user, "t": track}).value_counts()
    top10 = counts.groupby(level="u").head(10).groupby(level="u").sum()
    top10_plays = np.zeros(n_users)
    top10_plays[top10.index.to_numpy()] = top10.to_numpy()
    # a play whose track is already in its session, the previous play excepted
    in_session = pd.DataFrame({"s": sess, "t": track}).duplicated().to_numpy()
    back_to_back = np.r_[False, (track[1:] == track[:-1]) & inner]
    later = ~new  # plays after their session's first
    session_repeat = in_session & ~back_to_back
    weekday = (ts // 86_400 + 3) % 7  # 0 = Monday (1970-01-01 was a Thursday)
    # taste drift: the share of a user's artists heard in one 30-day month
    by_month = pd.DataFrame({"u": user, "m": ts // (30 * 86_400), "a": artist})
    per_month = by_month.groupby(["u", "m"])["a"].agg(["nunique", "size"]).reset_index()
    per_month = per_month[per_month["size"] >= 100]
    artists_of = by_month.groupby("u")["a"].nunique()
    share = per_month["nunique"].to_numpy() / artists_of.reindex(per_month["u"]).to_numpy()
    month_artists = _per_user_median(per_month["u"].to_numpy(), share, n_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame(
            {
                "plays": plays,
                "sessions": n_sess,
                "relisten": np.bincount(user, weights=seen, minlength=n_users) / plays,
                "same_artist": np.bincount(pair_user, weights=same_artist, minlength=n_users)
                / pairs,
                "repeat": np.bincount(pair_user, weights=repeat, minlength=n_users) / pairs,
                "session_mean": plays / n_sess,
                "session_median": _per_user_median(sess_user, lens, n_users),
                "window_plays": plays / windows,
                "play_gap_s": _per_user_median(user[1:][inner], gaps[1:][inner], n_users),
                "session_gap_h": _per_user_median(user[between], gaps[between] / 3600, n_users),
                "top4_hours": top4 / plays,
                "top10_tracks": top10_plays / plays,
                "session_repeat": np.bincount(
                    user[later], weights=session_repeat[later], minlength=n_users
                )
                / np.bincount(user[later], minlength=n_users),
                "single_sessions": np.bincount(sess_user, weights=lens == 1, minlength=n_users)
                / n_sess,
                "weekend": np.bincount(user, weights=weekday >= 5, minlength=n_users) / plays,
                "month_artists": month_artists,
            }
        )


def spread(per_user: pd.DataFrame, plays: tuple[float, float]) -> dict[str, dict]:
    """Median and 10th/90th percentiles of each figure over the users whose play
    count lies in ``plays`` (low, high): several figures depend on a history's size
    (re-listening grows with it), so a user is compared with users of its size."""
    sel = per_user[(per_user["plays"] >= plays[0]) & (per_user["plays"] <= plays[1])]
    out = {"users": int(len(sel)), "plays": [float(plays[0]), float(plays[1])]}
    for b in BEHAVIOUR:
        v = sel[b.key].dropna()
        out[b.key] = {
            "median": float(v.median()) if len(v) else float("nan"),
            "p10": float(v.quantile(0.1)) if len(v) else float("nan"),
            "p90": float(v.quantile(0.9)) if len(v) else float("nan"),
        }
    return out


def within_band(real: float, generated: float, band: float, relative: bool) -> bool:
    if relative:
        return abs(generated / real - 1) <= band
    return abs(generated - real) <= band


def fixed_window_sessions(user: np.ndarray, ts: np.ndarray, minutes: int = 20) -> np.ndarray:
    """Fixed clock-window sessions per user (plays sorted by user, then time)."""
    n_users = int(user.max()) + 1 if len(user) else 0
    return np.bincount(user[session_starts(user, ts, "window", minutes * 60)], minlength=n_users)


def day_of_month_slots(user: np.ndarray, ts: np.ndarray, minutes: int = 20) -> int:
    """Distinct (user, day of the month, hour, ``minutes`` slot) keys: clock windows
    whose key omits the month and year, so that windows a month apart merge."""
    sec = ts.astype(np.int64)
    days = sec // 86_400
    dom = (
        days.astype("datetime64[D]") - days.astype("datetime64[D]").astype("datetime64[M]")
    ).astype(np.int64)
    slot = (sec % 86_400) // (minutes * 60)
    key = (user.astype(np.int64) * 32 + dom) * (86_400 // (minutes * 60)) + slot
    return int(len(np.unique(key)))
