"""Stage 2: split plays into sessions, filter users, split by time.

For each window (``<data>/preprocessed/<window>.parquet``) writes
``<data>/sessions/<window>/``:
- ``train.parquet``, ``valid.parquet``, ``test.parquet``: one row per play,
  columns ``lastfm.data.SCHEMAS['sessions']``, sorted by session id then position;
- ``vocab.parquet``: the training split's tracks, ``item_idx`` 1..V by
  descending training popularity (0 is padding), with names;
- ``{train,valid,test}.tsv``: ``SessionId\\tItemId\\tTime`` (GRU4Rec /
  session-rec format; ItemId is our ``item_idx``, Time in UTC seconds);
- ``stats.md``/``stats.json`` and ``meta.json``.

Sessions: a new session starts after an inactivity gap of more than
``--gap-minutes`` (default 20), or, with ``--mode window``, at each fixed
20-minute clock window (what the study's figures point to). A session is
assigned to a split by the time of its *last* play, so no training play is
later than the start of the validation period (GRU4Rec's rule).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lastfm import common, data
from lastfm import config as cfgs
from lastfm.common import PipelineError, log, markdown_table, read_json, run_main
from lastfm.config import option
from lastfm.data import SPLITS, read_table
from lastfm.paths import Layout, make, slice_name
from lastfm.study import STUDY_1M

# Bumped when the outputs change for the same parameters (a rerun then redoes them).
# 2: the user filter counts sessions before the test period; unscored events accounted.
OUTPUT_VERSION = 2


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
    slices: int = option(
        1,
        "N > 1: cut each window into N consecutive time slices, each "
        "with its own split, written as <window>.slice1 .. .sliceN",
    )

    def check(self) -> None:
        cfgs.require_above(self, 0, "gap_minutes")
        cfgs.require_at_least(self, 0, "max_session_len", "min_len", "min_user_sessions")
        cfgs.require_at_least(self, 1, "slices")
        check_fracs(self.valid_frac, self.test_frac)


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
        kept_plays=len(out), kept_sessions=int(first.sum()), kept_users=int(ok_user.sum())
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


def build_vocab(train: pd.DataFrame, plays: pd.DataFrame) -> pd.DataFrame:
    """Training tracks by descending count: item_idx 1..V, with names."""
    counts = train["track_idx"].value_counts(sort=False)
    vocab = pd.DataFrame({"track_idx": counts.index.to_numpy(), "train_count": counts.to_numpy()})
    vocab = vocab.sort_values(
        ["train_count", "track_idx"], ascending=[False, True], kind="stable"
    ).reset_index(drop=True)
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


def split_stats(parts: dict[str, pd.DataFrame]) -> dict[str, dict]:
    stats = {}
    for name, df in parts.items():
        lens = df.groupby("session_id").size().to_numpy() if len(df) else np.zeros(1)
        stats[name] = {
            "sessions": int(df["session_id"].nunique()),
            "plays": int(len(df)),
            "users": int(df["user_idx"].nunique()),
            "tracks": int(df.loc[df["item_idx"] > 0, "item_idx"].nunique()),  # 0: unseen
            "len_mean": float(lens.mean()),
            "len_median": float(np.median(lens)),
            "len_p90": float(np.percentile(lens, 90)),
            "len_max": int(lens.max()),
            "first": str(pd.Timestamp(int(df["ts_s"].min()), unit="s")) if len(df) else "",
            "last": str(pd.Timestamp(int(df["ts_s"].max()), unit="s")) if len(df) else "",
        }
    return stats


def time_slices(ts_s: np.ndarray, n: int) -> list[tuple[int, int]]:
    """[start, end) of ``n`` consecutive slices of equal length covering ``ts_s``
    (session-rec's sliding-window protocol: each slice gets its own time split)."""
    t0, t1 = int(ts_s.min()), int(ts_s.max()) + 1
    edges = [t0 + (t1 - t0) * k // n for k in range(n + 1)]
    return list(zip(edges[:-1], edges[1:]))


def sessionize_window(
    src: Path,
    out: Path,
    cfg: SessionConfig,
    time_range: tuple[int, int] | None = None,
    plays: pd.DataFrame | None = None,
) -> dict:
    """Run the whole stage for one window file (or the plays of one ``time_range`` of
    it; ``plays``: the file's table when already read); write outputs; return the
    manifest."""
    if plays is None:
        plays = read_table(src, "plays", "preprocess.py")
    if time_range is not None:
        ts = plays["ts_s"].to_numpy()
        plays = plays[(ts >= time_range[0]) & (ts < time_range[1])].reset_index(drop=True)
    if len(plays) == 0:
        raise PipelineError(f"{src}: the window holds no play")
    bounds = time_bounds(plays["ts_s"].to_numpy(), cfg.valid_frac, cfg.test_frac)
    sessions, counts = build_sessions(
        plays[["user_idx", "ts_s", "track_idx"]], cfg, count_before=bounds["test_from_s"]
    )
    if len(sessions) == 0:
        raise PipelineError(
            f"{src}: no session left after filtering ({counts}); "
            "lower --min-user-sessions or --min-len"
        )
    parts, bounds = split_by_time(sessions, cfg.valid_frac, cfg.test_frac, bounds)
    vocab = build_vocab(parts["train"], plays)
    parts["train"]["item_idx"] = (
        pd.Series(vocab["item_idx"].to_numpy(), index=vocab["track_idx"].to_numpy())
        .reindex(parts["train"]["track_idx"].to_numpy())
        .to_numpy()
        .astype(np.int32)
    )
    positions = parts["train"]["position"].to_numpy()
    dropped = {
        "train": {
            "plays": len(parts["train"]),
            "unseen_plays": 0,
            "events_scored": int((positions >= 1).sum()),
        }
    }
    for name in ("valid", "test"):
        parts[name], dropped[name] = apply_vocab(
            parts[name], vocab, cfg.min_len, keep_unseen=cfg.unseen == "keep"
        )
    for name, df in parts.items():
        df = df.rename(columns={"sess": "session_id"})
        df = df[["session_id", "user_idx", "position", "item_idx", "ts_s"]]
        parts[name] = df
        common.write_parquet(out / f"{name}.parquet", df)
        gru4rec = df.rename(
            columns={"session_id": "SessionId", "item_idx": "ItemId", "ts_s": "Time"}
        )[["SessionId", "ItemId", "Time"]]
        common.write_atomic(
            out / f"{name}.tsv", lambda tmp, t=gru4rec: t.to_csv(tmp, sep="\t", index=False)
        )
    common.write_parquet(out / "vocab.parquet", vocab)
    stats = split_stats(parts)
    rows = [
        [
            n,
            s["sessions"],
            s["plays"],
            s["users"],
            s["tracks"],
            s["len_mean"],
            s["len_median"],
            s["len_p90"],
            s["len_max"],
            s["first"],
            s["last"],
        ]
        for n, s in stats.items()
    ]
    md = f"### sessions of `{src.name}` ({cfg.mode}, {cfg.gap_minutes:g} min)\n\n" + markdown_table(
        [
            "split",
            "sessions",
            "plays",
            "users",
            "tracks",
            "mean len",
            "median len",
            "p90 len",
            "max len",
            "first",
            "last",
        ],
        rows,
    )
    common.write_text(out / "stats.md", md + "\n")
    manifest = {
        "counts": counts,
        "split_bounds": bounds,
        "accounting": dropped,
        "splits": stats,
        "vocab_size": int(len(vocab)),
        "vocab_md5": vocab_checksum(vocab),
    }
    common.write_json(out / "stats.json", manifest)
    return manifest


def window_outputs(src, out, cfg, params, time_range, plays, args) -> dict:
    """One window's outputs in ``out`` (held by the caller): its manifest when current for
    ``params``, else the window sessionized, written, and its manifest written last."""
    if not args.force and common.stage_current(out / "meta.json", params):
        log(f"{out} is current; skipping")
        return read_json(out / "meta.json")
    log(f"sessionizing {src}" + (f" {time_range}" if time_range else ""))
    (out / "meta.json").unlink(missing_ok=True)  # the manifest goes last
    manifest = sessionize_window(src, out, cfg, time_range, plays)
    names = [f"{s}.{ext}" for s in SPLITS for ext in ("parquet", "tsv")]
    names += ["vocab.parquet", "stats.md", "stats.json"]
    common.write_json(
        out / "meta.json",
        {"params": params, **manifest, "outputs": common.outputs_record(out, names)},
    )
    print((out / "stats.md").read_text())
    return manifest


def vocab_checksum(vocab: pd.DataFrame) -> str:
    """Identity of a vocabulary: MD5 of its ordered track keys."""
    import hashlib

    return hashlib.md5("\n".join(vocab["track_key"].astype(str)).encode()).hexdigest()


def study_table(results: dict[str, dict]) -> str:
    """Sessions per window in the study's table shape."""
    rows = []
    for window, m in results.items():
        c = m["counts"]
        rows.append(
            [
                window,
                c["plays"],
                c["sessions"],
                round(c["plays"] / max(1, c["sessions"]), 2),
                c["kept_sessions"],
                c["kept_users"],
                c["users_dropped"],
                m["vocab_size"],
            ]
        )
    note = (
        f"\nThe study's 1-month window: {STUDY_1M['sessions']:,} sessions of about "
        f"{STUDY_1M['plays_per_session']} plays; {STUDY_1M['users']} users kept.\n"
    )
    return (
        markdown_table(
            [
                "window",
                "plays",
                "sessions",
                "plays/session",
                "kept sessions",
                "kept users",
                "users dropped",
                "train tracks",
            ],
            rows,
        )
        + note
    )


def parse_args(argv=None) -> tuple[Layout, SessionConfig, argparse.Namespace]:
    ap = cfgs.parser("Sessionize and split the preprocessed windows.")
    cfgs.add_data_dir(ap)
    ap.add_argument(
        "--windows",
        default=None,
        help="comma-separated window names (default: every window preprocess wrote)",
    )
    ap.add_argument("--force", action="store_true", help="redo windows that are current")
    cfgs.add_flags(ap, SessionConfig, "sessions")
    args = ap.parse_args(argv)
    return Layout.at(args.data_dir), cfgs.from_args(SessionConfig, args), args


def main(argv=None) -> None:
    layout, cfg, args = parse_args(argv)
    src_dir = layout.preprocessed()
    if not (src_dir / "meta.json").exists():
        raise PipelineError(f"{src_dir}/meta.json not found: run preprocess.py first")
    pre = read_json(src_dir / "meta.json")
    available = list(pre.get("windows", {})) + (["all"] if pre.get("all") else [])
    windows = args.windows.split(",") if args.windows else list(pre.get("windows", {}))
    for w in windows:
        if w not in available:
            raise PipelineError(f"unknown window {w!r}; preprocess.py wrote {available}")
    results = {}
    jobs, tables = [], {}
    for w in windows:
        src = src_dir / f"{w}.parquet"
        if cfg.slices > 1:
            tables[src] = read_table(src, "plays", "preprocess.py")  # read once for all slices
            ranges = time_slices(tables[src]["ts_s"].to_numpy(), cfg.slices)
            jobs += [(slice_name(w, k + 1), src, r) for k, r in enumerate(ranges)]
        else:
            jobs.append((w, src, None))
    for w, src, time_range in jobs:
        # The input by content (its MD5 in preprocess's manifest), not by its file time.
        recorded = pre.get("outputs", {}).get(src.name)
        params = {
            **cfgs.as_dict(cfg),
            "input": recorded or common.fingerprint(src),
            "time_range": time_range,
            "version": OUTPUT_VERSION,
        }
        with common.folder_lock(layout.sessions(w)) as out:  # one writer per window
            results[w] = window_outputs(src, out, cfg, params, time_range, tables.get(src), args)
    table = study_table(results)
    reports = make(layout.reports())
    common.sweep_litter(reports)
    common.write_text(
        reports / "sessions.md",
        "## Sessions per window\n\n"
        + table
        + "\n\n"
        + "\n\n".join((layout.sessions(w) / "stats.md").read_text() for w, _, _ in jobs),
    )
    print(table)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
