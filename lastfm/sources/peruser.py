"""What MLHD and MLHD+ share: TAR archives of one compressed log per user.

Each regular member whose name ends in one of the layout's suffixes is a piece (its data
range inside the TAR is the piece's ``start``/``end``); the user id is the member's
base name up to its first dot. A member that cannot be decompressed to its end is one
``corrupt_member`` record and none of its plays are kept (a truncated history would
bias that user); an archive whose listing breaks is one ``corrupt_tar`` record for
the part that could not be listed. Other members (a README) are not logs and are
skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pyarrow as pa

from lastfm.sources.base import Collected, Piece, PieceResult, corrupt_result, not_found
from lastfm.sources.streams import CorruptStream, decompress, list_tar, read_member
from lastfm.sources.textlines import LineFormat, parse_block


def user_of(member: str) -> str:
    return PurePosixPath(member).name.split(".", 1)[0]


def tar_pieces(tars: list[Path], suffixes: tuple[str, ...]) -> list[Piece]:
    pieces: list[Piece] = []
    for tar in tars:
        members, broken_at, why = list_tar(tar)
        for name, offset, size in members:
            if name.endswith(suffixes) and user_of(name):
                pieces.append(Piece(len(pieces), str(tar), name, offset, offset + size))
        if broken_at is not None:
            pieces.append(Piece(len(pieces), str(tar), None, broken_at, -1))
    return pieces


def read_tar_piece(
    piece: Piece, fmt: LineFormat, to_plays: Callable[[pa.Table, str], pa.Table]
) -> PieceResult:
    if piece.member is None:
        _, _, why = list_tar(Path(piece.path))
        return corrupt_result(
            piece, "corrupt_tar", f"archive unreadable from byte {piece.start}: {why}"
        )
    try:
        raw = read_member(Path(piece.path), piece.start, piece.end)
        buf = decompress(piece.member, raw)
    except CorruptStream as err:
        return corrupt_result(piece, "corrupt_member", str(err))
    except OSError as err:
        raise not_found(piece.path, f"cannot read ({err.strerror or err})") from None
    block = parse_block(buf, fmt, 1, True)
    out = Collected(rejects=block.rejects)
    if block.table.num_rows:
        out.tables.append(to_plays(block.table, user_of(piece.member)))
    return out.result(block.lines, piece)


def tars_in(path: Path, pattern: str, what: str) -> list[Path]:
    path = Path(path)
    if path.is_file() and path.suffix == ".tar":
        return [path]
    if not path.is_dir():
        raise not_found(path, "not found")
    tars = sorted(p for p in path.glob(pattern) if p.is_file())
    if not tars:
        raise not_found(path, f"no {pattern} archives here ({what})")
    return tars
