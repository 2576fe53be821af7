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

    def check(self) -> None:
        cfgs.require_at_least(
            self, 1, "input_len", "emb_dim", "hidden", "fc_dim", "tags_per_track", "blocks", "heads"
        )
        if not 0 <= self.dropout < 1:
            raise PipelineError(f"--dropout {self.dropout}: must be in [0, 1)")


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

    def logits(self, rep):
        """Scores (B, V+1) of every track; column 0 (padding) pushed to NEG.

        The padding column is excluded by a constant added to the bias (one
        broadcast add, in float32) rather than a separate (B, V+1) select.
        """
        w = ops.cast(self.item_emb.embeddings, rep.dtype)
        s = ops.cast(ops.matmul(rep, ops.transpose(w)), "float32")
        pad = ops.convert_to_tensor(self._pad)  # (V+1,) NEG at 0
        return s + (ops.cast(self.out_bias, "float32") + pad)[None, :]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        y = ops.cast(ops.reshape(y, (-1,)), "int32")
        return ops.mean(self.full_softmax_nll(y_pred, y))

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
