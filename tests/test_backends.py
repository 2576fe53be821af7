"""The network tests (``test_networks.py``, ``test_gru_masks.py``) under JAX and torch,
each in a pytest process of its own (Keras picks its backend once per process), against
weights and logits written here under TensorFlow."""

from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")

from own_process import run_pytest  # noqa: E402


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_network_tests_pass_under(backend, tmp_path):
    pytest.importorskip(backend)
    from test_networks import write_reference

    assert keras.backend.backend() == "tensorflow"
    write_reference(tmp_path / "reference")
    env = {"KERAS_BACKEND": backend, "LASTFM_REFERENCE": str(tmp_path / "reference")}
    run_pytest(["tests/test_networks.py", "tests/test_gru_masks.py"], env, timeout=1200)
