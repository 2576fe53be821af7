"""LFM-1b (Schedl, ICMR 2016): ``LFM-1b_LEs.txt`` and its optional name files.

Confirmed from the dataset's article (Schedl, IJMIR 2017, link.springer.com/article/
10.1007/s13735-017-0118-y): a listening event is the quintuple user, artist, album,
track, timestamp; the files ``LFM-1b_LEs.txt``, ``LFM-1b_artists.txt``,
``LFM-1b_albums.txt``, ``LFM-1b_tracks.txt`` are UTF-8 text. The column orders are
those of the LFM User Groups subset's description (zenodo.org/record/3475975: "user
\\t artist \\t album \\t track \\t timestamp") and of every published loader found
by code search: ``LFM-1b_LEs.txt``: ``user-id, artist-id, album-id, track-id,
timestamp`` (integers, unix seconds), no header; ``LFM-1b_tracks.txt``: ``track-id,
track-name, artist-id``; ``LFM-1b_artists.txt``: ``artist-id, artist-name``;
``LFM-1b_albums.txt``: ``album-id, album-name, artist-id``. Not confirmed (the
dataset's own README and download page are offline): whether the name files have a
header (a first line that is not an id would be skipped and counted), whether a name
may hold a tab (such a line is skipped and counted), how the LEs file is ordered (read
as chronological per user; the engine sorts by time).

Pieces are byte ranges of ``LFM-1b_LEs.txt``; a line is five integers or a reject. Ids
are written back as canonical integer text; there are no names in the plays
(``load_names`` gives them per track).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from lastfm.common import log
from lastfm.sources.base import Collected, Piece, PieceResult, SourceOptions, not_found, plays
from lastfm.sources.streams import verify_published
from lastfm.sources.textlines import LineFormat, byte_ranges, parse_block, read_range

NEWEST_FIRST = False
EVENTS = "LFM-1b_LEs.txt"
TRACKS = "LFM-1b_tracks.txt"
ARTISTS = "LFM-1b_artists.txt"
FIELDS = ("user", "artist", "album", "track", "timestamp")
FORMAT = LineFormat(names=FIELDS, ints=frozenset(FIELDS))
TRACKS_FORMAT = LineFormat(
    names=("track", "track_name", "artist"), ints=frozenset(("track", "artist"))
)
ARTISTS_FORMAT = LineFormat(names=("artist", "artist_name"), ints=frozenset(("artist",)))


def locate(path: Path) -> Path:
    path = Path(path)
    if path.is_dir():
        if (path / EVENTS).is_file():
            return path / EVENTS
        raise not_found(path, f"no {EVENTS} here (the LFM-1b layout, unzipped)")
    if not path.is_file():
        raise not_found(path, "not found")
    return path


def find_pieces(path: Path, opts: SourceOptions, target_bytes: int) -> list[Piece]:
    events = locate(path)
    if opts.checksums:
        verify_published([events], events.parent, opts.checksums)
    ranges = byte_ranges(events.stat().st_size, target_bytes)
    return [Piece(i, str(events), None, s, e) for i, (s, e) in enumerate(ranges)]


def read_piece(piece: Piece, opts: SourceOptions) -> PieceResult:
    try:
        buf, at_eof = read_range(piece.path, piece.start, piece.end)
    except OSError as err:
        raise not_found(piece.path, f"cannot read ({err.strerror or err})") from None
    block = parse_block(buf, FORMAT, 1, at_eof)
    t = block.table
    out = Collected(rejects=block.rejects)
    if t.num_rows:
        as_text = lambda name: t[name].cast(pa.string())  # noqa: E731
        out.tables.append(
            plays(
                as_text("user"), t["timestamp"], as_text("artist"), as_text("track"), line=t["line"]
            )
        )
    return out.result(block.lines, piece)


def _read_names(path: Path, fmt: LineFormat) -> tuple[pa.Table, dict]:
    buf = path.read_bytes()
    block = parse_block(buf, fmt, 1, True)
    counts: dict[str, int] = {}
    for _, reason, _ in block.rejects:
        counts[reason] = counts.get(reason, 0) + 1
    return block.table, counts


def load_names(path: Path) -> pa.Table | None:
    """Track id -> artist and track names, from ``LFM-1b_tracks.txt`` (and
    ``LFM-1b_artists.txt`` for the artist's name); None without the tracks file.
    Lines that are not ``id \\t name \\t id`` are skipped and counted in the schema
    metadata (``skipped``)."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    if not (folder / TRACKS).is_file():
        return None
    tracks, skipped = _read_names(folder / TRACKS, TRACKS_FORMAT)
    artist_name = pa.nulls(tracks.num_rows, pa.string())
    if (folder / ARTISTS).is_file():
        artists, skipped_a = _read_names(folder / ARTISTS, ARTISTS_FORMAT)
        skipped |= {f"artists:{k}": v for k, v in skipped_a.items()}
        idx = pc.index_in(tracks["artist"], value_set=artists["artist"])
        artist_name = pc.take(artists["artist_name"], idx)
    if skipped:
        log(f"{folder}: name lines skipped: {skipped}")
    table = pa.table(
        {
            "track": tracks["track"].cast(pa.string()),
            "artist_name": artist_name,
            "track_name": tracks["track_name"],
        }
    )
    return table.replace_schema_metadata({"skipped": json.dumps(skipped)})
