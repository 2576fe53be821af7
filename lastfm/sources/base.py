"""The contract every layout adapter fulfils: the plays schema, options, pieces, results.

An adapter module (one per layout, ``lastfm/sources/<dataset>.py``) exposes
``NEWEST_FIRST``, ``find_pieces(path, opts, target_bytes)``, ``read_piece(piece,
opts)`` and, where the layout ships names, ``load_names(path)``; the package
``lastfm.sources`` dispatches to it by dataset name.

Accounting of a piece (``PieceResult``): every physical line (or Parquet row) is a row
of ``table``, a reject (``rejects``, counted in ``counts`` under its reason), a line
set aside by an option (``counts["not_organic"]`` ...) or a header line
(``counts["header"]``), so that ``rows + lines_accounted(counts) == lines``. Three
kinds of count are not lines: ``repaired`` (rows whose stray tabs were rejoined:
rows, not rejects), ``corrupt_member`` / ``corrupt_tar`` / ``corrupt_stream`` (one
record per unreadable compressed stream or archive, the error in its text: at line 0
for a member or archive, none of whose plays are kept; at the first line not read for
a top-level stream, which keeps the complete lines read before the error).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from lastfm.common import PipelineError

DATASETS = ("lfm1k", "lfm1b", "lfm2b", "mlhd", "mlhdplus", "yambda", "table")

PLAY_SCHEMA = pa.schema(
    [
        ("user", pa.string()),  # the source's user id as text (never null)
        ("ts_s", pa.int64()),  # UTC unix seconds
        ("artist", pa.string()),  # artist id as text; null if unknown
        ("track", pa.string()),  # track id as text; null if missing
        ("artist_name", pa.string()),  # null where the layout has no names
        ("track_name", pa.string()),  # null where the layout has no names
        ("line", pa.int64()),  # 1-based line inside the piece's file / member / range
    ]
)

# Names of counts that are not lines of the piece (see the module docstring).
CORRUPT = ("corrupt_member", "corrupt_tar", "corrupt_stream")
NOT_LINES = frozenset(("repaired", *CORRUPT))
TIME_UNITS = ("s", "ms", "iso")


@dataclass(frozen=True)
class SourceOptions:
    """Every option of every adapter, with its default (picklable)."""

    dataset: str = "lfm1k"
    user_col: str = "user"  # table: the user column
    time_col: str = "timestamp"  # table: the time column
    item_col: str = "item"  # table: the track column
    artist_col: str | None = None  # table: an optional artist column
    time_unit: str = "s"  # table: s | ms | iso
    organic_only: bool = False  # yambda: drop plays that came from recommendations
    min_played_share: float = 0.0  # yambda: drop plays with a smaller played share (0..1)
    checksums: str | None = None  # a published md5sum / sha256sum list to verify

    def check(self) -> None:
        if self.dataset not in DATASETS:
            raise PipelineError(f"--dataset {self.dataset!r}: one of {', '.join(DATASETS)}")
        if self.time_unit not in TIME_UNITS:
            raise PipelineError(f"--time-unit {self.time_unit!r}: one of {', '.join(TIME_UNITS)}")
        if not 0.0 <= self.min_played_share <= 1.0:
            raise PipelineError(f"--min-played-share {self.min_played_share}: must be in [0, 1]")


@dataclass(frozen=True)
class Piece:
    """One unit of work (picklable, cheap to create).

    ``start``/``end``: for splittable plain text the byte range whose lines the piece
    owns (a line belongs to the piece its first byte lies in; ``end`` -1: to the end of
    the file); for a TAR member, the member's data range inside the TAR (so a piece
    reads its member without listing the archive); for Parquet, the range of row groups
    ``[start, end)``. A TAR piece without ``member`` stands for the part of an archive
    from byte ``start`` on that could not be listed (read as one ``corrupt_tar`` record).
    """

    index: int
    path: str
    member: str | None = None
    start: int = 0
    end: int = -1


@dataclass
class PieceResult:
    table: pa.Table  # PLAY_SCHEMA, in the piece's line order
    rejects: list[tuple[int, str, bytes]]  # (line within the piece, reason, raw line)
    lines: int  # physical lines (or Parquet rows) read
    counts: dict[str, int]  # reason -> n (rejects, filtered lines, header; see above)
    where: str  # "path" or "path:member"


def where(piece: Piece) -> str:
    return f"{piece.path}:{piece.member}" if piece.member else piece.path


def lines_accounted(counts: dict[str, int]) -> int:
    """The lines that ``counts`` accounts for (rejects, filtered, header)."""
    return sum(n for reason, n in counts.items() if reason not in NOT_LINES)


def count(rejects: list[tuple[int, str, bytes]], into: dict[str, int] | None = None) -> dict:
    counts = {} if into is None else into
    for _, reason, _ in rejects:
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def empty_plays() -> pa.Table:
    return PLAY_SCHEMA.empty_table()


def plays(
    user,
    ts_s,
    artist=None,
    track=None,
    artist_name=None,
    track_name=None,
    line=None,
    n: int | None = None,
) -> pa.Table:
    """A PLAY_SCHEMA table from columns (arrays, chunked arrays or a scalar user);
    a missing name column is all null."""
    n = len(ts_s) if n is None else n
    cols = {"user": user, "ts_s": ts_s, "artist": artist, "track": track}
    cols |= {"artist_name": artist_name, "track_name": track_name, "line": line}
    arrays = []
    for f in PLAY_SCHEMA:
        v = cols[f.name]
        if v is None:
            v = pa.nulls(n, f.type)
        elif isinstance(v, str):
            v = pa.array([v] * n, f.type) if n else pa.array([], f.type)
        elif not isinstance(v, pa.Array | pa.ChunkedArray):
            v = pa.array(v, f.type)
        if v.type != f.type:
            v = v.cast(f.type)
        arrays.append(v)
    return pa.Table.from_arrays(arrays, schema=PLAY_SCHEMA)


def empty_or_text(col):
    """A string column with "" turned into null (a missing MBID)."""
    import pyarrow.compute as pc

    return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)


def corrupt_result(piece: Piece, reason: str, message: str) -> PieceResult:
    """One record for an unreadable member / archive / stream: no rows, no lines."""
    rejects = [(0, reason, message.encode("utf-8", "backslashreplace"))]
    return PieceResult(empty_plays(), rejects, 0, {reason: 1}, where(piece))


@dataclass
class Collected:
    """Tables and rejects of a piece gathered block by block."""

    tables: list = field(default_factory=list)
    rejects: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    unordered: bool = False  # tables not in line order (sort before returning)

    def result(self, lines: int, piece: Piece, sort: bool = False) -> PieceResult:
        table = pa.concat_tables(self.tables) if self.tables else empty_plays()
        if sort and table.num_rows:
            table = table.sort_by("line")
        count(self.rejects, self.counts)
        return PieceResult(table, sorted(self.rejects), lines, self.counts, where(piece))


def not_found(path, what: str) -> PipelineError:
    return PipelineError(f"{path}: {what}")
