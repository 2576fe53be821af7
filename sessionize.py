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
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from lastfm import common
from lastfm import config as cfgs
from lastfm.common import PipelineError, log, markdown_table, read_json, run_main
from lastfm.dask_stages import EngineConfig
from lastfm.data import SPLITS, read_table
from lastfm.paths import Layout, make, slice_name
from lastfm.sessions import (  # noqa: F401 (the rules, re-exported for users of the stage)
    SessionConfig,
    apply_vocab,
    build_sessions,
    build_vocab,
    check_fracs,
    fill_names,
    session_starts,
    split_by_time,
    time_bounds,
    vocab_checksum,
)
from lastfm.study import STUDY_1M

# Bumped when the outputs change for the same parameters (a rerun then redoes them).
# 2: the user filter counts sessions before the test period; unscored events accounted.
OUTPUT_VERSION = 2


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
    vocab = build_vocab(parts["train"], plays, cfg.min_track_plays, cfg.max_tracks)
    vocab = fill_names(vocab, Path(src).parent / "names.parquet")
    dropped = {}
    if cfg.capped():  # training plays of tracks left out are handled as unseen ones
        parts["train"], dropped["train"] = apply_vocab(
            parts["train"], vocab, cfg.min_len, keep_unseen=cfg.unseen == "keep"
        )
    else:
        parts["train"]["item_idx"] = (
            pd.Series(vocab["item_idx"].to_numpy(), index=vocab["track_idx"].to_numpy())
            .reindex(parts["train"]["track_idx"].to_numpy())
            .to_numpy()
            .astype(np.int32)
        )
        positions = parts["train"]["position"].to_numpy()
        dropped["train"] = {
            "plays": len(parts["train"]),
            "unseen_plays": 0,
            "events_scored": int((positions >= 1).sum()),
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
    common.write_text(out / "stats.md", stats_markdown(src.name, cfg, stats))
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


def clear_other_engine(out: Path, engine: str) -> None:
    """Remove what the other engine wrote in a window's folder: the Dask engine's splits
    are folders of parts (with GRU4Rec and RecBole shards), the local engine's files."""
    for split in SPLITS:
        for p in (out / f"{split}.parquet", out / f"{split}.tsv"):
            if engine == "local" and p.is_dir():
                shutil.rmtree(p)
            elif engine == "dask" and p.is_file():
                p.unlink()
    if engine == "local":
        for sub in ("_work", "gru4rec", "recbole"):
            shutil.rmtree(out / sub, ignore_errors=True)


def stats_markdown(src_name: str, cfg: SessionConfig, stats: dict[str, dict]) -> str:
    """One window's split table."""
    columns = ["sessions", "plays", "users", "tracks", "len_mean", "len_median", "len_p90"]
    rows = [
        [n] + [s[c] for c in columns] + [s["len_max"], s["first"], s["last"]]
        for n, s in stats.items()
    ]
    header = ["split", "sessions", "plays", "users", "tracks", "mean len", "median len"]
    header += ["p90 len", "max len", "first", "last"]
    title = f"### sessions of `{src_name}` ({cfg.mode}, {cfg.gap_minutes:g} min)\n\n"
    return title + markdown_table(header, rows) + "\n"


def dask_window_outputs(src, out, cfg, params, engine, args, pre) -> dict:
    """``window_outputs`` on the Dask engine: sharded splits, GRU4Rec and RecBole files."""
    from lastfm import dask_stages

    if not args.force and common.stage_current(out / "meta.json", params):
        log(f"{out} is current; skipping")
        return read_json(out / "meta.json")
    log(f"sessionizing {src} on Dask")
    clear_other_engine(out, "dask")
    if args.force:  # redo every task, not only the window's manifest
        shutil.rmtree(out / "_work", ignore_errors=True)
    (out / "meta.json").unlink(missing_ok=True)  # the manifest goes last
    with dask_stages.cluster(engine.scheduler, engine.workers) as client:
        manifest = dask_stages.sessionize(
            client,
            src.resolve(),
            out.resolve(),
            cfg,
            out.name,
            pre.get("outputs"),
            bool(pre.get("params", {}).get("keep_missing_mbid")),
        )
    common.write_text(out / "stats.md", stats_markdown(src.name, cfg, manifest["splits"]))
    common.write_json(out / "stats.json", manifest)
    names = sorted(
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file()
        and "_work" not in p.parts
        and p.name not in ("meta.json", ".lock")
        and not common.LITTER.match(p.name)
    )
    common.write_json(
        out / "meta.json",
        {"params": params, **manifest, "outputs": common.outputs_record(out, names)},
    )
    print((out / "stats.md").read_text())
    return manifest


def window_outputs(src, out, cfg, params, time_range, plays, args) -> dict:
    """One window's outputs in ``out`` (held by the caller): its manifest when current for
    ``params``, else the window sessionized, written, and its manifest written last."""
    if not args.force and common.stage_current(out / "meta.json", params):
        log(f"{out} is current; skipping")
        return read_json(out / "meta.json")
    log(f"sessionizing {src}" + (f" {time_range}" if time_range else ""))
    clear_other_engine(out, "local")
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
    cfgs.add_flags(ap, EngineConfig, "engine")
    args = ap.parse_args(argv)
    args.engine_cfg = cfgs.from_args(EngineConfig, args)
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
    engine = args.engine_cfg
    if engine.engine == "dask" and cfg.slices > 1:
        raise PipelineError("--slices is not available with --engine dask")
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
        outputs = pre.get("outputs", {})
        recorded = outputs.get(src.name) or {  # a Dask window: its parts
            k: v for k, v in outputs.items() if k.startswith(src.name + "/")
        }
        params = {
            **cfgs.as_dict(cfg),
            "input": recorded or common.fingerprint(src),
            "time_range": time_range,
            "version": OUTPUT_VERSION,
        }
        if engine.engine == "dask":
            params |= {"engine": "dask"}
        with common.folder_lock(layout.sessions(w)) as out:  # one writer per window
            if engine.engine == "dask":
                results[w] = dask_window_outputs(src, out, cfg, params, engine, args, pre)
            else:
                results[w] = window_outputs(
                    src, out, cfg, params, time_range, tables.get(src), args
                )
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
