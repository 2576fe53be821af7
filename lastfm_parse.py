"""Exact, block-parallel parser of the Last.fm-1K plays TSV.

The file has six tab-separated fields per line, no header and no quoting:
``userid, timestamp, artist MBID, artist name, track MBID, track name``.
Every physical line (``\\n``-terminated) becomes a row or a reject:

- fast path: each ~32 MB block is parsed by ``pyarrow.csv`` with quoting off
  and strict types; it is accepted only when it yields exactly one valid row
  per line;
- slow path (a block with any problem): lines with a wrong field count, a
  ``\\r`` or a non-UTF-8 byte are located with numpy / ``bytes.decode``, the
  rest is parsed by pyarrow again, and the located lines are handled one by
  one: a line with more than six fields is repaired when only one reading
  makes both MBID columns UUIDs or empty; everything else becomes a reject
  ``(line, reason, text)``.

The result has string columns plus ``ts_s`` (int64 UTC seconds) and ``line``
(1-based physical line number of the row in the input file).
"""
from __future__ import annotations

import hashlib
import re
from datetime import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

FIELDS = ["user", "timestamp", "artist_mbid", "artist_name", "track_mbid", "track_name"]
TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
BLOCK_BYTES = 32 << 20

_STRING_TYPES = {name: pa.string() for name in FIELDS}
_PARSE = dict(delimiter="\t", quote_char=False, escape_char=False, double_quote=False,
              newlines_in_values=False, ignore_empty_lines=False)


@dataclass
class ParseResult:
    table: pa.Table                      # FIELDS (timestamp as ts_s int64) + line
    rejects: list[tuple[int, str, bytes]]  # (line, reason, raw line)
    lines: int                           # physical lines read
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
            buf = carry + chunk
            cut = buf.rfind(b"\n")
            if cut < 0:
                carry = buf
                continue
            carry = buf[cut + 1:]
            yield buf[:cut + 1], False


def _fast_parse(buf: bytes, n_lines: int) -> pa.Table | None:
    """Parse a clean block with strict types; None when anything is off."""
    invalid = []

    def on_invalid(row):
        invalid.append(row)
        return "skip"

    try:
        table = pcsv.read_csv(
            pa.py_buffer(buf),
            read_options=pcsv.ReadOptions(column_names=FIELDS, block_size=1 << 22),
            parse_options=pcsv.ParseOptions(**_PARSE, invalid_row_handler=on_invalid),
            convert_options=pcsv.ConvertOptions(
                column_types={**_STRING_TYPES, "timestamp": pa.timestamp("s")},
                timestamp_parsers=[TS_FORMAT], strings_can_be_null=False,
                quoted_strings_can_be_null=False, check_utf8=True))
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
    return parts[:3] + ["\t".join(parts[3:4 + k]), parts[4 + k], "\t".join(parts[5 + k:])]


def _check_row(parts: list[str]) -> str | None:
    """Reason a six-field row is invalid, or None."""
    if parts[0] == "":
        return "empty_user"
    try:
        datetime.strptime(parts[1], TS_FORMAT)
    except ValueError:
        return "bad_timestamp"
    return None


def _slow_parse(buf: bytes, first_line: int, last_block: bool):
    """Parse a block that failed the fast path, line by line where needed."""
    starts, ends = _line_bounds(buf)
    suspect = _suspect_lines(buf, starts, ends)
    good = np.flatnonzero(~suspect)
    rejects, rows, repaired = [], [], 0
    # Clean lines: parse with pyarrow (strings), then validate user and time.
    if len(good):
        pieces, run_start = [], None
        for i in range(len(ends)):
            if not suspect[i] and run_start is None:
                run_start = i
            if (suspect[i] or i == len(ends) - 1) and run_start is not None:
                stop = i if suspect[i] else i + 1
                pieces.append(buf[starts[run_start]:ends[stop - 1]] + b"\n")
                run_start = None
        clean = b"".join(pieces)
        table = pcsv.read_csv(
            pa.py_buffer(clean),
            read_options=pcsv.ReadOptions(column_names=FIELDS, block_size=1 << 22),
            parse_options=pcsv.ParseOptions(**_PARSE),
            convert_options=pcsv.ConvertOptions(column_types=_STRING_TYPES,
                                                strings_can_be_null=False))
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
    for i in np.flatnonzero(suspect):
        raw = buf[starts[i]:ends[i]]
        line_no = first_line + int(i)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            rejects.append((line_no, "non_utf8", raw))
            continue
        parts = text.split("\t")
        truncated = last_block and i == len(ends) - 1 and not buf.endswith(b"\n")
        if len(parts) < len(FIELDS):
            reason = "truncated_last_line" if truncated else (
                "empty_line" if text == "" else f"too_few_fields_{len(parts)}")
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
    if rows:
        cols = list(zip(*rows))
        extra = pa.table({**{n: pa.array(cols[j], pa.string()) for j, n in enumerate(FIELDS)},
                          "line": pa.array(cols[-1], pa.int64())})
        extra = extra.set_column(1, "timestamp", pc.strptime(
            extra["timestamp"], format=TS_FORMAT, unit="s"))
        table = extra if table is None else pa.concat_tables([table, extra])
    return table, rejects, repaired, len(ends)


def parse_file(path: Path, block_bytes: int = BLOCK_BYTES, with_md5: bool = True) -> ParseResult:
    """Parse ``path`` exactly; see the module docstring."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes)")
    md5 = hashlib.md5() if with_md5 else None
    tables, rejects = [], []
    line0, repaired, slow = 1, 0, 0
    for buf, last in iter_blocks(path, block_bytes):
        if md5 is not None:
            md5.update(buf)
        n_lines = buf.count(b"\n") + (0 if buf.endswith(b"\n") else 1)
        table = _fast_parse(buf, n_lines) if buf.endswith(b"\n") else None
        if table is not None:
            table = table.append_column(
                "line", pa.array(np.arange(line0, line0 + n_lines, dtype=np.int64)))
        else:
            slow += 1
            table, rej, rep, n_lines = _slow_parse(buf, line0, last)
            rejects += rej
            repaired += rep
        if table is not None and table.num_rows:
            ts = table["timestamp"].cast(pa.int64())
            tables.append(table.set_column(1, "ts_s", ts))
        line0 += n_lines
    if not tables:
        schema = pa.schema([(n, pa.string()) for n in FIELDS] + [("line", pa.int64())])
        schema = schema.set(1, pa.field("ts_s", pa.int64()))
        table = schema.empty_table()
    else:
        table = pa.concat_tables(tables)
    counts: dict[str, int] = {}
    for _, reason, _ in rejects:
        counts[reason] = counts.get(reason, 0) + 1
    return ParseResult(table=table, rejects=sorted(rejects), lines=line0 - 1,
                       repaired=repaired, md5=md5.hexdigest() if md5 else "",
                       slow_blocks=slow, reject_counts=counts)


def escape_line(raw: bytes) -> str:
    """One-line, tab-free text of a raw line: backslash, tab and CR escaped as in
    Python literals, and each byte that is not UTF-8 as ``\\xNN``."""
    raw = raw.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\r", b"\\r")
    return raw.decode("utf-8", "backslashreplace")


def write_rejects(path: Path, rejects: list[tuple[int, str, bytes]]) -> None:
    """TSV ``line, reason, text`` (text escaped by ``escape_line``)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("line\treason\ttext\n")
        for line, reason, raw in rejects:
            fh.write(f"{line}\t{reason}\t{escape_line(raw)}\n")
