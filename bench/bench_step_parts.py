"""Time the parts of one training step, forward and backward (milliseconds).

Where the time of ``bench_model.py``'s step goes, at its sizes: the
output side (scores against all tracks and the full-softmax loss) in the
two forms, the model's and Keras' sparse cross-entropy; the Bi-GRU; and one
Adam update of a (V+1, E) table, Keras' own against ``train.FusedAdam``.
Each figure is the median of ``--repeats`` timings of ``--steps`` calls of a
step compiled with ``tf.function`` (a profile of the TensorFlow CPU path, so
TensorFlow only; under JAX, XLA fuses these element-wise passes itself).
Prints one JSON line.

    python bench/bench_step_parts.py [--items 30000] [--emb-dim 64] [--hidden 100]
                                     [--batch-size 256] [--steps 10] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def timed(fn, steps: int, repeats: int) -> float:
    """Median milliseconds per call of ``fn`` (after one warm-up call)."""
    import keras

    keras.ops.convert_to_numpy(fn()[0])
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            out = fn()
        keras.ops.convert_to_numpy(out[0])  # the results are ready
        ts.append((time.perf_counter() - t) / steps * 1e3)
    return round(statistics.median(ts), 2)


def compiled_grad(loss_fn, variables):
    """A compiled function returning the gradients of ``loss_fn()`` w.r.t. ``variables``."""
    import tensorflow as tf

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn()
        return tape.gradient(loss, [v.value for v in variables])

    return step


def adam_step(opt, g, var):
    """A compiled Adam update of ``var`` with the gradient ``g``."""
    import tensorflow as tf

    @tf.function
    def step():
        opt.apply([g], [var])
        return [var.value]

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=30_000)
    ap.add_argument("--emb-dim", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--length", type=int, default=10, help="prefix width of the GRU batch")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()

    import keras
    from keras import layers, ops

    if keras.backend.backend() != "tensorflow":
        raise SystemExit(
            "bench_step_parts.py profiles the TensorFlow backend; "
            "unset KERAS_BACKEND or set it to tensorflow"
        )

    from model import ModelConfig, build_model
    from train import FusedAdam

    rng = np.random.default_rng(0)
    B, V, E = args.batch_size, args.items, args.emb_dim
    model = build_model(V, ModelConfig(input_len=args.length, emb_dim=E, hidden=args.hidden))
    model.out_bias.assign(rng.normal(size=V + 1).astype(np.float32) * 0.1)
    rep = keras.Variable(rng.normal(size=(B, E)).astype(np.float32), name="rep")
    y = ops.convert_to_tensor(rng.integers(1, V + 1, size=B).astype(np.int32))
    out_vars = [rep, model.item_emb.embeddings, model.out_bias]
    res = {"backend": keras.backend.backend(), "items": V, "emb": E, "batch": B}

    def model_loss():
        return ops.mean(model.full_softmax_nll(rep.value, y))

    def keras_loss():
        return ops.mean(
            keras.losses.sparse_categorical_crossentropy(
                y, model.logits(rep.value), from_logits=True
            )
        )

    res["output_model_loss_ms"] = timed(
        compiled_grad(model_loss, out_vars), args.steps, args.repeats
    )
    res["output_keras_sparse_ce_ms"] = timed(
        compiled_grad(keras_loss, out_vars), args.steps, args.repeats
    )

    L, H = args.length, args.hidden
    x = ops.convert_to_tensor(rng.normal(size=(B, L, E)).astype(np.float32))
    lengths = rng.integers(1, L + 1, size=B)
    mask = ops.convert_to_tensor(np.arange(L)[None, :] < lengths[:, None])
    bigru = layers.Bidirectional(layers.GRU(H, return_sequences=True, return_state=True))
    bigru(x, mask=mask)

    def gru_loss():
        seq, fwd, bwd = bigru(x, mask=mask, training=True)
        return ops.sum(seq) + ops.sum(fwd) + ops.sum(bwd)

    res["bigru_ms"] = timed(
        compiled_grad(gru_loss, bigru.trainable_variables), args.steps, args.repeats
    )
    res["bigru_length"] = L

    g = ops.convert_to_tensor(rng.normal(size=(V + 1, E)).astype(np.float32))
    for name, cls in (("adam_keras_ms", keras.optimizers.Adam), ("adam_fused_ms", FusedAdam)):
        var = keras.Variable(rng.normal(size=(V + 1, E)).astype(np.float32))
        opt = cls(1e-3)
        opt.build([var])
        res[name] = timed(adam_step(opt, g, var), args.steps, args.repeats)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
