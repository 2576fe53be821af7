"""What every next-track network shares (Keras 3, ``keras.ops`` only: any backend).

``ModelConfig`` holds every network's hyperparameters (``arch`` picks the network; a
network ignores the fields it has no use for). ``NextItemModel`` is the base class: track
embeddings with the optional tag vectors, the output (scores against the track
embeddings plus a bias, padding pushed to ``NEG``), the full-softmax loss, and saving.
A network subclasses it, creates its layers in ``__init__`` and maps a prefix to a
session vector in ``call``:

    items (B, L) int32, right-padded with 0  ->  session vector (B, E)

so that training, early stopping, ranking and evaluation are the same for all of them.
Networks register under their ``arch`` name (``register``); ``ARCHS`` lists them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np
from keras import layers, ops

from lastfm import config as cfgs
from lastfm.common import PipelineError
from lastfm.config import option
from lastfm.data import last_real_position

NEG = -1e9
ARCHS: dict[str, type] = {}


@dataclass
class ModelConfig:
    """The networks' hyperparameters: the one place to add one (train.py's flags, the
    saved config.json and the Keras config all come from these fields)."""

    arch: str = option(
        "bigru_att",
        "network: bigru_att (the study's), narm, gru4rec, sasrec, stamp",
        choices=["bigru_att", "narm", "gru4rec", "sasrec", "stamp"],
    )
    input_len: int = option(20, "most recent tracks of a prefix the network reads (L)")
    emb_dim: int = option(64, "track (and tag) embedding size E")
    hidden: int = option(100, "GRU units (per direction for bigru_att) H")
    fc_dim: int = option(128, "fully connected layer size D (bigru_att)")
    dropout: float = option(0.25, "dropout of the embeddings and hidden layers")
    tags: bool = option(True, "add each track's tag vector (when fetch_tags.py wrote tags)")
    tags_per_track: int = option(5, "tags per track K (the top K by weight)")
    last_item: bool = option(True, "last track's embedding to the FC + transition (bigru_att)")
    successor: bool = option(True, "per-track successor vectors, FPMC (bigru_att)")
    blocks: int = option(2, "self-attention blocks (sasrec)")
    heads: int = option(1, "attention heads (sasrec)")
    loss: str = option(
        "full",
        "training loss: full (softmax over every track) or sampled (the batch's targets "
        "and --negatives popularity-sampled tracks, logQ-corrected; large catalogues)",
        choices=["full", "sampled"],
    )
    negatives: int = option(2048, "tracks drawn per batch for --loss sampled")
    sample_alpha: float = option(0.75, "--loss sampled draws tracks by plays ** alpha")

    def check(self) -> None:
        cfgs.require_at_least(
            self,
            1,
            "input_len",
            "emb_dim",
            "hidden",
            "fc_dim",
            "tags_per_track",
            "blocks",
            "heads",
            "negatives",
        )
        if not self.sample_alpha >= 0:  # NaN fails too
            raise PipelineError(f"--sample-alpha {self.sample_alpha}: must be 0 or more")
        if not 0 <= self.dropout < 1:
            raise PipelineError(f"--dropout {self.dropout}: must be in [0, 1)")


def run_right_padded(layer, x, mask, training=False):
    """Run a Keras recurrent ``layer`` (``return_sequences=True``) over right-padded ``x``
    (B, L, D): (outputs (B, L, H) aligned with the input positions, the state after each
    row's last real step (B, H)). ``mask`` (B, L) is right-padded
    (``NextItemModel.rnn_inputs``), never all False. Outputs past a row's end are
    meaningless: mask them.

    On JAX and torch the layer runs without a mask: Keras' fused GRU paths take none (under
    torch a mask sends every step through Keras' generic Python loop). Right padding makes
    it unnecessary: a forward layer reads each row's real steps first, so its state after
    the last of them is its output there; a layer with ``go_backwards=True`` (it reads
    from position L-1 down) gets each row moved to the end (left-padded), and its outputs,
    in reading order, are put back at the positions they belong to. On TensorFlow the
    layer takes the mask (its CPU loop was measured faster so, and cuDNN takes a
    right-padded mask); a backward layer's outputs come in reading order, the masked
    steps read first. Both give the same values (tested), whether the masked steps'
    outputs are zeros (inside ``Bidirectional``) or the state carried on."""
    n = ops.sum(ops.cast(mask, "int32"), axis=1)[:, None]  # (B, 1) real steps, >= 1
    length = ops.shape(x)[1]
    pos = ops.arange(length, dtype="int32")[None, :]  # (1, L)

    def gather(t, index):  # t[b, index[b, l]] along the time axis
        index = ops.broadcast_to(index[..., None], ops.shape(t))
        return ops.take_along_axis(t, index, axis=1)

    def at_last_step(seq):  # (B, H): seq[b, n_b - 1]
        batch, _, units = ops.shape(seq)
        index = ops.broadcast_to((n - 1)[..., None], (batch, 1, units))
        return ops.take_along_axis(seq, index, axis=1)[:, 0]

    if keras.backend.backend() == "tensorflow":
        out = layer(x, mask=mask, training=training)
        seq = out[0] if isinstance(out, (list, tuple)) else out  # (B, L, H)
        if layer.go_backwards:  # in reading order: the masked steps were read first
            return ops.flip(seq, axis=1), seq[:, -1]
        return seq, at_last_step(seq)  # (masked steps' outputs: zeros or carried on)
    if layer.go_backwards:
        x = gather(x, (pos + n) % length)  # real steps last: x[b, L-n+j] = x[b, j]
    out = layer(x, training=training)
    seq = out[0] if isinstance(out, (list, tuple)) else out  # (B, L, H)
    if layer.go_backwards:
        seq = gather(seq, (n - 1 - pos + length) % length)  # seq[b, l]: steps n-1 .. l read
        return seq, seq[:, 0]
    return seq, at_last_step(seq)


class NegativeSampler:
    """The sampled loss's draws (``--loss sampled``): ``n`` tracks per batch with
    replacement, each with probability plays ** ``alpha`` / sum (GRU4Rec's popularity
    sampling), by inverse CDF inside the training step (``keras.ops.searchsorted``: log V
    per draw, never a pass over the catalogue per draw); and the log of each candidate's
    expected count: n q(j) for a drawn track, B p(j) for a batch's target (targets occur
    as often as tracks are played: p = plays / sum). The CDF is float32: a track below its
    resolution (~1e-7 of the plays ** alpha) is drawn less often than q says."""

    in_batch = True  # the batch's other targets are negatives too

    def __init__(self, plays: np.ndarray, n: int, alpha: float):
        plays = np.asarray(plays, np.float64).copy()
        plays[0] = 0.0
        if plays.sum() <= 0:
            raise PipelineError("--loss sampled: no training plays to sample from")
        q = plays**alpha
        q /= q.sum()
        self.n = n
        self.cdf = np.cumsum(q).astype(np.float32)
        self.cdf[np.flatnonzero(q)[-1] :] = 1.0  # nothing drawn past the last track
        self.log_q = np.log(np.maximum(q, 1e-30)).astype(np.float32)
        self.log_p = np.log(np.maximum(plays / plays.sum(), 1e-30)).astype(np.float32)

    def draw(self, seed):
        """(ids (n,) int32, log expected counts (n,)) of this batch's drawn tracks."""
        u = keras.random.uniform((self.n,), seed=seed)
        ids = ops.searchsorted(ops.convert_to_tensor(self.cdf), u, side="right")
        ids = ops.cast(ops.clip(ids, 1, len(self.cdf) - 1), "int32")
        log_q = ops.take(ops.convert_to_tensor(self.log_q), ids) + np.log(self.n)
        return ids, log_q

    def batch_log_q(self, y):
        """(B,) log expected counts of the batch's targets among its in-batch candidates."""
        b = ops.cast(ops.shape(y)[0], "float32")
        return ops.take(ops.convert_to_tensor(self.log_p), y) + ops.log(b)


def replicas_in_sync() -> int:
    """The replicas of the TensorFlow strategy in scope (1 outside one, and on the other
    backends, where the data-parallel step is one program over the global batch)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync if tf.distribute.has_strategy() else 1


def register(arch: str):
    """Class decorator: a network under its ``--arch`` name, serialisable by Keras."""

    def wrap(cls):
        cls.arch = arch
        ARCHS[arch] = keras.saving.register_keras_serializable(package="lastfm")(cls)
        return cls

    return wrap


class NextItemModel(keras.Model):
    """The shared part of every network (see the module docstring)."""

    arch = "base"

    def __init__(self, n_items: int, config: ModelConfig, n_tags: int = 0, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.n_items, self.config, self.n_tags, self.seed = n_items, config, n_tags, seed
        self.input_len, self.emb_dim = config.input_len, config.emb_dim
        self.tags_per_track = config.tags_per_track if n_tags else 0
        self._pad = np.where(np.arange(n_items + 1) == 0, NEG, 0.0).astype(np.float32)
        self.item_emb = layers.Embedding(n_items + 1, config.emb_dim, name="item_emb")
        self.tag_emb = (
            layers.Embedding(n_tags + 1, config.emb_dim, name="tag_emb") if n_tags else None
        )
        self.sampler = None  # set_sampler: the sampled loss's draws (training only)
        if config.loss == "sampled":
            self.negative_seed = keras.random.SeedGenerator(seed + 101)

    def own_embeddings(self) -> list:
        """Embedding layers of a subclass, built with the shared ones (in this order)."""
        return []

    def build(self, input_shape=None):
        self.out_bias = self.add_weight(
            shape=(self.n_items + 1,), initializer="zeros", name="out_bias"
        )
        k = max(self.tags_per_track, 1)
        # Constant lookup tables (filled by set_tags): track -> top-K tags, weights.
        self.track_tags = self.add_weight(
            shape=(self.n_items + 1, k),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="track_tags",
        )
        self.track_tag_w = self.add_weight(
            shape=(self.n_items + 1, k), initializer="zeros", trainable=False, name="track_tag_w"
        )
        for emb in (self.item_emb, self.tag_emb, *self.own_embeddings()):
            if emb is not None:
                emb.build((None,))
        super().build(input_shape)
        # Build every sub-layer now (a loaded model must own all its weights before
        # they are restored): one forward pass on a dummy prefix.
        length = (input_shape[1] if input_shape and len(input_shape) > 1 else None) or 1
        self.call(ops.zeros((1, length), "int32"))

    def set_tags(self, tags: np.ndarray, tag_weights: np.ndarray) -> None:
        """Fill the constant tag tables: (V+1, K) tag ids and weights."""
        self.track_tags.assign(tags.astype(np.int32))
        self.track_tag_w.assign(tag_weights.astype(np.float32))

    def embed(self, items):
        """Track embeddings (B, L, E), plus each track's weight-averaged tag embedding."""
        x = self.item_emb(items)  # (B, L, E)
        if self.tag_emb is not None:
            tags = ops.take(self.track_tags, items, axis=0)  # (B, L, K)
            w = ops.take(self.track_tag_w, items, axis=0)  # (B, L, K)
            t = self.tag_emb(tags)  # (B, L, K, E)
            t = ops.sum(t * w[..., None], axis=2) / (ops.sum(w, axis=2, keepdims=True) + 1e-6)
            x = x + ops.cast(t, x.dtype)  # (B, L, E)
        return x

    @staticmethod
    def last_position(mask):
        """(B,) index of each prefix's last real play (``data.last_real_position``)."""
        return last_real_position(ops.cast(mask, "bool"), ops)

    @staticmethod
    def rnn_inputs(items):
        """(items, mask) (B, L) for a recurrent network: each prefix's real plays moved
        to the front in their order, so that the padding and the plays of unseen tracks
        (id 0 inside a prefix, ``sessionize.py --unseen keep``), which a GRU skips
        anyway, come last: the mask is right-padded. A prefix of no known play keeps
        position 0 (padding's embedding): the mask is never all False. Keras' cuDNN GRU
        (TensorFlow on a GPU) takes no other mask; a skipped play changes no output."""
        items = ops.cast(items, "int32")
        pos = ops.arange(ops.shape(items)[1], dtype="int32")[None, :]
        key = ops.where(ops.not_equal(items, 0), pos, pos + ops.shape(items)[1])
        items = ops.take_along_axis(items, ops.argsort(key, axis=1), axis=1)
        return items, ops.logical_or(ops.not_equal(items, 0), pos == 0)  # True = read

    def logits(self, rep, start: int = 0, stop: int | None = None):
        """Scores (B, V+1) of every track; column 0 (padding) pushed to NEG. ``start``,
        ``stop``: only the tracks start..stop-1 (B, stop - start), for ranking a
        catalogue in chunks (``metrics.chunked_counts``).

        The padding column is excluded by a constant added to the bias (one
        broadcast add, in float32) rather than a separate (B, V+1) select.
        """
        products, offset = self.logit_parts(rep, start, stop)
        return products + offset[None, :]

    def logit_parts(self, rep, start: int = 0, stop: int | None = None):
        """``logits`` = products (B, C) + offset (C,)[None, :]: the products of ``rep``
        with the track embeddings, and each track's bias (NEG for padding), float32."""
        w, bias, pad = self.item_emb.embeddings, self.out_bias, self._pad
        if start or stop is not None:
            stop = self.n_items + 1 if stop is None else stop
            w = ops.slice(ops.convert_to_tensor(w), (start, 0), (stop - start, self.emb_dim))
            bias = ops.slice(ops.convert_to_tensor(bias), (start,), (stop - start,))
            pad = pad[start:stop]
        w = ops.cast(w, rep.dtype)
        products = ops.cast(ops.matmul(rep, ops.transpose(w)), "float32")
        return products, ops.cast(bias, "float32") + ops.convert_to_tensor(pad)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The batch's mean cross-entropy (full softmax, or ``--loss sampled`` in
        training), each example times its ``sample_weight`` if given (``devices.even_batch``:
        0 for the rows that only pad a batch to a multiple of the devices, padded rows /
        real rows for the others: the mean over the real ones). Under a TensorFlow
        strategy each replica's share, divided by the replicas (their gradients are
        summed), as Keras' own losses do."""
        y = ops.cast(ops.reshape(y, (-1,)), "int32")
        if self.config.loss == "sampled" and training:
            if self.sampler is None:
                raise PipelineError("--loss sampled: set_sampler(plays) before training")
            negatives, log_q = self.sampler.draw(self.negative_seed)
            in_batch = self.sampler.batch_log_q(y) if self.sampler.in_batch else None
            nll = self.sampled_nll(y_pred, y, negatives, log_q, in_batch)
        else:
            nll = self.full_softmax_nll(y_pred, y)
        if sample_weight is not None:
            nll = nll * ops.cast(ops.reshape(sample_weight, (-1,)), nll.dtype)
        return ops.mean(nll) / replicas_in_sync()

    def set_sampler(self, plays: np.ndarray) -> None:
        """The sampled loss's tables from each track's training plays (V+1,)."""
        self.sampler = NegativeSampler(plays, self.config.negatives, self.config.sample_alpha)

    def candidate_logits(self, rep, ids):
        """Logits (B, N) of the tracks ``ids`` (N,), from their rows (as ``logits``)."""
        w = ops.cast(ops.take(self.item_emb.embeddings, ids, axis=0), rep.dtype)  # (N, E)
        s = ops.cast(ops.matmul(rep, ops.transpose(w)), "float32")
        return s + ops.cast(ops.take(self.out_bias, ids), "float32")[None, :]

    def sampled_nll(self, rep, y, negatives, log_q, log_q_batch=None):
        """Sampled-softmax cross-entropy (B,): each row's target against ``negatives``
        (N,) and (unless ``log_q_batch`` is None) the batch's other targets, every logit
        minus the log of that track's expected count among a batch's candidates
        (``log_q`` (N,) for the negatives, ``log_q_batch`` (B,) for the batch's targets,
        the target's own included: the logQ correction, Yi et al., RecSys 2019); a
        candidate that is the row's own target is left out (an accidental hit). With every
        track once among ``negatives``, a constant ``log_q`` and no batch candidates:
        exactly the full-softmax loss (tested)."""
        pos = self.target_logits(rep, y)  # (B,)
        cands = [self.candidate_logits(rep, negatives) - log_q[None, :]]  # (B, N)
        ids = [negatives]
        if log_q_batch is not None:  # the batch's targets: in-batch negatives
            cands.append(self.candidate_logits(rep, y) - log_q_batch[None, :])  # (B, B)
            ids.append(y)
            pos = pos - log_q_batch  # the target, corrected as its own column is
        logits = ops.concatenate(cands, axis=1)
        hit = ops.equal(ops.concatenate(ids)[None, :], y[:, None])  # the row's own target
        logits = ops.where(hit, ops.cast(NEG, logits.dtype), logits)
        both = ops.concatenate([pos[:, None], logits], axis=1)
        m = ops.stop_gradient(ops.max(both, axis=1))
        return ops.log(ops.sum(ops.exp(both - m[:, None]), axis=1)) + m - pos

    def target_logits(self, rep, y):
        """The targets' own logits (B,), as ``logits`` computes them, from their rows."""
        w = ops.cast(ops.take(self.item_emb.embeddings, y, axis=0), rep.dtype)  # (B, E)
        s = ops.sum(rep * w, axis=-1)
        return ops.cast(s, "float32") + ops.cast(ops.take(self.out_bias, y), "float32")

    def full_softmax_nll(self, rep, y):
        """Full-softmax cross-entropy (B,) = logsumexp(logits) - target logit.

        The same value as sparse categorical cross-entropy on ``logits(rep)``,
        computed more cheaply: the target's logit comes from its own rows (a
        (B, E) product), so the backward pass builds no (B, V+1) one-hot
        (bench/bench_step_parts.py compares the two).
        """
        logits = self.logits(rep)  # (B, V+1)
        m = ops.stop_gradient(ops.max(logits, axis=-1))  # (B,)
        lse = ops.log(ops.sum(ops.exp(logits - m[:, None]), axis=-1)) + m
        return lse - self.target_logits(rep, y)

    def get_config(self):
        return {
            **super().get_config(),
            "n_items": self.n_items,
            "n_tags": self.n_tags,
            "seed": self.seed,
            "config": asdict(self.config),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        saved = config.pop("config", None)
        if saved is None:
            raise PipelineError(
                "a model saved by an older version of the code (no 'config' "
                "in its Keras config): retrain it with train.py"
            )
        model_config = cfgs.load(ModelConfig, saved, "the saved model")
        return cls(config.pop("n_items"), model_config, **config)
