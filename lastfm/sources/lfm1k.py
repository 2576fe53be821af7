"""Last.fm-1K (Celma 2010): ``userid-timestamp-artid-artname-traid-traname.tsv``.

Confirmed against the dataset's README (ocelma.net/MusicRecommendationDataset/
lastfm-1K.html, also copied in eifuentes/lastfm-dataset-1K): six tab-separated fields,
no header, ``userid, timestamp (ISO 8601, Z), musicbrainz-artist-id, artist-name,
musicbrainz-track-id, track-name``; 19,150,868 lines of 992 users; the file's MD5
(``preprocess.KNOWN_MD5``, verified by preprocess.py, not here). Each user's plays are
listed newest first (the README's example and the file itself).

A piece is a byte range of the TSV, parsed by ``lastfm.parse``'s own block parser
(``_fast_parse`` / ``_slow_parse`` on ~1 MB sub-blocks, as ``parse_blocks`` does), so
its rows and reject reasons are exactly those ``parse_file`` gives for its lines,
repairs of stray tabs included (counted under ``repaired``). An empty MBID becomes a
null ``artist`` / ``track``; names are kept as written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from lastfm import parse
from lastfm.sources.base import (
    Collected,
    Piece,
    PieceResult,
    SourceOptions,
    empty_or_text,
    not_found,
    plays,
)
from lastfm.sources.textlines import byte_ranges, count_lines, read_range

NEWEST_FIRST = True
TSV_NAME = "userid-timestamp-artid-artname-traid-traname.tsv"


def locate(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        if (path / TSV_NAME).is_file():
            return path / TSV_NAME
        if (path / "lastfm-dataset-1K" / TSV_NAME).is_file():
            return path / "lastfm-dataset-1K" / TSV_NAME
        raise not_found(path, f"no {TSV_NAME} here (the Last.fm-1K layout, unpacked)")
    if not path.is_file():
        raise not_found(path, "not found")
    return path


def find_pieces(path: Path, opts: SourceOptions, target_bytes: int) -> list[Piece]:
    tsv = locate(path)
    size = tsv.stat().st_size
    return [
        Piece(i, str(tsv), None, s, e) for i, (s, e) in enumerate(byte_ranges(size, target_bytes))
    ]


def _to_plays(table: pa.Table) -> pa.Table:
    ts = table["timestamp"].cast(pa.int64())
    return plays(
        table["user"],
        ts,
        empty_or_text(table["artist_mbid"]),
        empty_or_text(table["track_mbid"]),
        table["artist_name"],
        table["track_name"],
        table["line"],
    )


def parse_bytes(buf: bytes, at_eof: bool, out: Collected) -> int:
    """Parse the lines of ``buf`` (numbered from 1) into ``out``, as
    ``parse.parse_blocks`` parses a block; return the number of lines."""
    n = count_lines(buf)
    table = parse._fast_parse(buf, n) if buf.endswith(b"\n") else None
    if table is not None:
        table = table.append_column("line", pa.array(np.arange(1, n + 1, dtype=np.int64)))
        out.tables.append(_to_plays(table))
        return n
    pieces = (
        list(parse.sub_blocks(buf, parse.RETRY_BYTES)) if len(buf) > parse.RETRY_BYTES else [buf]
    )
    line0 = 1
    for k, sub in enumerate(pieces):
        last = at_eof and k == len(pieces) - 1
        m = count_lines(sub)
        t = parse._fast_parse(sub, m) if sub.endswith(b"\n") else None
        if t is not None:
            t = t.append_column("line", pa.array(np.arange(line0, line0 + m, dtype=np.int64)))
        else:
            t, rej, rep, m = parse._slow_parse(sub, line0, last)
            out.unordered = True  # lines handled one by one come after the clean ones
            out.rejects.extend(rej)
            if rep:
                out.counts["repaired"] = out.counts.get("repaired", 0) + rep
        if t is not None and t.num_rows:
            t = t.set_column(t.schema.get_field_index("line"), "line", t["line"].cast(pa.int64()))
            out.tables.append(_to_plays(t))
        line0 += m
    return line0 - 1


def read_piece(piece: Piece, opts: SourceOptions) -> PieceResult:
    try:
        buf, at_eof = read_range(piece.path, piece.start, piece.end)
    except OSError as err:
        raise not_found(piece.path, f"cannot read ({err.strerror or err})") from None
    out = Collected()
    lines = parse_bytes(buf, at_eof, out) if buf else 0
    return out.result(lines, piece, sort=out.unordered)
