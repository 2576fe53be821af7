"""Benchmark: memory of the training examples, in memory vs streamed (``train.py --stream``).

For a window's training split (one Parquet file, or a folder of parts from
``sessionize.py --engine dask``), each in a fresh process per repeat:

- ``memory``: what ``train.py`` holds without ``--stream``: the split loaded and every
  example built (``data.make_events``), then one pass over ``train.LengthBuckets``;
- ``stream``: one epoch of ``lastfm.stream.ShuffleStream`` (``--buffer`` examples).

Wall time and peak RSS of the process; the examples counted (both must agree). No model
is trained: the figure is what the data path costs.

    python bench/bench_stream.py --data data/bench/stream --window 6m --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from children import median_of_children  # noqa: E402


def run_one(mode: str, args) -> dict:
    from lastfm.paths import Layout

    layout = Layout.at(args.data)
    t0 = time.perf_counter()
    if mode == "memory":
        from lastfm.data import load_splits, make_events
        from train import LengthBuckets

        splits, _, _ = load_splits(layout, args.window, ("train",))
        ev = make_events(splits["train"], 20)
        batches = LengthBuckets(ev.prefixes, ev.lengths, ev.targets, 256, step=1)
        n = sum(len(batches[i][1]) for i in range(len(batches)))
    else:
        from lastfm.stream import ShuffleStream, split_files

        files = split_files(layout.sessions(args.window) / "train.parquet")
        stream = ShuffleStream(files, 20, 256, args.buffer, seed=0)
        n = sum(len(y) for _, y in stream.epoch(0))
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # GB (KB units)
    return {"mode": mode, "examples": n, "seconds": round(wall, 1), "peak_gb": round(peak, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--window", default="6m")
    ap.add_argument("--buffer", type=int, default=1_000_000)
    ap.add_argument("--modes", default="stream,memory")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one mode, once
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)), flush=True)
        return
    median_of_children(__file__, sys.argv[1:], args.modes.split(","), args.repeats)


if __name__ == "__main__":
    main()
