"""Benchmark: training throughput (examples/s) and peak memory of model.py.

On a GPU (JAX): device name and peak device memory too; see bench/gpu_run.sh.

Random sessions over ``--items`` tracks (Zipf popularity), prefix lengths
uniform in 1..``--input-len`` (mean 10.5 at 20; the generated 1-month window's
training prefixes average 9.1), the sizes as flags so that a comparison with
a peer (e.g. RecBole's NARM at 30K items, embedding 64, hidden 100, batch 256,
prefixes up to 20) can be rerun. Batches come from ``train.LengthBuckets``
as in training (``--bucket-step 0``: full-width batches). The first epoch
(tracing / compilation) is excluded. Two figures: examples / median epoch
time, and a noise-robust one (this machine is shared: identical epochs vary
up to 2x) from per-batch times, per batch width the median batch time times
the number of batches of that width, median over epochs.

    python bench/bench_model.py --items 30000 --examples 60000 --epochs 4
    KERAS_BACKEND=jax python bench/bench_model.py ...     # same code on JAX
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def device_info(keras) -> tuple[str, float | None]:
    """The device the backend trains on ('cpu' or its name), and its peak memory
    in GB where the backend reports it (JAX on a GPU)."""
    if keras.backend.backend() == "jax":
        import jax

        d = jax.devices()[0]
        peak = (d.memory_stats() or {}).get("peak_bytes_in_use")
        name = "cpu" if d.platform == "cpu" else f"{d.platform}: {d.device_kind}"
        return name, round(peak / 1e9, 2) if peak is not None else None
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return (f"gpu: {gpus[0].name}" if gpus else "cpu"), None
    return keras.backend.backend(), None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=30_000)
    ap.add_argument("--examples", type=int, default=60_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--n-tags", type=int, default=0, help="tag vocabulary size (0: no tags)")
    ap.add_argument("--jit", default="auto", help="jit_compile: auto, true or false")
    ap.add_argument("--mixed-precision", action="store_true", help="mixed_float16 (GPU)")
    ap.add_argument("--bf16", action="store_true", help="mixed_bfloat16 (CPUs with AVX512_BF16)")
    ap.add_argument(
        "--bucket-step",
        type=int,
        default=-1,
        help="as train.py (-1: the backend's default; 0: full-width batches)",
    )
    ap.add_argument(
        "--keras-adam", action="store_true", help="Keras' own Adam instead of train.FusedAdam"
    )
    from lastfm import config as cfgs
    from model import ModelConfig, build_model

    cfgs.add_flags(ap, ModelConfig, "model (model.ModelConfig)")
    args = ap.parse_args()
    cfg = cfgs.from_args(ModelConfig, args)
    import keras

    from train import FusedAdam, LengthBuckets, bucket_step

    if args.mixed_precision or args.bf16:
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16" if args.bf16 else "mixed_float16")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    pop = 1.0 / np.arange(1, args.items + 1) ** 0.9
    pop /= pop.sum()
    L = cfg.input_len
    lengths = rng.integers(1, L + 1, size=args.examples)
    x = rng.choice(np.arange(1, args.items + 1), p=pop, size=(args.examples, L))
    x[np.arange(L)[None, :] >= lengths[:, None]] = 0
    x = x.astype(np.int32)
    y = rng.choice(np.arange(1, args.items + 1), p=pop, size=args.examples).astype(np.int32)
    model = build_model(args.items, cfg, n_tags=args.n_tags)
    if args.n_tags and cfg.tags:
        k = cfg.tags_per_track
        ids = rng.integers(1, args.n_tags + 1, size=(args.items + 1, k)).astype(np.int32)
        model.set_tags(ids, rng.random((args.items + 1, k)).astype(np.float32))
    if cfg.loss == "sampled":  # negatives by the generated popularity
        model.set_sampler(np.r_[0.0, pop])
    jit = {"auto": "auto", "true": True, "false": False}[args.jit.lower()]
    adam = keras.optimizers.Adam if args.keras_adam else FusedAdam
    model.compile(optimizer=adam(1e-3, global_clipnorm=1.0), jit_compile=jit)
    step = bucket_step(args.bucket_step)
    batches = LengthBuckets(x, lengths, y, args.batch_size, seed=0, step=step)
    times, robust = [], []

    class Timer(keras.callbacks.Callback):
        """Epoch wall time, and a noise-robust estimate: per batch width, the
        median batch time times the number of batches of that width."""

        def on_epoch_begin(self, epoch, logs=None):
            self.widths, self.batch_s = batches.widths.copy(), []
            self.t = time.perf_counter()

        def on_train_batch_begin(self, batch, logs=None):
            self.tb = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.batch_s.append(time.perf_counter() - self.tb)

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.t)
            w, b = self.widths[: len(self.batch_s)], np.array(self.batch_s)
            robust.append(sum((w == u).sum() * np.median(b[w == u]) for u in np.unique(w)))

    model.fit(batches, epochs=args.epochs, verbose=0, callbacks=[Timer()])
    steady = times[1:] or times
    eps = args.examples / statistics.median(steady)
    eps_robust = args.examples / statistics.median(robust[1:] or robust)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    device, device_peak_gb = device_info(keras)
    result = {
        "backend": keras.backend.backend(),
        "items": args.items,
        "batch": args.batch_size,
        "n_tags": args.n_tags,
        "jit": args.jit,
        "bucket_step": step,
        "bf16": args.bf16,
        "keras_adam": args.keras_adam,
        "model": cfgs.as_dict(cfg),
        "examples_per_s": round(eps),
        "examples_per_s_batch_medians": round(eps_robust),
        "epoch_s": [round(t, 1) for t in times],
        "peak_rss_gb": round(peak_gb, 2),
        "device": device,
        "device_peak_gb": device_peak_gb,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
