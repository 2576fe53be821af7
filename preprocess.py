"""Stage 1: download Last.fm-1K, parse it exactly, clean it, cut month windows.

Outputs (under the data root, ``lastfm.paths.Layout``):
- ``raw/lastfm-dataset-1K.tar.gz`` and ``raw/lastfm-dataset-1K/`` (download);
- ``preprocessed/<window>.parquet`` for each window (``1m``, ``2m``, ``3m``,
  ``6m`` by default), and with ``--write-all`` ``all`` (the whole cleaned
  table); columns in ``lastfm.data.SCHEMAS['plays']``; sorted by user, then time
  ascending;
- ``preprocessed/rejects.tsv`` (line, reason, text) and ``meta.json``;
- ``reports/preprocess_stats.{md,json}`` (the study's table for raw, cleaned and
  each window, next to the study's published figures) and
  ``reports/plays_per_user.png``.
"""

from __future__ import annotations

import gzip
import http.client
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lastfm import config as cfgs
from lastfm import dask_stages, sources
from lastfm.common import (
    PipelineError,
    file_md5,
    fingerprint,
    folder_lock,
    log,
    markdown_table,
    outputs_record,
    read_json,
    run_main,
    stage_current,
    sweep_litter,
    write_atomic,
    write_json,
    write_parquet,
    write_text,
)
from lastfm.config import option
from lastfm.parse import ParseResult, escape_line, parse_file, write_rejects
from lastfm.paths import Layout, make
from lastfm.plays import PLAUSIBLE, REQUIRED, month_windows
from lastfm.study import README, STUDY

URL = "http://mtg.upf.edu/static/datasets/last.fm/lastfm-dataset-1K.tar.gz"
MIRROR = "https://zenodo.org/records/6090214/files/lastfm-dataset-1K.tar.gz"
ARCHIVE = "lastfm-dataset-1K.tar.gz"
TSV = "lastfm-dataset-1K/userid-timestamp-artid-artname-traid-traname.tsv"
KNOWN_MD5 = {
    "userid-timestamp-artid-artname-traid-traname.tsv": "64747b21563e3d2aa95751e0ddc46b68",
    "userid-profile.tsv": "c53608b6b445db201098c1489ea497df",
}
VALID_FROM, VALID_TO = PLAUSIBLE["lfm1k"]

STAT_COLUMNS = ["user_id", "timestamp", "artist_id", "artist_name", "track_id", "track_name"]


@dataclass
class PreprocessConfig:
    """Where the plays come from and how they are cleaned and windowed."""

    dataset: str = option(
        "lfm1k",
        "the input's layout: lfm1k (Last.fm-1K, downloaded without --input), lfm1b, "
        "lfm2b, mlhd, mlhdplus, yambda or table (lastfm/sources/)",
        choices=list(sources.DATASETS),
    )
    input: Path | None = option(
        None, "the input as published (file or folder): required but for lfm1k, else downloaded"
    )
    url: str = option(URL, "archive URL or local path (default: MTG)")
    md5: str | None = option(None, "expected archive MD5 (verification)")
    size: int | None = option(None, "expected archive size in bytes")
    months: str = option("1,2,3,6", "window lengths in months")
    anchor: str = option(
        "end", "windows end at the last play (end) or start at the first", choices=["end", "start"]
    )
    keep_missing_mbid: bool = option(
        False, "keep rows without MBIDs; tracks keyed by (artist, title)"
    )
    valid_from: str | None = option(
        None, "first plausible play date, earlier plays excluded (default: the layout's)"
    )
    valid_to: str | None = option(
        None, "end of plausible play dates, excluded from there (default: the layout's)"
    )
    write_all: bool = option(False, "also write all.parquet (every month, cleaned)")
    force: bool = option(False, "rerun even if outputs are current")

    def __post_init__(self) -> None:
        """Unset plausible dates take the layout's (``lastfm.plays.PLAUSIBLE``)."""
        start, end = PLAUSIBLE.get(self.dataset, PLAUSIBLE["table"])
        self.valid_from = self.valid_from or start
        self.valid_to = self.valid_to or end

    def month_list(self) -> list[int]:
        try:
            months = sorted({int(m) for m in self.months.split(",") if m.strip()})
        except ValueError:
            raise PipelineError(
                f"--months {self.months!r}: expected integers like 1,2,3,6"
            ) from None
        if not months or min(months) < 1:
            raise PipelineError(f"--months {self.months!r}: windows must be >= 1 month")
        return months

    def check(self) -> None:
        self.month_list()
        if self.dataset != "lfm1k" and self.input is None:
            raise PipelineError(f"--dataset {self.dataset} needs --input (its files as published)")
        if self.dataset != "lfm1k" and self.keep_missing_mbid:
            raise PipelineError("--keep-missing-mbid applies to --dataset lfm1k only")
        for flag, value in (("--valid-from", self.valid_from), ("--valid-to", self.valid_to)):
            try:
                np.datetime64(value, "s")
            except ValueError:
                raise PipelineError(f"{flag} {value!r}: expected a date like 2005-02-01") from None


# --------------------------------------------------------------------------- download
def _progress(total: int | None, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        desc=desc,
        disable=None,
        file=sys.stderr,
    )


def download(
    url: str,
    dest: Path,
    md5: str | None = None,
    size: int | None = None,
    timeout: float = 30.0,
    chunk: int = 1 << 20,
    min_rate: float = 1024.0,
    stall_s: float = 60.0,
) -> Path:
    """Fetch ``url`` to ``dest`` resumably; verify; rename atomically.

    A partial download lives in ``dest.part`` and is resumed with an HTTP ``Range``
    request whose answer must start exactly where the part ends (``Content-Range``);
    anything else restarts from byte 0. A local path (or ``file://``) is copied. The
    archive is accepted when its size matches (``size``, else the server's), its MD5
    matches ``md5`` (any case) when given, and, for a ``.gz``, the whole gzip stream
    reads to its end with a good CRC; ``dest.verified`` records what was checked, so a
    rerun skips a verified archive. A transfer slower than ``min_rate`` bytes/s over
    ``stall_s`` seconds stops (rerun to resume).
    """
    dest = Path(dest)
    md5 = md5.lower() if md5 else None
    marker = Path(str(dest) + ".verified")
    if dest.exists() and marker.exists():
        rec = read_json(marker)
        if rec.get("bytes") == dest.stat().st_size and (not md5 or rec.get("md5") == md5):
            log(f"{dest} already downloaded and verified; skipping download")
            return dest
    if dest.exists():  # placed by hand: check what can be checked, then use it
        digest = file_md5(dest)
        if md5 and digest != md5:
            raise PipelineError(f"{dest}: MD5 {digest} does not match the expected {md5}")
        if size is not None and dest.stat().st_size != size:
            raise PipelineError(f"{dest}: {dest.stat().st_size:,} bytes, expected {size:,}")
        problem = gzip_problem(dest)
        if problem:
            raise PipelineError(
                f"{dest}: {problem} gzip archive; delete it and rerun to download it again"
            )
        log(f"using the archive already at {dest} (MD5 {digest})")
        write_json(marker, {"url": "placed by hand", "bytes": dest.stat().st_size, "md5": digest})
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = Path(str(dest) + ".part")
    local = url[7:] if url.startswith("file://") else (url if "://" not in url else None)
    if local is not None:
        if not Path(local).is_file():
            raise PipelineError(f"--url {url}: no such file")
        shutil.copyfile(local, part)
        expected = Path(local).stat().st_size
    else:
        expected = _http_fetch(url, part, timeout, chunk, min_rate, stall_s)
    got = part.stat().st_size
    want = size if size is not None else expected
    if want is not None and got != want:
        if got > want:
            part.unlink()
        raise PipelineError(
            f"{url}: downloaded {got:,} bytes, expected {want:,}; rerun to "
            + ("fetch it again" if got > want else f"resume (partial file kept at {part})")
        )
    digest = file_md5(part)
    if md5 and digest != md5:
        part.unlink()
        raise PipelineError(
            f"{url}: MD5 {digest} does not match the expected {md5}; "
            "the corrupt download was deleted, rerun to fetch it again"
        )
    problem = gzip_problem(part)
    if problem == "truncated":  # e.g. a server that said too short a length: resume
        raise PipelineError(
            f"{url}: the archive ends early ({got:,} bytes); rerun to resume "
            f"(partial file kept at {part})"
        )
    if problem:
        part.unlink()
        raise PipelineError(
            f"{url}: {problem} gzip archive; the download was deleted, rerun to fetch it again"
        )
    os.replace(part, dest)
    write_json(marker, {"url": url, "bytes": got, "md5": digest})
    return dest


def gzip_problem(path: Path) -> str | None:
    """For a ``.gz`` file: read the whole stream (tarfile stops before the trailer), so a
    truncated or corrupt archive is caught before it is called good. None when sound,
    else "truncated" or "corrupt (...)"."""
    if not str(path).endswith((".gz", ".gz.part")):
        return None
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except EOFError:
        return "truncated"
    except (OSError, zlib.error) as err:
        return f"corrupt ({err})"
    return None


def _content_range(resp) -> tuple[int | None, int | None]:
    """(first byte, total size) of a ``Content-Range: bytes A-B/N`` (or ``*/N``) header."""
    value = resp.headers.get("Content-Range", "")
    m = re.match(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)", value.strip())
    if not m:
        return None, None
    first = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return first, total


def _http_fetch(
    url: str, part: Path, timeout: float, chunk: int, min_rate: float, stall_s: float
) -> int | None:
    """Append the rest of ``url`` to ``part``; return the file's full size if known."""
    have = part.stat().st_size if part.exists() else 0
    for _attempt in range(2):  # a second time from byte 0 when a resume cannot be trusted
        req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            resp = urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and have:  # nothing left, if the part is exactly the file
                total = _content_range(err)[1]
                if total == have:
                    return have
                log(
                    f"{part}: {have:,} bytes held but the server's file has "
                    f"{'an unknown size' if total is None else f'{total:,} bytes'}; "
                    "downloading from the start"
                )
                part.unlink()
                have = 0
                continue
            raise PipelineError(f"{url}: HTTP {err.code} {err.reason}") from None
        except (urllib.error.URLError, OSError) as err:
            raise PipelineError(
                f"cannot reach {url} ({getattr(err, 'reason', err)}). Without network, place "
                f"the archive by hand at <data>/raw/{ARCHIVE} (mirror: {MIRROR}), or run "
                "offline on synthetic data: python synth.py && python preprocess.py "
                "--input data/synthetic/lastfm-dataset-1K"
            ) from None
        with resp:
            first, total = _content_range(resp) if resp.status == 206 else (None, None)
            if have and (resp.status != 206 or first != have):
                log(
                    f"{url}: the server did not resume at byte {have:,}; downloading from the start"
                )
                have = 0
                if resp.status == 206:  # a range we did not ask for: ask again for all
                    part.unlink()
                    continue
            length = resp.headers.get("Content-Length")
            if total is None:
                total = (int(length) + have) if length is not None else None
            _copy_body(
                resp, url, part, "ab" if have else "wb", have, total, chunk, min_rate, stall_s
            )
            return total
    raise PipelineError(f"{url}: the server answers ranges wrongly; delete {part} and rerun")


def _copy_body(resp, url, part, mode, have, total, chunk, min_rate, stall_s) -> None:
    t0, got0 = time.monotonic(), 0
    with open(part, mode) as fh, _progress(total, have, Path(url).name) as bar:
        try:
            while block := resp.read1(chunk):
                fh.write(block)
                bar.update(len(block))
                got0 += len(block)
                elapsed = time.monotonic() - t0
                if elapsed >= stall_s:
                    if got0 / elapsed < min_rate:
                        raise PipelineError(
                            f"{url}: {got0 / elapsed:,.0f} bytes/s over the last "
                            f"{elapsed:.0f} s, below {min_rate:,.0f}; stopped, rerun to "
                            f"resume ({part.stat().st_size:,} bytes kept)"
                        )
                    t0, got0 = time.monotonic(), 0
        except (OSError, http.client.IncompleteRead) as err:
            raise PipelineError(
                f"{url}: connection lost after {part.stat().st_size:,} bytes "
                f"({err}); rerun to resume"
            ) from None


def extract(archive: Path, target: Path, tsv_md5: str | None = None) -> Path:
    """Extract ``archive`` under ``target``, refusing any path outside it.

    Extraction goes to a temporary folder renamed into place, with a marker holding
    the archive's MD5, so a killed extraction never leaves a partial TSV that a rerun
    trusts. ``tsv_md5``: the plays file's published MD5, checked before it is kept.
    """
    target = Path(target).resolve()
    top = Path(TSV).parts[0]
    tmp = target / f".extract-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    marker = Path(str(archive) + ".verified")
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                dest = (tmp / m.name).resolve()
                if not dest.is_relative_to(tmp) or m.issym() or m.islnk() or m.isdev():
                    raise PipelineError(f"{archive}: unsafe member {m.name!r} refused")
            tar.extractall(tmp, members=members, filter="data")
        if not (tmp / TSV).exists():
            raise PipelineError(f"{archive}: no {TSV} inside")
        if tsv_md5 and file_md5(tmp / TSV) != tsv_md5:
            raise PipelineError(
                f"{archive}: its {Path(TSV).name} does not have the published "
                f"MD5 {tsv_md5}; delete the archive and rerun"
            )
        write_json(tmp / top / ".extracted", {"archive_md5": _archive_md5(archive)})
        shutil.rmtree(target / top, ignore_errors=True)
        os.replace(tmp / top, target / top)
    except PipelineError:
        marker.unlink(missing_ok=True)
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        marker.unlink(missing_ok=True)
        raise PipelineError(
            f"{archive}: corrupt or truncated archive ({err}); delete it "
            "and rerun to download it again"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / TSV


def _archive_md5(archive: Path) -> str:
    marker = Path(str(archive) + ".verified")
    rec = read_json(marker) if marker.exists() else {}
    return rec.get("md5") or file_md5(archive)


def extracted_current(archive: Path, target: Path) -> bool:
    """True when ``target`` holds a complete extraction of this very archive."""
    mark = Path(target) / Path(TSV).parts[0] / ".extracted"
    return (
        (Path(target) / TSV).exists()
        and mark.exists()
        and read_json(mark).get("archive_md5") == _archive_md5(archive)
    )


# --------------------------------------------------------------------------- tables
def sorted_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """int32 codes of a dictionary-encoded column into its distinct values, sorted, and
    those values.

    The chunks may each carry their own dictionary (the CSV reader encodes every
    block on its own): one hash pass over all their dictionaries together stands in
    for ``unify_dictionaries``. A dictionary that several chunks share is read once.
    """
    chunks = column.chunks
    if not chunks:
        return np.zeros(0, np.int32), pa.array([], pa.string())
    dicts, first = [], {}  # distinct dictionaries, and each chunk's offset into them
    starts, at = [], 0
    for c in chunks:
        d = c.dictionary  # an all-empty dictionary may have no data buffer
        key = (d.offset, len(d), *(b.address if b is not None else 0 for b in d.buffers()))
        if key not in first:
            first[key] = at
            dicts.append(c.dictionary)
            at += len(c.dictionary)
        starts.append(first[key])
    together = pc.dictionary_encode(pa.concat_arrays(dicts) if len(dicts) > 1 else dicts[0])
    order = pc.sort_indices(together.dictionary).to_numpy()
    words = together.dictionary.take(pa.array(order))
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    where = rank[together.indices.to_numpy(zero_copy_only=False)]
    codes = np.empty(len(column), np.int32)
    row = 0
    for c, start in zip(chunks, starts):
        idx = c.indices.to_numpy(zero_copy_only=False)
        codes[row : row + len(idx)] = where[start + idx] if start else where[idx]
        row += len(idx)
    return codes, words


def encode(table: pa.Table) -> dict[str, np.ndarray]:
    """Integer codes for every column; empty strings become code -1 (missing).

    ``table``'s string columns are dictionary-encoded (``parse_file`` output; a
    dictionary per chunk or one for all). Codes follow the sorted order of the
    values, so ids are stable for a given input. Returns arrays ``user_id``,
    ``ts_s``, ``artist_id``, ``artist_name``, ``track_id``, ``track_name``,
    ``line`` and the dictionaries (pyarrow string arrays) under ``dict_<name>``.
    The five columns are encoded in two threads (Arrow's hashing and sorting
    release the GIL).
    """
    columns = [
        ("user", "user_id"),
        ("artist_mbid", "artist_id"),
        ("artist_name", "artist_name"),
        ("track_mbid", "track_id"),
        ("track_name", "track_name"),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(lambda col: sorted_codes(table[col]), [c for c, _ in columns])
        out: dict = {}
        for (_, name), (codes, words) in zip(columns, done):
            if len(words) and words[0].as_py() == "":  # "" sorts first: missing value
                codes -= 1
                words = words.slice(1)
            out[name], out[f"dict_{name}"] = codes, words
    out["ts_s"] = table["ts_s"].to_numpy()
    out["line"] = table["line"].to_numpy()
    return out


def distinct_count(codes: np.ndarray) -> int:
    """Number of distinct non-negative codes (bincount: numpy's unique is slow here)."""
    codes = codes[codes >= 0]
    return int(np.count_nonzero(np.bincount(codes))) if len(codes) else 0


def sorted_times(ts: np.ndarray) -> np.ndarray:
    """``ts`` sorted. The rows come in file order (each user's plays newest first):
    runs that timsort (``kind="stable"``) merges several times faster than
    quicksort."""
    return np.sort(ts, kind="stable")


def _timestamp_stats(s: np.ndarray) -> tuple[int, int, int]:
    """(unique, most frequent value, its count) of sorted int64 seconds (numpy's
    hash-based unique and pandas' value_counts are slower than a sort)."""
    new = np.r_[True, s[1:] != s[:-1]]
    first = np.flatnonzero(new)
    runs = np.diff(np.r_[first, len(s)])
    top = int(np.argmax(runs))
    return int(len(first)), int(s[first[top]]), int(runs[top])


def column_stats(enc: dict, mask: np.ndarray | None, times: np.ndarray) -> dict[str, dict]:
    """The study's describe() table: count, unique, top, freq per column; ``times``
    is the masked rows' ``ts_s``, sorted (``window_times``)."""
    stats = {}
    for name in STAT_COLUMNS:
        if name == "timestamp":
            if len(times) == 0:
                stats[name] = {"count": 0, "unique": 0, "top": None, "freq": 0}
                continue
            unique, top, freq = _timestamp_stats(times)
            stats[name] = {
                "count": int(len(times)),
                "unique": unique,
                "top": str(np.datetime64(top, "s")) + "Z",
                "freq": freq,
            }
            continue
        sel = enc[name] if mask is None else enc[name][mask]
        sel = sel[sel >= 0]
        if len(sel) == 0:
            stats[name] = {"count": 0, "unique": 0, "top": None, "freq": 0}
            continue
        counts = np.bincount(sel)
        top = int(np.argmax(counts))
        stats[name] = {
            "count": int(len(sel)),
            "unique": int(np.count_nonzero(counts)),
            "top": enc[f"dict_{name}"][top].as_py(),
            "freq": int(counts[top]),
        }
    return stats


def plays_table(
    enc: dict, rows: np.ndarray, keep_missing_mbid: bool, newest_first: bool = True
) -> pa.Table:
    """The Parquet table of ``rows`` (indices into ``enc``), sorted by user, time."""
    # Sort by user, then time; equal times keep the older line (Last.fm-1K is newest
    # first; other layouts keep their order). Rows arrive in file order, so a stable sort
    # of the reversed rows is a merge of runs (timsort), ~3x faster than lexsort.
    rev = rows[::-1] if newest_first else rows
    ts = enc["ts_s"][rev]
    key = (enc["user_id"][rev].astype(np.int64) << 36) | (ts - ts.min() if len(ts) else ts)
    rows = rev[np.argsort(key, kind="stable")]

    def dict_col(name: str) -> pa.Array:
        """Dictionary column holding only the values these rows use."""
        codes = enc[name][rows]
        used = np.bincount(codes[codes >= 0], minlength=len(enc[f"dict_{name}"])) > 0
        remap = np.cumsum(used, dtype=np.int32) - 1
        compact = np.where(codes >= 0, remap[np.maximum(codes, 0)], -1).astype(np.int32)
        return pa.DictionaryArray.from_arrays(
            pa.array(compact, pa.int32(), mask=compact < 0),
            enc[f"dict_{name}"].filter(pa.array(used)),
        )

    if keep_missing_mbid:
        artist_idx, track_idx = enc["artist_name"][rows], enc["track_key"][rows]
    else:
        artist_idx, track_idx = enc["artist_id"][rows], enc["track_id"][rows]
    return pa.table(
        {
            "user_idx": pa.array(enc["user_id"][rows], pa.int32()),
            "ts_s": pa.array(enc["ts_s"][rows], pa.int64()),
            "artist_idx": pa.array(artist_idx, pa.int32()),
            "track_idx": pa.array(track_idx, pa.int32()),
            "artist_name": dict_col("artist_name"),
            "track_name": dict_col("track_name"),
            "track_mbid": dict_col("track_id"),
        }
    )


def add_track_key(enc: dict) -> None:
    """Track identity by (artist name, track name), for --keep-missing-mbid."""
    n_names = len(enc["dict_track_name"]) + 1
    pair = enc["artist_name"].astype(np.int64) * n_names + enc["track_name"]
    s = np.sort(pair)
    uniques = s[np.r_[True, s[1:] != s[:-1]]]
    enc["track_key"] = np.searchsorted(uniques, pair).astype(np.int32)


def parse_source(dataset: str, path: Path, options) -> ParseResult:
    """Every play of a layout other than Last.fm-1K (``lastfm.sources``), in
    ``parse_file``'s table form (missing values as empty strings); rejects are
    ``(where, line, reason, raw)``."""
    pieces = sources.find_pieces(dataset, path, options, target_bytes=1 << 62)
    tables, rejects, lines, counts = [], [], 0, {}
    for piece in pieces:
        res = sources.read_piece(piece, dataset, options)
        tables.append(res.table)
        rejects += [(res.where, line, reason, raw) for line, reason, raw in res.rejects]
        lines += res.lines
        for k, v in res.counts.items():
            counts[k] = counts.get(k, 0) + v
    table = pa.concat_tables(tables) if tables else sources.PLAY_SCHEMA.empty_table()

    def text(name: str) -> pa.Array:
        col = pc.fill_null(table[name].combine_chunks(), "")
        return pc.dictionary_encode(col)

    out = pa.table(
        {
            "user": text("user"),
            "ts_s": table["ts_s"].combine_chunks(),
            "artist_mbid": text("artist"),
            "artist_name": text("artist_name"),
            "track_mbid": text("track"),
            "track_name": text("track_name"),
            "line": table["line"].combine_chunks(),
        }
    )
    return ParseResult(out, rejects, lines, reject_counts=counts)


def write_source_rejects(path: Path, rejects: list[tuple[str, int, str, bytes]]) -> None:
    """TSV ``where, line, reason, text`` (the file or TAR member, its line)."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write("where\tline\treason\ttext\n")
            for where, line, reason, raw in rejects:
                fh.write(f"{where}\t{line}\t{reason}\t{escape_line(raw)}\n")

    write_atomic(path, write)


# --------------------------------------------------------------------------- report
def _tables_markdown(stats: dict[str, dict], extra: dict[str, dict]) -> str:
    """The describe() table of raw, clean and each window."""
    parts = []
    for table_name, cols in stats.items():
        rows = [[c, s["count"], s["unique"], s["top"], s["freq"]] for c, s in cols.items()]
        parts.append(
            f"### {table_name} ({extra[table_name]['rows']:,} rows, "
            f"{extra[table_name]['users']:,} users)\n\n"
            + markdown_table(["column", "count", "unique", "top", "freq"], rows)
        )
    return "\n\n".join(parts) + "\n"


def stats_markdown(stats: dict[str, dict], extra: dict[str, dict]) -> str:
    """The describe() tables and ours next to the study's published figures."""
    parts = [_tables_markdown(stats, extra).rstrip("\n")]
    study_rows = []
    for name, fig in STUDY.items():
        ours = extra.get(name if name != "clean" else "clean", {})
        ours_stats = stats.get(name, {})
        study_rows.append(
            [
                name,
                fig.get("rows"),
                ours.get("rows"),
                fig.get("user_id"),
                ours.get("users"),
                fig.get("track_id"),
                ours_stats.get("track_id", {}).get("unique"),
            ]
        )
    parts.append(
        "### ours next to the study's published figures\n\n"
        "The study read the file with pandas defaults (quote processing on), "
        "which lost 52,015 plays; ours is the exact parse.\n\n"
        + markdown_table(
            [
                "table",
                "study rows",
                "our rows",
                "study users",
                "our users",
                "study track ids",
                "our track ids",
            ],
            study_rows,
        )
    )
    return "\n\n".join(parts) + "\n"


def plot_plays_per_user(user_plays: np.ndarray, path: Path) -> None:
    """Plays per user, by rank (log scale); ``user_plays``: each user's count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.sort(user_plays)[::-1]
    counts = counts[counts > 0]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(counts) + 1), counts)
    ax.set_yscale("log")
    ax.set_xlabel("user rank")
    ax.set_ylabel("plays (log scale)")
    ax.set_title("Plays per user (cleaned)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- stage
def resolve_input(layout: Layout, cfg: PreprocessConfig) -> Path:
    """The TSV to parse: --input (file or folder), else download and extract; for the
    other layouts, --input as given (``lastfm.sources`` finds its files)."""
    if cfg.dataset != "lfm1k":
        if not Path(cfg.input).exists():
            raise PipelineError(f"--input {cfg.input}: no such file or folder")
        return Path(cfg.input)
    if cfg.input is not None:
        p = Path(cfg.input)
        if p.is_dir():
            cands = [p / Path(TSV).name, p / TSV]
            p = next((c for c in cands if c.exists()), cands[0])
        if not p.exists():
            raise PipelineError(
                f"--input {cfg.input}: no such file (expected the plays TSV "
                f"or a folder holding {Path(TSV).name})"
            )
        return p
    with folder_lock(layout.raw()) as raw:  # one download and extraction at a time
        archive = download(cfg.url, raw / ARCHIVE, md5=cfg.md5, size=cfg.size)
        if not extracted_current(archive, raw):
            log(f"extracting {archive}")
            real = cfg.url in (URL, MIRROR)  # the published plays MD5 is checked for the real one
            extract(archive, raw, tsv_md5=KNOWN_MD5[Path(TSV).name] if real else None)
    return raw / TSV


def preprocess(tsv: Path, out: Path, reports: Path, cfg: PreprocessConfig, options=None) -> dict:
    """Parse, clean, cut windows, write outputs; return the manifest (the local engine:
    every play in memory)."""
    months, anchor, keep_missing_mbid = cfg.month_list(), cfg.anchor, cfg.keep_missing_mbid
    valid_from, valid_to, write_all = cfg.valid_from, cfg.valid_to, cfg.write_all
    t0 = time.perf_counter()
    # The input's MD5 is computed once (beside the parse) and reused while the
    # file's size and modification time are unchanged.
    known = None
    if cfg.dataset == "lfm1k":
        md5_cache = out / "input_md5.json"
        cached = read_json(md5_cache) if md5_cache.exists() else {}
        known = cached.get("md5") if cached.get("file") == fingerprint(tsv) else None
        try:
            res = parse_file(tsv, with_md5=known is None)
        except (FileNotFoundError, ValueError) as err:
            raise PipelineError(str(err)) from None
        res.md5 = known or res.md5
        write_json(md5_cache, {"file": fingerprint(tsv), "md5": res.md5})
        write_rejects(out / "rejects.tsv", res.rejects)
    else:
        res = parse_source(cfg.dataset, tsv, options or sources.SourceOptions(cfg.dataset))
        write_source_rejects(out / "rejects.tsv", res.rejects)
    t_parse = time.perf_counter() - t0
    if res.table.num_rows == 0:
        raise PipelineError(f"{tsv}: no valid play among {res.lines:,} lines; see rejects")
    log(
        f"parsed {res.lines:,} lines in {t_parse:.1f}s: {res.table.num_rows:,} rows, "
        f"{len(res.rejects):,} rejects {res.reject_counts}, {res.repaired:,} repaired"
    )
    enc = encode(res.table)
    del res.table
    n = len(enc["ts_s"])
    lo = int(np.datetime64(valid_from, "s").astype(np.int64))
    hi = int(np.datetime64(valid_to, "s").astype(np.int64))
    in_range = (enc["ts_s"] >= lo) & (enc["ts_s"] < hi)
    if keep_missing_mbid:
        add_track_key(enc)
        clean = (enc["artist_name"] >= 0) & (enc["track_name"] >= 0)
    else:
        clean = enc["track_id"] >= 0
        for col in REQUIRED[cfg.dataset]:
            clean &= enc[col] >= 0
    kept = clean & in_range
    windows = month_windows(enc["ts_s"], in_range, months, anchor)
    masks = {"raw": None, "clean": clean}
    for name, (start, end) in windows.items():
        masks[name] = kept & (enc["ts_s"] >= start) & (enc["ts_s"] < end)
    for name, mask in masks.items():
        if name in windows and not mask.any():
            raise PipelineError(
                f"window {name} holds no play (anchor {anchor}); choose other --months or --anchor"
            )

    # Window files are built and written in a thread while the statistics, the
    # report and the plot are made (Parquet writing releases the GIL).
    def write_window(name: str) -> dict:
        rows = np.flatnonzero(masks[name] if name != "all" else kept)
        table = plays_table(enc, rows, keep_missing_mbid, sources.newest_first(cfg.dataset))
        plain = [f.name for f in table.schema if not pa.types.is_dictionary(f.type)]
        write_parquet(out / f"{name}.parquet", table, compression="zstd", statistics=plain)
        return {
            "rows": table.num_rows,
            "tracks": distinct_count(table["track_idx"].to_numpy()),
            "users": distinct_count(table["user_idx"].to_numpy()),
        }

    with ThreadPoolExecutor(max_workers=1) as pool:
        futures = {
            name: pool.submit(write_window, name)
            for name in list(windows) + (["all"] if write_all else [])
        }
        _report(enc, res, masks, in_range, clean, tsv, reports, cfg, (windows, lo, hi))
        written = {name: f.result() for name, f in futures.items()}
    name = Path(tsv).name
    if name in KNOWN_MD5 and res.md5 != KNOWN_MD5[name]:
        log(
            f"warning: {name} MD5 {res.md5} differs from the published "
            f"{KNOWN_MD5[name]} (not the original file)"
        )
    return {
        "input": {
            **fingerprint(tsv),
            "md5": res.md5,
            "lines": res.lines,
            "md5_reused": known is not None,
        },
        "rows_parsed": int(n),
        "rejects": res.reject_counts,
        "repaired": res.repaired,
        "lines_accounted": int(n) + len(res.rejects),
        "out_of_range": int((~in_range).sum()),
        "dropped_missing": int((~clean).sum()),
        "windows": {k: {"start_s": v[0], "end_s": v[1], **written[k]} for k, v in windows.items()},
        "all": written.get("all"),
        "users": enc["dict_user_id"].to_pylist(),
        "seconds": {"parse": round(t_parse, 2), "total": round(time.perf_counter() - t0, 2)},
    }


def window_times(ts, clean, windows, lo, hi) -> dict[str, np.ndarray]:
    """Sorted ``ts_s`` of every table of the report, from two sorts: the clean plays
    (each window, clean and in [lo, hi), is a slice of them) and the others (merged
    in for the raw table)."""
    clean_s = sorted_times(ts[clean])
    out = {
        "raw": sorted_times(np.concatenate([clean_s, sorted_times(ts[~clean])])),
        "clean": clean_s,
    }
    for name, (start, end) in windows.items():
        a, b = np.searchsorted(clean_s, [max(start, lo), min(end, hi)])
        out[name] = clean_s[a : max(a, b)]
    return out


def _report(enc, res, masks, in_range, clean, tsv, reports, cfg, bounds) -> None:
    """The study's statistics tables of the local engine (Markdown, JSON, printed) and
    the plot; ``bounds`` is (windows, lo, hi)."""
    n = len(enc["ts_s"])
    stats, extra = {}, {}
    times = window_times(enc["ts_s"], clean, *bounds)
    for name, mask in masks.items():
        stats[name] = column_stats(enc, mask, times[name])
        extra[name] = {
            "rows": int(n if mask is None else mask.sum()),
            "users": stats[name]["user_id"]["unique"],
        }
    # The README's artist counts: distinct artist MBIDs, and distinct names without one.
    artists = {
        "artists_with_mbid": distinct_count(enc["artist_id"]),
        "artists_without_mbid": distinct_count(enc["artist_name"][enc["artist_id"] < 0]),
    }
    summary = {
        "lines": res.lines,
        "rejects": len(res.rejects),
        "repaired": res.repaired,
        "out_of_range": int((~in_range).sum()),
    }
    user_plays = np.bincount(enc["user_id"][clean])
    write_stats(stats, extra, artists, summary, tsv, reports, cfg, user_plays[user_plays > 0])


def write_stats(stats, extra, artists, summary, tsv, reports, cfg, user_plays) -> None:
    """``reports/preprocess_stats.{md,json}`` and ``plays_per_user.png`` (both engines)."""
    md = stats_markdown(stats, extra) if cfg.dataset == "lfm1k" else _tables_markdown(stats, extra)
    if cfg.dataset == "lfm1k":
        md += (
            f"\nArtists with an MBID: {artists['artists_with_mbid']:,} (the archive's README: "
            f"{README['artists_with_mbid']:,}); artist names without one: "
            f"{artists['artists_without_mbid']:,} (README: {README['artists_without_mbid']:,}).\n"
        )
    write_text(
        reports / "preprocess_stats.md",
        f"## Preprocessing statistics\n\nInput: `{tsv}` ({summary['lines']:,} lines; "
        f"{summary['rejects']:,} rejects; {summary['repaired']:,} repaired; "
        f"{summary['out_of_range']:,} plays outside {cfg.valid_from}..{cfg.valid_to} "
        "excluded)\n\n" + md,
    )
    write_json(
        reports / "preprocess_stats.json",
        {"tables": stats, "sizes": extra, "artists": artists, "study": STUDY},
    )
    plot_plays_per_user(np.asarray(user_plays), reports / "plays_per_user.png")
    print(md)


def parse_args(argv=None):
    ap = cfgs.parser("Download, parse, clean and window Last.fm-1K (or another listening log).")
    cfgs.add_data_dir(ap)
    cfgs.add_flags(ap, PreprocessConfig, "preprocessing")
    cfgs.add_flags(ap, sources.SourceOptions, "source options (lastfm/sources/)", skip=("dataset",))
    cfgs.add_flags(ap, dask_stages.EngineConfig, "engine")
    args = ap.parse_args(argv)
    cfg = cfgs.from_args(PreprocessConfig, args)
    options = cfgs.from_args(sources.SourceOptions, args)  # its dataset: --dataset
    return Layout.at(args.data_dir), cfg, options, cfgs.from_args(dask_stages.EngineConfig, args)


def main(argv=None) -> None:
    layout, cfg, options, engine = parse_args(argv)
    with folder_lock(layout.preprocessed()) as out:
        run(layout, cfg, out, options, engine)


def clear_other_engine(out: Path, engine: str) -> None:
    """Remove what the other engine wrote here: the Dask engine's windows are folders of
    parts (and its work, users), the local engine's single files."""
    for p in out.glob("*.parquet"):
        if engine == "local" and p.is_dir():
            shutil.rmtree(p)
        elif engine == "dask" and p.is_file() and p.name != "names.parquet":
            p.unlink()
    if engine == "local":
        shutil.rmtree(out / "_work", ignore_errors=True)
        (out / "users.parquet").unlink(missing_ok=True)


def write_names(dataset: str, path: Path, out: Path) -> list[str]:
    """``names.parquet`` (track id, artist and track names) where the layout ships
    names beside the plays (LFM-1b, LFM-2b): sessionize.py names the vocabulary from it."""
    (out / "names.parquet").unlink(missing_ok=True)
    table = sources.load_names(dataset, path) if dataset != "lfm1k" else None
    if table is None:
        return []
    write_parquet(out / "names.parquet", table, compression="zstd")
    return ["names.parquet"]


def input_fingerprint(path: Path) -> dict:
    """Size and modification time of the input file, or of every file in its folder."""
    path = Path(path)
    if path.is_file():
        return fingerprint(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {
        "path": str(path),
        "files": [fingerprint(p) | {"path": str(p.relative_to(path))} for p in files],
    }


def run(layout: Layout, cfg: PreprocessConfig, out: Path, options=None, engine=None) -> None:
    """The stage, in ``out`` (held by ``main``): skip when current, else write every
    output and then the manifest."""
    engine = engine or dask_stages.EngineConfig()
    months = cfg.month_list()
    tsv = resolve_input(layout, cfg)
    reports = make(layout.reports())
    sweep_litter(reports)
    params = {
        "months": months,
        "anchor": cfg.anchor,
        "keep_missing_mbid": cfg.keep_missing_mbid,
        "write_all": cfg.write_all,
        "valid_from": cfg.valid_from,
        "valid_to": cfg.valid_to,
        "input": fingerprint(tsv) if cfg.dataset == "lfm1k" else input_fingerprint(tsv),
    }
    if cfg.dataset != "lfm1k" or engine.engine != "local":
        params |= {
            "dataset": cfg.dataset,
            "source": cfgs.as_dict(options) if options is not None else None,
            "engine": engine.engine,
            "partitions": engine.partitions,
            "piece_mb": engine.piece_mb,
        }
    if not cfg.force and stage_current(out / "meta.json", params):
        log(f"{out} is current for these parameters; skipping (use --force to redo)")
        print(
            (reports / "preprocess_stats.md").read_text()
            if (reports / "preprocess_stats.md").exists()
            else ""
        )
        return
    (out / "meta.json").unlink(missing_ok=True)  # the manifest goes last, after its outputs
    extra = write_names(cfg.dataset, tsv, out)  # names shipped beside the plays, if any
    clear_other_engine(out, engine.engine)
    if engine.engine == "dask":
        if cfg.force:  # redo every task, not only the stage's manifest
            shutil.rmtree(out / "_work", ignore_errors=True)
        if cfg.write_all:
            raise PipelineError("--write-all is not available with --engine dask")
        with dask_stages.cluster(engine.scheduler, engine.workers) as client:
            meta = dask_stages.preprocess(
                client,
                cfg.dataset,
                tsv.resolve(),  # workers may start elsewhere
                options,
                out.resolve(),
                reports,
                cfg,
                engine.partitions,
                int(engine.piece_mb * 2**20),
            )
        stats = meta.pop("stats")
        write_stats(
            stats["tables"],
            stats["sizes"],
            stats["artists"],
            stats["summary"],
            tsv,
            reports,
            cfg,
            stats["user_plays"],
        )
        names = [
            f"{w}.parquet/{p.name}"
            for w in meta["windows"]
            for p in sorted((out / f"{w}.parquet").glob("part-*.parquet"))
        ] + ["rejects.tsv", "users.parquet"]
    else:
        meta = preprocess(tsv, out, reports, cfg, options)
        names = (
            [f"{w}.parquet" for w in meta["windows"]]
            + (["all.parquet"] if cfg.write_all else [])
            + ["rejects.tsv"]
        )
    names += extra
    write_json(out / "meta.json", {"params": params, **meta, "outputs": outputs_record(out, names)})
    sizes = ", ".join(f"{k}: {v['rows']:,}" for k, v in meta["windows"].items())
    log(f"wrote {out} ({sizes})")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
