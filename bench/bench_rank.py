"""Benchmark: exact full ranking over a large catalogue (the network and SR).

Generated sessions over ``--items`` tracks (Zipf popularity, sessions of 2-20 plays):
``--train-plays`` of them fit SR, ``--events`` test events are ranked against every track
(ranks, ties and the top 20, as the evaluation stage does) by

- ``network``: the study's network (untrained weights: the cost does not depend on them)
  through ``metrics.device_ranker``, which scores the catalogue in chunks above
  ``metrics.CHUNK_ABOVE`` tracks (memory bounded by batch x chunk);
- ``sr``: sequential rules through ``metrics.ranker_from_scorer`` (sparse scores, never
  densified).

Each method runs in a fresh process per repeat: wall time of the ranking and the peak RSS
of that process. Prints one JSON line per run and the medians.

    python bench/bench_rank.py --items 1000000 --events 100000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_eval_stream import sessions  # noqa: E402 - generated Zipf sessions
from children import median_of_children  # noqa: E402


def run_one(method: str, args) -> dict:
    from lastfm.data import make_events
    from lastfm.metrics import evaluate

    test = sessions(args.events + args.events // 5, args.items, seed=2)
    events = make_events(test, 20).subset(np.arange(args.events))
    if method == "network":
        from lastfm.metrics import device_ranker
        from model import ModelConfig, build_model

        model = build_model(args.items, ModelConfig(tags=False), seed=0)
        ranker = device_ranker(model)
    else:
        from lastfm.baselines import SequentialRules
        from lastfm.metrics import ranker_from_scorer

        sr = SequentialRules().fit(sessions(args.train_plays, args.items, seed=1), args.items)
        ranker = ranker_from_scorer(sr.scorer)
    t0 = time.perf_counter()
    res = evaluate(ranker, events, args.items, batch_size=args.batch_size)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # GB (ru_maxrss: KB)
    return {
        "method": method,
        "items": args.items,
        "events": len(events),
        "seconds": round(wall, 1),
        "events_per_s": round(len(events) / wall),
        "peak_gb": round(peak, 2),
        "MRR@20": round(res.summary["MRR@20"], 5),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--train-plays", type=int, default=20_000_000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--methods", default="network,sr")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one method, once
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)), flush=True)
        return
    median_of_children(__file__, sys.argv[1:], args.methods.split(","), args.repeats)


if __name__ == "__main__":
    main()
