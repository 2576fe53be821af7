"""Any table of plays: CSV, TSV or Parquet with user, time and item columns.

Columns are named by options (``user_col``, ``time_col``, ``item_col``, optionally
``artist_col``); the time is unix seconds (``time_unit s``), milliseconds (``ms``,
floored to seconds) or ISO 8601 text (``iso``: a zone or ``Z`` respected, none read as
UTC). CSV (``.csv``: comma, double-quoted fields) and TSV (``.tsv`` / ``.tab`` /
``.txt``: tab, no quoting) need a header line; they are cut into byte-range pieces
(each piece reads the header from the file's first line; the first piece counts it
under ``header``), so a quoted field may not hold a newline (such a record breaks
into rejects). Parquet is cut into runs of row groups; its time column may also be a
Parquet timestamp. An empty user is a reject (``empty_<user_col>``), a time that
cannot be read too (``bad_<time_col>``); an empty item or artist is null. No names.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lastfm.common import PipelineError
from lastfm.sources.base import (
    Collected,
    Piece,
    PieceResult,
    SourceOptions,
    count,
    empty_or_text,
    not_found,
    plays,
    where,
)
from lastfm.sources.parquet import open_parquet, read_row_groups, row_group_pieces
from lastfm.sources.streams import verify_published
from lastfm.sources.textlines import (
    INT_PATTERN,
    LineFormat,
    byte_ranges,
    first_line,
    iso_seconds,
    parse_block,
    read_range,
)

NEWEST_FIRST = False
DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".txt": "\t"}


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in DELIMITERS:
        return "text"
    raise PipelineError(
        f"{path}: a table must be .csv, .tsv, .tab, .txt or .parquet (uncompressed)"
    )


def _wanted(opts: SourceOptions) -> list[str]:
    return [c for c in (opts.user_col, opts.time_col, opts.item_col, opts.artist_col) if c]


def _require(path: Path, names: list[str], opts: SourceOptions) -> None:
    missing = [c for c in _wanted(opts) if c not in names]
    if missing:
        raise PipelineError(
            f"{path}: no column(s) {missing} (it has {names}); name them with "
            "--user-col / --time-col / --item-col / --artist-col"
        )


def text_format(path: Path, opts: SourceOptions) -> LineFormat:
    delimiter = DELIMITERS[path.suffix.lower()]
    quoted = delimiter == ","
    header = first_line(path).decode("utf-8", "replace").rstrip("\r")
    names = next(csv.reader([header], delimiter=delimiter)) if quoted else header.split(delimiter)
    _require(path, names, opts)
    if len(set(names)) != len(names):
        raise PipelineError(f"{path}: header {names} repeats a column name")
    t = opts.time_col
    return LineFormat(
        names=tuple(names),
        ints=frozenset((t,)) if opts.time_unit in ("s", "ms") else frozenset(),
        isos=frozenset((t,)) if opts.time_unit == "iso" else frozenset(),
        nonempty=frozenset((opts.user_col,)),
        delimiter=delimiter,
        quoted=quoted,
    )


def find_pieces(path: Path, opts: SourceOptions, target_bytes: int) -> list[Piece]:
    path = Path(path)
    if not path.is_file():
        raise not_found(path, "not found (a table is one CSV, TSV or Parquet file)")
    kind = _kind(path)
    if opts.checksums:
        verify_published([path], path.parent, opts.checksums)
    if kind == "parquet":
        _require(path, open_parquet(path).schema_arrow.names, opts)
        return row_group_pieces(path, target_bytes)
    text_format(path, opts)
    ranges = byte_ranges(path.stat().st_size, target_bytes)
    return [Piece(i, str(path), None, s, e) for i, (s, e) in enumerate(ranges)]


def _seconds(values: pa.ChunkedArray | pa.Array, unit: str) -> pa.Array:
    if unit == "ms":
        return pa.array(np.floor_divide(np.asarray(values.to_numpy()), 1000), pa.int64())
    return values.cast(pa.int64())


def _to_plays(t: pa.Table, opts: SourceOptions, ts) -> pa.Table:
    artist = empty_or_text(t[opts.artist_col].cast(pa.string())) if opts.artist_col else None
    return plays(
        t[opts.user_col].cast(pa.string()),
        ts,
        artist,
        empty_or_text(t[opts.item_col].cast(pa.string())),
        line=t["line"],
    )


def read_piece(piece: Piece, opts: SourceOptions) -> PieceResult:
    path = Path(piece.path)
    if _kind(path) == "parquet":
        return _read_parquet(piece, opts)
    fmt = text_format(path, opts)
    try:
        buf, at_eof = read_range(path, piece.start, piece.end)
    except OSError as err:
        raise not_found(path, f"cannot read ({err.strerror or err})") from None
    out, first, extra = Collected(), 1, 0
    if piece.start == 0 and buf:  # the header line
        cut = buf.find(b"\n")
        buf = b"" if cut < 0 else buf[cut + 1 :]
        out.counts["header"], first, extra = 1, 2, 1
    block = parse_block(buf, fmt, first, at_eof)
    out.rejects = block.rejects
    t = block.table
    if t.num_rows:
        out.tables.append(_to_plays(t, opts, _seconds(t[opts.time_col], opts.time_unit)))
    return out.result(block.lines + extra, piece)


def _parquet_seconds(time, unit: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """UTC seconds of a Parquet time column (timestamp, integer or text) and which
    values cannot be read."""
    if pa.types.is_timestamp(time.type):
        per_s = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[time.type.unit]
        bad = pc.is_null(time)
        ticks = pc.fill_null(time.cast(pa.int64()), 0).to_numpy()
        seconds = np.floor_divide(ticks, per_s)  # floors sub-seconds
    elif pa.types.is_string(time.type) or pa.types.is_large_string(time.type):
        if unit == "iso":
            seconds, bad = iso_seconds(time)
            seconds = seconds.to_numpy()
        else:
            ok = pc.fill_null(pc.match_substring_regex(time, f"^{INT_PATTERN}$"), False)
            bad = pc.invert(ok)
            seconds = pc.if_else(ok, time, "0").cast(pa.int64()).to_numpy()
    elif pa.types.is_integer(time.type):
        bad = pc.is_null(time)
        seconds = pc.fill_null(time, 0).cast(pa.int64()).to_numpy()
    else:
        raise PipelineError(f"{where}: the time column is {time.type}, not a time")
    if unit == "ms" and not pa.types.is_timestamp(time.type):
        seconds = np.floor_divide(seconds, 1000)
    bad = np.asarray(pc.fill_null(bad, True).to_numpy(zero_copy_only=False), dtype=bool)
    return np.asarray(seconds, dtype=np.int64), bad


def _read_parquet(piece: Piece, opts: SourceOptions) -> PieceResult:
    t = read_row_groups(Path(piece.path), piece, _wanted(opts))
    n = t.num_rows
    t = t.append_column("line", pa.array(np.arange(1, n + 1, dtype=np.int64)))
    user = t[opts.user_col]
    bad_user = pc.or_kleene(pc.is_null(user), pc.equal(user.cast(pa.string()), ""))
    bad_user = np.asarray(pc.fill_null(bad_user, True).to_numpy(zero_copy_only=False), dtype=bool)
    seconds, bad_time = _parquet_seconds(t[opts.time_col], opts.time_unit, piece.path)
    rejects = []
    for r in np.flatnonzero(bad_user | bad_time):
        reason = f"empty_{opts.user_col}" if bad_user[r] else f"bad_{opts.time_col}"
        raw = repr({c: t[c][int(r)].as_py() for c in _wanted(opts)}).encode()
        rejects.append((int(r) + 1, reason, raw))
    keep = ~(bad_user | bad_time)
    table = _to_plays(t.filter(pa.array(keep)), opts, pa.array(seconds[keep], pa.int64()))
    return PieceResult(table, rejects, n, count(rejects), where(piece))
