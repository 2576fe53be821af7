"""Stage 3: Last.fm top tags for every track of a window, with pylast.

Resumable and rate-limited:
- every answer (tags, "not found" = Last.fm error 6, or an error) goes into a
  SQLite cache (``<data>/tags/cache.sqlite``) with the time it was fetched,
  committed as it arrives: a rerun asks only for tracks missing or failed
  (``--refresh-older-than DAYS`` asks again for older answers), and Ctrl-C or a
  crash loses at most the requests in flight;
- one token bucket shared by all workers (``--rate``, default 5 requests/s,
  Last.fm's allowance) and a few concurrent workers (``--workers``) so that
  latency does not waste the allowance;
- retries with exponential backoff and jitter on network errors, HTTP 5xx,
  malformed answers and Last.fm errors 8, 11, 16 and 29 (29: rate limit
  exceeded, the bucket also slows down); a permanent error (invalid key 10,
  suspended key 26, authentication 4) stops the run with a clear message.

The key comes from ``LASTFM_API_KEY`` (or ``--api-key``) and is never printed
or logged. Offline: ``--tags-file`` imports a table (TSV or CSV with columns
artist, track, tag, weight). Without key and file the stage says that the
model will train without tags and exits cleanly.

Outputs per window in ``<data>/tags/<window>/``: ``tags.parquet`` (the tag
vocabulary: normalised tags used by at least ``--min-tag-count`` tracks),
``track_tags.parquet`` (top ``--top-k`` tags per track with weights),
``meta.json``; and ``<data>/reports/tags.md`` with the study's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sqlite3
import ssl
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pylast

from lastfm import config as cfgs
from lastfm.common import PipelineError, log, markdown_table, read_json, run_main, write_json
from lastfm.config import option
from lastfm.data import SPLITS, read_table
from lastfm.paths import Layout, make

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

    def check(self) -> None:
        cfgs.require_at_least(self, 1, "workers", "top_k", "min_tag_count")
        cfgs.require_at_least(self, 0, "rate", "max_retries", "backoff", "refresh_older_than")


class TokenBucket:
    """Thread-safe token bucket: at most ``rate`` acquisitions per second on average,
    bursts of at most ``capacity``. ``slow_down`` halves the rate for a while."""

    def __init__(self, rate: float, capacity: float = 1.0, clock=time.monotonic, sleep=time.sleep):
        self.rate, self.base_rate, self.capacity = rate, rate, capacity
        self.tokens, self.clock, self.sleep = capacity, clock, sleep
        self.last = clock()
        self.lock = threading.Lock()
        self.restore_at = 0.0

    def acquire(self) -> None:
        if self.rate <= 0:  # unlimited
            return
        while True:
            with self.lock:
                now = self.clock()
                if self.restore_at and now >= self.restore_at:
                    self.rate, self.restore_at = self.base_rate, 0.0
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait_s = (1 - self.tokens) / self.rate
            self.sleep(wait_s)

    def slow_down(self, seconds: float = 30.0) -> None:
        with self.lock:
            if self.rate > 0:
                self.rate = max(self.base_rate / 4, self.rate / 2)
                self.restore_at = self.clock() + seconds


# --------------------------------------------------------------------------- cache
class TagCache:
    """SQLite cache of answers: one row per track key; written by one thread."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS answers (
            key TEXT PRIMARY KEY, kind TEXT, status TEXT, tags TEXT, error TEXT,
            fetched_at REAL, attempts INTEGER)""")
        self.db.commit()

    def todo(self, keys: list[str], refresh_before: float | None) -> list[str]:
        """Keys with no answer, a failed one, or one older than ``refresh_before``."""
        done = {}
        cur = self.db.execute("SELECT key, status, fetched_at FROM answers")
        for key, status, at in cur:
            done[key] = (status, at)
        out = []
        for k in keys:
            st = done.get(k)
            if st is None or st[0] == "error" or (refresh_before and st[1] < refresh_before):
                out.append(k)
        return out

    def put(
        self, key: str, kind: str, status: str, tags: list | None, error: str | None, attempts: int
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO answers VALUES (?,?,?,?,?,?,?)",
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
        self.db.commit()

    def answers(self, keys: list[str]) -> dict[str, tuple[str, list]]:
        out = {}
        for i in range(0, len(keys), 900):
            chunk = keys[i : i + 900]
            q = f"SELECT key, status, tags FROM answers WHERE key IN ({','.join('?' * len(chunk))})"
            for key, status, tags in self.db.execute(q, chunk):
                out[key] = (status, json.loads(tags) if tags else [])
        return out

    def close(self) -> None:
        self.db.close()


# --------------------------------------------------------------------------- fetching
@dataclass
class Job:
    key: str  # cache key: "track:<mbid>", "track:<artist>\t<title>" or "artist:<name>"
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


def request_tags(network, job: Job) -> list[tuple[str, int]]:
    """One API call: the job's top tags as (name, weight)."""
    if job.kind == "artist":
        obj = pylast.Artist(job.artist, network)
    elif job.mbid:
        obj = MbidTrack(job.mbid, job.artist, job.title, network)
    else:
        obj = pylast.Track(job.artist, job.title, network)
    return [(item.item.get_name(), int(float(item.weight or 0))) for item in obj.get_top_tags()]


class MbidTrack(pylast.Track):
    """A track addressed by its MusicBrainz id (``track.getTopTags`` with ``mbid``)."""

    def __init__(self, mbid, artist, title, network):
        super().__init__(artist, title, network)
        self.mbid = mbid

    def _get_params(self):
        return {"mbid": self.mbid}


class PermanentError(Exception):
    pass


def fetch_one(
    network,
    job: Job,
    bucket: TokenBucket,
    max_retries: int,
    backoff_s: float,
    rng: random.Random,
    request=request_tags,
):
    """(status, tags, error, attempts) for one job, retrying transient failures."""
    attempt = 0
    while True:
        attempt += 1
        bucket.acquire()
        try:
            return "ok", request(network, job), None, attempt
        except pylast.WSError as err:
            code = str(err.status)
            if code == NOT_FOUND:
                return "not_found", [], None, attempt
            if code in PERMANENT_CODES:
                raise PermanentError(f"Last.fm error {code}: {PERMANENT_CODES[code]}") from None
            transient = code in RETRY_CODES or code.startswith("5")
            if code == "29":
                bucket.slow_down()
            message = f"Last.fm error {code}"
        except (pylast.NetworkError, pylast.MalformedResponseError) as err:
            transient, message = True, type(err).__name__
        if not transient or attempt > max_retries:
            return "error", None, message, attempt
        time.sleep(min(30.0, backoff_s * 2 ** (attempt - 1)) * (0.5 + rng.random()))


def run_fetch(
    jobs: list[Job],
    cache: TagCache,
    network,
    rate: float,
    workers: int,
    max_retries: int = 5,
    backoff_s: float = 1.0,
    seed: int = 0,
    stop_after: int | None = None,
    request=request_tags,
    progress: bool = True,
) -> dict:
    """Fetch ``jobs`` with ``workers`` threads sharing one bucket; write each answer."""
    from tqdm import tqdm

    bucket = TokenBucket(rate)
    counts = {"ok": 0, "not_found": 0, "error": 0}
    done = 0
    bar = tqdm(total=len(jobs), unit="req", disable=not progress or None, file=sys.stderr)
    pending, it = set(), iter(jobs)
    rng = random.Random(seed)  # jitter only
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        try:
            for _ in range(workers * 2):
                job = next(it, None)
                if job is None:
                    break
                pending.add(
                    pool.submit(
                        _run_job, network, job, bucket, max_retries, backoff_s, rng, request
                    )
                )
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    job, (status, tags, error, attempts) = fut.result()
                    cache.put(job.key, job.kind, status, tags, error, attempts)
                    counts[status] += 1
                    done += 1
                    bar.update(1)
                    if stop_after is not None and done >= stop_after:
                        raise KeyboardInterrupt
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.add(
                            pool.submit(
                                _run_job, network, nxt, bucket, max_retries, backoff_s, rng, request
                            )
                        )
        except PermanentError as err:
            for f in pending:
                f.cancel()
            raise PipelineError(
                f"{err}: stopping. Check LASTFM_API_KEY (or --api-key); "
                f"{done:,} answers so far are saved in the cache"
            ) from None
        except KeyboardInterrupt:
            for f in pending:
                f.cancel()
            bar.close()
            raise
    bar.close()
    return counts


def fetch_todo(jobs: list[Job], todo: set[str], cache: TagCache, network, cfg: TagsConfig) -> dict:
    """``run_fetch`` of the jobs whose keys are in ``todo``, with ``cfg``'s limits."""
    return run_fetch(
        [j for j in jobs if j.key in todo],
        cache,
        network,
        cfg.rate,
        cfg.workers,
        cfg.max_retries,
        cfg.backoff,
        cfg.seed,
    )


def _run_job(network, job, bucket, max_retries, backoff_s, rng, request):
    return job, fetch_one(network, job, bucket, max_retries, backoff_s, rng, request)


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
        key = f"track:{mbid}" if mbid else f"track:{artist}\t{title}"
        jobs.append(Job(key, "track", mbid, artist, title))
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
    df = pd.read_csv(
        path, sep=sep, dtype=str, keep_default_na=False, quoting=3 if sep == "\t" else 0
    )
    missing = [c for c in ("artist", "track", "tag", "weight") if c not in df.columns]
    if missing:
        raise PipelineError(
            f"{path}: missing column(s) {missing}; expected artist, track, tag, weight"
        )
    w = pd.to_numeric(df["weight"], errors="coerce")
    if w.isna().any():
        bad = int(np.flatnonzero(w.isna().to_numpy())[0]) + 2
        raise PipelineError(
            f"{path}, line {bad}: weight {df['weight'].iloc[bad - 2]!r} is not a number"
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
    layout: Layout, window: str, args: TagsConfig, api_key: str | None
) -> dict | None:
    d = layout.sessions(window)
    vocab = read_table(d / "vocab.parquet", "vocab", "sessionize.py")
    items = vocab["item_idx"].to_numpy()
    per_item: dict[int, list] = {}
    source = None
    if args.tags_file:
        df = read_tags_file(Path(args.tags_file))
        grouped = {
            k: list(zip(g["tag"], g["weight"]))
            for k, g in df.groupby(["artist", "track"], sort=False)
        }
        for item, a, t in zip(
            items, vocab["artist_name"].astype(str), vocab["track_name"].astype(str)
        ):
            if (a, t) in grouped:
                per_item[int(item)] = grouped[(a, t)]
        source = f"file {args.tags_file}"
    elif api_key:
        cache = TagCache(Path(args.cache) if args.cache else layout.tag_cache())
        try:
            jobs = track_jobs(vocab)
            refresh = (
                time.time() - args.refresh_older_than * 86400 if args.refresh_older_than else None
            )
            todo = set(cache.todo([j.key for j in jobs], refresh))
            network = make_network(api_key, args.ws_server, args.ca_file)
            log(
                f"window {window}: {len(jobs):,} tracks, {len(todo):,} to ask "
                f"({len(jobs) - len(todo):,} cached); {args.workers} workers at "
                f"{args.rate:g} requests/s"
            )
            counts = fetch_todo(jobs, todo, cache, network, args)
            log(f"answers this run: {counts}")
            answers = cache.answers([j.key for j in jobs])
            for item, job in zip(items, jobs):
                status, tags = answers.get(job.key, ("missing", []))
                if status == "ok" and tags:
                    per_item[int(item)] = tags
            if args.artist_fallback:
                per_item.update(_artist_fallback(vocab, items, per_item, cache, network, args))
        finally:
            cache.close()
        source = "Last.fm API (pylast)"
    else:
        print(
            "No Last.fm API key (set LASTFM_API_KEY or pass --api-key) and no --tags-file: "
            "skipping tags; train.py will train the model without tags."
        )
        return None
    tags, track_tags = build_tables(vocab, per_item, args.top_k, args.min_tag_count)
    out = make(layout.tags(window))
    pq.write_table(pa.Table.from_pandas(tags, preserve_index=False), out / "tags.parquet")
    pq.write_table(
        pa.Table.from_pandas(track_tags, preserve_index=False), out / "track_tags.parquet"
    )
    tagged = set(track_tags["item_idx"].tolist())
    meta = {
        "source": source,
        "tracks": int(len(vocab)),
        "tracks_with_tags": len(tagged),
        "distinct_tags": int(len(tags)),
        "top_k": args.top_k,
        "min_tag_count": args.min_tag_count,
        "vocab_md5": read_json(d / "meta.json")["vocab_md5"],
    }
    if args.require_tags:
        meta["require_tags_effect"] = require_tags_effect(layout, window, tagged)
    write_json(out / "meta.json", meta)
    return meta


def _artist_fallback(vocab, items, per_item, cache, network, args) -> dict[int, list]:
    """Artist top tags for tracks without tags, one request per artist."""
    need = [
        (int(i), a)
        for i, a in zip(items, vocab["artist_name"].astype(str))
        if int(i) not in per_item
    ]
    artists = sorted({a for _, a in need})
    jobs = [Job(f"artist:{a}", "artist", "", a, "") for a in artists]
    todo = set(cache.todo([j.key for j in jobs], None))
    fetch_todo(jobs, todo, cache, network, args)
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
    ap = argparse.ArgumentParser(description="Fetch Last.fm top tags for each track (pylast).")
    cfgs.add_data_dir(ap)
    cfgs.add_flags(ap, TagsConfig, "tags")
    args = ap.parse_args(argv)
    return Layout.at(args.data_dir), cfgs.from_args(TagsConfig, args)


def main(argv=None) -> None:
    layout, cfg = parse_args(argv)
    api_key = cfg.api_key or os.environ.get("LASTFM_API_KEY") or None
    metas = {}
    for window in [w for w in cfg.windows.split(",") if w]:
        meta = tags_for_window(layout, window, cfg, api_key)
        if meta is None:
            return
        metas[window] = meta
    md = report(metas)
    (make(layout.reports()) / "tags.md").write_text(md)
    print(md)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
