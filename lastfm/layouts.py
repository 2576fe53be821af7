"""Write the same plays in every published layout that ``lastfm.sources`` reads.

``write_layout(layout, chunks, out, rng, malformed=False)`` takes the plays one user at
a time (``UserPlays``: chronological, ties in their order) and writes them as

| layout | files under ``out`` |
|---|---|
| ``lfm1k`` | ``lastfm-dataset-1K/userid-...-traname.tsv`` (each user newest first) |
| ``lfm1b`` | ``LFM-1b/LFM-1b_LEs.txt`` + ``LFM-1b_{tracks,artists,albums}.txt`` |
| ``lfm2b`` | ``LFM-2b/listening-events.tsv.bz2`` + ``tracks.tsv.bz2`` |
| ``mlhd`` | ``MLHD/MLHD_###.tar`` of ``<uuid>.txt.gz`` + ``MLHD_sha256sums.txt`` |
| ``mlhdplus`` | ``MLHD+/mlhdplus-complete-{0..f}.tar`` of ``<uu>/<uuid>.txt.zst`` |
| ``yambda`` | ``yambda/listens.parquet`` |
| ``table`` | ``table/plays.csv`` (``user,timestamp,item,artist``) |

so that every adapter reads back the same plays: for lfm1k each user's plays are
written newest first, equal (user, time) plays in reverse chronological order (the
reader takes equal times in reverse file order). Integer ids (lfm1b, lfm2b, yambda):
user n (in chunk order) is ``n``, generator track / artist id ``i`` is ``i + 1``
(``layout_ids/{users,tracks,artists}.tsv`` map them back); MLHD users are
``uuid5(NAMESPACE_URL, user)``. A play without an MBID is written without one
(empty) where the layout has MBIDs. Without names (``UserPlays`` names None) the
lfm1b / lfm2b name files are not written and lfm1k names are empty; without MBIDs,
pseudo-MBIDs are made from the ids (``pseudo_mbids``).

``malformed=True`` adds a few lines each reader must reject (bad field counts, a time
that is not one; Yambda: a row with a null time) at seeded places, and for the TAR
layouts one extra member that cannot be decompressed (a corrupt gzip / a truncated
zstd frame) of a user outside the plays. The returned summary lists each of them
(``malformed``: file, member, 1-based line or row, expected reason;
``broken_members``), so tests can assert the counts. Memory is bounded by one user's
plays (plus, with names, one entry per distinct track).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import tarfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

LAYOUTS = ("lfm1k", "lfm1b", "lfm2b", "mlhd", "mlhdplus", "yambda", "table")
LFM1K_TSV = "userid-timestamp-artid-artname-traid-traname.tsv"
MALFORMED_PER_FILE = 3
SLICE = 100_000  # plays turned into text at a time


@dataclass
class UserPlays:
    """One user's plays, chronological (equal times in their listening order)."""

    user: str
    ts_s: np.ndarray  # int64 UTC seconds
    artist: np.ndarray  # int64 generator artist ids (>= 0)
    track: np.ndarray  # int64 generator track ids (>= 0)
    artist_mbid: np.ndarray | None = None  # object: MBID or "" per play
    track_mbid: np.ndarray | None = None
    artist_name: np.ndarray | None = None  # object per play; None: no names
    track_name: np.ndarray | None = None


def pseudo_mbids(ids: np.ndarray, kind: int) -> np.ndarray:
    """A UUID-shaped MBID per id (``kind`` keeps artists, tracks, releases apart)."""
    return np.array([f"{kind:08x}-0000-4000-8000-{int(i):012x}" for i in ids], dtype=object)


def user_uuid(user: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"lastfm-synth:{user}"))


def release_mbids(artist_mbid: np.ndarray) -> np.ndarray:
    """A release MBID per play, derived from its artist's (empty without one)."""
    cache: dict[str, str] = {}
    out = []
    for a in artist_mbid:
        if not a:
            out.append("")
            continue
        if a not in cache:
            cache[a] = str(uuid.uuid5(uuid.NAMESPACE_OID, a))
        out.append(cache[a])
    return np.array(out, dtype=object)


def _mbids(chunk: UserPlays) -> tuple[np.ndarray, np.ndarray]:
    a = chunk.artist_mbid if chunk.artist_mbid is not None else pseudo_mbids(chunk.artist, 1)
    t = chunk.track_mbid if chunk.track_mbid is not None else pseudo_mbids(chunk.track, 2)
    return a, t


def text_lines(columns: list, sep: str = "\t") -> bytes:
    """Lines (``sep``-joined fields, newline-terminated) of equal-length columns."""
    if not len(columns[0]):
        return b""
    arrays = []
    for c in columns:
        a = c if isinstance(c, pa.Array) else pa.array(np.ascontiguousarray(c))
        if isinstance(a, pa.ChunkedArray):  # pyarrow splits very long object arrays
            a = a.combine_chunks()
        arrays.append(a.cast(pa.large_string()))
    joined = pc.binary_join_element_wise(*arrays, pa.scalar(sep, pa.large_string()))
    nl = pa.scalar("\n", pa.large_string())
    lines = pc.binary_join_element_wise(joined, pa.scalar("", pa.large_string()), nl)
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    offsets = offsets[lines.offset : lines.offset + len(lines) + 1]
    return lines.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]]


def iso_times(ts: np.ndarray, sep: str = "T", zone: str = "Z") -> np.ndarray:
    text = np.datetime_as_string(np.asarray(ts, dtype=np.int64).astype("datetime64[s]"), unit="s")
    if sep != "T":
        text = np.char.replace(text, "T", sep)
    return np.char.add(text, zone) if zone else text


class _Malformed:
    """Seeded places for malformed lines: the first files written each get
    ``MALFORMED_PER_FILE`` of the layout's kinds, one per user chunk, at a random line."""

    def __init__(self, rng: np.random.Generator, kinds: list, enabled: bool):
        self.rng, self.kinds, self.enabled = rng, kinds, enabled
        self.done: list[dict] = []
        self.per_file: dict[str, int] = {}

    def pick(self, file: str, n_lines: int):
        """(position among the chunk's lines, kind) or None."""
        if not self.enabled or not self.kinds or n_lines < 1:
            return None
        k = self.per_file.get(file, 0)
        if k >= MALFORMED_PER_FILE:
            return None
        self.per_file[file] = k + 1
        return int(self.rng.integers(0, n_lines)), self.kinds[len(self.done) % len(self.kinds)]

    def record(self, file: str, member: str | None, line: int, reason: str) -> None:
        self.done.append({"file": file, "member": member, "line": line, "reason": reason})


def _with_bad_line(body: bytes, pos: int, bad: str) -> bytes:
    """``body`` (complete lines) with the line ``bad`` inserted before line ``pos``."""
    cut = 0
    for _ in range(pos):
        cut = body.index(b"\n", cut) + 1
    return body[:cut] + bad.encode() + b"\n" + body[cut:]


def _slices(c: UserPlays, reverse: bool = False):
    """Views of at most ``SLICE`` plays of a chunk (``reverse``: newest first), so that
    no more than one slice's text is ever held."""
    n = len(c.ts_s)
    bounds = [(lo, min(lo + SLICE, n)) for lo in range(0, n, SLICE)]
    for lo, hi in reversed(bounds) if reverse else bounds:
        sl = slice(hi - 1, lo - 1 if lo else None, -1) if reverse else slice(lo, hi)
        rest = (c.artist_mbid, c.track_mbid, c.artist_name, c.track_name)
        yield UserPlays(
            c.user,
            c.ts_s[sl],
            c.artist[sl],
            c.track[sl],
            *(None if a is None else a[sl] for a in rest),
        )


def _inserting(parts, pos: int, line: str | None):
    """The bodies of ``parts`` ((lines, body) pairs, in order) with ``line`` inserted
    before the chunk's line ``pos`` (none when ``line`` is None)."""
    seen = 0
    for n, body in parts:
        if line is not None and seen <= pos < seen + n:
            body = _with_bad_line(body, pos - seen, line)
        seen += n
        yield body


class _TextFile:
    """A text log written chunk by chunk, malformed lines inserted, lines counted."""

    def __init__(self, fh, name: str, bad: _Malformed, lines: int = 0):
        self.fh, self.name, self.bad, self.lines = fh, name, bad, lines

    def write_chunk(self, n: int, context: dict, parts) -> None:
        """Write a chunk of ``n`` lines given as (lines, body) parts."""
        pick = self.bad.pick(self.name, n)
        pos, line = -1, None
        if pick is not None:
            pos, (reason, template) = pick
            line = template.format(**context)
            self.bad.record(self.name, None, self.lines + pos + 1, reason)
        for body in _inserting(parts, pos, line):
            self.fh.write(body)
        self.lines += n + (pick is not None)


class _Ids:
    """Integer ids of lfm1b / lfm2b / yambda and the files that map them back."""

    def __init__(self):
        self.users: list[str] = []
        self.tracks: dict[int, tuple] = {}  # id -> (MBID, artist id, name)
        self.artists: dict[int, tuple] = {}  # id -> (MBID, name)

    def user(self, name: str) -> int:
        self.users.append(name)
        return len(self.users)

    def note(self, chunk: UserPlays) -> None:
        if chunk.track_name is None and chunk.artist_mbid is None:
            return  # derived MBIDs and no names: the ids alone map back
        amb, tmb = _mbids(chunk)
        names = chunk.track_name is not None
        t_first = np.unique(chunk.track, return_index=True)[1]
        for i in t_first:
            t = int(chunk.track[i]) + 1
            if t not in self.tracks:
                self.tracks[t] = (
                    tmb[i],
                    int(chunk.artist[i]) + 1,
                    chunk.track_name[i] if names else "",
                )
        a_first = np.unique(chunk.artist, return_index=True)[1]
        for i in a_first:
            a = int(chunk.artist[i]) + 1
            if a not in self.artists:
                self.artists[a] = (amb[i], chunk.artist_name[i] if names else "")

    def write(self, folder: Path) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "users.tsv", "w", encoding="utf-8") as fh:
            fh.write("id\tuser\n" + "".join(f"{i + 1}\t{u}\n" for i, u in enumerate(self.users)))
        with open(folder / "tracks.tsv", "w", encoding="utf-8") as fh:
            fh.write("id\tmbid\tartist_id\n")
            fh.writelines(f"{t}\t{m}\t{a}\n" for t, (m, a, _) in sorted(self.tracks.items()))
        with open(folder / "artists.tsv", "w", encoding="utf-8") as fh:
            fh.write("id\tmbid\n")
            fh.writelines(f"{a}\t{m}\n" for a, (m, _) in sorted(self.artists.items()))
        return {"folder": str(folder), "users": len(self.users), "tracks": len(self.tracks)}


# ---------------------------------------------------------------- line layouts


def _write_lfm1k(chunks, out: Path, bad: _Malformed, summary: dict) -> None:
    root = out / "lastfm-dataset-1K"
    root.mkdir(parents=True, exist_ok=True)
    rel = f"lastfm-dataset-1K/{LFM1K_TSV}"
    with open(root / LFM1K_TSV, "wb") as fh:
        f = _TextFile(fh, rel, bad)
        for c in chunks:  # newest first, equal times reversed too
            f.write_chunk(len(c.ts_s), {"user": c.user}, map(_lfm1k_text, _slices(c, True)))
            summary["plays"] += len(c.ts_s)
            summary["users"] += 1
    summary["files"] = [rel]


def _lfm1k_text(s: UserPlays) -> tuple[int, bytes]:
    n = len(s.ts_s)
    amb, tmb = _mbids(s)
    an = s.artist_name if s.artist_name is not None else np.full(n, "", object)
    tn = s.track_name if s.track_name is not None else np.full(n, "", object)
    cols = [np.full(n, s.user, object), iso_times(s.ts_s), amb, an, tmb, tn]
    return n, text_lines(cols)


LFM1K_BAD = [
    ("too_few_fields_3", "{user}\t2009-01-01T00:00:00Z\tbroken"),
    ("bad_timestamp", "{user}\tyesterday\t\tSomeone\t\tSomething"),
]
LFM1B_BAD = [
    ("too_few_fields_3", "{uid}\t1\t1"),
    ("too_many_fields_6", "{uid}\t1\t1\t1\t1234567890\t7"),
    ("bad_timestamp", "{uid}\t1\t1\t1\tnoon"),
]


def _write_lfm1b(chunks, out: Path, bad: _Malformed, summary: dict) -> None:
    root = out / "LFM-1b"
    root.mkdir(parents=True, exist_ok=True)
    ids = _Ids()
    with open(root / "LFM-1b_LEs.txt", "wb") as fh:
        f = _TextFile(fh, "LFM-1b/LFM-1b_LEs.txt", bad)
        for c in chunks:
            uid = ids.user(c.user)

            def text(s: UserPlays, uid=uid) -> tuple[int, bytes]:
                ids.note(s)
                a, t = s.artist + 1, s.track + 1  # the album id: the artist's
                return len(t), text_lines([np.full(len(t), uid), a, a, t, s.ts_s])

            f.write_chunk(len(c.ts_s), {"uid": uid}, map(text, _slices(c)))
            summary["plays"] += len(c.ts_s)
            summary["users"] += 1
    files = ["LFM-1b/LFM-1b_LEs.txt"]
    if ids.tracks and any(n for _, _, n in ids.tracks.values()):
        _write_lfm1b_names(root, ids)
        files += [f"LFM-1b/LFM-1b_{k}.txt" for k in ("tracks", "artists", "albums")]
    summary["files"] = files
    summary["ids"] = ids.write(out / "layout_ids")


def _write_lfm1b_names(root: Path, ids: _Ids) -> None:
    with open(root / "LFM-1b_tracks.txt", "w", encoding="utf-8") as fh:
        fh.writelines(f"{t}\t{n}\t{a}\n" for t, (_, a, n) in sorted(ids.tracks.items()))
    with open(root / "LFM-1b_artists.txt", "w", encoding="utf-8") as fh:
        fh.writelines(f"{a}\t{n}\n" for a, (_, n) in sorted(ids.artists.items()))
    with open(root / "LFM-1b_albums.txt", "w", encoding="utf-8") as fh:
        fh.writelines(f"{a}\t{n} (album)\t{a}\n" for a, (_, n) in sorted(ids.artists.items()))


LFM2B_BAD = [
    ("too_few_fields_2", "{uid}\t1"),
    ("bad_timestamp", "{uid}\t1\t1\t2020-13-45 99:99:99"),
]
LFM2B_TIME = "%Y-%m-%d %H:%M:%S"


def _write_lfm2b(chunks, out: Path, bad: _Malformed, summary: dict) -> None:
    root = out / "LFM-2b"
    root.mkdir(parents=True, exist_ok=True)
    ids = _Ids()
    with bz2.open(root / "listening-events.tsv.bz2", "wb", compresslevel=1) as fh:
        fh.write(b"user_id\ttrack_id\talbum_id\ttimestamp\n")
        f = _TextFile(fh, "LFM-2b/listening-events.tsv.bz2", bad, lines=1)
        for c in chunks:
            uid = ids.user(c.user)

            def text(s: UserPlays, uid=uid) -> tuple[int, bytes]:
                ids.note(s)
                when = iso_times(s.ts_s, sep=" ", zone="")
                cols = [np.full(len(s.ts_s), uid), s.track + 1, s.artist + 1, when]
                return len(s.ts_s), text_lines(cols)

            f.write_chunk(len(c.ts_s), {"uid": uid}, map(text, _slices(c)))
            summary["plays"] += len(c.ts_s)
            summary["users"] += 1
    files = ["LFM-2b/listening-events.tsv.bz2"]
    if ids.tracks and any(n for _, _, n in ids.tracks.values()):
        skipped = {}
        with bz2.open(root / "tracks.tsv.bz2", "wt", encoding="utf-8", compresslevel=1) as fh:
            fh.write("track_id\tartist_name\ttrack_name\n")
            for t, (_, a, n) in sorted(ids.tracks.items()):
                fh.write(f"{t}\t{ids.artists[a][1]}\t{n}\n")
            if bad.enabled:  # a track outside the plays whose name holds a tab
                fh.write(f"{max(ids.tracks) + 1}\tSomeone\tA Name\twith a tab\n")
                skipped["too_many_fields_4"] = 1
        files.append("LFM-2b/tracks.tsv.bz2")
        summary["names_skipped"] = skipped
    summary["files"] = files
    summary["ids"] = ids.write(out / "layout_ids")


def _table_text(s: UserPlays) -> tuple[int, bytes]:
    amb, tmb = _mbids(s)
    n = len(s.ts_s)
    return n, text_lines([np.full(n, s.user, object), s.ts_s, tmb, amb], sep=",")


TABLE_BAD = [
    ("bad_timestamp", "{user},not-a-time,x,y"),
    ("too_few_fields_2", "{user},123"),
]


def _write_table(chunks, out: Path, bad: _Malformed, summary: dict) -> None:
    root = out / "table"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "plays.csv", "wb") as fh:
        fh.write(b"user,timestamp,item,artist\n")
        f = _TextFile(fh, "table/plays.csv", bad, lines=1)
        for c in chunks:
            f.write_chunk(len(c.ts_s), {"user": c.user}, map(_table_text, _slices(c)))
            summary["plays"] += len(c.ts_s)
            summary["users"] += 1
    summary["files"] = ["table/plays.csv"]


# ---------------------------------------------------------------- TAR layouts

MLHD_BAD = [
    ("bad_timestamp", "yesterday\t\t\t"),
    ("too_few_fields_2", "1234567890\tnot-enough"),
    ("bad_artist_mbid", "1234567890\tnot-an-mbid\t\t"),
]
MLHDPLUS_BAD = [
    ("bad_listened_at", "yesterday\t\t\t"),
    ("too_few_fields_2", "1234567890\tnot-enough"),
    ("bad_artist_credit_mbids", "1234567890\tnot-an-mbid\t\t"),
]


def _member_lines(c: UserPlays, plus: bool, rng: np.random.Generator) -> tuple[int, bytes]:
    amb, tmb = _mbids(c)
    release = release_mbids(amb)
    if plus:  # a second credited artist now and then: the reader keeps the first
        second = rng.random(len(amb)) < 0.1
        amb = np.array(
            [f"{a},{user_uuid(a)}" if a and s else a for a, s in zip(amb, second)], object
        )
    return len(c.ts_s), text_lines([c.ts_s, amb, release, tmb])


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 1_262_304_000, 0o644
    tar.addfile(info, io.BytesIO(data))


def _compress(parts, plus: bool) -> bytes:
    """The member's bytes: its text parts compressed as one stream (zstd without a
    content size, as published; gzip)."""
    sink = io.BytesIO()
    if plus:
        import zstandard

        cctx = zstandard.ZstdCompressor(level=3, write_content_size=False)
        with cctx.stream_writer(sink, closefd=False) as w:
            for part in parts:
                w.write(part)
    else:
        with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=1, mtime=0) as w:
            for part in parts:
                w.write(part)
    return sink.getvalue()


def _broken(data: bytes, plus: bool) -> bytes:
    """A member that cannot be decompressed: a zstd frame cut short / a gzip stream
    whose deflate data is damaged."""
    blob = _compress([data], plus)
    if plus:
        return blob[: len(blob) // 2]
    mid = len(blob) // 2
    return blob[:10] + bytes(b ^ 0xFF for b in blob[10:mid]) + blob[mid:]


def _write_tars(
    chunks,
    out: Path,
    bad: _Malformed,
    summary: dict,
    plus: bool,
    rng: np.random.Generator,
    users_per_tar: int,
) -> None:
    root = out / ("MLHD+" if plus else "MLHD")
    root.mkdir(parents=True, exist_ok=True)
    folder = root.name
    tars: dict[str, tarfile.TarFile] = {}
    counts: dict[str, int] = {}

    def tar_for(user_id: str, n_users: int) -> str:
        name = (
            f"mlhdplus-complete-{user_id[0]}.tar"
            if plus
            else f"MLHD_{n_users // users_per_tar:03d}.tar"
        )
        if name not in tars:
            tars[name] = tarfile.open(root / name, "w", format=tarfile.USTAR_FORMAT)
        return name

    if plus:
        for h in "0123456789abcdef":
            tar_for(h, 0)
    broken_done = not bad.enabled
    try:
        for k, c in enumerate(chunks):
            uid = user_uuid(c.user)
            tar_name = tar_for(uid, k)
            member = f"{uid[:2]}/{uid}.txt.zst" if plus else f"{uid}.txt.gz"
            n = len(c.ts_s)
            pick = bad.pick(f"{folder}/{tar_name}:{member}", n) if k < MALFORMED_PER_FILE else None
            pos, line = -1, None
            if pick is not None:
                pos, (reason, line) = pick
                bad.record(f"{folder}/{tar_name}", member, pos + 1, reason)
            parts = (_member_lines(s, plus, rng) for s in _slices(c))
            _add_member(tars[tar_name], member, _compress(_inserting(parts, pos, line), plus))
            counts[tar_name] = counts.get(tar_name, 0) + 1
            summary["plays"] += n
            summary["users"] += 1
            if not broken_done:  # after the first user: a member nobody can read
                broken_uid = user_uuid("broken-member")
                name = f"{broken_uid[:2]}/{broken_uid}.txt.zst" if plus else f"{broken_uid}.txt.gz"
                _add_member(tars[tar_name], name, _broken(_member_lines(c, plus, rng)[1], plus))
                summary["broken_members"].append({"file": f"{folder}/{tar_name}", "member": name})
                broken_done = True
    finally:
        for t in tars.values():
            t.close()
    summary["files"] = [f"{folder}/{n}" for n in sorted(tars)]
    summary["members"] = counts
    if not plus:  # MLHD publishes a SHA-256 per TAR
        lines = [
            f"{hashlib.sha256((root / n).read_bytes()).hexdigest()}  {n}\n" for n in sorted(tars)
        ]
        (root / "MLHD_sha256sums.txt").write_text("".join(lines))
        summary["checksums"] = f"{folder}/MLHD_sha256sums.txt"


# ---------------------------------------------------------------- Yambda


def _write_yambda(
    chunks, out: Path, bad: _Malformed, summary: dict, rng: np.random.Generator, row_group_rows: int
) -> None:
    import pyarrow.parquet as pq

    root = out / "yambda"
    root.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [
            ("uid", pa.uint32()),
            ("timestamp", pa.uint32()),
            ("item_id", pa.uint32()),
            ("is_organic", pa.uint8()),
            ("played_ratio_pct", pa.uint16()),
            ("track_length_seconds", pa.uint32()),
        ]
    )
    ids = _Ids()
    pending: list[pa.Table] = []
    pending_rows = rows = 0
    with pq.ParquetWriter(root / "listens.parquet", schema) as writer:

        def flush(final: bool) -> None:
            """Write whole row groups of ``row_group_rows`` (at the end, the rest too)."""
            nonlocal pending, pending_rows
            if not pending:
                return
            table = pa.concat_tables(pending)
            full = table.num_rows if final else table.num_rows // row_group_rows * row_group_rows
            if full:
                writer.write_table(table.slice(0, full), row_group_size=row_group_rows)
            rest = table.slice(full)
            pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

        for c in chunks:
            uid = ids.user(c.user)
            for s in _slices(c):
                ids.note(s)
            n = len(c.ts_s)
            if np.any((c.ts_s < 0) | (c.ts_s > 0xFFFFFFFF)):
                raise ValueError(
                    "yambda timestamps are uint32: times before 1970 cannot be written"
                )
            cols = {
                "uid": np.full(n, uid, np.uint32),
                "timestamp": c.ts_s.astype(np.uint32),
                "item_id": (c.track + 1).astype(np.uint32),
                "is_organic": (rng.random(n) < 0.85).astype(np.uint8),
                "played_ratio_pct": rng.integers(1, 121, n).astype(np.uint16),
                "track_length_seconds": rng.integers(60, 400, n).astype(np.uint32),
            }
            table = pa.table(cols, schema=schema)
            pick = bad.pick("yambda/listens.parquet", n)
            if pick is not None:
                pos, (reason, _) = pick
                null_row = pa.table(
                    {
                        **{k: pa.array([v[0]], schema.field(k).type) for k, v in cols.items()},
                        "timestamp": pa.nulls(1, pa.uint32()),
                    },
                    schema=schema,
                )
                table = pa.concat_tables([table.slice(0, pos), null_row, table.slice(pos)])
                bad.record("yambda/listens.parquet", None, rows + pos + 1, reason)
            pending.append(table)
            pending_rows += table.num_rows
            rows += table.num_rows
            summary["plays"] += n
            summary["users"] += 1
            if pending_rows >= row_group_rows:
                flush(False)
        flush(True)
    summary["files"] = ["yambda/listens.parquet"]
    summary["ids"] = ids.write(out / "layout_ids")


# ---------------------------------------------------------------- entry point


def write_layout(
    layout: str,
    chunks: Iterable[UserPlays],
    out: Path,
    rng: np.random.Generator,
    malformed: bool = False,
    users_per_tar: int = 1000,
    row_group_rows: int = 1 << 20,
) -> dict:
    """Write ``chunks`` (one user each, in order) in ``layout`` under ``out``; return
    the summary (files, plays, users, malformed lines, broken members, id maps)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: one of {', '.join(LAYOUTS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"layout": layout, "plays": 0, "users": 0, "broken_members": []}
    kinds = {
        "lfm1k": LFM1K_BAD,
        "lfm1b": LFM1B_BAD,
        "lfm2b": LFM2B_BAD,
        "mlhd": MLHD_BAD,
        "mlhdplus": MLHDPLUS_BAD,
        "yambda": [("null_timestamp", None)],
        "table": TABLE_BAD,
    }[layout]
    bad = _Malformed(rng, kinds, malformed)
    if layout == "lfm1k":
        _write_lfm1k(chunks, out, bad, summary)
    elif layout == "lfm1b":
        _write_lfm1b(chunks, out, bad, summary)
    elif layout == "lfm2b":
        _write_lfm2b(chunks, out, bad, summary)
    elif layout in ("mlhd", "mlhdplus"):
        _write_tars(chunks, out, bad, summary, layout == "mlhdplus", rng, users_per_tar)
    elif layout == "yambda":
        _write_yambda(chunks, out, bad, summary, rng, row_group_rows)
    else:
        _write_table(chunks, out, bad, summary)
    summary["malformed"] = bad.done
    return summary
