"""The Dask engine's tests (``dask_engine_cases.py``), run in a pytest of their own.

Dask's clusters and clients leave state in the process that ran them; a later test in the
same process (the tag crawl's Ctrl-C tests) then lost its KeyboardInterrupt. A separate
process keeps every other test's process free of it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]


def test_the_dask_engine_cases_pass_in_their_own_process():
    cases = Path(__file__).with_name("dask_engine_cases.py")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(cases), "-n", "0", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
