"""Parquet inputs (Yambda, a table): pieces are runs of row groups."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from lastfm.common import PipelineError
from lastfm.sources.base import Piece


def open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as err:  # ArrowInvalid is a ValueError
        raise PipelineError(f"{path}: not a readable Parquet file ({err})") from None


def row_group_pieces(path: Path, target_bytes: int, first_index: int = 0) -> list[Piece]:
    """Consecutive row groups of about ``target_bytes`` (compressed) per piece."""
    meta = open_parquet(path).metadata
    pieces, start, size = [], 0, 0
    for g in range(meta.num_row_groups):
        size += meta.row_group(g).total_byte_size
        if size >= target_bytes or g == meta.num_row_groups - 1:
            pieces.append(Piece(first_index + len(pieces), str(path), None, start, g + 1))
            start, size = g + 1, 0
    if not pieces:  # no row groups: one empty piece
        pieces.append(Piece(first_index, str(path), None, 0, 0))
    return pieces


def read_row_groups(path: Path, piece: Piece, columns: list[str]):
    pf = open_parquet(path)
    end = pf.metadata.num_row_groups if piece.end < 0 else piece.end
    return pf.read_row_groups(list(range(piece.start, end)), columns=columns)
