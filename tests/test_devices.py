"""Data-parallel training (``devices_cases.py``) on 2 virtual CPU devices, under JAX and
under TensorFlow, each in a process of its own."""

from __future__ import annotations

import pytest
from own_process import run_pytest


@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_data_parallel_cases_pass_under(backend):
    pytest.importorskip(backend)
    env = {"KERAS_BACKEND": backend, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    run_pytest(["tests/devices_cases.py"], env, timeout=900)
