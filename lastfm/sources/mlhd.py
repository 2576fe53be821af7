"""MLHD, the Music Listening Histories Dataset (Vigliensoni & Fujinaga, ISMIR 2017).

Confirmed from the dataset's page (ddmal.music.mcgill.ca/research/
The_Music_Listening_Histories_Dataset_(MLHD)): one file per user (named by the user's
anonymised UUID), one log per line, each log the quadruple ``timestamp, artist-MBID,
release-MBID, recording-MBID``; TAR files of about 1K users each (576 TARs
``MLHD_000.tar`` ...; ``MLHD_386.tar`` holds no history); "a file with sha256 hashes
per each of the 576 TAR files is provided". From users' code (not the page): members
are gzip files ``<uuid>.txt.gz`` (e.g. ``user_uuid = file_i[:-7]`` then
``gzip.open``; paths like ``mlhd/07/07beee31-....txt.gz``), tab-separated, no header,
the timestamp in unix seconds, an unknown MBID left empty. Not confirmed: the name of
the published SHA-256 list; member paths inside a TAR (any depth is read).

Checksums: with ``--checksums FILE`` every TAR must be listed there and match; without
it, any ``*sha256*`` / ``*md5*`` list beside the TARs is used for the TARs it names.
Members ``.txt.gz`` and plain ``.txt`` are read. ``artist`` is the artist MBID,
``track`` the recording MBID (empty: null); MLHD has no names.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from lastfm.sources import peruser
from lastfm.sources.base import Piece, PieceResult, SourceOptions, empty_or_text, plays
from lastfm.sources.streams import verify_published
from lastfm.sources.textlines import UUID, LineFormat

NEWEST_FIRST = False
SUFFIXES = (".txt.gz", ".txt")
MBID_OR_EMPTY = f"(?:{UUID})?"
FORMAT = LineFormat(
    names=("timestamp", "artist_mbid", "release_mbid", "recording_mbid"),
    ints=frozenset(("timestamp",)),
    patterns=tuple((n, MBID_OR_EMPTY) for n in ("artist_mbid", "release_mbid", "recording_mbid")),
)


def find_pieces(path: Path, opts: SourceOptions, target_bytes: int) -> list[Piece]:
    tars = peruser.tars_in(path, "*.tar", "the MLHD layout: MLHD_###.tar")
    verify_published(tars, tars[0].parent, opts.checksums)
    return peruser.tar_pieces(tars, SUFFIXES)


def _to_plays(t: pa.Table, user: str) -> pa.Table:
    artist, track = empty_or_text(t["artist_mbid"]), empty_or_text(t["recording_mbid"])
    return plays(user, t["timestamp"], artist, track, line=t["line"])


def read_piece(piece: Piece, opts: SourceOptions) -> PieceResult:
    return peruser.read_tar_piece(piece, FORMAT, _to_plays)
