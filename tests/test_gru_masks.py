"""Prefixes with plays of unseen tracks (id 0, ``sessionize.py --unseen keep``): inside a
prefix, or the whole prefix. Keras' cuDNN GRU (TensorFlow on a GPU) takes only
right-padded masks that are never all False; here, on the CPU, every GRU of every
network is checked to get such a mask, and the outputs to stay finite and unchanged."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from model import ModelConfig, build_model  # noqa: E402

V = 30
RNN_ARCHS = ["bigru_att", "narm", "gru4rec"]
ALL_ARCHS = RNN_ARCHS + ["sasrec", "stamp"]
# a prefix of only unseen plays (all 0), unseen plays inside, one at the end, an empty row
KEPT = np.array(
    [[0, 0, 0, 0, 0, 0], [5, 0, 7, 9, 0, 0], [0, 5, 7, 0, 9, 0], [4, 0, 0, 0, 0, 0]], np.int32
)
SPLICED = np.array(
    [[0, 0, 0, 0, 0, 0], [5, 7, 9, 0, 0, 0], [5, 7, 9, 0, 0, 0], [4, 0, 0, 0, 0, 0]], np.int32
)


@pytest.fixture
def gru_masks(monkeypatch):
    """Every mask a GRU layer is called with."""
    seen = []
    original = keras.layers.GRU.call

    def call(self, sequences, initial_state=None, mask=None, training=False):
        seen.append(None if mask is None else keras.ops.convert_to_numpy(mask).astype(bool))
        return original(self, sequences, initial_state=initial_state, mask=mask, training=training)

    monkeypatch.setattr(keras.layers.GRU, "call", call)
    return seen


@pytest.mark.parametrize("arch", RNN_ARCHS)
def test_every_gru_gets_a_right_padded_never_empty_mask(arch, gru_masks):
    m = build_model(V, ModelConfig(arch=arch, input_len=6, emb_dim=8, hidden=6, fc_dim=8), seed=1)
    gru_masks.clear()
    logits = keras.ops.convert_to_numpy(m.logits(m(KEPT)))
    assert gru_masks, "no GRU was called"
    for mask in gru_masks:
        assert mask is not None and mask.shape == KEPT.shape
        n = mask.sum(axis=1)
        assert (n >= 1).all(), "a fully masked row (cuDNN refuses it)"
        right_padded = np.arange(mask.shape[1])[None, :] < n[:, None]
        assert np.array_equal(mask, right_padded), "a mask with holes (cuDNN refuses it)"
    assert np.isfinite(logits[:, 1:]).all()


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_unseen_plays_are_skipped_and_an_all_unseen_prefix_scores_finitely(arch):
    m = build_model(V, ModelConfig(arch=arch, input_len=6, emb_dim=8, hidden=6, fc_dim=8), seed=1)
    a = keras.ops.convert_to_numpy(m.logits(m(KEPT)))
    b = keras.ops.convert_to_numpy(m.logits(m(SPLICED)))
    assert np.isfinite(a[:, 1:]).all() and np.isfinite(b[:, 1:]).all()
    if arch != "sasrec":  # SASRec keeps an unseen play's position
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # the compiled inference step (what the ranker runs) takes the same inputs
    rep = keras.ops.convert_to_numpy(m.predict_on_batch(KEPT))
    assert np.isfinite(rep).all()
