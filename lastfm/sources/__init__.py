"""One adapter per listening-log layout, all read into the same plays table.

| dataset | module | published layout |
|---|---|---|
| ``lfm1k`` | ``lfm1k`` | Last.fm-1K TSV (``lastfm.parse``'s exact parser), plays newest first |
| ``lfm1b`` | ``lfm1b`` | ``LFM-1b_LEs.txt``: user, artist, album, track ids, unix time |
| ``lfm2b`` | ``lfm2b`` | ``listening-events.tsv.bz2`` (header; read as a bz2 stream) |
| ``mlhd`` | ``mlhd`` | ``MLHD_###.tar`` of per-user ``<uuid>.txt.gz`` logs |
| ``mlhdplus`` | ``mlhdplus`` | ``mlhdplus-complete-{0..f}.tar`` of per-user ``*.txt.zst`` logs |
| ``yambda`` | ``yambda`` | ``listens.parquet`` / ``multi_event.parquet`` (flat layout) |
| ``table`` | ``table`` | any CSV / TSV / Parquet with columns named by options |

The contract (``base``): ``find_pieces`` cuts an input into ``Piece``s (byte ranges of
plain text, TAR members, runs of Parquet row groups); ``read_piece`` reads one into a
``PLAY_SCHEMA`` table, its rejects and counts, exactly (every line a row or a reject;
bad data is never an exception, an unreadable path is a one-line ``PipelineError``);
``load_names`` gives the side table of names where a layout ships one. Shared parts:
``textlines`` (byte ranges, the delimited-line parser), ``streams`` (decompression,
TAR listing, checksums), ``peruser`` (MLHD-style TARs), ``parquet``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from lastfm.common import PipelineError
from lastfm.sources import lfm1b, lfm1k, lfm2b, mlhd, mlhdplus, table, yambda
from lastfm.sources.base import (
    DATASETS,
    NOT_LINES,
    PLAY_SCHEMA,
    Piece,
    PieceResult,
    SourceOptions,
    lines_accounted,
)

__all__ = [
    "DATASETS",
    "NOT_LINES",
    "PLAY_SCHEMA",
    "Piece",
    "PieceResult",
    "SourceOptions",
    "find_pieces",
    "iter_piece",
    "lines_accounted",
    "load_names",
    "newest_first",
    "read_piece",
]

ADAPTERS = {
    "lfm1k": lfm1k,
    "lfm1b": lfm1b,
    "lfm2b": lfm2b,
    "mlhd": mlhd,
    "mlhdplus": mlhdplus,
    "yambda": yambda,
    "table": table,
}
assert tuple(ADAPTERS) == DATASETS


def _adapter(dataset: str):
    try:
        return ADAPTERS[dataset]
    except KeyError:
        raise PipelineError(f"dataset {dataset!r}: one of {', '.join(DATASETS)}") from None


def newest_first(dataset: str) -> bool:
    """True where a layout lists each user's plays newest first (lfm1k): plays of one
    user at the same second are then in reverse file order."""
    return _adapter(dataset).NEWEST_FIRST


def find_pieces(
    dataset: str, path: Path, opts: SourceOptions, target_bytes: int = 64 << 20
) -> list[Piece]:
    """The pieces of the input at ``path`` (the folder as published, or one file), in
    a deterministic order; published checksums verified first where given or found
    (lfm1k: left to preprocess.py's known MD5)."""
    opts.check()
    pieces = _adapter(dataset).find_pieces(Path(path), opts, target_bytes)
    return [
        p if p.index == i else Piece(i, p.path, p.member, p.start, p.end)
        for i, p in enumerate(pieces)
    ]


def read_piece(piece: Piece, dataset: str, opts: SourceOptions) -> PieceResult:
    """One piece read exactly (see the module docstring)."""
    return _adapter(dataset).read_piece(piece, opts)


def iter_piece(piece: Piece, dataset: str, opts: SourceOptions) -> Iterator[PieceResult]:
    """One piece in batches of bounded memory where the layout reads one long stream
    (lfm2b), else in one ``read_piece``; line numbers continue across batches and the
    counts of the batches add up to the piece's."""
    batches = getattr(_adapter(dataset), "iter_piece", None)
    if batches is None:
        yield read_piece(piece, dataset, opts)
    else:
        yield from batches(piece, opts)


def load_names(dataset: str, path: Path) -> pa.Table | None:
    """Columns ``track, artist_name, track_name`` keyed by the track id as text (lfm1b,
    lfm2b); None where the layout has no names or the names file is absent."""
    loader = getattr(_adapter(dataset), "load_names", None)
    return None if loader is None else loader(Path(path))
