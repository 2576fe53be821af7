"""Plain-text logs: byte-range pieces and an exact parser of delimited lines.

Byte ranges: a file is cut every ``target_bytes``; a piece ``[start, end)`` owns every
line whose first byte lies in ``[start, end)`` (a line starts at byte 0 or right after a
newline), so the pieces of a file partition its lines whatever the cuts. (fsspec's
``read_block``, under ``dask.bytes.read_bytes``, shifts this by one byte: it owns the
lines starting in ``(start, end]``; both partition the lines.)

Parser (``parse_block``): every physical line of a block becomes a row or a reject
``(line, reason, raw bytes)``. One ``pyarrow.csv`` pass reads the block as strings
(quoting off unless the format is quoted, UTF-8 checked); when it cannot (a wrong
field count, a byte that is not UTF-8, a line without its newline at the end of the
file) the block is retried in ~1 MB sub-blocks and a failing sub-block is split line
by line in Python. Then the values of every row are checked the same way, vectorised,
whichever path read them: integers ``-?[0-9]{1,18}``, times by ``strptime`` (Arrow's),
non-empty fields, full-match patterns, ISO 8601 texts. A CRLF line ending is read
as a newline (as pyarrow does); a lone CR sends its block down the line-by-line path,
where it stays inside its line. Reasons: ``non_utf8``, ``empty_line``,
``too_few_fields_N``, ``too_many_fields_N``, ``bad_quoting``, ``empty_<field>``,
``bad_<field>``, and ``truncated_last_line`` for a rejected last line without newline.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from lastfm.common import PipelineError
from lastfm.parse import RETRY_BYTES, _line_bounds, _undecodable_rows_counted, sub_blocks

INT_PATTERN = r"-?[0-9]{1,18}"  # so no "+", blank or 19-digit value reaches the cast
UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"


@dataclass(frozen=True)
class LineFormat:
    """The fields of a line (file order) and what each must hold.

    Output columns: ``ints`` as int64, ``times`` (field -> strptime format, UTC) as
    int64 seconds, every other field as a string.
    """

    names: tuple[str, ...]
    ints: frozenset[str] = frozenset()
    times: tuple[tuple[str, str], ...] = ()
    nonempty: frozenset[str] = frozenset()
    patterns: tuple[tuple[str, str], ...] = ()
    isos: frozenset[str] = frozenset()  # ISO 8601 text (pandas' parser; no zone: UTC)
    delimiter: str = "\t"
    quoted: bool = False

    def checks(self) -> list[tuple[str, str, object]]:
        """(field, kind, argument) in file order: the first failing one names a reject."""
        times, patterns = dict(self.times), dict(self.patterns)
        out = []
        for name in self.names:
            if name in self.nonempty:
                out.append((name, "nonempty", None))
            if name in self.ints:
                out.append((name, "int", None))
            if name in times:
                out.append((name, "time", times[name]))
            if name in patterns:
                out.append((name, "pattern", patterns[name]))
            if name in self.isos:
                out.append((name, "iso", None))
        return out


# ---------------------------------------------------------------- byte ranges


def byte_ranges(size: int, target_bytes: int) -> list[tuple[int, int]]:
    """Cuts of a ``size``-byte file every ``target_bytes`` (the last piece ends at -1)."""
    target = max(1, int(target_bytes))
    starts = list(range(0, max(size, 1), target))
    return [(s, starts[i + 1] if i + 1 < len(starts) else -1) for i, s in enumerate(starts)]


def _newline_at_or_after(fh, pos: int, size: int) -> int | None:
    """Offset of the first newline at or after ``pos``; None when there is none."""
    fh.seek(pos)
    while pos < size:
        chunk = fh.read(1 << 16)
        if not chunk:
            return None
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + i
        pos += len(chunk)
    return None


def read_range(path, start: int, end: int) -> tuple[bytes, bool]:
    """The bytes of the lines whose first byte lies in ``[start, end)`` (``end`` -1: to
    the end) and whether they reach the end of the file."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        end = size if end < 0 or end > size else end
        if start >= end:
            return b"", True
        first = 0
        if start > 0:
            nl = _newline_at_or_after(fh, start - 1, size)
            if nl is None or nl + 1 >= end:
                return b"", nl is None or nl + 1 >= size
            first = nl + 1
        nl = _newline_at_or_after(fh, end - 1, size)
        stop = size if nl is None else nl + 1
        fh.seek(first)
        return fh.read(stop - first), stop >= size


def first_line(path) -> bytes:
    """The file's first line, without its newline."""
    try:
        with open(path, "rb") as fh:
            return fh.readline().rstrip(b"\n")
    except OSError as err:
        raise PipelineError(f"{path}: cannot read ({err.strerror or err})") from None


def count_lines(buf: bytes) -> int:
    return buf.count(b"\n") + (1 if buf and not buf.endswith(b"\n") else 0)


def newline_blocks(stream, block_bytes: int = 16 << 20) -> Iterator[bytes]:
    """Newline-aligned blocks of about ``block_bytes`` from a binary stream (the last
    may lack its newline). When reading fails, the complete lines read so far are
    yielded first, then the error is raised."""
    buf = bytearray()
    read = getattr(stream, "read1", stream.read)  # read1: what one raw read gives, kept
    while True:
        try:
            chunk = read(max(1, block_bytes - len(buf)))
        except Exception:
            cut = buf.rfind(b"\n")
            if cut >= 0:
                yield bytes(buf[: cut + 1])
            raise
        if not chunk:
            if buf:
                yield bytes(buf)
            return
        buf += chunk
        if len(buf) < block_bytes:
            continue
        cut = buf.rfind(b"\n")
        if cut < 0:
            continue
        yield bytes(buf[: cut + 1])
        del buf[: cut + 1]


# ---------------------------------------------------------------- the parser


def _read_strings(buf: bytes, fmt: LineFormat, n_lines: int) -> pa.Table | None:
    """All fields as strings in one pyarrow pass; None unless every line is a row."""
    invalid: list = []

    def on_invalid(row):
        invalid.append(row)
        return "skip"

    try:
        with _undecodable_rows_counted(invalid):
            table = pcsv.read_csv(
                pa.py_buffer(buf),
                read_options=pcsv.ReadOptions(column_names=list(fmt.names), block_size=1 << 22),
                parse_options=pcsv.ParseOptions(
                    delimiter=fmt.delimiter,
                    quote_char='"' if fmt.quoted else False,
                    double_quote=fmt.quoted,
                    escape_char=False,
                    newlines_in_values=False,
                    ignore_empty_lines=False,
                    invalid_row_handler=on_invalid,
                ),
                convert_options=pcsv.ConvertOptions(
                    column_types={n: pa.string() for n in fmt.names},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                    check_utf8=True,
                ),
            )
    except pa.ArrowInvalid:
        return None
    if invalid or table.num_rows != n_lines:
        return None
    return table


def _split(text: str, fmt: LineFormat) -> list[str]:
    if not fmt.quoted:
        return text.split(fmt.delimiter)
    return next(csv.reader([text], delimiter=fmt.delimiter, quotechar='"', strict=True))


def _lines_one_by_one(buf: bytes, fmt: LineFormat, first: int):
    """(rows as columns of strings, their line numbers, rejects) of a sub-block that
    pyarrow could not read, line by line."""
    starts, ends = _line_bounds(buf)
    cols: list[list[str]] = [[] for _ in fmt.names]
    lines, rejects = [], []
    for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        raw = buf[s:e]
        line = first + i
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            rejects.append((line, "non_utf8", raw))
            continue
        if text.endswith("\r"):  # CRLF: pyarrow ends the line before the CR too
            text = text[:-1]
        if text == "":
            rejects.append((line, "empty_line", raw))
            continue
        try:
            parts = _split(text, fmt)
        except csv.Error:
            rejects.append((line, "bad_quoting", raw))
            continue
        if len(parts) != len(fmt.names):
            few = len(parts) < len(fmt.names)
            rejects.append((line, f"too_{'few' if few else 'many'}_fields_{len(parts)}", raw))
            continue
        for col, value in zip(cols, parts):
            col.append(value)
        lines.append(line)
    table = pa.table({n: pa.array(c, pa.string()) for n, c in zip(fmt.names, cols)})
    return table, np.array(lines, dtype=np.int64), rejects


def _anchored(pattern: str) -> str:
    return f"^(?:{pattern})$"


def _validate(table: pa.Table, fmt: LineFormat) -> tuple[pa.Table, np.ndarray]:
    """Typed columns (ints, times) and per row the first failing check (-1: none)."""
    n = table.num_rows
    fail = np.full(n, -1, dtype=np.int64)
    out = {}
    for k, (name, kind, arg) in enumerate(fmt.checks()):
        col = table[name]
        if kind == "nonempty":
            bad = pc.equal(col, "")
        elif kind == "int":
            bad = pc.invert(pc.match_substring_regex(col, _anchored(INT_PATTERN)))
        elif kind == "time":
            ts = pc.strptime(col, format=arg, unit="s", error_is_null=True)
            out[name] = ts.cast(pa.int64())
            bad = pc.is_null(ts)
        elif kind == "iso":
            seconds, bad = iso_seconds(col)
            out[name] = seconds
        else:
            bad = pc.invert(pc.match_substring_regex(col, _anchored(arg)))
        bad_np = np.asarray(bad.to_numpy(zero_copy_only=False), dtype=bool)
        fail[(fail < 0) & bad_np] = k
    ok = fail < 0
    for name in fmt.ints:
        col = table[name]
        if ok.all():
            out[name] = col.cast(pa.int64())
        else:  # a bad value would make the cast fail: cast the good ones only
            values = np.zeros(n, dtype=np.int64)
            good = np.flatnonzero(ok)
            if len(good):
                values[good] = col.take(pa.array(good)).cast(pa.int64()).to_numpy()
            out[name] = pa.array(values)
    for name, values in out.items():
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return table, fail


def iso_seconds(col) -> tuple[pa.Array, pa.Array]:
    """UTC seconds (floored) of ISO 8601 texts, and which could not be read; a text
    without a zone is taken as UTC. Each value is read on its own (pandas'
    ``format="ISO8601"``), so a value's fate never depends on its neighbours."""
    import pandas as pd

    values = col.to_pylist() if hasattr(col, "to_pylist") else list(col)
    when = pd.to_datetime(
        pd.Series(values, dtype=object), format="ISO8601", utc=True, errors="coerce"
    )
    bad = when.isna().to_numpy()
    us = when.dt.as_unit("us").to_numpy(dtype="datetime64[us]").astype(np.int64)
    seconds = np.where(bad, 0, np.floor_divide(us, 1_000_000))
    return pa.array(seconds, pa.int64()), pa.array(bad)


@dataclass
class Block:
    table: pa.Table  # the format's fields (typed) + line (int64)
    rejects: list[tuple[int, str, bytes]]
    lines: int


def parse_block(buf: bytes, fmt: LineFormat, first: int = 1, at_eof: bool = True) -> Block:
    """Rows and rejects of the lines of ``buf``, numbered from ``first``; ``at_eof``:
    the block ends the file (its last line may lack a newline)."""
    n_lines = count_lines(buf)
    tables, line_arrays, rejects = [], [], []
    whole = _read_strings(buf, fmt, n_lines) if buf.endswith(b"\n") else None
    if whole is not None:
        tables.append(whole)
        line_arrays.append(np.arange(first, first + n_lines, dtype=np.int64))
    else:
        line0 = first
        for sub in sub_blocks(buf, RETRY_BYTES) if buf else ():
            n = count_lines(sub)
            t = _read_strings(sub, fmt, n) if sub.endswith(b"\n") else None
            if t is not None:
                tables.append(t)
                line_arrays.append(np.arange(line0, line0 + n, dtype=np.int64))
            else:
                t, lines, rej = _lines_one_by_one(sub, fmt, line0)
                tables.append(t)
                line_arrays.append(lines)
                rejects += rej
            line0 += n
    if tables:
        table = pa.concat_tables(tables)
        lines = np.concatenate(line_arrays)
    else:
        table = pa.table({n: pa.array([], pa.string()) for n in fmt.names})
        lines = np.zeros(0, dtype=np.int64)
    table, fail = _validate(table, fmt)
    if (fail >= 0).any():
        checks = fmt.checks()
        starts, ends = _line_bounds(buf)
        for r in np.flatnonzero(fail >= 0):
            name, kind, _ = checks[fail[r]]
            i = int(lines[r] - first)
            reason = f"empty_{name}" if kind == "nonempty" else f"bad_{name}"
            rejects.append((int(lines[r]), reason, buf[starts[i] : ends[i]]))
        keep = fail < 0
        table = table.filter(pa.array(keep))
        lines = lines[keep]
    truncated = at_eof and buf and not buf.endswith(b"\n")
    if truncated:
        last = first + n_lines - 1
        rejects = [(ln, "truncated_last_line" if ln == last else r, raw) for ln, r, raw in rejects]
    table = table.append_column("line", pa.array(lines, pa.int64()))
    return Block(table, sorted(rejects), n_lines)
