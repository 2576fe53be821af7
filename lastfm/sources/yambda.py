"""Yambda (Yandex Music, 2025): ``listens.parquet`` or ``multi_event.parquet``.

Confirmed from the dataset card (huggingface.co/datasets/yandex/yambda, README and
its viewer): folders ``flat/{50m,500m,5b}/`` (and ``sequential/...``) hold
``listens.parquet``, ``likes.parquet``, ..., ``multi_event.parquet``; the listens have
``uid`` (uint32), ``timestamp`` (uint32), ``item_id`` (uint32), ``is_organic`` (uint8:
1 = organic discovery, 0 = recommendation-driven: personalised feed and playlists),
``played_ratio_pct`` (may exceed 100 after rewinds; a track counts as "listened" above
50%) and ``track_length_seconds``; ``multi_event`` adds ``event_type`` (``listen``,
``like`` ...). Users' notes (and the viewer's values, all multiples of 5) add that
timestamps are binned to 5 seconds; they count from the dataset's own origin, not the
unix epoch (the card gives no origin). Not confirmed: the origin date (``ts_s`` is the
given timestamp, seconds from that origin: gaps and order are right, dates are not).

Options: ``organic_only`` sets aside plays with ``is_organic`` 0 (``not_organic``);
``min_played_share`` those with ``played_ratio_pct < 100 * share``
(``below_min_played_share``); in ``multi_event`` every event that is not a listen is
set aside (``not_listen``). A row with a null id or time is a reject
(``null_<column>``). ``track`` is the item id; Yambda has no names and (without its
separate artist mapping) no artist.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lastfm.common import PipelineError
from lastfm.sources.base import Piece, PieceResult, SourceOptions, count, not_found, plays, where
from lastfm.sources.parquet import open_parquet, read_row_groups, row_group_pieces
from lastfm.sources.streams import verify_published

NEWEST_FIRST = False
FILES = ("listens.parquet", "multi_event.parquet")
REQUIRED = ("uid", "item_id", "timestamp")


def locate(path: Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise not_found(path, "not found")
    for name in FILES:
        if (path / name).is_file():
            return path / name
    sizes = sorted(p.parent.name for p in path.glob("*/*/listens.parquet"))
    sizes += sorted(p.parent.name for p in path.glob("*/listens.parquet"))
    hint = f" (name one size folder: {', '.join(sizes)})" if sizes else ""
    raise not_found(path, f"no {' or '.join(FILES)} here (the Yambda flat layout){hint}")


def _columns(path: Path) -> list[str]:
    schema = open_parquet(path).schema_arrow
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        raise PipelineError(
            f"{path}: no column(s) {missing}; expected Yambda's {', '.join(REQUIRED)}"
        )
    if pa.types.is_list(schema.field("item_id").type):
        raise PipelineError(f"{path}: Yambda's sequential layout (lists per user); use flat/")
    wanted = (*REQUIRED, "is_organic", "played_ratio_pct", "event_type")
    return [c for c in wanted if c in schema.names]


def find_pieces(path: Path, opts: SourceOptions, target_bytes: int) -> list[Piece]:
    file = locate(path)
    _columns(file)
    if opts.checksums:
        verify_published([file], file.parent, opts.checksums)
    return row_group_pieces(file, target_bytes)


def _mask(values) -> np.ndarray:
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=bool)


def read_piece(piece: Piece, opts: SourceOptions) -> PieceResult:
    path = Path(piece.path)
    t = read_row_groups(path, piece, _columns(path))
    n = t.num_rows
    line = np.arange(1, n + 1, dtype=np.int64)
    keep = np.ones(n, dtype=bool)
    rejects = []
    for name in REQUIRED:
        null = _mask(pc.is_null(t[name]))
        for r in np.flatnonzero(null & keep):
            raw = repr({c: t[c][int(r)].as_py() for c in t.column_names}).encode()
            rejects.append((int(line[r]), f"null_{name}", raw))
        keep &= ~null
    counts = count(rejects)

    def set_aside(reason: str, mask) -> None:
        nonlocal keep
        m = _mask(mask) & keep
        if m.any():
            counts[reason] = counts.get(reason, 0) + int(m.sum())
        keep &= ~m

    if "event_type" in t.column_names:
        set_aside("not_listen", pc.fill_null(pc.not_equal(t["event_type"], "listen"), True))
    if opts.organic_only and "is_organic" in t.column_names:
        set_aside("not_organic", pc.fill_null(pc.equal(t["is_organic"], 0), False))
    if opts.min_played_share > 0 and "played_ratio_pct" in t.column_names:
        low = pc.less(t["played_ratio_pct"].cast(pa.float64()), 100.0 * opts.min_played_share)
        set_aside("below_min_played_share", pc.fill_null(low, True))
    kept = t.filter(pa.array(keep))
    table = plays(
        kept["uid"].cast(pa.string()),
        kept["timestamp"].cast(pa.int64()),
        None,
        kept["item_id"].cast(pa.string()),
        line=pa.array(line[keep]),
    )
    return PieceResult(table, sorted(rejects), n, counts, where(piece))
