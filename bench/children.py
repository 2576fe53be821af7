"""Run a benchmark's cases each in a fresh process per repeat (its own peak RSS), and
print every run and the medians as JSON lines."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys


def median_of_children(script: str, argv: list[str], cases: list[str], repeats: int) -> None:
    """``script *argv --one CASE`` ``repeats`` times per case; the child prints one JSON
    line with ``seconds`` and ``peak_gb`` last."""
    for case in cases:
        runs = []
        for _ in range(repeats):
            cmd = [sys.executable, script, *argv, "--one", case]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(runs[-1]), flush=True)
        summary = {
            "case": case,
            "median_seconds": statistics.median(r["seconds"] for r in runs),
            "runs": [r["seconds"] for r in runs],
            "median_peak_gb": statistics.median(r["peak_gb"] for r in runs),
        }
        print(json.dumps(summary), flush=True)
