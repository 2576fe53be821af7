"""Exact parser of the Last.fm-1K plays TSV.

The file has six tab-separated fields per line, no header and no quoting:
``userid, timestamp, artist MBID, artist name, track MBID, track name``.
Every physical line (``\\n``-terminated) becomes a row or a reject.

``parse_file`` first tries one multithreaded ``pyarrow.csv`` pass over the
whole file (quoting off, strict timestamp format, UTF-8 checked, strings
dictionary-encoded) while a thread computes the MD5 and counts lines and tabs
per block. The pass is accepted only when rows plus wrong-field-count lines
equal the line count; those lines are then located in the few blocks whose tab
count does not balance, and handled one by one (``handle_lines``): a line with
more than six fields is repaired when only one reading makes both MBID columns
UUIDs or empty; everything else becomes a reject ``(line, reason, raw bytes)``.

Anything else (a malformed timestamp, a non-UTF-8 byte, a carriage return, an
empty user id, a missing final newline) falls back to ``parse_blocks``: ~32 MB
blocks, each parsed by pyarrow when clean, else split in ~1 MB pieces whose
suspect lines are located with numpy and handled by ``handle_lines``.

The result has dictionary-encoded string columns (a dictionary per chunk:
``preprocess.encode`` joins them), ``ts_s`` (int64 UTC seconds) and ``line``
(int32, the 1-based physical line number).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from lastfm.common import write_atomic

FIELDS = ["user", "timestamp", "artist_mbid", "artist_name", "track_mbid", "track_name"]
TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
BLOCK_BYTES = 32 << 20
READ_BLOCK = 64 << 20  # the whole-file pass: the reader's block (each with its own dictionaries)

_STRING_TYPES = {name: pa.string() for name in FIELDS}
_PARSE = dict(
    delimiter="\t",
    quote_char=False,
    escape_char=False,
    double_quote=False,
    newlines_in_values=False,
    ignore_empty_lines=False,
)


@dataclass
class ParseResult:
    table: pa.Table  # FIELDS (timestamp as ts_s int64) + line
    rejects: list[tuple[int, str, bytes]]  # (line, reason, raw line)
    lines: int  # physical lines read
    repaired: int = 0
    md5: str = ""
    slow_blocks: int = 0
    reject_counts: dict[str, int] = field(default_factory=dict)


def iter_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[bytes, bool]]:
    """Yield newline-aligned blocks; the flag is True for the file's last block."""
    with open(path, "rb") as fh:
        carry = b""
        while True:
            chunk = fh.read(block_bytes)
            if not chunk:
                if carry:
                    yield carry, True
                return
            cut = chunk.rfind(b"\n")
            if cut < 0:
                carry += chunk
                continue
            head = carry + chunk[: cut + 1] if carry else chunk[: cut + 1]
            carry = chunk[cut + 1 :]
            yield head, False


def sub_blocks(buf: bytes, size: int) -> Iterator[bytes]:
    """Split a block into newline-aligned pieces of about ``size`` bytes."""
    start = 0
    while start < len(buf):
        nl = buf.find(b"\n", start + size) if start + size < len(buf) else -1
        end = len(buf) if nl < 0 else nl + 1
        yield buf[start:end]
        start = end


@contextmanager
def _undecodable_rows_counted(into: list):
    """pyarrow decodes an invalid row's text as UTF-8 before calling the handler; on a
    non-UTF-8 row that fails inside pyarrow and Python prints an "Exception ignored"
    traceback. Count such rows in ``into`` instead (so the pass is not trusted) and
    print nothing."""
    previous = sys.unraisablehook

    def hook(unraisable):
        if isinstance(unraisable.exc_value, UnicodeDecodeError):
            into.append(None)
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _fast_parse(buf: bytes, n_lines: int) -> pa.Table | None:
    """Parse a clean block with strict types; None when anything is off."""
    invalid = []

    def on_invalid(row):
        invalid.append(row)
        return "skip"

    try:
        with _undecodable_rows_counted(invalid):
            table = pcsv.read_csv(
                pa.py_buffer(buf),
                read_options=pcsv.ReadOptions(column_names=FIELDS, block_size=1 << 22),
                parse_options=pcsv.ParseOptions(**_PARSE, invalid_row_handler=on_invalid),
                convert_options=pcsv.ConvertOptions(
                    column_types={**_STRING_TYPES, "timestamp": pa.timestamp("s")},
                    timestamp_parsers=[TS_FORMAT],
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                    check_utf8=True,
                ),
            )
    except pa.ArrowInvalid:
        return None
    if invalid or table.num_rows != n_lines:
        return None
    if pc.any(pc.equal(table["user"], "")).as_py():
        return None
    return table


def _line_bounds(buf: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start offset and end offset (exclusive, without the newline) of each line."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    ends = np.flatnonzero(arr == 10)
    if len(buf) and buf[-1:] != b"\n":
        ends = np.append(ends, len(buf))
    starts = np.concatenate([[0], ends[:-1] + 1])
    return starts, ends


def _suspect_lines(buf: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Boolean per line: wrong tab count, a carriage return, or invalid UTF-8."""
    arr = np.frombuffer(buf, dtype=np.uint8)
    line_of_pos = lambda pos: np.searchsorted(ends, pos, side="left")  # noqa: E731
    tabs = np.bincount(line_of_pos(np.flatnonzero(arr == 9)), minlength=len(ends))
    suspect = tabs != len(FIELDS) - 1
    suspect[line_of_pos(np.flatnonzero(arr == 13))] = True
    pos = 0
    while pos < len(buf):
        try:
            buf[pos:].decode("utf-8")
            break
        except UnicodeDecodeError as err:
            line = int(line_of_pos(pos + err.start))
            suspect[line] = True
            pos = int(ends[line]) + 1
    return suspect


def _is_mbid(value: str) -> bool:
    return value == "" or bool(UUID_RE.match(value))


def repair_fields(parts: list[str]) -> list[str] | None:
    """Rejoin a line split into more than six fields by tabs inside names.

    Extra tabs can only sit in the artist name (field 3) or the track name
    (field 5). Each split point is tried; the line is repaired when exactly one
    of them puts a UUID-or-empty value in the track MBID column (and the
    artist MBID column holds one too). Returns None when ambiguous or invalid.
    """
    extra = len(parts) - len(FIELDS)
    if extra <= 0 or not _is_mbid(parts[2]):
        return None
    fits = [k for k in range(extra + 1) if _is_mbid(parts[4 + k])]
    if len(fits) != 1:
        return None
    k = fits[0]
    return parts[:3] + ["\t".join(parts[3 : 4 + k]), parts[4 + k], "\t".join(parts[5 + k :])]


def _check_row(parts: list[str]) -> str | None:
    """Reason a six-field row is invalid, or None."""
    if parts[0] == "":
        return "empty_user"
    try:
        datetime.strptime(parts[1], TS_FORMAT)
    except ValueError:
        return "bad_timestamp"
    return None


def handle_lines(lines: list[tuple[int, bytes]], truncated_line: int | None = None):
    """Repair or reject suspect lines one by one.

    Returns (rows as [6 fields + line], rejects, number repaired);
    ``truncated_line`` is the number of a last line without its newline.
    """
    rows, rejects, repaired = [], [], 0
    for line_no, raw in lines:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            rejects.append((line_no, "non_utf8", raw))
            continue
        parts = text.split("\t")
        truncated = line_no == truncated_line
        if len(parts) < len(FIELDS):
            reason = (
                "truncated_last_line"
                if truncated
                else ("empty_line" if text == "" else f"too_few_fields_{len(parts)}")
            )
            rejects.append((line_no, reason, raw))
            continue
        if len(parts) > len(FIELDS):
            fixed = repair_fields(parts)
            if fixed is None:
                rejects.append((line_no, f"ambiguous_{len(parts)}_fields", raw))
                continue
            parts, repaired = fixed, repaired + 1
        bad = _check_row(parts)
        if bad:
            rejects.append((line_no, "truncated_last_line" if truncated else bad, raw))
            continue
        rows.append(parts + [line_no])
    return rows, rejects, repaired


def rows_table(rows: list[list]) -> pa.Table:
    """Table (string fields, timestamp, line) of rows from ``handle_lines``."""
    cols = list(zip(*rows))
    extra = pa.table(
        {
            **{n: pa.array(cols[j], pa.string()) for j, n in enumerate(FIELDS)},
            "line": pa.array(cols[-1], pa.int64()),
        }
    )
    return extra.set_column(
        1, "timestamp", pc.strptime(extra["timestamp"], format=TS_FORMAT, unit="s")
    )


def _slow_parse(buf: bytes, first_line: int, last_block: bool):
    """Parse a block that failed the fast path, line by line where needed."""
    starts, ends = _line_bounds(buf)
    suspect = _suspect_lines(buf, starts, ends)
    good = np.flatnonzero(~suspect)
    rejects = []
    # Clean lines: parse with pyarrow (strings), then validate user and time.
    if len(good):
        bad = np.flatnonzero(suspect)
        cuts = np.concatenate([[0], bad + 1])  # good runs start after each bad line
        stops = np.concatenate([bad, [len(ends)]])  # ... and stop before the next one
        pieces = [buf[starts[c] : ends[e - 1]] + b"\n" for c, e in zip(cuts, stops) if e > c]
        clean = b"".join(pieces)
        table = pcsv.read_csv(
            pa.py_buffer(clean),
            read_options=pcsv.ReadOptions(column_names=FIELDS, block_size=1 << 22),
            parse_options=pcsv.ParseOptions(**_PARSE),
            convert_options=pcsv.ConvertOptions(
                column_types=_STRING_TYPES, strings_can_be_null=False
            ),
        )
        ts = pc.strptime(table["timestamp"], format=TS_FORMAT, unit="s", error_is_null=True)
        ok = pc.and_(pc.is_valid(ts), pc.not_equal(table["user"], ""))
        ok_np = ok.to_numpy(zero_copy_only=False)
        for r in np.flatnonzero(~ok_np):
            parts = [table[c][int(r)].as_py() for c in FIELDS]
            reason = "empty_user" if parts[0] == "" else "bad_timestamp"
            rejects.append((first_line + int(good[r]), reason, "\t".join(parts).encode()))
        table = table.set_column(1, "timestamp", ts).filter(ok)
        table = table.append_column("line", pa.array(first_line + good[ok_np], pa.int64()))
    else:
        table = None
    # Suspect lines, one by one.
    truncated = (first_line + len(ends) - 1) if last_block and not buf.endswith(b"\n") else None
    lines = [(first_line + int(i), buf[starts[i] : ends[i]]) for i in np.flatnonzero(suspect)]
    rows, rej, repaired = handle_lines(lines, truncated)
    rejects += rej
    if rows:
        extra = rows_table(rows)
        table = extra if table is None else pa.concat_tables([table, extra])
    return table, rejects, repaired, len(ends)


STRING_COLUMNS = ["user", "artist_mbid", "artist_name", "track_mbid", "track_name"]
RETRY_BYTES = 1 << 20


def _finish(table: pa.Table) -> pa.Table:
    """Typed block: ts_s int64 seconds, line int32, strings dictionary-encoded."""
    table = table.set_column(1, "ts_s", table["timestamp"].cast(pa.int64()))
    table = table.set_column(
        table.schema.get_field_index("line"), "line", table["line"].cast(pa.int32())
    )
    for name in STRING_COLUMNS:
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.dictionary_encode(table[name]))
    return table


def parse_blocks(path: Path, block_bytes: int = BLOCK_BYTES, with_md5: bool = True) -> ParseResult:
    """The exact block-by-block parser (used when the whole-file pass is not exact).

    Returns one table whose string columns are dictionary-encoded, a dictionary
    per block (blocks are encoded as they are parsed so that repeated strings are
    held once a block; ``preprocess.encode`` joins the dictionaries).
    """
    import queue
    import threading

    _check_exists(path)
    md5 = hashlib.md5() if with_md5 else None
    feed: queue.Queue = queue.Queue(maxsize=4)
    hasher = None
    if md5 is not None:  # hashing releases the GIL: overlap it with parsing

        def _hash():
            while (blk := feed.get()) is not None:
                md5.update(blk)

        hasher = threading.Thread(target=_hash, daemon=True)
        hasher.start()
    tables, rejects = [], []
    line0, repaired, slow = 1, 0, 0

    def parse_piece(piece: bytes, first: int, last: bool):
        nonlocal repaired, slow
        n = piece.count(b"\n") + (0 if piece.endswith(b"\n") else 1)
        table = _fast_parse(piece, n) if piece.endswith(b"\n") else None
        if table is not None:
            table = table.append_column(
                "line", pa.array(np.arange(first, first + n, dtype=np.int64))
            )
        else:
            slow += 1
            table, rej, rep, n = _slow_parse(piece, first, last)
            rejects.extend(rej)
            repaired += rep
        if table is not None and table.num_rows:
            tables.append(_finish(table))
        return n

    try:
        for buf, last in iter_blocks(path, block_bytes):
            if hasher is not None:
                feed.put(buf)
            n_lines = buf.count(b"\n") + (0 if buf.endswith(b"\n") else 1)
            table = _fast_parse(buf, n_lines) if buf.endswith(b"\n") else None
            if table is not None:
                table = table.append_column(
                    "line", pa.array(np.arange(line0, line0 + n_lines, dtype=np.int64))
                )
                tables.append(_finish(table))
                line0 += n_lines
                continue
            # Something is off in this block: retry in ~1 MB pieces, slow path where needed.
            pieces = list(sub_blocks(buf, RETRY_BYTES)) if len(buf) > RETRY_BYTES else [buf]
            for k, piece in enumerate(pieces):
                line0 += parse_piece(piece, line0, last and k == len(pieces) - 1)
    finally:
        if hasher is not None:
            feed.put(None)
            hasher.join()
    if not tables:
        fields = [pa.field(n, pa.dictionary(pa.int32(), pa.string())) for n in FIELDS]
        fields[1] = pa.field("ts_s", pa.int64())
        table = pa.schema(fields + [pa.field("line", pa.int32())]).empty_table()
    else:
        table = pa.concat_tables(tables)
    return _result(table, rejects, line0 - 1, repaired, md5, slow)


def _result(
    table: pa.Table, rejects: list, lines: int, repaired: int, md5, slow_blocks: int
) -> ParseResult:
    counts: dict[str, int] = {}
    for _, reason, _ in rejects:
        counts[reason] = counts.get(reason, 0) + 1
    return ParseResult(
        table=table,
        rejects=sorted(rejects),
        lines=lines,
        repaired=repaired,
        md5=md5.hexdigest() if md5 else "",
        slow_blocks=slow_blocks,
        reject_counts=counts,
    )


def escape_line(raw: bytes) -> str:
    """One-line, tab-free text of a raw line: backslash, tab and CR escaped as in
    Python literals, and each byte that is not UTF-8 as ``\\xNN``."""
    raw = raw.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\r", b"\\r")
    return raw.decode("utf-8", "backslashreplace")


def write_rejects(path: Path, rejects: list[tuple[int, str, bytes]]) -> None:
    """TSV ``line, reason, text`` (text escaped by ``escape_line``), written atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("line\treason\ttext\n")
            for line, reason, raw in rejects:
                fh.write(f"{line}\t{reason}\t{escape_line(raw)}\n")

    write_atomic(path, write)


def _check_exists(path: Path) -> None:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found")
    if Path(path).stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes)")


class _Scan:
    """One pass over the file in a thread: MD5, and per newline-aligned block its
    byte range, first line number, line count and tab count."""

    def __init__(self, path: Path, with_md5: bool, block: int = 16 << 20):
        import threading

        self.path, self.block = path, block
        self.md5 = hashlib.md5() if with_md5 else None
        self.lines, self.ends_with_newline, self.error = 0, True, None
        self.blocks: list[tuple[int, int, int, int, int]] = []  # start, end, line0, lines, tabs
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            buf = bytearray(self.block * 2)
            view = memoryview(buf)
            carry, offset = 0, 0
            with open(self.path, "rb") as fh:
                while True:
                    n = fh.readinto(view[carry : carry + self.block])
                    total = carry + n
                    if self.md5 is not None and n:
                        self.md5.update(view[carry:total])
                    if total == 0:
                        break
                    cut = buf.rfind(b"\n", 0, total) + 1 if n else total
                    if cut == 0:  # no newline yet: keep reading
                        if n == 0:
                            cut = total
                        else:
                            carry = total
                            continue
                    arr = np.frombuffer(buf, np.uint8, count=cut)
                    lines = int(np.count_nonzero(arr == 10))
                    if n == 0 and buf[cut - 1 : cut] != b"\n":
                        lines += 1
                        self.ends_with_newline = False
                    self.blocks.append(
                        (
                            offset,
                            offset + cut,
                            self.lines + 1,
                            lines,
                            int(np.count_nonzero(arr == 9)),
                        )
                    )
                    self.lines += lines
                    offset += cut
                    carry = total - cut
                    view[:carry] = view[cut:total]
                    if n == 0:
                        break
        except Exception as err:  # re-raised by join()
            self.error = err

    def join(self) -> _Scan:
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self


def _locate_wrong_field_counts(path: Path, blocks) -> list[tuple[int, bytes]]:
    """(line number, raw line) of every line whose tab count is not 5, reading only
    the blocks whose tab count does not balance (5 per line)."""
    found = []
    with open(path, "rb") as fh:
        for start, end, line0, n_lines, tabs in blocks:
            if tabs == (len(FIELDS) - 1) * n_lines:
                continue
            fh.seek(start)
            buf = fh.read(end - start)
            arr = np.frombuffer(buf, np.uint8)
            starts, ends = _line_bounds(buf)
            per_line = np.bincount(
                np.searchsorted(ends, np.flatnonzero(arr == 9)), minlength=len(ends)
            )
            for i in np.flatnonzero(per_line != len(FIELDS) - 1):
                found.append((line0 + int(i), buf[starts[i] : ends[i]]))
    return found


_DICT = pa.dictionary(pa.int32(), pa.string())


def parse_file(
    path: Path, block_bytes: int = BLOCK_BYTES, with_md5: bool = True, force_blocks: bool = False
) -> ParseResult:
    """Parse ``path`` exactly; see the module docstring.

    Fast path: one multithreaded ``pyarrow.csv`` pass over the whole file
    (strict timestamp, UTF-8 check, strings dictionary-encoded), while a
    thread computes the MD5 and counts lines. It is accepted when rows plus
    wrong-field-count lines equal the line count and no user is empty; the
    wrong-field-count lines are then located (a numpy pass) and repaired or
    rejected. Anything else (a bad timestamp, a non-UTF-8 byte, a carriage
    return, a missing final newline) falls back to ``parse_blocks``.
    """
    _check_exists(path)
    if force_blocks:
        return parse_blocks(path, block_bytes, with_md5)
    scan = _Scan(Path(path), with_md5)
    invalid = []

    def on_invalid(row):
        invalid.append(row.text)
        return "skip"

    types = {n: _DICT for n in FIELDS}
    types["timestamp"] = pa.timestamp("s")
    undecodable: list = []
    try:
        with _undecodable_rows_counted(undecodable):
            table = pcsv.read_csv(
                path,
                read_options=pcsv.ReadOptions(column_names=FIELDS, block_size=READ_BLOCK),
                parse_options=pcsv.ParseOptions(**_PARSE, invalid_row_handler=on_invalid),
                convert_options=pcsv.ConvertOptions(
                    column_types=types,
                    timestamp_parsers=[TS_FORMAT],
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                    check_utf8=True,
                ),
            )
    except pa.ArrowInvalid:
        table = None
    scan.join()
    exact = (
        table is not None
        and not undecodable
        and scan.ends_with_newline
        and table.num_rows + len(invalid) == scan.lines
    )
    if exact:  # an empty user id (each chunk's dictionary holds only values it uses)
        exact = not any(pc.any(pc.equal(c.dictionary, "")).as_py() for c in table["user"].chunks)
    located: list[tuple[int, bytes]] = []
    if exact and invalid:
        located = _locate_wrong_field_counts(Path(path), scan.blocks)
        exact = len(located) == len(invalid)
    if not exact:
        return parse_blocks(path, block_bytes, with_md5)
    lines = np.arange(1, scan.lines + 1, dtype=np.int32)
    if located:
        lines = np.delete(lines, np.array([n for n, _ in located]) - 1)
    table = table.append_column("line", pa.array(lines))
    table = table.set_column(1, "ts_s", table["timestamp"].cast(pa.int64()))
    rows, rejects, repaired = handle_lines(located)
    parts = [table]
    if rows:
        extra = _finish(rows_table(rows))
        parts.append(extra)
    return _result(pa.concat_tables(parts), rejects, scan.lines, repaired, scan.md5, 0)
