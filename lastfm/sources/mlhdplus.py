"""MLHD+ (MetaBrainz, 2023): the MLHD with MBIDs cleaned, as 16 TARs of zstd logs.

Confirmed from MetaBrainz's own importer (metabrainz/listenbrainz-server,
``listenbrainz_spark/mlhd/download.py``): the archives are
``mlhdplus-complete-{0..f}.tar``; their members are ``*.txt.zst`` files, one per user,
in folders inside the TAR, the user id being the file name up to its first dot; the
files "are tab separated and do not have a header row", columns ``listened_at,
artist_credit_mbids, release_mbid, recording_mbid``, ``listened_at`` converted with
``to_timestamp`` (unix seconds) and ``artist_credit_mbids`` split on commas. Users'
notes add that the zstd frames carry no content size (decompressed as a stream here).
Not confirmed: the folder names inside the TARs (any depth is read), whether an MBID
may be empty (allowed), a published checksum file (``--checksums`` or a ``*sha256*`` /
``*md5*`` list beside the TARs is verified when present).

``artist`` is the first credited artist MBID, ``track`` the recording MBID.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from lastfm.sources import peruser
from lastfm.sources.base import Piece, PieceResult, SourceOptions, empty_or_text, plays
from lastfm.sources.streams import verify_published
from lastfm.sources.textlines import UUID, LineFormat

NEWEST_FIRST = False
SUFFIXES = (".txt.zst",)
FORMAT = LineFormat(
    names=("listened_at", "artist_credit_mbids", "release_mbid", "recording_mbid"),
    ints=frozenset(("listened_at",)),
    patterns=(
        ("artist_credit_mbids", f"(?:{UUID}(?:,{UUID})*)?"),
        ("release_mbid", f"(?:{UUID})?"),
        ("recording_mbid", f"(?:{UUID})?"),
    ),
)


def find_pieces(path: Path, opts: SourceOptions, target_bytes: int) -> list[Piece]:
    tars = peruser.tars_in(path, "mlhdplus-complete-*.tar", "the MLHD+ layout")
    verify_published(tars, tars[0].parent, opts.checksums)
    return peruser.tar_pieces(tars, SUFFIXES)


def _to_plays(t: pa.Table, user: str) -> pa.Table:
    first = pc.utf8_slice_codeunits(t["artist_credit_mbids"], 0, 36)
    track = empty_or_text(t["recording_mbid"])
    return plays(user, t["listened_at"], empty_or_text(first), track, line=t["line"])


def read_piece(piece: Piece, opts: SourceOptions) -> PieceResult:
    return peruser.read_tar_piece(piece, FORMAT, _to_plays)
