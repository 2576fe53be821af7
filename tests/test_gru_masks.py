"""Prefixes with plays of unseen tracks (id 0, ``sessionize.py --unseen keep``): inside a
prefix, or the whole prefix. Every GRU runs on right-padded rows
(``lastfm.nn.run_right_padded``: without a mask on JAX and torch, whose fused kernels take
none; with a right-padded one on TensorFlow); here both are checked to equal Keras' masked
GRU, and the networks' outputs to stay finite and unchanged."""

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
def test_every_gru_gets_no_mask_or_a_right_padded_never_empty_one(arch, gru_masks):
    """JAX and torch: no mask reaches a GRU (their fused kernels take none; torch loops
    per step with one). TensorFlow: a right-padded mask, never all False (what cuDNN
    takes)."""
    m = build_model(V, ModelConfig(arch=arch, input_len=6, emb_dim=8, hidden=6, fc_dim=8), seed=1)
    gru_masks.clear()
    logits = keras.ops.convert_to_numpy(m.logits(m(KEPT)))
    assert gru_masks, "no GRU was called"
    for mask in gru_masks:
        if keras.backend.backend() != "tensorflow":
            assert mask is None
            continue
        assert mask is not None and mask.shape == KEPT.shape
        n = mask.sum(axis=1)
        assert (n >= 1).all(), "a fully masked row (cuDNN refuses it)"
        assert np.array_equal(mask, np.arange(mask.shape[1])[None, :] < n[:, None])
    assert np.isfinite(logits[:, 1:]).all()


@pytest.mark.parametrize("backwards", [False, True])
def test_an_unmasked_gru_on_right_padded_rows_equals_the_masked_one(backwards):
    """``run_right_padded`` gives the masked layer's outputs at every real position and
    its final state, forwards and backwards, for rows of every length (on TensorFlow it
    runs the masked layer itself; the other backends run the unmasked path)."""
    from keras import ops

    from lastfm.nn import run_right_padded

    rng = np.random.default_rng(3)
    lengths = np.array([1, 2, 5, 7, 7, 3])
    mask = np.arange(7)[None, :] < lengths[:, None]
    x = rng.normal(size=(6, 7, 4)).astype(np.float32)
    x[~mask] = rng.normal(size=x[~mask].shape)  # padding that must not leak in
    gru = keras.layers.GRU(5, return_sequences=True, return_state=True, go_backwards=backwards)
    seq_ref, last_ref = (keras.ops.convert_to_numpy(t) for t in gru(x, mask=mask))
    if backwards:  # Keras returns a backward layer's outputs in reading order
        seq_ref = seq_ref[:, ::-1]
    seq, last = (ops.convert_to_numpy(t) for t in run_right_padded(gru, x, mask))
    np.testing.assert_allclose(last, last_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seq[mask], seq_ref[mask], rtol=1e-5, atol=1e-6)
    # and a bidirectional layer's sequence, which Keras aligns itself
    # inside Bidirectional (whose layers give zeros at masked steps): outputs and states
    bi = keras.layers.Bidirectional(keras.layers.GRU(5, return_sequences=True, return_state=True))
    both, f_state, b_state = (ops.convert_to_numpy(t) for t in bi(x, mask=mask))
    f, f_last = run_right_padded(bi.forward_layer, x, mask)
    b, b_last = run_right_padded(bi.backward_layer, x, mask)
    got = np.concatenate([ops.convert_to_numpy(f), ops.convert_to_numpy(b)], axis=-1)
    np.testing.assert_allclose(got[mask], both[mask], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(f_last), f_state, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.convert_to_numpy(b_last), b_state, rtol=1e-5, atol=1e-6)


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
