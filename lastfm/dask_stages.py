"""The data stages on Dask, for listening logs that do not fit in one machine's memory.

``preprocess.py --engine dask`` and ``sessionize.py --engine dask`` call ``preprocess``
and ``sessionize`` here; the local engine (the default) stays the stage scripts' own code.
The plan (docs/DECISIONS.md, "Past one machine") is one shuffle by user, then work per
partition:

1. **ingest**, one task per input piece (a byte range of a text file, a TAR member, a
   Parquet file; ``lastfm.sources``): parse exactly, drop nothing, and write the piece's
   rows sorted by ``bucket = hash(user) % B`` as ``_work/ingest/<piece>/plays.parquet``, a
   row group per bucket (and batch), with a manifest per piece (lines, rejects by reason,
   time range, the buckets it holds). This is the shuffle's write side: each bucket
   receives whole listeners; no task holds more than one piece (one batch of it).
2. **users**, one task per bucket: the bucket's distinct listeners (the user column of
   its files), so that every user is numbered by its rank among all users (the local
   engine's order) before any play is written; the month windows are cut at the global
   last play, known from the pieces' manifests.
3. **buckets**, one task per bucket: read the bucket's files from every piece, sort each
   listener's plays by time, flag missing ids and implausible times, write the bucket's
   plays of every window as ``preprocessed/<window>.parquet/part-<bucket>.parquet``, and
   its share of the statistics: per column each value's count in every table, split by
   a hash of the value into ``_work/stats/<column>/b<bucket>.parquet`` (a row group per
   reducer). One read of the bucket for everything.
4. **statistics**, one task per slice of the values: the slice's counts summed over every
   bucket and summarised (the study's table: count, unique, top, freq per column) - exact,
   a two-level reduction in which only distinct values per bucket move.

Sessionize, per window: sessions per bucket with ``lastfm.sessions.build_sessions`` (the local
engine's vectorised builder, through one task per bucket, never ``groupby().apply``),
the time split at global cut points, the vocabulary from the training counts (a Dask
reduction, with ``--min-track-plays`` / ``--max-tracks`` caps), then per bucket the
vocabulary applied and the splits written as sharded Parquet, GRU4Rec TSV and RecBole
atomic files. Every task writes its outputs atomically and a manifest last, so a killed
run resumes: a rerun skips every piece and bucket whose manifest matches its parameters
and whose outputs still have their recorded size and modification time.

Integer codes: ``user_idx`` is exact (the rank of the user id among all users, as in the
local engine); ``artist_idx`` and ``track_idx`` are 64-bit hashes of the ids (no global
dictionary of 30M strings on one machine), checked for collisions where the vocabulary is
built. Sessions ids are unique, and increase with start time within each part.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lastfm import common, sources
from lastfm import config as cfgs
from lastfm.common import PipelineError, log
from lastfm.config import option
from lastfm.plays import REQUIRED, month_windows


@dataclass
class EngineConfig:
    """Where the data stages run (recorded with their outputs)."""

    engine: str = option(
        "local",
        "local: one process, every play in memory (Last.fm-1K); dask: user-partitioned "
        "work on a Dask cluster, for logs past one machine's memory",
        choices=["local", "dask"],
    )
    scheduler: str | None = option(
        None, "dask: join this scheduler (tcp://host:8786 or a scheduler .json file)"
    )
    workers: int = option(0, "dask: LocalCluster worker processes (0: one per core)")
    partitions: int = option(0, "dask: user buckets (0: about 2M plays each)")
    piece_mb: float = option(64.0, "dask: MB of input text per parsing task")

    def check(self) -> None:
        cfgs.require_at_least(self, 0, "workers", "partitions")
        cfgs.require_above(self, 0, "piece_mb")
        if self.engine == "local" and (self.scheduler or self.partitions):
            raise PipelineError("--scheduler/--partitions need --engine dask")


STAT_COLUMNS = ["user_id", "timestamp", "artist_id", "artist_name", "track_id", "track_name"]
_PIECE_COLUMNS = ["user", "ts_s", "artist", "track", "artist_name", "track_name", "piece", "line"]
# Rows per bucket the automatic bucket count aims at (one bucket is one task's memory).
BUCKET_ROWS = 2_000_000
# Files under _work/ are read once or twice and then only kept for a resumed run: lz4
# (faster to write and read than zstd, about twice the bytes).
WORK_COMPRESSION = "lz4"
# The worker processes of a LocalCluster we start: glibc keeps up to 256 MB of freed
# memory and serves arrays below 64 MB from its heap, instead of Dask's default (trim at
# 64 KB), which returned every bucket's arrays to the kernel and faulted them in again.
WORKER_MALLOC = {"MALLOC_TRIM_THRESHOLD_": 256 << 20, "MALLOC_MMAP_THRESHOLD_": 64 << 20}


# --------------------------------------------------------------------------- cluster
@contextmanager
def cluster(scheduler: str | None = None, workers: int = 0, memory_limit: str = "auto"):
    """A Dask client: joined to ``scheduler`` (an address such as tcp://host:8786, or a
    scheduler file), else a ``LocalCluster`` of ``workers`` processes (0: one per core),
    one thread each (the tasks are numpy/pyarrow work that holds one bucket in memory)."""
    from distributed import Client, LocalCluster

    if scheduler:
        kw = {"scheduler_file": scheduler} if scheduler.endswith(".json") else {}
        client = Client(**kw) if kw else Client(scheduler)
        try:
            yield client
        finally:
            client.close()
        return
    import dask

    n = workers or os.cpu_count() or 1
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {})) | WORKER_MALLOC
    with (
        dask.config.set({"distributed.nanny.pre-spawn-environ": environ}),
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=None,
        ) as lc,
        Client(lc) as client,
    ):
        yield client


def run_tasks(client, fn: Callable, items: list, desc: str) -> list:
    """``fn(item)`` for every item on the cluster, results in order; a task that raises
    re-raises here (a ``PipelineError`` keeps its one-line message)."""
    if not items:
        return []
    futures = client.map(fn, items, pure=False)
    log(f"{desc}: {len(items)} tasks")
    return client.gather(futures)


# --------------------------------------------------------------------------- helpers
_POWERS = np.cumprod(np.full(1 << 16, 0x100000001B3, np.uint64))  # FNV prime^k mod 2**64
_HASH_BATCH = 1 << 16  # strings hashed together (bounds the temporaries)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def text_hash(values) -> np.ndarray:
    """A stable 64-bit hash (uint64) of each string of an Arrow column without nulls:
    a polynomial over its UTF-8 bytes (weights FNV's prime to the power of the distance
    from the end, modulo 2**64, repeating every 65,536 bytes) plus its length, then
    mixed; numpy alone, so equal on every machine and every run, and without a Python
    object per value."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    arr = arr.cast(pa.large_string())
    out = np.empty(len(arr), np.uint64)
    for start in range(0, len(arr), _HASH_BATCH):
        part = arr.slice(start, _HASH_BATCH)
        _, offs, data = part.buffers()
        offsets = np.frombuffer(offs, np.int64)[part.offset : part.offset + len(part) + 1]
        lo, hi = int(offsets[0]), int(offsets[-1])
        lengths = np.diff(offsets)
        h = lengths.astype(np.uint64)
        if hi > lo:
            raw = np.frombuffer(data, np.uint8)[lo:hi]
            owner_end = np.repeat(offsets[1:] - lo, lengths)  # each byte's string's end
            from_end = (owner_end - 1 - np.arange(hi - lo)) % len(_POWERS)
            terms = raw.astype(np.uint64) * _POWERS[from_end]
            nonempty = lengths > 0
            h[nonempty] += np.add.reduceat(terms, (offsets[:-1] - lo)[nonempty])
        out[start : start + len(part)] = _mix(h)
    return out


def hash_strings(col) -> np.ndarray:
    """``text_hash`` of an Arrow string column (nulls as "") as int64, hashing each
    distinct value once (its dictionary) rather than every row."""
    import pyarrow.compute as pc

    enc = pc.dictionary_encode(pc.fill_null(col, ""))
    enc = enc.combine_chunks() if isinstance(enc, pa.ChunkedArray) else enc
    return text_hash(enc.dictionary).view(np.int64)[enc.indices.to_numpy(zero_copy_only=False)]


def bucket_of(users, buckets: int) -> np.ndarray:
    """Each user's bucket (``text_hash(user) % buckets``) of an Arrow or numpy column."""
    if not isinstance(users, pa.ChunkedArray | pa.Array):
        users = pa.array(np.asarray(users, dtype=object), pa.string())
    h = hash_strings(users).view(np.uint64)
    return (h % np.uint64(buckets)).astype(np.int32)


def _done(path: Path, params: dict, folder: Path | None = None) -> dict | None:
    """The manifest at ``path`` when it records ``params`` and its outputs (named
    relative to ``folder``, by default the manifest's) are intact."""
    if not path.exists():
        return None
    try:
        m = common.read_json(path)
    except PipelineError:
        return None
    if m.get("params") != params:
        return None
    if not _intact(folder or path.parent, m.get("outputs")):
        return None
    return m


def _record(folder: Path, names: list[str]) -> dict[str, dict]:
    """Size and modification time of each output: every file here is written under a
    temporary name and renamed into place, so a file at its name is whole, and one
    rewritten or touched since its manifest shows a new time (an MD5 of every part
    cost as much as writing it)."""
    out = {}
    for n in names:
        st = (Path(folder) / n).stat()
        out[n] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def _intact(folder: Path, record: dict | None) -> bool:
    if not record:
        return False
    for name, rec in record.items():
        try:
            st = (Path(folder) / name).stat()
        except OSError:
            return False
        if st.st_size != rec.get("bytes") or st.st_mtime_ns != rec.get("mtime_ns"):
            return False
    return True


def _finish(path: Path, params: dict, folder: Path, names: list[str], **extra) -> dict:
    m = {"params": params, **extra, "outputs": _record(folder, names)}
    common.write_json(path, m)
    return m


def prune(folder: Path, pattern: str, keep: int) -> None:
    """Remove what an earlier run with more pieces, buckets or parts left: every entry
    of ``folder`` matching ``pattern`` (a glob with one run of digits) numbered
    ``keep`` or more."""
    for p in Path(folder).glob(pattern):
        digits = "".join(c for c in p.name.split("-")[-1].split(".")[0] if c.isdigit())
        if digits and int(digits) >= keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _write(path: Path, table: pa.Table | pd.DataFrame, compression: str = "zstd") -> None:
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    common.write_parquet(path, table, compression=compression)


def _track_key(df: pd.DataFrame, keep_missing_mbid: bool) -> pd.Series:
    if keep_missing_mbid:
        return df["artist_name"].astype(object) + "\t" + df["track_name"].astype(object)
    return df["track"]


# --------------------------------------------------------------------------- preprocess
def ingest_piece(job: dict) -> dict:
    """Task: parse one piece, write its rows by user bucket (a row group each) in one
    file, then its manifest."""
    piece, work = job["piece"], Path(job["work"])
    folder = work / "ingest" / f"p{piece.index:06d}"
    params = {  # everything the piece's files depend on
        "piece": asdict(piece),
        "input": common.fingerprint(piece.path),
        "buckets": job["buckets"],
        "dataset": job["dataset"],
        "options": asdict(job["options"]),
        "valid_range": list(job["valid_range"]),
    }
    done = _done(folder / "manifest.json", params)
    if done:
        return done
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    names, rejects, lines, rows, present = [], [], 0, 0, set()
    where = piece.path + (f":{piece.member}" if piece.member else "")
    counts: dict[str, int] = {}
    lo_ok, hi_ok = job["valid_range"]
    ts_range = None

    def write(tmp: Path) -> None:
        """Every batch's rows sorted by bucket, a row group per (batch, bucket): one file
        per piece (not one per piece and bucket: at 200M plays, 110 x 62 files)."""
        nonlocal where, lines, rows, ts_range
        writer = None
        try:
            for res in sources.iter_piece(piece, job["dataset"], job["options"]):
                t = res.table  # one batch in memory at a time
                t = t.append_column("piece", pa.array(np.full(t.num_rows, piece.index, np.int32)))
                b = bucket_of(t["user"], job["buckets"])
                order = np.argsort(b, kind="stable")  # a bucket's rows together, in line order
                t, b = t.take(pa.array(order)), b[order]
                t = t.append_column("bucket", pa.array(b, pa.int32()))
                edges = np.flatnonzero(np.r_[True, b[1:] != b[:-1], True]) if len(b) else []
                for lo, hi in zip(edges[:-1], edges[1:]):
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, t.schema, compression=WORK_COMPRESSION)
                    writer.write_table(t.slice(lo, hi - lo), row_group_size=hi - lo)
                    present.add(int(b[lo]))
                where = res.where
                rejects.extend(
                    f"{where}\t{line}\t{reason}\t{_escape(raw)}\n"
                    for line, reason, raw in res.rejects
                )
                lines += res.lines
                rows += t.num_rows
                for key, v in res.counts.items():
                    counts[key] = counts.get(key, 0) + int(v)
                ts = t["ts_s"].to_numpy()
                ok = ts[(ts >= lo_ok) & (ts < hi_ok)]
                if len(ok):
                    lo, hi = int(ok.min()), int(ok.max())
                    ts_range = (
                        [lo, hi]
                        if ts_range is None
                        else [min(ts_range[0], lo), max(ts_range[1], hi)]
                    )
        finally:
            if writer is not None:
                writer.close()
        if writer is None:  # no row: an empty file keeps the piece's record simple
            pq.write_table(sources.PLAY_SCHEMA.empty_table(), tmp)

    common.write_atomic(folder / "plays.parquet", write)
    names.append("plays.parquet")
    if rejects:
        common.write_atomic(
            folder / "rejects.tsv", lambda tmp: tmp.write_text("".join(rejects), encoding="utf-8")
        )
        names.append("rejects.tsv")
    return _finish(
        folder / "manifest.json",
        params,
        folder,
        names,
        where=where,
        lines=int(lines),
        rows=int(rows),
        counts=counts,
        rejects=len(rejects),
        ts_in_range=ts_range,
        buckets=sorted(present),
    )


def _escape(raw: bytes) -> str:
    from lastfm.parse import escape_line

    return escape_line(raw)


def _read_bucket(path: Path, b: int, columns: list[str] | None = None) -> pa.Table:
    """A piece's rows of bucket ``b``: its row groups, found by their statistics."""
    pf = pq.ParquetFile(path)
    col = pf.schema_arrow.get_field_index("bucket")
    groups = []
    for i in range(pf.metadata.num_row_groups):
        st = pf.metadata.row_group(i).column(col).statistics
        if st is None or not st.has_min_max:
            raise PipelineError(f"{path}: row group {i} has no statistics of its bucket")
        if st.min == b:
            groups.append(i)
    return pf.read_row_groups(groups, columns=columns)


def bucket_users(job: dict) -> pa.Array:
    """Task: the distinct listeners of one bucket (its files' user column only)."""
    import pyarrow.compute as pc

    work, b = Path(job["work"]), job["bucket"]
    cols = [_read_bucket(work / "ingest" / f, b, ["user"])["user"] for f in job["files"]]
    if not cols:
        return pa.array([], sources.PLAY_SCHEMA.field("user").type)
    return pc.unique(pa.chunked_array([c for col in cols for c in col.chunks]))


def bucket_plays(job: dict) -> dict:
    """Task: every piece's rows of one bucket, sorted by user and time and flagged; its
    plays of every window written as that window's part (users numbered globally); and
    its share of the study's statistics (``stat_partials``). A manifest last."""
    work, b, pre = Path(job["work"]), job["bucket"], Path(job["out"])
    name = f"b{b:05d}"
    params = {  # everything the bucket's outputs depend on
        "bucket": b,
        "pieces": job["pieces_md5"],
        "rules": job["rules"],
        "windows": {w: list(v) for w, v in job["windows"].items()},
        "users": job["users_md5"],
        "slices": job["slices"],
    }
    manifest = work / "buckets" / f"{name}.json"
    done = _done(manifest, params, pre)
    if done:
        return done
    import pyarrow.compute as pc

    files = [work / "ingest" / f for f in job["files"]]
    schema = sources.PLAY_SCHEMA.append(pa.field("piece", pa.int32()))
    frame = (
        pa.concat_tables(
            [_read_bucket(f, b).drop_columns(["bucket"]) for f in files],
            promote_options="permissive",
        ).combine_chunks()  # one chunk: take and hashing on many chunks are slow
        if files
        else schema.empty_table()
    )
    # Listener (code point order, as the local engine), then time; equal times keep the
    # input's chronological order (newest-first files: the later line is the older play).
    tie = "descending" if job["newest_first"] else "ascending"
    keys = [("user", "ascending"), ("ts_s", "ascending"), ("piece", tie), ("line", tie)]
    frame = frame.take(pc.sort_indices(frame, sort_keys=keys))
    rules = job["rules"]
    ts = frame["ts_s"].to_numpy()
    in_range = (ts >= rules["valid_from_s"]) & (ts < rules["valid_to_s"])

    def filled(col: str) -> np.ndarray:
        c = frame[col]
        return pc.and_(pc.is_valid(c), pc.not_equal(pc.fill_null(c, ""), "")).to_numpy(
            zero_copy_only=False
        )

    # a track id, unless tracks are named by (artist, title): --keep-missing-mbid
    clean = np.ones(frame.num_rows, bool) if rules["keep_missing_mbid"] else filled("track")
    for col in rules["required"]:
        clean &= filled(col)
    if rules["keep_missing_mbid"]:
        key = pc.binary_join_element_wise(
            pc.fill_null(frame["artist_name"], ""), pc.fill_null(frame["track_name"], ""), "\t"
        )
        art = frame["artist_name"]
    else:
        key, art = frame["track"], frame["artist"]
    track_idx = np.where(clean, hash_strings(key), 0)
    frame = (
        frame.append_column("in_range", pa.array(in_range))
        .append_column("clean", pa.array(clean))
        .append_column("track_idx", pa.array(track_idx, pa.int64()))
        .append_column("artist_idx", pa.array(hash_strings(art), pa.int64()))
    )
    # the rank of each user among all users: its position in the sorted list
    user_idx = pc.index_in(frame["user"], value_set=job["users"]).cast(pa.int32())
    masks = _masks(frame, job["windows"])  # the tables' 0/1 columns, windows' parts too
    table = pa.table(
        {
            "user_idx": user_idx,
            "ts_s": frame["ts_s"],
            "artist_idx": frame["artist_idx"],
            "track_idx": frame["track_idx"],
            "artist_name": frame["artist_name"],
            "track_name": frame["track_name"],
            "track_mbid": frame["track"],
        }
    )
    windows, names = {}, []
    for w in job["windows"]:
        m = masks[f"m_{w}"].astype(bool)
        part = pre / f"{w}.parquet" / f"part-{b:05d}.parquet"
        part.parent.mkdir(parents=True, exist_ok=True)
        if m.any():  # a bucket without a play in the window writes no part
            _write(part, table.filter(pa.array(m)))
            names.append(str(part.relative_to(pre)))
        else:
            part.unlink(missing_ok=True)
        windows[w] = {
            "rows": int(m.sum()),
            "ts": [int(ts[m].min()), int(ts[m].max())] if m.any() else None,
        }
    stats = stat_partials(frame, masks, job["windows"], work / "stats", b, job["slices"])
    names += [f"_work/stats/{col}/{name}.parquet" for col in STAT_SOURCE]
    manifest.parent.mkdir(parents=True, exist_ok=True)
    return _finish(manifest, params, pre, names, rows=int(len(frame)), windows=windows, **stats)


STAT_SOURCE = {  # the study's column -> the plays' column
    "user_id": "user",
    "timestamp": "ts_s",
    "artist_id": "artist",
    "artist_name": "artist_name",
    "track_id": "track",
    "track_name": "track_name",
}


def _masks(frame: pa.Table, windows: dict) -> dict[str, np.ndarray]:
    """A 0/1 count column ``m_<table>`` per table (raw, clean, each window) of a bucket's
    plays, ``m_no_artist`` (plays without an artist id) and ``m_in_range``."""
    import pyarrow.compute as pc

    ts, clean = frame["ts_s"].to_numpy(), frame["clean"].to_numpy()
    in_range = frame["in_range"].to_numpy()
    art = frame["artist"]
    masks = {"m_raw": np.ones(frame.num_rows, bool), "m_clean": clean}
    for w, (start, end) in windows.items():
        masks[f"m_{w}"] = clean & in_range & (ts >= start) & (ts < end)
    masks["m_no_artist"] = pc.or_(pc.is_null(art), pc.equal(pc.fill_null(art, "x"), "")).to_numpy(
        zero_copy_only=False
    )
    masks["m_in_range"] = in_range
    return {k: v.astype(np.int32) for k, v in masks.items()}


def _stat_counts(col: str, tables: list[str]) -> list[str]:
    """The count columns a bucket writes for ``col``. A timestamp's count in a window is
    its clean count when the window (and the plausible range) holds that second, so
    timestamps carry raw and clean only; the reducer derives the windows'."""
    if col == "timestamp":
        return ["m_raw", "m_clean"]
    return [f"m_{t}" for t in tables] + (["m_no_artist"] if col == "artist_name" else [])


def _slice_of(values, slices: int) -> np.ndarray:
    """Which reducer sums a value's counts: a hash of the value, mod ``slices``."""
    if pa.types.is_integer(values.type):
        h = _mix(values.to_numpy().astype(np.int64).view(np.uint64))
    else:
        h = text_hash(values)
    return (h % np.uint64(slices)).astype(np.int32)


def _sum_by_value(t: pa.Table, cols: list[str], dtype=pa.int64()) -> pa.Table:
    """``t``'s count columns summed per distinct ``v``, as ``dtype``. Integers
    (timestamps, nearly all distinct) by one sort, several times faster there than
    Arrow's hash group-by; strings by the group-by."""
    if pa.types.is_integer(t["v"].type):
        v = t["v"].to_numpy()
        order = np.argsort(v, kind="stable")
        v = v[order]
        starts = np.flatnonzero(np.r_[True, v[1:] != v[:-1]]) if len(v) else np.zeros(0, int)
        sums = {
            c: pa.array(
                np.add.reduceat(t[c].to_numpy().astype(np.int64)[order], starts)
                if len(v)
                else np.zeros(0, np.int64)
            )
            for c in cols
        }
        g = pa.table({"v": v[starts], **sums})
    else:
        g = t.group_by("v").aggregate([(c, "sum") for c in cols]).rename_columns(["v", *cols])
    return pa.table({"v": g["v"], **{c: g[c].cast(dtype) for c in cols}})


def _write_slices(path: Path, g: pa.Table, slices: int) -> None:
    """``g`` (sorted by ``slice``) with each slice its own row group, so that a reducer's
    filter on ``slice`` reads its row group only."""
    sl = g["slice"].to_numpy()
    edges = np.searchsorted(sl, np.arange(slices + 1))

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(tmp, g.schema, compression=WORK_COMPRESSION) as w:
            for lo, hi in zip(edges[:-1], edges[1:]):
                if hi > lo:
                    w.write_table(g.slice(lo, hi - lo), row_group_size=hi - lo)

    common.write_atomic(path, write)


def stat_partials(
    frame: pa.Table, masks: dict, windows: dict, folder: Path, b: int, slices: int
) -> dict:
    """The first half of the statistics' reduction, for one bucket: per column, each
    value's count in every table (missing values, null or "", are not values), written
    to ``folder/<column>/b<bucket>.parquet`` sorted by the reducer (``slice``) that sums
    it: one read of the plays for all six columns, and only distinct values move on."""
    import pyarrow.compute as pc

    tables = ["raw", "clean", *windows]
    for col, src in STAT_SOURCE.items():
        cols = _stat_counts(col, tables)
        v = frame[src]
        t = pa.table({"v": v, **{c: masks[c] for c in cols}})
        if not pa.types.is_integer(v.type):
            t = t.filter(pc.and_(pc.is_valid(v), pc.not_equal(pc.fill_null(v, ""), "")))
        g = _sum_by_value(t, cols, pa.int32())  # a bucket holds far fewer plays than 2**31
        g = g.append_column("slice", pa.array(_slice_of(g["v"], slices)))
        g = g.take(pc.sort_indices(g, sort_keys=[("slice", "ascending")]))
        (folder / col).mkdir(parents=True, exist_ok=True)
        _write_slices(folder / col / f"b{b:05d}.parquet", g, slices)
    return {"out_of_range": int(frame.num_rows - masks["m_in_range"].sum(dtype=np.int64))}


def _read_slice(path: Path, r: int) -> pa.Table | None:
    """The row group of slice ``r`` in a partial-counts file (``_write_slices``), found
    by its statistics: several times faster than a filtered read of the file."""
    pf = pq.ParquetFile(path)
    col = pf.schema_arrow.get_field_index("slice")
    for i in range(pf.metadata.num_row_groups):
        st = pf.metadata.row_group(i).column(col).statistics
        if st is None or not st.has_min_max:
            raise PipelineError(f"{path}: row group {i} has no statistics of its slice")
        if st.min == r:
            return pf.read_row_group(i)
    return None


def stat_slice(job: dict) -> dict:
    """Task: the second half, for one slice of the values: their counts summed over
    every bucket, then per column and table the plays, distinct values, the largest
    count and the smallest value holding it; and each listener's clean plays."""
    import pyarrow.compute as pc

    folder, r, tables = Path(job["folder"]), job["slice"], job["tables"]
    out: dict = {"summary": [], "users": [], "user_plays": []}
    for col in STAT_SOURCE:
        cols = _stat_counts(col, tables)
        files = sorted((folder / col).glob("b*.parquet"))
        parts = [t for t in (_read_slice(f, r) for f in files) if t is not None]
        if not parts:
            out["summary"] += [(col, f"m_{t}", 0, 0, 0, None) for t in [*tables, "no_artist"]]
            continue
        g = _sum_by_value(pa.concat_tables(parts), cols)
        values = g["v"]
        counts = {c: g[c].to_numpy() for c in cols}
        if col == "timestamp":
            ts = values.to_numpy()
            lo, hi = job["valid_range"]
            for w, (start, end) in job["windows"].items():
                held = (ts >= max(start, lo)) & (ts < min(end, hi))
                counts[f"m_{w}"] = np.where(held, counts["m_clean"], 0)
        for c, n in counts.items():
            best = int(n.max()) if len(n) else 0
            top = None
            if best:
                tied = pc.filter(values, pa.array(n == best)).to_pylist()
                top = min(tied)
            out["summary"].append((col, c, int(n.sum()), int((n > 0).sum()), best, top))
        if col == "user_id":
            out["users"] = values.to_pylist()
            out["user_plays"] = g["m_clean"].to_numpy().tolist()
    return out


def study_statistics(
    client, work: Path, windows: dict, slices: int, partials: list, valid_range: tuple
) -> dict:
    """The study's describe() table for raw, clean and every window, exactly, from the
    buckets' partial counts (``stat_partials``, written by the bucket tasks): one task
    per slice of the values sums them (a hand-built tree reduction: the group-bys of
    dask.dataframe shuffled every play once per column). Top: the most frequent value,
    the smallest on ties."""
    tables = ["raw", "clean", *windows]
    jobs = [
        {
            "folder": str(work / "stats"),
            "slice": r,
            "tables": tables,
            "windows": windows,
            "valid_range": valid_range,
        }
        for r in range(slices)
    ]
    got = run_tasks(client, stat_slice, jobs, "statistics")
    summary = pd.DataFrame(
        [row for g in got for row in g["summary"]],
        columns=["column", "table", "count", "unique", "freq", "top"],
    )
    stats = {t: {} for t in tables}
    for col in STAT_SOURCE:
        mine = summary[summary["column"] == col]
        for t in tables:
            part = mine[mine["table"] == f"m_{t}"]
            unique = int(part["unique"].sum())
            freq = int(part["freq"].max()) if unique else 0
            top = min(part.loc[part["freq"] == freq, "top"].tolist()) if unique else None
            if col == "timestamp" and top is not None:
                top = str(np.datetime64(int(top), "s")) + "Z"
            stats[t][col] = {
                "count": int(part["count"].sum()),
                "unique": unique,
                "top": top,
                "freq": freq,
            }
    lacking = summary[(summary["column"] == "artist_name") & (summary["table"] == "m_no_artist")]
    extra = {
        t: {"rows": stats[t]["user_id"]["count"], "users": stats[t]["user_id"]["unique"]}
        for t in tables
    }
    users = [u for g in got for u in g["users"]]
    plays = np.array([n for g in got for n in g["user_plays"]], dtype=np.int64)
    user_plays = plays[np.argsort(np.array(users, dtype=object), kind="stable")]
    return {
        "tables": stats,
        "sizes": extra,
        "artists": {
            "artists_with_mbid": stats["raw"]["artist_id"]["unique"],
            "artists_without_mbid": int(lacking["unique"].sum()),
        },
        "user_plays": user_plays[user_plays > 0],
        "out_of_range": int(sum(p["out_of_range"] for p in partials)),
    }


# Text bytes per play, and how much larger than its compressed form a log's text is
# (rough: the number of buckets only needs the right order of magnitude).
BYTES_PER_PLAY = 60.0
EXPANSION = {".bz2": 8.0, ".zst": 6.0, ".gz": 5.0}


def _piece_rows(p) -> float:
    """About how many plays a piece holds: Parquet row counts, else its bytes of text."""
    if str(p.path).endswith(".parquet"):
        meta = pq.ParquetFile(p.path).metadata
        return float(sum(meta.row_group(g).num_rows for g in range(p.start, p.end)))
    name = p.member or str(p.path)
    factor = next((f for ext, f in EXPANSION.items() if name.endswith(ext)), 1.0)
    return _piece_bytes(p) * factor / BYTES_PER_PLAY


def preprocess(
    client,
    dataset: str,
    path: Path,
    options,
    out: Path,
    reports: Path,
    cfg,
    buckets: int = 0,
    piece_bytes: int = 64 << 20,
) -> dict:
    """preprocess.py's outputs for any source, computed on the cluster of ``client``."""
    pieces = sources.find_pieces(dataset, Path(path), options, piece_bytes)
    if not pieces:
        raise PipelineError(f"{path}: no input file of layout {dataset} found")
    total = sum(_piece_bytes(p) for p in pieces)
    buckets = buckets or max(2, math.ceil(sum(map(_piece_rows, pieces)) / BUCKET_ROWS))
    work = out / "_work"
    rules = {
        "valid_from_s": int(np.datetime64(cfg.valid_from, "s").astype(np.int64)),
        "valid_to_s": int(np.datetime64(cfg.valid_to, "s").astype(np.int64)),
        "keep_missing_mbid": bool(cfg.keep_missing_mbid),
        "required": _required(dataset, cfg.keep_missing_mbid),
    }
    jobs = [
        {
            "piece": p,
            "work": str(work),
            "buckets": buckets,
            "dataset": dataset,
            "options": options,
            "valid_range": (rules["valid_from_s"], rules["valid_to_s"]),
        }
        for p in pieces
    ]
    prune(work / "ingest", "p*", len(pieces))
    manifests = run_tasks(client, ingest_piece, jobs, "ingest")
    # the pieces' manifests name the inputs of every bucket (a changed piece redoes them)
    pieces_md5 = hashlib.md5(
        json.dumps([m["outputs"] for m in manifests], sort_keys=True).encode()
    ).hexdigest()
    files: dict[int, list[str]] = {}  # each bucket's files, from the pieces' manifests
    for p, m in zip(pieces, manifests):
        for b in m["buckets"]:
            files.setdefault(b, []).append(f"p{p.index:06d}/plays.parquet")
    ranges = [m["ts_in_range"] for m in manifests if m.get("ts_in_range")]
    if not ranges:
        raise PipelineError(
            "no play falls inside the plausible time range; check --valid-from/--valid-to"
        )
    windows = _windows(min(r[0] for r in ranges), max(r[1] for r in ranges), cfg)
    ujobs = [{"work": str(work), "bucket": b, "files": files.get(b, [])} for b in range(buckets)]
    users = pa.concat_arrays(  # every user once (buckets are disjoint), in id order
        run_tasks(client, bucket_users, ujobs, "users")
    ).sort()
    # user_idx -> the source's user id (the local engine keeps this list in meta.json)
    _write(
        out / "users.parquet",
        pa.table({"user_idx": pa.array(np.arange(len(users), dtype=np.int32)), "user": users}),
    )
    users_md5 = hashlib.md5(json.dumps(users.to_pylist()).encode()).hexdigest()
    for w in windows:
        if (out / f"{w}.parquet").is_file():
            (out / f"{w}.parquet").unlink()
        prune(out / f"{w}.parquet", "part-*", buckets)
    prune(work / "buckets", "b*", buckets)
    for col in STAT_SOURCE:
        prune(work / "stats" / col, "b*", buckets)
    users_f = client.scatter(users, broadcast=True)
    slices = max(1, buckets // 4)  # a reducer sums about four buckets' distinct values
    bjobs = [
        {
            "work": str(work),
            "out": str(out),
            "bucket": b,
            "pieces_md5": pieces_md5,
            "rules": rules,
            "newest_first": sources.newest_first(dataset),
            "files": files.get(b, []),
            "windows": windows,
            "users": users_f,
            "users_md5": users_md5,
            "slices": slices,
        }
        for b in range(buckets)
    ]
    parts = run_tasks(client, bucket_plays, bjobs, "buckets")
    written = {}
    for w, (start, end) in windows.items():
        rows = sum(p["windows"][w]["rows"] for p in parts)
        if rows == 0:
            raise PipelineError(
                f"window {w} holds no play (anchor {cfg.anchor}); choose other --months or --anchor"
            )
        tss = [p["windows"][w]["ts"] for p in parts if p["windows"][w]["ts"]]
        written[w] = {
            "start_s": start,
            "end_s": end,
            "rows": rows,
            "ts": [min(t[0] for t in tss), max(t[1] for t in tss)],
        }
    valid = (rules["valid_from_s"], rules["valid_to_s"])
    stats = study_statistics(client, work, windows, slices, parts, valid)
    for w in windows:
        written[w]["users"] = stats["sizes"][w]["users"]
        # distinct track ids of the window (with --keep-missing-mbid: (artist, title) pairs)
        written[w]["tracks"] = (
            _distinct_tracks(out / f"{w}.parquet")
            if cfg.keep_missing_mbid
            else stats["tables"][w]["track_id"]["unique"]
        )
    rejects = _gather_rejects(work, pieces, manifests, out / "rejects.tsv")
    counts: dict[str, int] = {}
    for m in manifests:
        for k, v in m["counts"].items():
            counts[k] = counts.get(k, 0) + v
    n = sum(m["rows"] for m in manifests)
    repaired = counts.pop("repaired", 0)
    lines = int(sum(m["lines"] for m in manifests))
    stats["summary"] = {
        "lines": lines,
        "rejects": rejects,
        "repaired": repaired,
        "out_of_range": stats["out_of_range"],
    }
    return {
        "engine": "dask",
        "dataset": dataset,
        "buckets": buckets,
        "input": {"path": str(path), "pieces": len(pieces), "bytes": total, "lines": lines},
        "rows_parsed": int(n),
        "rejects": counts,
        "repaired": repaired,
        "lines_accounted": int(n) + rejects,
        "out_of_range": stats["out_of_range"],
        "dropped_missing": int(stats["sizes"]["raw"]["rows"] - stats["sizes"]["clean"]["rows"]),
        "windows": written,
        "stats": stats,
        "users": f"users.parquet ({len(users):,} users: user_idx, user)",
    }


def _distinct_tracks(window: Path) -> int:
    """Distinct tracks of a window written in parts (a Dask reduction)."""
    import dask.dataframe as dd

    tracks = dd.read_parquet(str(window / "part-*.parquet"), columns=["track_idx"])
    return int(tracks["track_idx"].nunique().compute())


def _piece_bytes(p) -> int:
    """About how many bytes of input a piece reads (a Parquet piece: its share of the
    file by row groups)."""
    try:
        size = Path(p.path).stat().st_size
    except OSError:
        return 0
    if str(p.path).endswith(".parquet"):
        groups = pq.ParquetFile(p.path).metadata.num_row_groups or 1
        return size * max(0, p.end - p.start) // groups
    return p.end - p.start if p.end >= 0 else size - p.start


def _required(dataset: str, keep_missing_mbid: bool) -> list[str]:
    """The source columns a play must fill (besides user, time and track) to be kept:
    ``lastfm.plays.REQUIRED`` (with --keep-missing-mbid: both names)."""
    if keep_missing_mbid:
        return ["artist_name", "track_name"]
    column = {"artist_id": "artist", "artist_name": "artist_name", "track_name": "track_name"}
    return [column[c] for c in REQUIRED[dataset]]


def _windows(lo: int, hi: int, cfg) -> dict[str, tuple[int, int]]:
    """``month_windows`` on the global first and last plausible play."""
    return month_windows(
        np.array([lo, hi], np.int64), np.ones(2, bool), cfg.month_list(), cfg.anchor
    )


def _gather_rejects(work: Path, pieces, manifests, path: Path) -> int:
    """Every piece's rejects in one file, in input order, with line numbers counted from
    the start of their file or member (a byte-range piece's lines follow the earlier
    pieces of its file); their number."""
    n = 0

    def write(tmp: Path) -> None:
        nonlocal n
        offset: dict[tuple, int] = {}
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("where\tline\treason\ttext\n")
            for p, m in zip(pieces, manifests):
                key = (p.path, p.member)
                first = offset.get(key, 0)
                offset[key] = first + m["lines"]
                f = work / "ingest" / f"p{p.index:06d}" / "rejects.tsv"
                if not f.exists():
                    continue
                for row in f.read_text(encoding="utf-8").splitlines():
                    where, line, rest = row.split("\t", 2)
                    fh.write(f"{where}\t{int(line) + first}\t{rest}\n")
                    n += 1

    common.write_atomic(path, write)
    return n


# --------------------------------------------------------------------------- sessionize
def _parts(src: Path) -> list[Path]:
    parts = sorted(Path(src).glob("part-*.parquet"))
    if not parts:
        raise PipelineError(f"{src}: no part-*.parquet; run preprocess.py --engine dask first")
    return parts


def _ts_range(parts: list[Path]) -> tuple[int, int]:
    """The first and last play of the window, from the parts' Parquet statistics."""
    lo, hi = None, None
    for f in parts:
        meta = pq.ParquetFile(f).metadata
        col = meta.schema.to_arrow_schema().get_field_index("ts_s")
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(col).statistics
            if st is None or not st.has_min_max:
                raise PipelineError(f"{f}: no time statistics; rerun preprocess.py --engine dask")
            lo = st.min if lo is None else min(lo, st.min)
            hi = st.max if hi is None else max(hi, st.max)
    if lo is None:
        raise PipelineError(f"{parts[0].parent}: the window holds no play")
    return int(lo), int(hi)


def sessions_part(job: dict) -> dict:
    """Task (pass A): one part's sessions, filtered and split; its training counts and
    the first name of each of its tracks."""
    from lastfm.sessions import build_sessions, split_by_time

    src, work, k = Path(job["src"]), Path(job["work"]), job["part"]
    name = f"p{k:05d}"
    params = {"src": job["record"], "cfg": job["cfg_dict"], "bounds": job["bounds"]}
    done = _done(work / "a" / f"{name}.json", params)
    if done:
        return done
    plays = pd.read_parquet(src)
    sessions, counts = build_sessions(
        plays[["user_idx", "ts_s", "track_idx"]],
        job["cfg"],
        count_before=job["bounds"]["test_from_s"],
    )
    splits, _ = split_by_time(sessions, 0.1, 0.1, job["bounds"])
    which = np.concatenate([np.full(len(splits[s]), i, np.int8) for i, s in enumerate(splits)])
    table = pd.concat(list(splits.values()), ignore_index=True)
    table["split"] = which
    train_counts = splits["train"]["track_idx"].value_counts(sort=False)
    first = plays.drop_duplicates("track_idx")
    names = pd.DataFrame(
        {
            "track_idx": first["track_idx"].to_numpy(),
            "user_idx": first["user_idx"].to_numpy(),
            "row": first.index.to_numpy(np.int64),
            "artist_idx": first["artist_idx"].to_numpy(),
            "artist_name": first["artist_name"].to_numpy(object),
            "track_name": first["track_name"].to_numpy(object),
            "track_mbid": first["track_mbid"].to_numpy(object),
        }
    )
    (work / "a").mkdir(parents=True, exist_ok=True)
    _write(work / "a" / f"{name}.parquet", table)
    _write(
        work / "a" / f"{name}.counts.parquet",
        pd.DataFrame({"track_idx": train_counts.index.to_numpy(), "n": train_counts.to_numpy()}),
    )
    _write(work / "a" / f"{name}.names.parquet", names)
    return _finish(
        work / "a" / f"{name}.json",
        params,
        work / "a",
        [f"{name}.parquet", f"{name}.counts.parquet", f"{name}.names.parquet"],
        counts={k2: int(v) for k2, v in counts.items()},
        sessions=int(table["sess"].nunique()),
    )


def build_vocab(
    client, work: Path, n_parts: int, min_plays: int, max_tracks: int, by_names: bool = False
) -> pd.DataFrame:
    """The training split's tracks by descending count (ties: the track key's order, which
    is the local engine's code order; ``by_names``: tracks are (artist, title) pairs),
    capped; names from each track's first play. Counts, caps and the first plays are
    reduced and joined on the cluster: only the vocabulary comes back."""
    import dask.dataframe as dd

    split_out = max(1, n_parts // 4)  # a reducer holds ~4 parts of tracks
    counts = dd.read_parquet(str(work / "a" / "p*.counts.parquet"))
    total = counts.groupby("track_idx")["n"].sum(split_out=split_out)
    if min_plays > 1:
        total = total[total >= min_plays]
    if max_tracks > 0:
        floor = total.nlargest(max_tracks).min().compute()  # ties at the cut stay, then cut
        total = total[total >= floor]
    names = dd.read_parquet(str(work / "a" / "p*.names.parquet"))
    names = names.assign(first=names["user_idx"].astype("int64") * 2**32 + names["row"])
    firsts = names.groupby("track_idx")["first"].min(split_out=split_out).reset_index()
    chosen = firsts.merge(total.rename("train_count").reset_index(), on="track_idx")
    vocab = names.merge(chosen, on=["track_idx", "first"]).compute()
    vocab = vocab[
        ["track_idx", "train_count", "artist_idx", "artist_name", "track_name"] + ["track_mbid"]
    ].reset_index(drop=True)
    mbid = vocab["track_mbid"].fillna("").astype(str)
    pair = vocab["artist_name"].astype(str) + "\t" + vocab["track_name"].astype(str)
    vocab["track_key"] = np.where(mbid != "", mbid, pair)
    key = pair if by_names else vocab["track_key"]
    dup = key.duplicated(keep=False)
    if dup.any():
        raise PipelineError(
            f"track key {key[dup].iloc[0]!r} has two hashes: "
            "the input's track ids are not one text per track"
        )
    # ties: by (artist, title) as the local engine's codes order them (not their joined
    # text, which orders differently when a name holds a tab), else by the track key
    ties = (
        [vocab[c].astype(str).to_numpy(object) for c in ("track_name", "artist_name")]
        if by_names
        else [key.to_numpy(object)]
    )
    order = np.lexsort((*ties, -vocab["train_count"].to_numpy()))
    vocab = vocab.iloc[order].reset_index(drop=True)
    if max_tracks > 0:
        vocab = vocab.iloc[:max_tracks]
    vocab.insert(0, "item_idx", np.arange(1, len(vocab) + 1, dtype=np.int32))
    vocab["train_count"] = vocab["train_count"].astype(np.int64)
    return vocab


def finish_part(job: dict) -> dict:
    """Task (pass B): one part's splits with the vocabulary applied and global session
    ids; written as Parquet, GRU4Rec TSV and RecBole rows; its statistics."""
    from lastfm.sessions import apply_vocab

    work, out, k = Path(job["work"]), Path(job["out"]), job["part"]
    name = f"part-{k:05d}"
    params = {
        "a": job["a_outputs"],
        "vocab_md5": job["vocab_md5"],
        "offset": job["offset"],
        "cfg": asdict(job["cfg"]),  # --unseen, --min-len, the caps
    }
    done = _done(work / "b" / f"{name}.json", params, out)
    if done:
        return done
    table = pd.read_parquet(work / "a" / f"p{k:05d}.parquet")
    lookup = job["lookup"]
    cfg = job["cfg"]
    stats, acct = {}, {}
    for i, split in enumerate(("train", "valid", "test")):
        part = table[table["split"].to_numpy() == i].drop(columns="split").reset_index(drop=True)
        if split == "train" and not job["capped"]:
            part["item_idx"] = (
                lookup.reindex(part["track_idx"].to_numpy()).to_numpy().astype(np.int32)
            )
            acct[split] = {
                "plays": len(part),
                "unseen_plays": 0,
                "events_scored": int((part["position"].to_numpy() >= 1).sum()),
            }
        else:
            vocab = pd.DataFrame({"track_idx": lookup.index, "item_idx": lookup.to_numpy()})
            part, acct[split] = apply_vocab(
                part, vocab, cfg.min_len, keep_unseen=cfg.unseen == "keep"
            )
        part["session_id"] = part["sess"].to_numpy(np.int64) + job["offset"]
        part = part[["session_id", "user_idx", "position", "item_idx", "ts_s"]]
        part["position"] = part["position"].astype(np.int16)
        for sub in (split, f"gru4rec/{split}", f"recbole/{split}"):
            (out / (sub if "/" in sub else f"{sub}.parquet")).mkdir(parents=True, exist_ok=True)
        _write(out / f"{split}.parquet" / f"{name}.parquet", part)
        gru = part.rename(columns={"session_id": "SessionId", "item_idx": "ItemId", "ts_s": "Time"})
        gru = gru[["SessionId", "ItemId", "Time"]]
        common.write_atomic(
            out / "gru4rec" / split / f"{name}.tsv",
            lambda tmp, t=gru: t.to_csv(tmp, sep="\t", index=False),
        )
        common.write_atomic(
            out / "recbole" / split / f"{name}.inter",
            lambda tmp, t=gru: t.to_csv(tmp, sep="\t", index=False, header=False),
        )
        sid = part["session_id"].to_numpy()
        lens = np.bincount(np.unique(sid, return_inverse=True)[1]) if len(sid) else np.zeros(0, int)
        stats[split] = {
            "sessions": int(len(lens)),
            "plays": int(len(part)),
            "users": int(part["user_idx"].nunique()),
            "len_hist": np.bincount(lens).tolist() if len(lens) else [],
            "ts": [int(part["ts_s"].min()), int(part["ts_s"].max())] if len(part) else None,
        }
    names = [f"{s}.parquet/{name}.parquet" for s in ("train", "valid", "test")] + [
        f"{d}/{s}/{name}.{e}"
        for d, e in (("gru4rec", "tsv"), ("recbole", "inter"))
        for s in ("train", "valid", "test")
    ]
    (work / "b").mkdir(parents=True, exist_ok=True)
    return _finish(work / "b" / f"{name}.json", params, out, names, stats=stats, accounting=acct)


RECBOLE_HEADER = "session_id:token\titem_id:token\ttimestamp:float\n"


def _percentile(hist: np.ndarray, q: float) -> float:
    """numpy's (linear) percentile of the values a histogram counts, with numpy's
    interpolation formula (so that equal inputs give equal floats)."""
    n = int(hist.sum())
    cum = np.cumsum(hist)
    pos = q / 100 * (n - 1)
    lo, hi = int(np.floor(pos)), int(np.ceil(pos))
    a, b = float(np.searchsorted(cum, lo + 1)), float(np.searchsorted(cum, hi + 1))
    t = pos - lo
    return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)


def _split_stats(client, out: Path, results: list[dict]) -> dict:
    import dask.dataframe as dd

    stats = {}
    for split in ("train", "valid", "test"):
        parts = [r["stats"][split] for r in results]
        width = max((len(p["len_hist"]) for p in parts), default=0)
        hist = np.zeros(max(width, 1), np.int64)
        for p in parts:
            hist[: len(p["len_hist"])] += np.asarray(p["len_hist"], dtype=np.int64)
        items = dd.read_parquet(str(out / f"{split}.parquet"), columns=["item_idx"])["item_idx"]
        tracks = int(items[items > 0].nunique().compute())
        ts = [p["ts"] for p in parts if p["ts"]]
        n = int(hist.sum())
        stats[split] = {
            "sessions": int(sum(p["sessions"] for p in parts)),
            "plays": int(sum(p["plays"] for p in parts)),
            "users": int(sum(p["users"] for p in parts)),
            "tracks": tracks,
            "len_mean": float((hist * np.arange(len(hist))).sum() / n) if n else 0.0,
            "len_median": _percentile(hist, 50) if n else 0.0,
            "len_p90": _percentile(hist, 90) if n else 0.0,
            "len_max": int(np.flatnonzero(hist).max()) if n else 0,
            "first": str(pd.Timestamp(min(t[0] for t in ts), unit="s")) if ts else "",
            "last": str(pd.Timestamp(max(t[1] for t in ts), unit="s")) if ts else "",
        }
    return stats


def _concat_recbole(out: Path, name: str) -> list[str]:
    """One RecBole atomic file per split (``<name>.<split>.inter``), streamed from the
    parts (RecBole reads one file per split: ``benchmark_filename``)."""
    written = []
    for split in ("train", "valid", "test"):
        target = out / "recbole" / f"{name}.{split}.inter"

        def write(tmp: Path, split=split) -> None:
            with open(tmp, "wb") as fh:
                fh.write(RECBOLE_HEADER.encode())
                for f in sorted((out / "recbole" / split).glob("part-*.inter")):
                    with open(f, "rb") as src:
                        shutil.copyfileobj(src, fh, 1 << 22)

        common.write_atomic(target, write)
        written.append(f"recbole/{name}.{split}.inter")
    return written


def sessionize(
    client,
    src: Path,
    out: Path,
    cfg,
    name: str,
    records: dict | None = None,
    by_names: bool = False,
) -> dict:
    """sessionize.py's outputs for one window written by ``preprocess --engine dask``
    (``records``: preprocess's record of each part, size and MD5, which identifies a
    part's input when the run resumes; ``by_names``: tracks are (artist, title) pairs)."""
    from lastfm.sessions import fill_names, time_bounds, vocab_checksum

    parts = _parts(src)
    lo, hi = _ts_range(parts)
    bounds = time_bounds(np.array([lo, hi], np.int64), cfg.valid_frac, cfg.test_frac)
    work = out / "_work"
    cfg_dict = asdict(cfg)
    jobs = [
        {
            "src": str(f),
            "work": str(work),
            "part": k,
            "cfg": cfg,
            "cfg_dict": cfg_dict,
            "bounds": bounds,
            "record": (records or {}).get(f"{src.name}/{f.name}") or common.fingerprint(f),
        }
        for k, f in enumerate(parts)
    ]
    prune(work / "a", "p*", len(parts))
    prune(work / "b", "part-*", len(parts))
    for split in ("train", "valid", "test"):
        for sub in (f"{split}.parquet", f"gru4rec/{split}", f"recbole/{split}"):
            prune(out / sub, "part-*", len(parts))
    a = run_tasks(client, sessions_part, jobs, "sessions")
    counts: dict[str, int] = {}
    for m in a:
        for key, v in m["counts"].items():
            counts[key] = counts.get(key, 0) + v
    if counts.get("kept_plays", 0) == 0:
        raise PipelineError(
            f"{src}: no session left after filtering ({counts}); "
            "lower --min-user-sessions or --min-len"
        )
    vocab = build_vocab(client, work, len(parts), cfg.min_track_plays, cfg.max_tracks, by_names)
    vocab = fill_names(vocab, Path(src).parent / "names.parquet")
    common.write_parquet(out / "vocab.parquet", pa.Table.from_pandas(vocab, preserve_index=False))
    vmd5 = vocab_checksum(vocab)
    lookup = client.scatter(
        pd.Series(vocab["item_idx"].to_numpy(), index=vocab["track_idx"].to_numpy()),
        broadcast=True,
    )
    offsets = np.concatenate([[0], np.cumsum([m["sessions"] for m in a])[:-1]]).astype(np.int64)
    capped = cfg.capped()
    bjobs = [
        {
            "work": str(work),
            "out": str(out),
            "part": k,
            "a_outputs": a[k]["outputs"],
            "vocab_md5": vmd5,
            "offset": int(offsets[k]),
            "lookup": lookup,
            "cfg": cfg,
            "capped": capped,
        }
        for k in range(len(parts))
    ]
    b = run_tasks(client, finish_part, bjobs, "splits")
    acct: dict[str, dict] = {}
    for m in b:
        for split, d in m["accounting"].items():
            tgt = acct.setdefault(split, {})
            for key, v in d.items():
                tgt[key] = tgt.get(key, 0) + int(v)
    recbole = _concat_recbole(out, name)
    return {
        "engine": "dask",
        "parts": len(parts),
        "counts": counts,
        "split_bounds": bounds,
        "accounting": acct,
        "splits": _split_stats(client, out, b),
        "vocab_size": int(len(vocab)),
        "vocab_md5": vmd5,
        "recbole": recbole,
    }
