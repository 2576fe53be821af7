"""Benchmark: the study's network trained from streamed part files over a 1M-track
catalogue with the sampled loss (``train.py --stream --loss sampled``), on the CPU.

The training split is ``bench_eval_stream``'s generated part files (``--train-plays``
Zipf-popular plays over ``--items`` tracks, whole sessions per part). Each repeat, in a
fresh process: a ``ShuffleStream`` (``--buffer`` examples) through ``train.StreamBatches``
into ``model.fit`` for ``--steps`` batches of ``--batch-size`` (a part of an epoch: a whole
one takes hours here), negatives drawn by the split's plays^0.75. Reported: examples/s
over the steps after the first ``--warmup`` (median batch time), the process's peak RSS,
and the epoch time this rate gives for the split, for 200M events and for LFM-1b's
1,088,161,692 (taking one example per play, an upper bound: a session's first play is
no example).

    python bench/bench_train_stream.py --train-plays 20000000 --items 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_eval_stream import write_parts  # noqa: E402
from children import median_of_children  # noqa: E402

LFM_1B_EVENTS = 1_088_161_692


def run_one(case: str, args) -> dict:
    import keras
    import pyarrow.parquet as pq

    from lastfm.stream import ShuffleStream
    from model import ModelConfig, build_model
    from train import FusedAdam, StreamBatches

    files = write_parts(args)
    plays = np.zeros(args.items + 1)
    for f in files:
        items = pq.read_table(f, columns=["item_idx"]).column(0).to_numpy()
        plays += np.bincount(items, minlength=args.items + 1)
    keras.utils.set_random_seed(0)
    cfg = ModelConfig(tags=False, loss="sampled")
    stream = ShuffleStream(files, cfg.input_len, args.batch_size, args.buffer, seed=0)
    model = build_model(args.items, cfg)
    model.set_sampler(plays)
    model.compile(optimizer=FusedAdam(1e-3, global_clipnorm=1.0))
    batch_s: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.t = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            batch_s.append(time.perf_counter() - self.t)

    t0 = time.perf_counter()
    model.fit(
        StreamBatches(stream),
        epochs=1,
        steps_per_epoch=args.steps,
        verbose=0,
        shuffle=False,
        callbacks=[Timer()],
    )
    wall = time.perf_counter() - t0
    eps = args.batch_size / statistics.median(batch_s[args.warmup :])
    return {
        "case": case,
        "backend": keras.backend.backend(),
        "items": args.items,
        "split_examples": stream.n_examples,
        "steps": len(batch_s),
        "examples_per_s": round(eps),
        "epoch_hours_split": round(stream.n_examples / eps / 3600, 1),
        "epoch_hours_200M": round(200e6 / eps / 3600, 1),
        "epoch_hours_lfm1b": round(LFM_1B_EVENTS / eps / 3600, 1),
        "seconds": round(wall, 1),
        "peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-plays", type=int, default=20_000_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--work", default="data/bench/eval_stream")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--buffer", type=int, default=1_000_000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one run
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)), flush=True)
        return
    write_parts(args)
    median_of_children(__file__, sys.argv[1:], ["sampled"], args.repeats)


if __name__ == "__main__":
    main()
