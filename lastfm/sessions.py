"""Sessions, the time split and the vocabulary: the rules both engines apply.

``sessionize.py`` (the local engine) and ``lastfm.dask_stages`` (per user partition)
call these functions; ``SessionConfig`` holds the rules' parameters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lastfm import config as cfgs
from lastfm import data
from lastfm.common import PipelineError
from lastfm.config import option
from lastfm.data import SPLITS


@dataclass
class SessionConfig:
    """How plays become sessions and splits (recorded in each window's meta.json)."""

    gap_minutes: float = option(20.0, "inactivity gap (mode gap) or window length (mode window)")
    mode: str = option(
        "gap",
        "gap: a new session after an inactivity gap; window: fixed "
        "clock windows (the study's figures)",
        choices=["gap", "window"],
    )
    collapse_repeats: bool = option(False, "merge a track repeated back-to-back")
    max_session_len: int = option(50, "keep the most recent N plays of a session (0: no cap)")
    min_len: int = option(2, "drop shorter sessions (2: drop length-1 sessions)")
    min_user_sessions: int = option(6, "drop users with fewer sessions")
    valid_frac: float = option(0.1, "share of the time span for validation, before test")
    test_frac: float = option(0.1, "last share of the time span for test")
    unseen: str = option(
        "splice",
        "validation/test plays of tracks unseen in training: splice (drop them: A, X, B "
        "becomes A -> B) or keep (id 0, out of vocabulary, in their place: never a target)",
        choices=["splice", "keep"],
    )
    min_track_plays: int = option(
        1, "vocabulary: tracks with fewer training plays are out of it (as unseen tracks)"
    )
    max_tracks: int = option(0, "vocabulary: at most the N most played training tracks (0: no cap)")
    slices: int = option(
        1,
        "N > 1: cut each window into N consecutive time slices, each "
        "with its own split, written as <window>.slice1 .. .sliceN",
    )

    def check(self) -> None:
        cfgs.require_above(self, 0, "gap_minutes")
        cfgs.require_at_least(self, 0, "max_session_len", "min_len", "min_user_sessions")
        cfgs.require_at_least(self, 1, "slices", "min_track_plays")
        cfgs.require_at_least(self, 0, "max_tracks")
        check_fracs(self.valid_frac, self.test_frac)

    def capped(self) -> bool:
        """Whether the vocabulary leaves training tracks out."""
        return self.min_track_plays > 1 or self.max_tracks > 0


def check_fracs(valid_frac: float, test_frac: float) -> None:
    if not (0 <= valid_frac < 1 and 0 < test_frac < 1 and valid_frac + test_frac < 1):
        raise PipelineError("--valid-frac/--test-frac must be in [0,1) and sum below 1")


def session_starts(user: np.ndarray, ts_s: np.ndarray, cfg: SessionConfig) -> np.ndarray:
    """Boolean per play (sorted by user, time): True where a new session starts."""
    return data.session_starts(user, ts_s, cfg.mode, cfg.gap_minutes * 60)


def build_sessions(
    plays: pd.DataFrame, cfg: SessionConfig, count_before: float | None = None
) -> tuple[pd.DataFrame, dict]:
    """Sessions of ``plays`` (columns user_idx, ts_s, track_idx): filtered, not split.

    Returns one row per kept play with ``sess`` (0-based, in order of start
    time), ``position``, and a dictionary of counts at each filtering step. The user
    filter counts only sessions that end before ``count_before`` (the test period's
    start), so that it never looks at the test period.
    """
    order = np.lexsort((plays["ts_s"].to_numpy(), plays["user_idx"].to_numpy()))
    df = plays.iloc[order].reset_index(drop=True)
    user, ts, track = (df["user_idx"].to_numpy(), df["ts_s"].to_numpy(), df["track_idx"].to_numpy())
    new = session_starts(user, ts, cfg)
    sess = np.cumsum(new) - 1
    counts = {"plays": len(df), "sessions": int(new.sum()), "users": int(len(np.unique(user)))}
    keep = np.ones(len(df), dtype=bool)
    if cfg.collapse_repeats and len(df) > 1:
        keep[1:] = ~((track[1:] == track[:-1]) & ~new[1:])
        counts["collapsed_repeats"] = int((~keep).sum())
    df, sess = df[keep], sess[keep]
    # Position from the end, to keep the most recent max_len plays.
    n_sess = int(sess.max()) + 1 if len(sess) else 0
    lens = np.bincount(sess, minlength=n_sess)
    start_idx = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pos = np.arange(len(sess)) - start_idx[sess]
    if cfg.max_session_len > 0:
        over = lens[sess] - pos > cfg.max_session_len
        counts["capped_plays"] = int(over.sum())
        df, sess = df[~over], sess[~over]
        lens = np.bincount(sess, minlength=n_sess)
        start_idx = np.concatenate([[0], np.cumsum(lens)[:-1]])
        pos = np.arange(len(sess)) - start_idx[sess]
    ok_sess = lens >= cfg.min_len
    counts["short_sessions_dropped"] = int(((lens > 0) & ~ok_sess).sum())
    m = ok_sess[sess]
    df, sess, pos = df[m], sess[m], pos[m]
    # Users with too few sessions.
    first = np.r_[True, sess[1:] != sess[:-1]] if len(sess) else np.zeros(0, bool)
    last = np.r_[sess[1:] != sess[:-1], True] if len(sess) else np.zeros(0, bool)
    sess_user = df["user_idx"].to_numpy()[first]
    counted = df["ts_s"].to_numpy()[last] < count_before if count_before is not None else True
    per_user = np.bincount(
        sess_user,
        weights=np.broadcast_to(counted, sess_user.shape),
        minlength=int(plays["user_idx"].max()) + 1,
    )
    ok_user = per_user >= cfg.min_user_sessions
    counts["users_dropped"] = int(((per_user > 0) & ~ok_user).sum())
    m = ok_user[df["user_idx"].to_numpy()]
    df, sess, pos = df[m], sess[m], pos[m]
    # Renumber sessions by start time (ties: user).
    out = pd.DataFrame(
        {
            "user_idx": df["user_idx"].to_numpy(),
            "ts_s": df["ts_s"].to_numpy(),
            "track_idx": df["track_idx"].to_numpy(),
            "old": sess,
            "position": pos.astype(np.int16),
        }
    )
    start_ts = out.groupby("old", sort=True)["ts_s"].transform("min").to_numpy()
    first = out["position"].to_numpy() == 0
    order = np.lexsort((out["user_idx"].to_numpy()[first], start_ts[first]))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    out["sess"] = rank[np.cumsum(first) - 1]
    out = out.drop(columns="old").sort_values(["sess", "position"], kind="stable")
    counts.update(
        kept_plays=len(out),
        kept_sessions=int(first.sum()),
        kept_users=int(len(np.unique(out["user_idx"].to_numpy()))),
    )
    return out.reset_index(drop=True), counts


def time_bounds(ts_s: np.ndarray, valid_frac: float, test_frac: float) -> dict:
    """Where validation and test begin: the last ``test_frac`` of the time span of
    ``ts_s`` is test, the ``valid_frac`` before it validation."""
    check_fracs(valid_frac, test_frac)
    t0, t1 = int(ts_s.min()), int(ts_s.max())
    test_from = t1 - test_frac * (t1 - t0)
    return {"valid_from_s": int(test_from - valid_frac * (t1 - t0)), "test_from_s": int(test_from)}


def split_by_time(
    sessions: pd.DataFrame, valid_frac: float, test_frac: float, bounds: dict | None = None
) -> dict:
    """Split sessions by the time of their last play: train | valid | test (``bounds``
    from ``time_bounds``, by default over the sessions' own span)."""
    bounds = bounds or time_bounds(sessions["ts_s"].to_numpy(), valid_frac, test_frac)
    end = sessions.groupby("sess")["ts_s"].max()
    test_from, valid_from = bounds["test_from_s"], bounds["valid_from_s"]
    which = np.where(end.to_numpy() >= test_from, 2, np.where(end.to_numpy() >= valid_from, 1, 0))
    split_of = pd.Series(which, index=end.index)
    s = split_of.reindex(sessions["sess"]).to_numpy()
    parts = {name: sessions[s == k].reset_index(drop=True) for k, name in enumerate(SPLITS)}
    return parts, bounds


def build_vocab(
    train: pd.DataFrame, plays: pd.DataFrame, min_plays: int = 1, max_tracks: int = 0
) -> pd.DataFrame:
    """Training tracks by descending count (ties: the track code's order): item_idx 1..V,
    with names; tracks under ``min_plays`` training plays, and past the ``max_tracks``
    most played, left out."""
    counts = train["track_idx"].value_counts(sort=False)
    vocab = pd.DataFrame({"track_idx": counts.index.to_numpy(), "train_count": counts.to_numpy()})
    vocab = vocab.sort_values(
        ["train_count", "track_idx"], ascending=[False, True], kind="stable"
    ).reset_index(drop=True)
    vocab = vocab[vocab["train_count"].to_numpy() >= min_plays]
    if max_tracks > 0:
        vocab = vocab.iloc[:max_tracks]
    vocab = vocab.reset_index(drop=True)
    vocab.insert(0, "item_idx", np.arange(1, len(vocab) + 1, dtype=np.int32))
    names = plays.drop_duplicates("track_idx").set_index("track_idx")
    for col in ("artist_idx", "artist_name", "track_name", "track_mbid"):
        vocab[col] = (
            names[col]
            .reindex(vocab["track_idx"])
            .astype(object if col not in ("artist_idx",) else np.int32)
            .to_numpy()
        )
    mbid = vocab["track_mbid"].fillna("").astype(str)
    vocab["track_key"] = np.where(
        mbid != "", mbid, vocab["artist_name"].astype(str) + "\t" + vocab["track_name"].astype(str)
    )
    return vocab


def apply_vocab(
    part: pd.DataFrame, vocab: pd.DataFrame, min_len: int, keep_unseen: bool = False
) -> tuple[pd.DataFrame, dict]:
    """Map track_idx to item_idx. Tracks unseen in training are dropped (splicing the
    session: A, X, B becomes A -> B), or with ``keep_unseen`` kept in their place as
    item 0 (out of vocabulary: never a target, see ``data.make_events``); then sessions
    under min_len go. Returns the kept plays and the accounting of what is not scored
    (sorted by session and position on input); ``events_after_unseen``: scored events with
    an unseen play earlier in their session (``events_spliced`` when it was removed)."""
    lookup = pd.Series(vocab["item_idx"].to_numpy(), index=vocab["track_idx"].to_numpy())
    item = lookup.reindex(part["track_idx"].to_numpy()).to_numpy()
    seen = ~np.isnan(item)
    sess = part["sess"].to_numpy()
    first = np.r_[True, sess[1:] != sess[:-1]] if len(sess) else np.zeros(0, bool)
    event = ~first  # every play after a session's first predicts something
    # an unseen play before this one in its session (removed: its prefix is spliced)
    unseen_before = pd.Series(~seen).groupby(sess).cumsum().to_numpy() - (~seen)
    kept = np.ones(len(part), bool) if keep_unseen else seen
    out = part[kept].copy()
    out["item_idx"] = np.where(seen, item, 0)[kept].astype(np.int32)
    out["after_unseen"] = unseen_before[kept] > 0
    lens = out.groupby("sess")["sess"].transform("size")
    n_before = part["sess"].nunique()
    out = out[lens.to_numpy() >= max(2, min_len)].copy()
    out["position"] = out.groupby("sess").cumcount().astype(np.int16)
    scored = (out["position"].to_numpy() >= 1) & (out["item_idx"].to_numpy() > 0)
    after = int((scored & out["after_unseen"].to_numpy()).sum())
    acct = {
        "plays": int(len(part)),
        "unseen_plays": int((~seen).sum()),
        "sessions_dropped": int(n_before - out["sess"].nunique()),
        "events_before_filtering": int(event.sum()),
        "events_unseen_target": int((event & ~seen).sum()),
        "events_scored": int(scored.sum()),
        "events_spliced": 0 if keep_unseen else after,
        "events_after_unseen": after,
    }
    acct["events_unscorable"] = (
        acct["events_before_filtering"] - acct["events_unseen_target"] - acct["events_scored"]
    )
    return out.drop(columns="after_unseen").reset_index(drop=True), acct


def vocab_checksum(vocab: pd.DataFrame) -> str:
    """Identity of a vocabulary: MD5 of its ordered track keys."""
    return hashlib.md5("\n".join(vocab["track_key"].astype(str)).encode()).hexdigest()


def fill_names(vocab: pd.DataFrame, names_file) -> pd.DataFrame:
    """Missing artist and track names of the vocabulary from ``names_file`` (written by
    preprocess.py for layouts that ship names beside the plays: LFM-1b, LFM-2b), read
    for the vocabulary's tracks only; ``track_key`` stays the track id."""
    from pathlib import Path

    import pyarrow.dataset as ds

    if names_file is None or not Path(names_file).exists() or vocab.empty:
        return vocab
    ids = vocab["track_mbid"].astype(object).to_numpy()
    table = ds.dataset(names_file).to_table(filter=ds.field("track").isin([i for i in ids if i]))
    found = table.to_pandas().drop_duplicates("track").set_index("track")
    vocab = vocab.copy()
    for col in ("artist_name", "track_name"):
        have = vocab[col].astype(object)
        missing = have.isna() | (have == "")
        vocab[col] = have.where(~missing, found[col].reindex(ids).to_numpy())
    return vocab
