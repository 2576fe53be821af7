"""Data-parallel training on 2 virtual CPU devices (``test_devices.py`` runs this file in
a process of its own per backend: devices are fixed when the backend starts)."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

BACKEND = os.environ.get("KERAS_BACKEND", "tensorflow")
if BACKEND == "tensorflow":  # two logical CPUs, before TensorFlow starts
    import tensorflow as tf

    _cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(_cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import train as trainer  # noqa: E402
from lastfm.common import PipelineError  # noqa: E402
from lastfm.devices import data_parallel, even_batch  # noqa: E402
from model import ModelConfig, build_model  # noqa: E402

V = 30
CFG = ModelConfig(input_len=6, emb_dim=8, hidden=6, fc_dim=8, dropout=0.0)


def one_step(devices: int, init: list, x, y) -> list[np.ndarray]:
    """The trainable weights after one step of the global batch ``x`` from ``init``."""
    with data_parallel(devices) as used:
        assert used == devices
        m = build_model(V, CFG, seed=1)
        for v, w in zip(m.weights, init):
            v.assign(w)
        m.compile(optimizer=trainer.FusedAdam(0.01, global_clipnorm=1.0))
        m.fit(x, y, batch_size=len(y), epochs=1, verbose=0, shuffle=False)
        return [keras.ops.convert_to_numpy(v) for v in m.trainable_weights]


@pytest.mark.parametrize("rows", [64, 63])
def test_one_step_on_two_devices_equals_one_step_on_one(rows):
    """The same global batch gives the same weights on 2 devices as on 1 (63 rows:
    padded to 64 for 2 devices, the pad weighted 0)."""
    rng = np.random.default_rng(0)
    x = rng.integers(1, V + 1, size=(rows, 6)).astype(np.int32)
    x[:, 4:] = 0
    y = rng.integers(1, V + 1, size=rows).astype(np.int32)
    init = [keras.ops.convert_to_numpy(v) for v in build_model(V, CFG, seed=1).weights]
    if rows % 2:  # a batch that does not split evenly: train.py pads it, weighted 0
        one = one_step(1, init, x, y)
        x, y, w = even_batch(x, y, 2)
        with data_parallel(2):
            m = build_model(V, CFG, seed=1)
            for v, value in zip(m.weights, init):
                v.assign(value)
            m.compile(optimizer=trainer.FusedAdam(0.01, global_clipnorm=1.0))
            m.fit(x, y, sample_weight=w, batch_size=len(y), epochs=1, verbose=0, shuffle=False)
            two = [keras.ops.convert_to_numpy(v) for v in m.trainable_weights]
    else:
        one, two = one_step(1, init, x, y), one_step(2, init, x, y)
    start = build_model(V, CFG, seed=1)
    for v, value in zip(start.weights, init):
        v.assign(value)
    start = [keras.ops.convert_to_numpy(v) for v in start.trainable_weights]
    moved = max(float(np.abs(a - b).max()) for a, b in zip(one, start))
    assert moved > 1e-3  # the step did something
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_train_py_on_two_devices(pipeline_data, tmp_path):
    """train.py --devices 2: trains every example (uneven batches padded on JAX), records
    the devices; more devices than there are is one line."""
    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    flags = f"--data-dir {data} --window 3m --epochs 2 --emb-dim 16 --hidden 16 --fc-dim 16"
    flags += " --batch-size 127 --verbose 0 --transitions 4 --no-tensorboard --devices 2"
    record = trainer.train(*trainer.parse_args(flags.split()))
    assert record["devices"] == 2 and record["train"]["devices"] == 2
    chance = 20 / record["n_items"]  # HR@20 of a random ranking of the vocabulary
    assert max(r["valid_HR@20"] for r in record["history"]) > 2 * chance
    assert "transitions" in record
    with pytest.raises(PipelineError, match="--devices 3"):
        with data_parallel(3):
            pass


def test_track_tables_split_over_two_devices_take_the_same_step():
    """--shard-tracks 2 (JAX): each device holds half of every track vector (the tables'
    embedding dimension split, ModelParallel), and a step equals the one-device step.
    Other backends refuse it in one line."""
    if BACKEND != "jax":
        with pytest.raises(PipelineError, match="KERAS_BACKEND=jax only"):
            with data_parallel(2, shard_tracks=2):
                pass
        return
    rng = np.random.default_rng(4)
    x = rng.integers(1, V + 1, size=(64, 6)).astype(np.int32)
    x[:, 4:] = 0
    y = rng.integers(1, V + 1, size=64).astype(np.int32)
    init = [keras.ops.convert_to_numpy(v) for v in build_model(V, CFG, seed=1).weights]
    one = one_step(1, init, x, y)
    with data_parallel(2, shard_tracks=2) as used:
        assert used == 2
        m = build_model(V, CFG, seed=1)
        for v, value in zip(m.weights, init):
            v.assign(value)
        shards = m.item_emb.embeddings.value.addressable_shards
        assert len(shards) == 2 and all(s.data.shape == (V + 1, 4) for s in shards)
        m.compile(optimizer=trainer.FusedAdam(0.01, global_clipnorm=1.0))
        m.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
        two = [keras.ops.convert_to_numpy(v) for v in m.trainable_weights]
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(PipelineError, match="does not divide"):
        with data_parallel(2, shard_tracks=3):
            pass
