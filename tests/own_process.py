"""Run test files in a pytest process of their own (a process holds one Keras backend;
Dask's clusters leave state in the process that ran them)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# XLA's compiler (JAX and TensorFlow's XLA paths) without its expensive optimisation passes:
# these tests compile many small graphs once each and check values, never speed.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def run_pytest(files: list[str], env: dict | None = None, timeout: int = 1800) -> None:
    """``pytest files`` in one process (no xdist); fails the calling test with the tail of
    its output unless every test there passed (none skipped). ``XLA_FLAGS`` given in
    ``env`` are kept, with ``FAST_COMPILE`` added."""
    env = dict(env or {})
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", *files, "-n", "0", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]
    # the summary line ("57 passed, 1 warning in 23.6s"), not the whole output: test names
    # (in --durations' list) may hold the words
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary), proc.stdout[-3000:]
    assert not re.search(r"\b\d+ (skipped|deselected|xfailed)\b", summary), proc.stdout[-3000:]
