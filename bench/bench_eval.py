"""Benchmark: baselines + full-ranking evaluation on a sessionized window.

Times the evaluation stage's whole baseline run (tuning on validation, test evaluation of
POP, S-POP, SR, Item-kNN, V-SKNN, bootstrap intervals) and, separately, the
evaluator alone (ranks and top-20 of precomputed scores: events scored per s).

    python bench/bench_eval.py --data data --window 1m [--repeats 3] [--evaluator-only]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--window", default="1m")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--evaluator-only", action="store_true", help="skip the baselines' runs")
    args = ap.parse_args()
    from lastfm.data import load_splits, make_events
    from lastfm.evaluate import EvalConfig, run_evaluation
    from lastfm.metrics import evaluate, ranker_from_scorer
    from lastfm.paths import Layout

    layout = Layout.at(args.data.resolve())
    splits, vocab, _ = load_splits(layout, args.window)
    n = len(vocab)
    ev = make_events(splits["test"], 50)
    rng = np.random.default_rng(0)
    bank = rng.random((512, n + 1), dtype=np.float32)

    def scorer(prefixes, lengths):  # constant-time: isolates the evaluator's own cost
        return bank[: len(prefixes)]

    rates = []
    for _ in range(args.repeats):
        res = evaluate(ranker_from_scorer(scorer), ev, n)
        rates.append(len(ev) / res.seconds)
    print(f"window {args.window}: {n:,} tracks, {len(ev):,} test events")
    print(f"evaluator alone: {statistics.median(rates):,.0f} events/s (median of {args.repeats})")
    if args.evaluator_only:
        return
    walls = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        out = run_evaluation(layout, EvalConfig(window=args.window, model=False))
        walls.append(time.perf_counter() - t)
    print(
        f"all baselines (tuning + test + 1000 bootstrap resamples): "
        f"{statistics.median(walls):.0f} s (median of {args.repeats}; runs "
        f"{', '.join(f'{w:.0f}' for w in walls)})"
    )
    for name, r in out["methods"].items():
        print(
            f"  {name:9s} HR@20 {r['HR@20']:.4f} MRR@20 {r['MRR@20']:.4f} "
            f"{r['events_per_s']:,.0f} events/s"
        )


if __name__ == "__main__":
    main()
