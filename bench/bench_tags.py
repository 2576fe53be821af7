"""Benchmark: fetch_tags throughput against the local Last.fm server, and cached reruns.

1. Limit 5 requests/s, 50 ms server latency: sustained throughput (target >= 95%).
2. No limit: requests/s with 1, 2, 4 and 8 workers.
3. A rerun of a fully cached window of ``--cached-tracks`` tracks (default
   180,000, the size of the study's 1-month window): time to find nothing is
   missing and build the tag tables.

    python bench/bench_tags.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

KEY = "0123456789abcdef0123456789abcdef"


def jobs(n: int, prefix: str):
    import fetch_tags as ft

    return [
        ft.Job(f"track:{prefix}{i:08d}", "track", f"{prefix}{i:08d}", "A", "T") for i in range(n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limited-requests", type=int, default=100)
    ap.add_argument("--unlimited-requests", type=int, default=200)
    ap.add_argument("--cached-tracks", type=int, default=180_000)
    args = ap.parse_args()
    import fetch_tags as ft
    from fake_lastfm import FakeLastFM

    tmp = Path(tempfile.mkdtemp())
    tags = {f"track:m{i:08d}": [("rock", 100), ("indie", 50)] for i in range(100_000)}
    srv = FakeLastFM(tags, KEY, tmp, latency_s=0.05)
    net = ft.make_network(KEY, srv.ws_server, srv.ca_file)
    try:
        cache = ft.TagCache(tmp / "a.sqlite")
        t = time.perf_counter()
        ft.run_fetch(
            jobs(args.limited_requests, "m"), cache, net, rate=5, workers=4, progress=False
        )
        wall = time.perf_counter() - t
        # n requests under a 1-token bucket need (n-1)/rate seconds at best
        rate = (args.limited_requests - 1) / wall
        print(
            f"limit 5 req/s, 4 workers, 50 ms latency: {rate:.2f} req/s sustained "
            f"({rate / 5:.0%} of the limit; max in any 1 s at the server: "
            f"{srv.max_per_second()})"
        )
        for workers in (1, 2, 4, 8):
            cache = ft.TagCache(tmp / f"w{workers}.sqlite")
            t = time.perf_counter()
            ft.run_fetch(
                jobs(args.unlimited_requests, "m"),
                cache,
                net,
                rate=0,
                workers=workers,
                progress=False,
            )
            print(
                f"no limit, {workers} worker(s): "
                f"{args.unlimited_requests / (time.perf_counter() - t):.1f} req/s"
            )
    finally:
        srv.close()
    # Cached rerun at full size.
    n = args.cached_tracks
    cache = ft.TagCache(tmp / "big.sqlite")
    rng = np.random.default_rng(0)
    names = [f"tag{i}" for i in range(16_000)]
    rows = [
        (
            f"track:c{i:08d}",
            "track",
            "ok",
            json.dumps([[names[rng.integers(16_000)], 100], [names[rng.integers(16_000)], 40]]),
            None,
            time.time(),
            1,
        )
        for i in range(n)
    ]
    cache.db.executemany("INSERT INTO answers VALUES (?,?,?,?,?,?,?)", rows)
    cache.db.commit()
    vocab = pd.DataFrame(
        {
            "item_idx": np.arange(1, n + 1),
            "track_mbid": [f"c{i:08d}" for i in range(n)],
            "artist_name": "A",
            "track_name": "T",
        }
    )
    t = time.perf_counter()
    js = ft.track_jobs(vocab)
    todo = cache.todo([j.key for j in js], None)
    answers = cache.answers([j.key for j in js])
    per_item = {i + 1: answers[j.key][1] for i, j in enumerate(js)}
    ft.build_tables(vocab, per_item, 5, 2)
    print(
        f"cached rerun of {n:,} tracks: {time.perf_counter() - t:.1f} s "
        f"({len(todo)} requests needed)"
    )


if __name__ == "__main__":
    main()
