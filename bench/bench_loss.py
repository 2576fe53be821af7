"""Benchmark: the sampled loss against the full softmax, accuracy and speed.

Trains the same network on the same window twice (``train.py --loss full`` and ``--loss
sampled``, the same seed, epochs and flags) and prints each run's best validation MRR@20
and HR@20, its epochs' wall time and examples/s. Throughput at catalogue sizes no window
here has is ``bench_model.py --items N --loss full|sampled``.

    python bench/bench_loss.py --data data/bench/loss --window 1m --epochs 4 [train.py flags]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--window", default="1m")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--losses", default="full,sampled")
    args, extra = ap.parse_known_args()
    for loss in args.losses.split(","):
        out = args.data / "models" / f"loss-{loss}"
        cmd = [sys.executable, str(ROOT / "train.py"), "--data-dir", str(args.data)]
        cmd += ["--window", args.window, "--epochs", str(args.epochs), "--loss", loss]
        cmd += ["--out", str(out), "--verbose", "0", "--transitions", "0", *extra]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        wall = time.perf_counter() - t0
        record = json.loads((out / "config.json").read_text())
        hist = record["history"]
        best = max(hist, key=lambda r: r["valid_MRR@20"])
        print(
            json.dumps(
                {
                    "loss": loss,
                    "n_items": record["n_items"],
                    "train_examples": record["train_examples"],
                    "best_epoch": record["best_epoch"],
                    "valid_MRR@20": round(best["valid_MRR@20"], 4),
                    "valid_HR@20": round(best["valid_HR@20"], 4),
                    "wall_s": round(wall, 1),
                    "train_s": [r["train_s"] for r in hist],
                    "examples_per_s": [r["examples_per_s"] for r in hist],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
