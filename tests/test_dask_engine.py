"""The Dask engine's tests (``dask_engine_cases.py``), run in a pytest of their own.

Dask's clusters and clients leave state in the process that ran them; a later test in the
same process (the tag crawl's Ctrl-C tests) then lost its KeyboardInterrupt. A separate
process keeps every other test's process free of it.
"""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")

from own_process import run_pytest  # noqa: E402


def test_the_dask_engine_cases_pass_in_their_own_process():
    run_pytest(["tests/dask_engine_cases.py"])
