"""LFM-2b (Schedl et al. 2022): ``listening-events.tsv.bz2`` and ``tracks.tsv.bz2``.

Confirmed only from third-party loaders (the dataset's page at cp.jku.at is offline and
no README was found): ``listening-events.tsv.bz2`` is a bz2-compressed TSV with a
header, columns ``user_id, track_id, album_id, timestamp`` (a Utrecht University
toolkit's ``DatasetProcessorLFM2B`` reads the bz2 files directly with a header and
these keys; the LFM2B_1MON reader parses ``timestamp`` with ``%Y-%m-%d %H:%M:%S``);
``tracks.tsv.bz2`` has a header and ``track_id, artist_name, track_name`` and "does
not load correctly with pandas when splitting on newlines and tabs" (that toolkit, on
quote characters in names). Not confirmed: that the times are UTC (read as UTC), the
exact header text (columns are found by name, in any order), whether a name may hold
a tab. The events carry no artist id: ``artist`` is null (``load_names`` gives the
artist's name per track).

The events file is one piece, decompressed as a stream and parsed in ~16 MB blocks
(nothing written to disk). A stream that breaks (truncated, a bad block CRC) ends the
piece with one ``corrupt_stream`` record after the complete lines read before it.
Names are read with quoting off (a quote is a character of the name); a names line
with extra tabs cannot be split unambiguously and is skipped and counted.
"""

from __future__ import annotations

import bz2
import json
import zlib
from pathlib import Path

import pyarrow as pa

from lastfm.common import PipelineError, log
from lastfm.sources.base import Collected, Piece, PieceResult, SourceOptions, not_found, plays
from lastfm.sources.streams import verify_published
from lastfm.sources.textlines import LineFormat, newline_blocks, parse_block

NEWEST_FIRST = False
EVENTS = "listening-events.tsv.bz2"
TRACKS = "tracks.tsv.bz2"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
REQUIRED = ("user_id", "track_id", "timestamp")
INT_COLUMNS = ("user_id", "track_id", "album_id", "artist_id")
BLOCK_BYTES = 16 << 20


def locate(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        if (path / EVENTS).is_file():
            return path / EVENTS
        raise not_found(path, f"no {EVENTS} here (the LFM-2b layout)")
    if not path.is_file():
        raise not_found(path, "not found")
    return path


def _header(path: Path) -> list[str]:
    try:
        with bz2.open(path, "rb") as fh:
            line = fh.readline()
    except (OSError, EOFError, zlib.error) as err:
        raise PipelineError(f"{path}: not a readable bz2 file ({err})") from None
    names = line.rstrip(b"\n").decode("utf-8", "replace").split("\t")
    return names


def events_format(names: list[str], where: Path) -> LineFormat:
    missing = [c for c in REQUIRED if c not in names]
    if missing or len(set(names)) != len(names):
        raise PipelineError(
            f"{where}: header {names} lacks {missing or 'unique names'}; expected "
            f"{', '.join(REQUIRED)} (LFM-2b listening events)"
        )
    ints = frozenset(n for n in names if n in INT_COLUMNS)
    return LineFormat(names=tuple(names), ints=ints, times=(("timestamp", TIME_FORMAT),))


def find_pieces(path: Path, opts: SourceOptions, target_bytes: int) -> list[Piece]:
    events = locate(path)
    events_format(_header(events), events)
    if opts.checksums:
        verify_published([events], events.parent, opts.checksums)
    return [Piece(0, str(events))]


def read_piece(piece: Piece, opts: SourceOptions) -> PieceResult:
    """The whole events file at once (the local engine; small inputs)."""
    parts = list(iter_piece(piece, opts, batch_bytes=0))
    table = pa.concat_tables([p.table for p in parts])
    counts: dict[str, int] = {}
    for p in parts:
        for k, v in p.counts.items():
            counts[k] = counts.get(k, 0) + v
    rejects = [r for p in parts for r in p.rejects]
    return PieceResult(table, rejects, sum(p.lines for p in parts), counts, parts[0].where)


def iter_piece(piece: Piece, opts: SourceOptions, batch_bytes: int = 256 << 20):
    """The events file in batches of about ``batch_bytes`` of text (0: one batch), each a
    ``PieceResult`` whose lines follow the previous batch's (line numbers count from the
    file's first line): the one 2-billion-line file of LFM-2b is read as a stream with
    the memory of one batch."""
    path = Path(piece.path)
    fmt = events_format(_header(path), path)
    out = Collected(counts={"header": 1})
    line0, first = 2, 1
    pending = None  # parsed one block behind, to know which block ends the file
    size = 0
    try:
        with bz2.open(path, "rb") as fh:
            fh.readline()
            for block in newline_blocks(fh, BLOCK_BYTES):
                if pending is not None:
                    line0 = _parse(pending, fmt, line0, False, out)
                    size += len(pending)
                    if batch_bytes and size >= batch_bytes:
                        yield out.result(line0 - first, piece)
                        out, first, size = Collected(), line0, 0
                pending = block
        if pending is not None:
            line0 = _parse(pending, fmt, line0, True, out)
    except (OSError, EOFError, zlib.error) as err:
        if pending is not None and pending.endswith(b"\n"):  # complete lines before the break
            line0 = _parse(pending, fmt, line0, False, out)
        message = f"bz2 stream breaks after line {line0 - 1}: {err}"
        out.rejects.append((line0, "corrupt_stream", message.encode()))
    yield out.result(line0 - first, piece)


def _parse(buf: bytes, fmt: LineFormat, line0: int, at_eof: bool, out: Collected) -> int:
    block = parse_block(buf, fmt, line0, at_eof)
    out.rejects.extend(block.rejects)
    t = block.table
    if t.num_rows:
        text = lambda name: t[name].cast(pa.string())  # noqa: E731
        out.tables.append(
            plays(text("user_id"), t["timestamp"], None, text("track_id"), line=t["line"])
        )
    return line0 + block.lines


def load_names(path: Path) -> pa.Table | None:
    """Track id -> artist and track names from ``tracks.tsv.bz2`` (None without it);
    skipped lines are counted in the schema metadata (``skipped``)."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    tracks = folder / TRACKS
    if not tracks.is_file():
        return None
    names = _header(tracks)
    if "track_id" not in names:
        raise PipelineError(f"{tracks}: header {names} has no track_id")
    fmt = LineFormat(names=tuple(names), ints=frozenset(("track_id",)))
    out: list[pa.Table] = []
    skipped: dict[str, int] = {}
    line0 = 2
    try:
        with bz2.open(tracks, "rb") as fh:
            fh.readline()
            for buf in newline_blocks(fh, BLOCK_BYTES):
                block = parse_block(buf, fmt, line0, not buf.endswith(b"\n"))
                for _, reason, _ in block.rejects:
                    skipped[reason] = skipped.get(reason, 0) + 1
                out.append(block.table)
                line0 += block.lines
    except (OSError, EOFError, zlib.error) as err:
        skipped["corrupt_stream"] = 1
        log(f"{tracks}: bz2 stream breaks after line {line0 - 1} ({err}); names read so far kept")
    if skipped:
        log(f"{tracks}: name lines skipped: {skipped}")
    t = pa.concat_tables(out) if out else fmt_empty(fmt)
    cols = {
        "track": t["track_id"].cast(pa.string()),
        "artist_name": t["artist_name"]
        if "artist_name" in names
        else pa.nulls(t.num_rows, pa.string()),
        "track_name": t["track_name"]
        if "track_name" in names
        else pa.nulls(t.num_rows, pa.string()),
    }
    return pa.table(cols).replace_schema_metadata({"skipped": json.dumps(skipped)})


def fmt_empty(fmt: LineFormat) -> pa.Table:
    return pa.table(
        {n: pa.array([], pa.int64() if n in fmt.ints else pa.string()) for n in fmt.names}
    )
