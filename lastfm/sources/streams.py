"""Compressed streams, TAR archives and published checksums.

Nothing is unpacked to disk: a TAR is listed once (member name, data offset, size) and
a member is read by seeking to its data; ``.gz``, ``.zst`` and ``.bz2`` content is
decompressed in memory (a member) or as a stream (a top-level file). A stream that
cannot be decompressed (truncated, a bad frame or CRC) raises ``CorruptStream``,
which adapters turn into one ``corrupt_*`` record.

Checksums: a list in ``md5sum`` / ``sha256sum`` format (``HEX  NAME`` or ``HEX *NAME``;
the algorithm follows from the digest's length) names files by their base name; a
sidecar ``FILE.sha256`` / ``FILE.md5`` may hold the digest alone.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import re
import tarfile
import zlib
from pathlib import Path

from lastfm.common import PipelineError, log

ALGORITHMS = {32: "md5", 40: "sha1", 64: "sha256", 128: "sha512"}
_LINE = re.compile(r"^([0-9a-fA-F]{32,128})(?:\s+\*?(.+))?$")
TAR_BLOCK = 512


class CorruptStream(Exception):
    """Compressed content that cannot be read to its end."""


# ---------------------------------------------------------------- decompression


def _zstd(data: bytes) -> bytes:
    import zstandard

    out, rest = [], data
    while rest:
        dobj = zstandard.ZstdDecompressor().decompressobj()
        try:
            out.append(dobj.decompress(rest))
        except zstandard.ZstdError as err:
            raise CorruptStream(f"zstd: {err}") from None
        if not dobj.eof:
            raise CorruptStream("zstd: truncated frame")
        rest = dobj.unused_data
    return b"".join(out)


def decompress(name: str, data: bytes) -> bytes:
    """The content of ``data`` by its name's suffix (.gz, .zst, .bz2; else as is)."""
    try:
        if name.endswith(".gz"):
            return gzip.decompress(data)
        if name.endswith(".zst"):
            return _zstd(data)
        if name.endswith(".bz2"):
            return bz2.decompress(data)
    except (OSError, EOFError, zlib.error, ValueError) as err:
        raise CorruptStream(f"{name.rsplit('.', 1)[-1]}: {err}") from None
    return data


# ---------------------------------------------------------------- TAR archives


def list_tar(path: Path) -> tuple[list[tuple[str, int, int]], int | None, str]:
    """Regular members of a TAR as (name, data offset, size), and where listing broke
    down (the byte offset and why; None when the archive reads to its end).

    ``tarfile`` ends its listing quietly at a damaged header; a listing whose end is
    not followed by zeros only (the end-of-archive blocks) is reported as broken there.
    """
    members: list[tuple[str, int, int]] = []
    end = 0
    try:
        with tarfile.open(path, mode="r:") as tf:
            for m in tf:
                if m.isfile():
                    members.append((m.name, m.offset_data, m.size))
                end = m.offset_data + -(-m.size // TAR_BLOCK) * TAR_BLOCK
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        return members, end, f"{type(err).__name__}: {err}"
    with open(path, "rb") as fh:
        fh.seek(end)
        while chunk := fh.read(1 << 16):
            if chunk.strip(b"\0"):
                return members, end, "damaged header (data after the last readable member)"
    return members, None, ""


def read_member(path: Path, start: int, end: int) -> bytes:
    """The raw data ``[start, end)`` of a member; CorruptStream when the archive ends
    before it does."""
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    if len(data) != end - start:
        raise CorruptStream(f"archive ends inside the member ({len(data)} of {end - start} bytes)")
    return data


# ---------------------------------------------------------------- checksums


def read_checksums(path: Path) -> dict[str, str]:
    """Base name -> lower-case hex digest, from a list or a sidecar file."""
    out = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise PipelineError(f"{path}: cannot read the checksum list ({err.strerror})") from None
    for raw in text.splitlines():
        m = _LINE.match(raw.strip())
        if not m or len(m.group(1)) not in ALGORITHMS:
            continue
        name = m.group(2)
        if name is None:  # a sidecar: the digest of the file it is named after
            name = Path(path).name.rsplit(".", 1)[0]
        out[Path(name.strip()).name] = m.group(1).lower()
    if not out:
        raise PipelineError(f"{path}: no checksums found (expected 'HEX  NAME' lines)")
    return out


def file_digest(path: Path, algorithm: str, chunk: int = 1 << 22) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(files: list[Path], checksum_file: Path, required: bool = True) -> int:
    """Check each of ``files`` against the published digests; PipelineError (one line)
    on the first mismatch or, when ``required``, on a file the list does not name.
    Returns the number of files verified."""
    published = read_checksums(checksum_file)
    done = 0
    for f in files:
        want = published.get(Path(f).name)
        if want is None:
            if required:
                raise PipelineError(
                    f"{f}: not in the checksum list {checksum_file}; is it from this dataset?"
                )
            continue
        algorithm = ALGORITHMS[len(want)]
        got = file_digest(f, algorithm)
        if got != want:
            raise PipelineError(
                f"{f}: {algorithm} {got} differs from the published {want} "
                f"({checksum_file}); download it again"
            )
        done += 1
    if done:
        log(f"{done} file(s) match the published checksums in {checksum_file}")
    return done


def checksum_files_beside(folder: Path) -> list[Path]:
    """Checksum lists published beside the data: ``*sha256*`` / ``*md5*`` list files
    and ``FILE.sha256`` / ``FILE.md5`` sidecars."""
    out = []
    for p in sorted(Path(folder).iterdir()):
        name = p.name.lower()
        if p.is_file() and ("sha256" in name or "md5" in name) and p.stat().st_size < 1 << 24:
            out.append(p)
    return out


def verify_published(files: list[Path], folder: Path, given: str | None) -> None:
    """Verify ``files`` against ``given`` (a list named by an option) or, without one,
    against the lists found beside them (a file none names is then skipped)."""
    if given:
        verify(files, Path(given), required=True)
        return
    for lst in checksum_files_beside(folder):
        verify(files, lst, required=False)
