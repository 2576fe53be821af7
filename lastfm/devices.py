"""Data-parallel training over several devices (``train.py --devices N``).

JAX: ``keras.distribution.DataParallel`` (the variables replicated, each batch split
over the devices; one program over the global batch). TensorFlow:
``tf.distribute.MirroredStrategy`` (a replica per device, the gradients summed;
``NextItemModel.compute_loss`` takes each replica's share). torch: Keras has no
data-parallel API for it; one device. Several hosts with JAX: the same command on each,
with ``KERAS_DISTRIBUTION_JOB_ADDRESSES``, ``..._NUM_PROCESSES`` and ``..._PROCESS_ID`` set
(``keras.distribution.initialize`` joins them first; not tested here); with TensorFlow,
TensorFlow's ``MultiWorkerMirroredStrategy`` (not built); see the README.
"""

from __future__ import annotations

import contextlib
import os

import keras
import numpy as np

from lastfm.common import PipelineError

_STRATEGIES: dict = {}  # TensorFlow's MirroredStrategy per device list, made once


def batch_multiple() -> int:
    """What a batch's rows must be a multiple of: the devices of the JAX distribution in
    force (it splits every batch evenly), the replicas of the TensorFlow strategy in scope
    (uneven replicas' sparse gradients do not add up), else 1."""
    from lastfm.nn import replicas_in_sync

    dist = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if isinstance(dist, keras.distribution.DataParallel):
        return int(np.prod(dist.device_mesh.shape))
    if isinstance(dist, keras.distribution.ModelParallel):  # the batch axis' devices
        return int(dist.device_mesh.shape[0])
    return replicas_in_sync()


def pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    """``x`` with copies of its first row appended up to a multiple of ``multiple`` rows
    (the caller drops what they give)."""
    extra = -len(x) % multiple
    return np.concatenate([x, np.repeat(x[:1], extra, axis=0)]) if extra else x


# The track tables a model-parallel layout shards (their embedding dimension split).
TRACK_TABLES = (".*item_emb.*embeddings", ".*succ_emb.*embeddings", ".*tag_emb.*embeddings")


@contextlib.contextmanager
def data_parallel(n: int, shard_tracks: int = 1):
    """Build, compile and train inside: data-parallel over ``n`` devices (0: all the
    backend sees; 1: nothing changes). ``shard_tracks`` > 1 (JAX): the track tables'
    embedding dimension split over groups of that many devices
    (``keras.distribution.ModelParallel``: a table too large for one device), the batch
    over the groups. Yields the number of devices used."""
    if n == 1 and shard_tracks == 1:
        yield 1
        return
    backend = keras.backend.backend()
    if shard_tracks > 1 and backend != "jax":
        raise PipelineError(f"--shard-tracks {shard_tracks}: with KERAS_BACKEND=jax only")
    if backend == "jax":
        import jax

        if os.environ.get("KERAS_DISTRIBUTION_JOB_ADDRESSES"):  # several hosts: join them
            keras.distribution.initialize()
        devices = jax.devices()
        if n > len(devices):
            raise PipelineError(f"--devices {n}: JAX sees {len(devices)} ({devices[0].platform})")
        chosen = devices[: n or len(devices)]
        names = [f"{d.platform}:{d.id}" for d in chosen]
        if len(names) % shard_tracks:
            raise PipelineError(
                f"--shard-tracks {shard_tracks}: does not divide the {len(names)} devices "
                "(--devices N: a multiple of it, 0: all)"
            )
        if shard_tracks > 1:
            mesh = keras.distribution.DeviceMesh(
                (len(names) // shard_tracks, shard_tracks), ("batch", "model"), names
            )
            layouts = keras.distribution.LayoutMap(mesh)
            for table in TRACK_TABLES:
                layouts[table] = (None, "model")
            dist = keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch")
        else:
            dist = keras.distribution.DataParallel(devices=names)
        keras.distribution.set_distribution(dist)
        try:
            yield len(chosen)
        finally:
            keras.distribution.set_distribution(None)
    elif backend == "tensorflow":
        import tensorflow as tf

        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        if n > len(devices):
            raise PipelineError(f"--devices {n}: TensorFlow sees {len(devices)}")
        chosen = tuple(d.name for d in devices[: n or len(devices)])
        if chosen not in _STRATEGIES:  # one per process: a second one's collectives clash
            _STRATEGIES[chosen] = tf.distribute.MirroredStrategy(list(chosen))
        with _STRATEGIES[chosen].scope():
            yield len(chosen)
    else:
        raise PipelineError(
            f"--devices {n}: Keras has no data-parallel API for {backend}; use "
            "KERAS_BACKEND=jax or tensorflow"
        )


def even_batch(x: np.ndarray, y: np.ndarray, multiple: int):
    """(x, y, weights) of a training batch padded to a multiple of ``multiple`` rows: the
    padding weighted 0, the real rows padded / real (the mean of weighted losses over
    the padded batch, ``compute_loss``, is then the mean over the real rows, on every
    device's share alike): every example of an epoch is trained on, each batch splits
    evenly."""
    n = len(y)
    padded = n + (-n % multiple)
    w = np.zeros(padded, np.float32)
    w[:n] = padded / n
    return pad_rows(x, multiple), pad_rows(y, multiple), w


def devices_in_use() -> int:
    """The devices a step runs on now (recorded in the model's config.json)."""
    dist = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if isinstance(dist, keras.distribution.ModelParallel):
        return int(np.prod(dist.device_mesh.shape))
    return batch_multiple()
