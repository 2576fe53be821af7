"""Stage 3: Last.fm top tags for every track of a window, with pylast.

Resumable, rate-limited and fault-tolerant:
- every answer (tags, "not found" = Last.fm error 6, or an error) goes into a
  SQLite cache (``<data>/tags/cache.sqlite``) with the time it was fetched,
  committed as it arrives: a rerun asks only for tracks missing or failed
  (``--refresh-older-than DAYS`` asks again for older answers; a failed refresh
  never replaces a good answer), and Ctrl-C or a crash loses at most the
  requests in flight; a second run on the same cache is refused (a lock file);
- one rate limiter per process, shared by all workers and phases: never more
  than ``--rate`` requests (default 5/s, Last.fm's allowance) in any 1-second
  window, with a margin for network jitter; after error 29 it slows down;
- retries with exponential backoff and jitter on network errors, HTTP 5xx,
  malformed answers, any unexpected exception of one request, and Last.fm
  errors 8, 11, 16 and 29; a permanent error (invalid key 10, suspended key 26,
  authentication 4) or Ctrl-C stops every worker at once, keeping what was
  fetched; answers still failed after the retries make the run exit 2 (after
  writing the tables) unless ``--allow-errors``.

The key comes from ``LASTFM_API_KEY`` (or ``--api-key``, which shows in the
process list) and is never printed or logged. Offline: ``--tags-file`` imports
a table (TSV or CSV with columns artist, track, tag, weight). Without key and
file the stage says that the model will train without tags and exits cleanly.

Outputs per window in ``<data>/tags/<window>/``: ``tags.parquet`` (the tag
vocabulary: normalised tags used by at least ``--min-tag-count`` tracks),
``track_tags.parquet`` (top ``--top-k`` tags per track with weights),
``meta.json`` (written last; answers counted by status); and
``<data>/reports/tags.md`` with the study's figures.
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import os
import queue
import random
import re
import sqlite3
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pylast

from lastfm import config as cfgs
from lastfm.common import (
    PipelineError,
    ensure_writable,
    folder_lock,
    log,
    markdown_table,
    outputs_record,
    read_json,
    run_main,
    write_json,
    write_parquet,
    write_text,
)
from lastfm.config import option
from lastfm.data import SPLITS, read_table
from lastfm.paths import Layout

RETRY_CODES = {"8", "11", "16", "29"}
PERMANENT_CODES = {"4": "authentication failed", "10": "invalid API key", "26": "API key suspended"}
NOT_FOUND = "6"
STUDY_1M = {"tracks_with_tags": 130_009, "distinct_tags": 16_141}


@dataclass
class TagsConfig:
    """Where tags come from, how they are fetched and how the tables are cut."""

    windows: str = option("1m", "comma-separated windows")
    api_key: str | None = option(
        None,
        "Last.fm API key (default $LASTFM_API_KEY; a flag shows "
        "in the process list, the variable does not)",
    )
    tags_file: str | None = option(None, "offline: TSV/CSV with artist, track, tag, weight")
    rate: float = option(5.0, "requests per second (0: no limit, for local servers)")
    rate_margin: float = option(
        0.05,
        "seconds added to the rate window, more than the "
        "network's jitter, so no 1-second window at Last.fm sees more "
        "than --rate requests",
    )
    workers: int = option(4, "concurrent requests")
    max_retries: int = option(5, "retries of a transient failure")
    backoff: float = option(1.0, "first retry delay, seconds")
    refresh_older_than: float = option(
        0.0, "ask again for answers older than this many days (0: never)"
    )
    artist_fallback: bool = option(False, "artist top tags for tracks without tags")
    top_k: int = option(5, "tags kept per track")
    min_tag_count: int = option(2, "tags used by fewer tracks are dropped")
    require_tags: bool = option(
        False, "report what dropping untagged tracks (the study's filter) does"
    )
    cache: str | None = option(None, "SQLite cache path (default <data>/tags/cache.sqlite)")
    ws_server: str | None = option(None, "API host:port/path (default Last.fm's)")
    ca_file: str | None = option(None, "extra certificate authority to trust (PEM)")
    seed: int = option(0, "seed of the retry jitter")
    allow_errors: bool = option(False, "exit 0 even when some answers are still errors")

    def check(self) -> None:
        cfgs.require_at_least(self, 1, "workers", "top_k", "min_tag_count")
        cfgs.require_at_least(
            self, 0, "rate", "rate_margin", "max_retries", "backoff", "refresh_older_than"
        )


class Stopped(Exception):
    """The run was asked to stop (Ctrl-C, a permanent error, a failed write)."""


class RateLimiter:
    """At most ``rate`` requests in any 1-second window at the server, shared by all workers
    and phases of a process.

    ``acquire`` takes a slot and ``done`` returns it when the answer has come back. A slot
    counts from its request's start until ``W = max(1, n / rate) + margin`` seconds after
    its answer (``n = max(1, floor(rate))``), and a request starts only while fewer than
    ``n`` slots count. A request reaches the server between its start and its answer, so
    every other request reaching it within 1 second of a request X's arrival still counted
    when X started: any 1-second window sees at most ``n`` arrivals, whatever the network's
    or the threads' delays, with ``n`` the limit in force when the window's last request
    started. ``W`` is never under 1 second and answers are kept for the longest ``W`` any
    rate of this limiter has, so a change of rate (``slow_down`` after Last.fm's error 29
    halves it for a while, then it comes back) never forgets a request that still counts.
    A wait ends early with ``Stopped`` when ``stop`` is set.
    """

    def __init__(
        self,
        rate: float,
        margin: float = 0.05,
        stop: threading.Event | None = None,
        clock=time.monotonic,
        sleep=None,
    ):
        self.rate, self.base_rate, self.margin = rate, rate, margin
        self.stop = stop or threading.Event()
        self.clock = clock
        self.sleep = sleep or (lambda s: self.stop.wait(s))
        self.slots: list[list[float]] = []  # [end] per slot; inf while its request runs
        self.lock = threading.Lock()
        self.restore_at = 0.0

    def window(self, rate: float | None = None) -> tuple[int, float]:
        """(n, W) at ``rate`` (default: the current one); see the class docstring."""
        rate = self.rate if rate is None else rate
        n = max(1, math.floor(rate))
        return n, max(1.0, n / rate) + self.margin

    def horizon(self) -> float:
        """How long an answer is kept: the longest window of any rate this limiter takes
        (the slowest, ``slow_down``'s floor)."""
        return max(self.window(self.base_rate)[1], self.window(self.base_rate / 4)[1])

    def acquire(self) -> list[float] | None:
        """Wait for a free slot and take it (give it to ``done``); ``Stopped`` if the run
        stops meanwhile."""
        while True:
            with self.lock:
                if self.stop.is_set():
                    raise Stopped
                if self.base_rate <= 0:  # unlimited (local servers)
                    return None
                now = self.clock()
                if self.restore_at and now >= self.restore_at:
                    self.rate, self.restore_at = self.base_rate, 0.0
                n, window = self.window()
                keep = self.horizon()
                self.slots = [s for s in self.slots if s[0] + keep > now]
                ends = sorted(s[0] for s in self.slots if s[0] + window > now)
                if len(ends) < n:
                    slot = [math.inf]
                    self.slots.append(slot)
                    return slot
                wait_s = ends[len(ends) - n] + window - now  # inf: until an answer comes
            self.sleep(min(max(wait_s, 0.001), 0.05))

    def done(self, slot: list[float] | None) -> None:
        """The slot's answer has come back: the slot counts on for one window."""
        if slot is not None:
            with self.lock:
                slot[0] = self.clock()

    def slow_down(self, seconds: float = 30.0) -> None:
        with self.lock:
            if self.rate > 0:
                self.rate = max(self.base_rate / 4, self.rate / 2)
                self.restore_at = self.clock() + seconds


# --------------------------------------------------------------------------- cache
SCHEMA_VERSION = 2  # 2: collision-free keys for tracks without an MBID (JSON arrays)
COLUMNS = ["key", "kind", "status", "tags", "error", "fetched_at", "attempts"]


class TagCache:
    """SQLite cache of answers, one row per request key, written by one thread.

    A final answer (``ok`` or ``not_found``) is never replaced by an error: a failed
    retry only adds to the attempts and records its message. A cross-process lock
    (``<cache>.lock``) refuses a second crawl on the same cache. Caches of schema 1
    (keys ``track:<artist>\t<title>``) are migrated on open.
    """

    def __init__(self, path: Path):
        path = Path(path)
        self.path, self.written = path, 0  # written: answers put by this run
        ensure_writable(path.parent)
        self.lock_file = open(str(path) + ".lock", "a")
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.lock_file.close()
            raise PipelineError(
                f"{path} is in use by another fetch_tags.py run; wait for it "
                "to end, or give this one its own --cache"
            ) from None
        try:
            self.db = sqlite3.connect(path, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("""CREATE TABLE IF NOT EXISTS answers (
                key TEXT PRIMARY KEY, kind TEXT, status TEXT, tags TEXT, error TEXT,
                fetched_at REAL, attempts INTEGER)""")
            cols = [r[1] for r in self.db.execute("PRAGMA table_info(answers)")]
            if cols != COLUMNS:
                raise sqlite3.DatabaseError(f"table 'answers' has columns {cols}")
            self._migrate()
            self.db.commit()
        except sqlite3.Error as err:
            self.close()
            raise PipelineError(
                f"{path}: not a readable tag cache ({err}); move it aside and "
                "rerun (its answers will be asked again)"
            ) from None

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        old = [
            k
            for (k,) in self.db.execute("SELECT key FROM answers WHERE key LIKE 'track:%'")
            if "\t" in k
        ]
        dropped = 0
        for k in old:
            parts = k[len("track:") :].split("\t")
            if len(parts) == 2:  # one tab: unambiguous
                self.db.execute(
                    "UPDATE OR IGNORE answers SET key = ? WHERE key = ?", (track_key("", *parts), k)
                )
            else:  # names with tabs: the old key cannot tell artist from title
                dropped += 1
            self.db.execute("DELETE FROM answers WHERE key = ?", (k,))
        self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if old:
            log(
                f"{self.path}: {len(old) - dropped:,} answers moved to collision-free keys, "
                f"{dropped:,} ambiguous ones (tabs in names) dropped and to be asked again"
            )

    def _run(self, sql: str, args=()):
        try:
            return self.db.execute(sql, args)
        except sqlite3.Error as err:
            raise PipelineError(
                f"{self.path}: {err}; answers so far are kept, rerun to "
                "resume (free disk space first if it is full)"
            ) from None

    def todo(self, keys: list[str], refresh_before: float | None) -> list[str]:
        """Keys with no answer, a failed one, or one older than ``refresh_before``."""
        done = {
            k: (st, at) for k, st, at in self._run("SELECT key, status, fetched_at FROM answers")
        }
        out = []
        for k in keys:
            st = done.get(k)
            if st is None or st[0] == "error" or (refresh_before and st[1] < refresh_before):
                out.append(k)
        return out

    def put(
        self, key: str, kind: str, status: str, tags: list | None, error: str | None, attempts: int
    ) -> None:
        self._run(
            """INSERT INTO answers VALUES (?,?,?,?,?,?,?) ON CONFLICT(key) DO UPDATE SET
                 status = CASE WHEN keep THEN answers.status ELSE excluded.status END,
                 tags = CASE WHEN keep THEN answers.tags ELSE excluded.tags END,
                 fetched_at = CASE WHEN keep THEN answers.fetched_at ELSE excluded.fetched_at END,
                 kind = excluded.kind, error = excluded.error,
                 attempts = answers.attempts + excluded.attempts""".replace(
                "keep", "(excluded.status = 'error' AND answers.status != 'error')"
            ),
            (
                key,
                kind,
                status,
                json.dumps(tags) if tags is not None else None,
                error,
                time.time(),
                attempts,
            ),
        )
        try:
            self.db.commit()
        except sqlite3.Error as err:
            raise PipelineError(f"{self.path}: {err}; rerun to resume") from None
        self.written += 1

    def answers(self, keys: list[str]) -> dict[str, tuple[str, list]]:
        out = {}
        for i in range(0, len(keys), 900):
            chunk = keys[i : i + 900]
            q = f"SELECT key, status, tags FROM answers WHERE key IN ({','.join('?' * len(chunk))})"
            for key, status, tags in self._run(q, chunk):
                out[key] = (status, json.loads(tags) if tags else [])
        return out

    def close(self) -> None:
        if getattr(self, "db", None) is not None:
            self.db.close()
            self.db = None
        if not self.lock_file.closed:
            self.lock_file.close()


# --------------------------------------------------------------------------- fetching
def track_key(mbid: str, artist: str, title: str) -> str:
    """The cache key of a track: its MBID, else the JSON array [artist, title] (names may
    hold tabs, so no separator character is safe)."""
    if mbid:
        return f"track:{mbid}"
    return "track:" + json.dumps([artist, title], ensure_ascii=False)


@dataclass
class Job:
    key: str  # cache key: track_key(...) or "artist:<name>"
    kind: str  # "track" or "artist"
    mbid: str
    artist: str
    title: str


def make_network(api_key: str, ws_server: str | None, ca_file: str | None):
    """A pylast network; ``ws_server`` "host:port/path" and ``ca_file`` for a local server."""
    if ca_file:  # trust an extra certificate authority (tests), never disable verification
        pylast.SSL_CONTEXT = ssl.create_default_context(cafile=ca_file)
    net = pylast.LastFMNetwork(api_key=api_key)
    if ws_server:
        host, _, path = ws_server.partition("/")
        net.ws_server = (host, "/" + path)
    return net


def parse_weight(weight) -> int:
    """A tag's count as an integer; anything unparsable (e.g. "n/a") counts 0."""
    try:
        value = float(weight)
    except (TypeError, ValueError):
        return 0
    return int(value) if math.isfinite(value) and value > 0 else 0


def request_tags(network, job: Job) -> list[tuple[str, int]]:
    """One API call: the job's top tags as (name, weight); tags without a name skipped."""
    if job.kind == "artist":
        obj = pylast.Artist(job.artist, network)
    elif job.mbid:
        obj = MbidTrack(job.mbid, job.artist, job.title, network)
    else:
        obj = pylast.Track(job.artist, job.title, network)
    out = []
    for item in obj.get_top_tags():
        name = item.item.get_name()
        if name is not None and str(name).strip():
            out.append((str(name), parse_weight(item.weight)))
    return out


class MbidTrack(pylast.Track):
    """A track addressed by its MusicBrainz id (``track.getTopTags`` with ``mbid``)."""

    def __init__(self, mbid, artist, title, network):
        super().__init__(artist, title, network)
        self.mbid = mbid

    def _get_params(self):
        return {"mbid": self.mbid}


class PermanentError(Exception):
    pass


class WorkerFailed(Exception):
    """What a fetch worker died of (the run stops with it)."""


def fetch_one(
    network,
    job: Job,
    limiter: RateLimiter,
    max_retries: int,
    backoff_s: float,
    rng: random.Random,
    request=request_tags,
):
    """(status, tags, error, attempts) for one job, retrying transient failures.

    Any unexpected exception of one request (a malformed body pylast chokes on, say) is
    that job's transient error, never the end of the run. ``Stopped`` when the run stops.
    """
    attempt = 0
    while True:
        attempt += 1
        slot = limiter.acquire()
        if limiter.stop.is_set():
            raise Stopped
        try:
            return "ok", request(network, job), None, attempt
        except pylast.WSError as err:
            code = str(err.status)
            if code == NOT_FOUND:
                return "not_found", [], None, attempt
            if code in PERMANENT_CODES:
                raise PermanentError(f"Last.fm error {code}: {PERMANENT_CODES[code]}") from None
            transient = code in RETRY_CODES or code.startswith("5") or not code.isdigit()
            if code == "29":
                limiter.slow_down()
            message = f"Last.fm error {code}"
        except (pylast.NetworkError, pylast.MalformedResponseError) as err:
            transient, message = True, type(err).__name__
        except Exception as err:  # noqa: BLE001 - one bad answer must not end the run
            transient, message = True, f"{type(err).__name__}: {err}"[:300]
        finally:
            limiter.done(slot)
        if not transient or attempt > max_retries:
            return "error", None, message, attempt
        if limiter.stop.wait(min(30.0, backoff_s * 2 ** (attempt - 1)) * (0.5 + rng.random())):
            raise Stopped


def run_fetch(
    jobs: list[Job],
    cache: TagCache,
    network,
    rate: float = 5.0,
    workers: int = 4,
    max_retries: int = 5,
    backoff_s: float = 1.0,
    seed: int = 0,
    stop_after: int | None = None,
    request=request_tags,
    progress: bool = True,
    limiter: RateLimiter | None = None,
) -> dict:
    """Fetch ``jobs`` with ``workers`` threads sharing one limiter; write each answer.

    Workers are daemon threads: on Ctrl-C, a permanent error or a failed write the run
    stops at once (the shared stop event ends every wait, and no request starts after
    it), keeping every answer written so far.
    """
    from tqdm import tqdm

    limiter = limiter or RateLimiter(rate)
    stop = limiter.stop
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    results: queue.Queue = queue.Queue()

    def worker(i: int) -> None:
        rng = random.Random(seed * 1000 + i)  # retry jitter only
        while not stop.is_set():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                results.put(
                    (job, fetch_one(network, job, limiter, max_retries, backoff_s, rng, request))
                )
            except Stopped:
                return
            except PermanentError as err:
                results.put((job, err))
                return
            except BaseException as err:  # noqa: BLE001 - a dead worker fails the run
                results.put((job, WorkerFailed(f"{type(err).__name__}: {err}"[:300])))
                return

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    counts = {"ok": 0, "not_found": 0, "error": 0}
    done = 0
    bar = tqdm(total=len(jobs), unit="req", disable=not progress or None, file=sys.stderr)
    try:
        while done < len(jobs):
            try:
                job, res = results.get(timeout=0.1)
            except queue.Empty:
                if not any(t.is_alive() for t in threads) and results.empty():
                    break
                continue
            if isinstance(res, PermanentError):
                raise PipelineError(
                    f"{res}: stopping. Check LASTFM_API_KEY (or --api-key); "
                    f"{done:,} answers so far are saved in the cache"
                )
            if isinstance(res, WorkerFailed):
                raise PipelineError(
                    f"a fetch worker failed ({res}); stopping. {done:,} answers so far are "
                    "saved in the cache; rerun to resume"
                )
            status, tags, error, attempts = res
            cache.put(job.key, job.kind, status, tags, error, attempts)
            counts[status] += 1
            done += 1
            bar.update(1)
            if stop_after is not None and done >= stop_after:
                raise KeyboardInterrupt
    finally:
        if done < len(jobs):
            stop.set()  # stop every worker and wait; nothing new is sent
        bar.close()
    if done < len(jobs):  # every worker ended without a reason: never a quiet success
        raise PipelineError(
            f"{len(jobs) - done:,} of {len(jobs):,} answers never came (the workers ended); "
            f"{done:,} are saved in the cache; rerun to resume"
        )
    return counts


def fetch_todo(
    jobs: list[Job], todo: set[str], cache: TagCache, network, cfg: TagsConfig, limiter: RateLimiter
) -> dict:
    """``run_fetch`` of the jobs whose keys are in ``todo``, with ``cfg``'s settings."""
    return run_fetch(
        [j for j in jobs if j.key in todo],
        cache,
        network,
        cfg.rate,
        cfg.workers,
        cfg.max_retries,
        cfg.backoff,
        cfg.seed,
        limiter=limiter,
    )


# --------------------------------------------------------------------------- tables
def normalise_tag(tag: str) -> str:
    return re.sub(r"\s+", " ", str(tag)).strip().lower()


def track_jobs(vocab: pd.DataFrame) -> list[Job]:
    jobs = []
    for mbid, artist, title in zip(
        vocab["track_mbid"].fillna("").astype(str),
        vocab["artist_name"].astype(str),
        vocab["track_name"].astype(str),
    ):
        jobs.append(Job(track_key(mbid, artist, title), "track", mbid, artist, title))
    return jobs


def build_tables(
    vocab: pd.DataFrame,
    tags_per_item: dict[int, list[tuple[str, float]]],
    top_k: int,
    min_tag_count: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tag vocabulary and top-K track->tag table from raw (tag, weight) lists."""
    rows = []
    for item, tags in tags_per_item.items():
        best: dict[str, float] = {}
        for tag, w in tags:
            t = normalise_tag(tag)
            if t:
                best[t] = max(best.get(t, 0.0), float(w))
        for t, w in best.items():
            rows.append((item, t, w))
    df = pd.DataFrame(rows, columns=["item_idx", "tag", "weight"])
    counts = df.groupby("tag")["item_idx"].nunique() if len(df) else pd.Series(dtype=int)
    keep = counts[counts >= min_tag_count].sort_values(ascending=False, kind="stable")
    tags = pd.DataFrame(
        {
            "tag_idx": np.arange(1, len(keep) + 1, dtype=np.int32),
            "tag": keep.index.astype(str),
            "tracks": keep.to_numpy().astype(np.int64),
        }
    )
    df = df[df["tag"].isin(keep.index)]
    df = df.sort_values(["item_idx", "weight", "tag"], ascending=[True, False, True], kind="stable")
    df = df.groupby("item_idx").head(top_k)
    lookup = dict(zip(tags["tag"], tags["tag_idx"]))
    track_tags = pd.DataFrame(
        {
            "item_idx": df["item_idx"].astype(np.int32).to_numpy(),
            "tag_idx": df["tag"].map(lookup).astype(np.int32).to_numpy(),
            "weight": df["weight"].astype(np.float32).to_numpy(),
        }
    )
    return tags, track_tags


def read_tags_file(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise PipelineError(f"--tags-file {path}: no such file")
    sep = "," if path.suffix.lower() == ".csv" else "\t"
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is not part of the header
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PipelineError(
            f"{path}, line {line}: byte {raw[err.start]:#04x} is not UTF-8; save the file as UTF-8"
        ) from None
    if not text.strip():
        raise PipelineError(f"{path}: empty; expected a header artist, track, tag, weight")
    try:
        df = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            dtype=str,
            keep_default_na=False,
            quoting=3 if sep == "\t" else 0,
        )
    except pd.errors.ParserError as err:
        raise PipelineError(
            f"{path}: not a {'CSV' if sep == ',' else 'TSV'} table ({err})"
        ) from None
    missing = [c for c in ("artist", "track", "tag", "weight") if c not in df.columns]
    if missing:
        raise PipelineError(
            f"{path}: missing column(s) {missing}; expected artist, track, tag, weight"
        )
    w = pd.to_numeric(df["weight"], errors="coerce")
    bad_rows = ~(np.isfinite(w.to_numpy(dtype=float)) & (w.to_numpy(dtype=float) >= 0))
    if bad_rows.any():
        bad = int(np.flatnonzero(bad_rows)[0]) + 2
        raise PipelineError(
            f"{path}, line {bad}: weight {df['weight'].iloc[bad - 2]!r} is not a finite "
            "number of at least 0"
        )
    df["weight"] = w
    return df


def require_tags_effect(layout: Layout, window: str, tagged_items: set[int]) -> dict:
    """What the study's filter (drop untagged tracks) does to plays, sessions, users."""
    d = layout.sessions(window)
    out = {}
    for split in SPLITS:
        df = read_table(d / f"{split}.parquet", "sessions", "sessionize.py")
        kept = df[df["item_idx"].isin(tagged_items)]
        lens = kept.groupby("session_id").size()
        ok = lens[lens >= 2].index
        kept = kept[kept["session_id"].isin(ok)]
        out[split] = {
            "plays": [len(df), len(kept)],
            "sessions": [int(df["session_id"].nunique()), int(len(ok))],
            "users": [int(df["user_idx"].nunique()), int(kept["user_idx"].nunique())],
        }
    return out


def tags_for_window(
    layout: Layout, window: str, cfg: TagsConfig, api_key: str | None, limiter: RateLimiter
) -> dict | None:
    """Tags of one window's tracks (from the API or a file) -> tables and ``meta.json``."""
    d = layout.sessions(window)
    vocab = read_table(d / "vocab.parquet", "vocab", "sessionize.py")
    vocab_md5 = read_json(d / "meta.json")["vocab_md5"]
    if not cfg.tags_file and not api_key:
        print(
            "No Last.fm API key (set LASTFM_API_KEY or pass --api-key) and no --tags-file: "
            "skipping tags; train.py will train the model without tags."
        )
        return None
    with folder_lock(layout.tags(window)) as out:  # one writer; writable before any request
        return window_tags(layout, window, cfg, api_key, limiter, vocab, vocab_md5, out)


def window_tags(layout, window, cfg, api_key, limiter, vocab, vocab_md5, out: Path) -> dict:
    """``tags_for_window``'s work in its folder ``out`` (held by the caller)."""
    (out / "meta.json").unlink(missing_ok=True)  # the manifest goes last, after the tables
    items = vocab["item_idx"].to_numpy()
    per_item: dict[int, list] = {}
    answers_by_status: dict[str, int] = {}
    if cfg.tags_file:
        df = read_tags_file(Path(cfg.tags_file))
        grouped = {
            k: list(zip(g["tag"], g["weight"]))
            for k, g in df.groupby(["artist", "track"], sort=False)
        }
        for item, a, t in zip(
            items, vocab["artist_name"].astype(str), vocab["track_name"].astype(str)
        ):
            if (a, t) in grouped:
                per_item[int(item)] = grouped[(a, t)]
        source = f"file {cfg.tags_file}"
    else:
        cache = TagCache(Path(cfg.cache) if cfg.cache else layout.tag_cache())
        try:
            jobs = track_jobs(vocab)
            refresh = (
                time.time() - cfg.refresh_older_than * 86400 if cfg.refresh_older_than else None
            )
            todo = set(cache.todo([j.key for j in jobs], refresh))
            network = make_network(api_key, cfg.ws_server, cfg.ca_file)
            log(
                f"window {window}: {len(jobs):,} tracks, {len(todo):,} to ask "
                f"({len(jobs) - len(todo):,} cached); {cfg.workers} workers at "
                f"{cfg.rate:g} requests/s"
            )
            try:
                counts = fetch_todo(jobs, todo, cache, network, cfg, limiter)
            except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: say what is kept
                raise type(stop)(
                    f"{cache.written:,} answers of this run are saved in {cache.path}; rerun "
                    "the same command to resume (cached answers are not asked again)"
                ) from None
            log(f"answers this run: {counts}")
            answers = cache.answers([j.key for j in jobs])
            for item, job in zip(items, jobs):
                status, tags = answers.get(job.key, ("missing", []))
                answers_by_status[status] = answers_by_status.get(status, 0) + 1
                if status == "ok" and tags:
                    per_item[int(item)] = tags
            if cfg.artist_fallback:
                per_item.update(
                    _artist_fallback(vocab, items, per_item, cache, network, cfg, limiter)
                )
        finally:
            cache.close()
        source = "Last.fm API (pylast)"

    tags, track_tags = build_tables(vocab, per_item, cfg.top_k, cfg.min_tag_count)
    write_parquet(out / "tags.parquet", tags)
    write_parquet(out / "track_tags.parquet", track_tags)
    tagged = set(track_tags["item_idx"].tolist())
    meta = {
        "source": source,
        "tracks": int(len(vocab)),
        "tracks_with_tags": len(tagged),
        "distinct_tags": int(len(tags)),
        "top_k": cfg.top_k,
        "min_tag_count": cfg.min_tag_count,
        "vocab_md5": vocab_md5,
        "answers": answers_by_status,
    }
    if cfg.require_tags:
        meta["require_tags_effect"] = require_tags_effect(layout, window, tagged)
    meta["outputs"] = outputs_record(out, ["tags.parquet", "track_tags.parquet"])
    write_json(out / "meta.json", meta)  # last, after the tables it describes
    return meta


def _artist_fallback(vocab, items, per_item, cache, network, cfg, limiter) -> dict[int, list]:
    """Artist top tags for tracks without tags, one request per artist."""
    need = [
        (int(i), a)
        for i, a in zip(items, vocab["artist_name"].astype(str))
        if int(i) not in per_item
    ]
    artists = sorted({a for _, a in need})
    jobs = [Job(f"artist:{a}", "artist", "", a, "") for a in artists]
    todo = set(cache.todo([j.key for j in jobs], None))
    fetch_todo(jobs, todo, cache, network, cfg, limiter)
    answers = cache.answers([j.key for j in jobs])
    return {
        i: answers[f"artist:{a}"][1]
        for i, a in need
        if answers.get(f"artist:{a}", ("", []))[0] == "ok" and answers[f"artist:{a}"][1]
    }


def report(metas: dict[str, dict]) -> str:
    rows = [
        [w, m["tracks"], m["tracks_with_tags"], m["distinct_tags"], m["source"]]
        for w, m in metas.items()
    ]
    md = (
        "## Tags\n\n"
        + markdown_table(["window", "tracks", "tracks with tags", "distinct tags", "source"], rows)
        + f"\n\nThe study's 1-month window: {STUDY_1M['tracks_with_tags']:,} tracks with tags, "
        f"{STUDY_1M['distinct_tags']:,} distinct tags.\n"
    )
    for w, m in metas.items():
        if "require_tags_effect" in m:
            eff = m["require_tags_effect"]
            md += (
                f"\nDropping untagged tracks (window {w}): "
                + "; ".join(
                    f"{s}: plays {v['plays'][0]:,} -> {v['plays'][1]:,}, sessions "
                    f"{v['sessions'][0]:,} -> {v['sessions'][1]:,}, users {v['users'][0]:,} -> "
                    f"{v['users'][1]:,}"
                    for s, v in eff.items()
                )
                + "\n"
            )
    return md


def parse_args(argv=None) -> tuple[Layout, TagsConfig]:
    ap = cfgs.parser("Fetch Last.fm top tags for each track (pylast).")
    cfgs.add_data_dir(ap)
    cfgs.add_flags(ap, TagsConfig, "tags")
    args = ap.parse_args(argv)
    return Layout.at(args.data_dir), cfgs.from_args(TagsConfig, args)


def main(argv=None) -> None:
    layout, cfg = parse_args(argv)
    api_key = cfg.api_key or os.environ.get("LASTFM_API_KEY") or None
    reports = ensure_writable(layout.reports())
    limiter = RateLimiter(cfg.rate, cfg.rate_margin)  # one per process, for every phase
    metas = {}
    for window in [w for w in cfg.windows.split(",") if w]:
        meta = tags_for_window(layout, window, cfg, api_key, limiter)
        if meta is None:
            return
        metas[window] = meta
    md = report(metas)
    write_text(reports / "tags.md", md)
    print(md)
    errors = {
        w: m["answers"].get("error", 0) + m["answers"].get("missing", 0) for w, m in metas.items()
    }
    if sum(errors.values()):
        msg = (
            f"{sum(errors.values()):,} tracks' answers are errors or never came ({errors}); "
            "the tables were written without them and a rerun asks for them again"
        )
        if not cfg.allow_errors:
            raise PipelineError(msg + " (--allow-errors accepts them)")
        log("warning: " + msg)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
