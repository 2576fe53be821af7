"""Training examples streamed from a split's session files through a bounded shuffle
buffer (``train.py --stream``): every example exactly once per epoch, in a seeded order,
never the whole split in memory.

A split is one Parquet file (``sessionize.py``'s local engine) or a folder of part files
(``--engine dask``: whole sessions in each part). The files are read in a seeded order per
epoch, each by record batches with the last, possibly unfinished, session carried over to
the next batch, so that an example's prefix is always its session's whole past (the same
examples as ``data.make_events`` on the whole split). Examples enter a buffer of
``buffer`` rows; once it is full, each batch is drawn from it at random and its places
refilled from the stream; at the end of the epoch what is left is shuffled and drawn in
turn. Memory: the buffer (``buffer`` x (L + 1) int32) and one record batch.

``EventStream``: a split's next-track events (``data.Events``) a record batch at a time,
for the evaluation (``metrics.evaluate``) of a test split larger than memory: what is kept
is each event's result, never the prefixes of the whole split.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from lastfm.common import PipelineError
from lastfm.data import Events, make_events

COLUMNS = ["session_id", "item_idx"]
EVENT_COLUMNS = ["session_id", "item_idx", "ts_s", "user_idx"]  # the last two where present


def split_files(path: Path) -> list[Path]:
    """The Parquet files of a split: the file itself, or a folder's part files in order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise PipelineError(f"{path}: a folder without Parquet part files")
        return files
    if not path.exists():
        raise PipelineError(f"{path} not found: run sessionize.py first")
    return [path]


def file_events(path: Path, input_len: int, rows: int = 1 << 20, columns=None) -> Iterator[Events]:
    """The events of one file (``data.make_events``), a record batch of about ``rows``
    plays at a time; a session cut by a batch's end is carried to the next. ``columns``:
    the columns read (default: ``EVENT_COLUMNS`` the file has)."""
    import pandas as pd

    f = pq.ParquetFile(path)
    if columns is None:
        names = set(f.schema_arrow.names)
        columns = [c for c in EVENT_COLUMNS if c in names]
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise PipelineError(f"{path}: no column {missing[0]!r} (a session split file?)")
    carry = None
    for batch in f.iter_batches(batch_size=rows, columns=columns):
        df = batch.to_pandas()
        if carry is not None:
            df = pd.concat([carry, df], ignore_index=True)
        sid = df["session_id"].to_numpy()
        if len(sid) and (np.diff(sid) < 0).any():
            raise PipelineError(f"{path}: plays not ordered by session_id")
        last = np.searchsorted(sid, sid[-1]) if len(sid) else 0  # the last session's start
        carry, df = df.iloc[last:], df.iloc[:last]
        if len(df):
            yield make_events(df, input_len)
    if carry is not None and len(carry):
        yield make_events(carry.reset_index(drop=True), input_len)


def file_examples(path: Path, input_len: int, rows: int = 1 << 20):
    """(prefixes (n, L), lengths (n,), targets (n,)) of one file (``file_events``)."""
    for ev in file_events(path, input_len, rows, COLUMNS):
        yield ev.prefixes, ev.lengths, ev.targets


class EventStream:
    """The events of a split's files (``split_files``), in file order, ``rows`` plays
    read at a time: what ``metrics.evaluate`` takes in place of one ``Events``. After
    ``scan()`` it also holds what the evaluation keeps of every event (no prefix): its
    session, position, target, prefix length, listener, time and whether the target is a
    repeat (``Events.repeat_mask``)."""

    def __init__(self, files: list[Path], prefix_len: int, rows: int = 1 << 20):
        self.files, self.prefix_len, self.rows = list(files), prefix_len, rows
        self.sessions = self.positions = self.targets = self.lengths = None
        self.users = self.times = self.repeat = None

    def __iter__(self) -> Iterator[Events]:
        for path in self.files:
            yield from file_events(path, self.prefix_len, self.rows)

    def scan(self) -> EventStream:
        parts: dict[str, list] = {k: [] for k in KEPT}
        for ev in self:
            for k in KEPT:
                v = ev.repeat_mask() if k == "repeat" else getattr(ev, k)
                parts[k].append(v)
        for k, vs in parts.items():
            has = [v for v in vs if v is not None]
            setattr(self, k, np.concatenate(has) if has and len(has) == len(vs) else None)
        if self.targets is None:  # no chunk: an empty split
            self.sessions = self.positions = np.zeros(0, np.int64)
            self.targets = self.lengths = np.zeros(0, np.int32)
            self.repeat = np.zeros(0, bool)
        return self

    def __len__(self) -> int:
        if self.targets is None:  # (a TypeError: list() takes it as "no length known")
            raise TypeError("EventStream.scan() first")
        return len(self.targets)

    def repeat_mask(self) -> np.ndarray:
        return self.repeat


KEPT = ("sessions", "positions", "targets", "lengths", "users", "times", "repeat")


def count_examples(files: list[Path]) -> int:
    """The examples of the split: plays at position >= 1 of a known track (read from the
    session ids and items alone)."""
    total = 0
    for path in files:
        prev = None
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1 << 22, columns=COLUMNS):
            sid = batch.column(0).to_numpy()
            items = batch.column(1).to_numpy()
            first = np.r_[True, sid[1:] != sid[:-1]]
            if prev is not None and len(sid):
                first[0] = sid[0] != prev
            total += int(((~first) & (items > 0)).sum())
            prev = sid[-1] if len(sid) else prev
    return total


class ShuffleStream:
    """The examples of ``files`` as batches (x (B, L), y (B,)), ``batch_size`` at a time
    (the last batch of an epoch may be smaller), through a shuffle buffer of ``buffer``
    examples. Batches keep the full width L: a random batch almost always holds a prefix
    of L plays (cutting to the longest prefix pays only for ``train.LengthBuckets``'
    batches of similar lengths, which need the whole split)."""

    def __init__(
        self,
        files: list[Path],
        input_len: int,
        batch_size: int,
        buffer: int,
        seed: int = 0,
        read_rows: int = 1 << 20,
    ):
        if buffer < batch_size:
            raise PipelineError(f"--shuffle-buffer {buffer}: at least --batch-size {batch_size}")
        self.files, self.input_len, self.batch_size = list(files), input_len, batch_size
        self.buffer, self.seed, self.read_rows = buffer, seed, read_rows
        self.n_examples = count_examples(self.files)

    def __len__(self) -> int:
        return -(-self.n_examples // self.batch_size)

    def epoch(self, number: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches of epoch ``number``: the files in a seeded order, then the buffer:
        once full, a batch is drawn from it at random and its places refilled."""
        rng = np.random.default_rng([self.seed, number])
        cap, size = self.buffer, self.batch_size
        bx = np.zeros((cap, self.input_len), np.int32)
        by = np.zeros(cap, np.int32)
        occupied = np.zeros(cap, bool)
        free = np.arange(cap)  # free places, filled from the front
        for k in rng.permutation(len(self.files)):
            for px, _, py in file_examples(self.files[k], self.input_len, self.read_rows):
                i = 0
                while i < len(py):
                    take = min(len(free), len(py) - i)
                    places, free = free[:take], free[take:]
                    bx[places], by[places] = px[i : i + take], py[i : i + take]
                    occupied[places] = True
                    i += take
                    if not len(free):  # full: a batch drawn at random frees its places
                        pick = rng.choice(cap, size, replace=False)
                        yield bx[pick], by[pick]
                        occupied[pick] = False
                        free = pick
        rest = rng.permutation(np.flatnonzero(occupied))  # the end: what is left
        for s in range(0, len(rest), size):
            pick = rest[s : s + size]
            yield bx[pick], by[pick]
