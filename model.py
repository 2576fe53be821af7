"""The tag-aware Embedding -> Bi-GRU -> Attention -> FC next-track model (Keras 3).

References:
- Hidasi et al., "Session-based Recommendations with Recurrent Neural
  Networks", ICLR 2016 (GRU4Rec): a GRU over the session's items.
- Li et al., "Neural Attentive Session-based Recommendation", CIKM 2017
  (NARM): the last hidden state (global encoder) concatenated with an
  additive attention over all states scored against it (local encoder),
  and item scores as a bilinear product with the item embeddings.
- Liu et al., "STAMP: Short-Term Attention/Memory Priority Model for
  Session-based Recommendation", KDD 2018: the last item's own embedding as a
  direct input to the output layer (``last_item``), since the next play
  depends most on the last one; with it, a linear map of that embedding is
  added to the session representation, a factorised track-to-track
  transition term as in Rendle et al., "Factorizing Personalized Markov
  Chains for Next-Basket Recommendation", WWW 2010.
- FPMC's item-to-item factor (``successor``): each track owns a vector
  pointing at the tracks that follow it, added to the session vector.

Contract: input ``items`` (B, L) int32, the most recent L = ``input_len``
tracks of a session prefix in play order, right-padded with 0 (padding;
``mask`` True = a real play). Only the prefix is ever input, so the backward
GRU reads the past only. ``call`` returns the session representation (B, E);
``logits`` turns it into scores over all tracks (B, V+1) against the track
embeddings (tied output), column 0 (padding) set to a large negative value.

Tags (optional): each track's top-K tag ids and weights are constant tables
stored in the model (non-trainable weights), so the only input stays track
ids; a track's tag vector is the weight-averaged tag embeddings, added to its
track embedding.

Only Keras layers and ``keras.ops``: the file runs with KERAS_BACKEND
tensorflow (default), jax or torch. Options removed after losing their
comparisons are listed in docs/DECISIONS.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from lastfm import config as cfgs
from lastfm.common import PipelineError, read_json
from lastfm.config import option

NEG = -1e9


@dataclass
class ModelConfig:
    """The network's hyperparameters: the one place to add one (train.py's flags,
    the saved config.json and the Keras config all come from these fields)."""

    input_len: int = option(20, "most recent tracks of a prefix the network reads (L)")
    emb_dim: int = option(64, "track (and tag) embedding size E")
    hidden: int = option(100, "GRU units per direction H")
    fc_dim: int = option(128, "fully connected layer size D")
    dropout: float = option(0.25, "dropout of the embeddings and of the FC input")
    tags: bool = option(True, "add each track's tag vector (when fetch_tags.py wrote tags)")
    tags_per_track: int = option(5, "tags per track K (the top K by weight)")
    last_item: bool = option(True, "last track's embedding to the FC layer + transition term")
    successor: bool = option(True, "per-track successor vectors (FPMC's item-to-item factor)")

    def check(self) -> None:
        cfgs.require_at_least(self, 1, "input_len", "emb_dim", "hidden", "fc_dim", "tags_per_track")
        if not 0 <= self.dropout < 1:
            raise PipelineError(f"--dropout {self.dropout}: must be in [0, 1)")


@keras.saving.register_keras_serializable(package="lastfm")
class SessionRecommender(keras.Model):
    """Embedding -> Bi-GRU -> attention -> FC -> scores over all tracks."""

    def __init__(self, n_items: int, config: ModelConfig, n_tags: int = 0, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.n_items, self.config, self.n_tags, self.seed = n_items, config, n_tags, seed
        c = config
        self.input_len, self.emb_dim = c.input_len, c.emb_dim
        self.tags_per_track = c.tags_per_track if n_tags else 0
        self._pad = np.where(np.arange(n_items + 1) == 0, NEG, 0.0).astype(np.float32)
        self.item_emb = layers.Embedding(n_items + 1, c.emb_dim, name="item_emb")
        self.tag_emb = layers.Embedding(n_tags + 1, c.emb_dim, name="tag_emb") if n_tags else None
        self.in_drop = layers.Dropout(c.dropout, seed=seed)
        # reset_after=True and tanh/sigmoid defaults keep the cuDNN kernel on GPU.
        self.bigru = layers.Bidirectional(
            layers.GRU(c.hidden, return_sequences=True, return_state=True), name="bigru"
        )
        self.att_keys = layers.Dense(c.hidden, use_bias=False, name="att_keys")
        self.att_query = layers.Dense(c.hidden, name="att_query")
        self.att_v = layers.Dense(1, use_bias=False, name="att_v")
        self.fc_drop = layers.Dropout(c.dropout, seed=seed + 1)
        self.fc = layers.Dense(c.fc_dim, activation="tanh", name="fc")
        self.to_item_space = layers.Dense(c.emb_dim, use_bias=False, name="to_item_space")
        self.transition = (
            layers.Dense(c.emb_dim, use_bias=False, name="transition") if c.last_item else None
        )
        # Unlike the shared linear map above, a track's own successor vector can
        # memorise that track's successors (score(j | last i) = <succ_i, emb_j>).
        self.succ_emb = (
            layers.Embedding(
                n_items + 1, c.emb_dim, embeddings_initializer="zeros", name="succ_emb"
            )
            if c.successor
            else None
        )

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
        for emb in (self.item_emb, self.tag_emb, self.succ_emb):
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
        x = self.item_emb(items)  # (B, L, E)
        if self.tag_emb is not None:
            tags = ops.take(self.track_tags, items, axis=0)  # (B, L, K)
            w = ops.take(self.track_tag_w, items, axis=0)  # (B, L, K)
            t = self.tag_emb(tags)  # (B, L, K, E)
            t = ops.sum(t * w[..., None], axis=2) / (ops.sum(w, axis=2, keepdims=True) + 1e-6)
            x = x + ops.cast(t, x.dtype)  # (B, L, E)
        return x

    def call(self, items, training=False):
        items = ops.cast(items, "int32")
        mask = ops.not_equal(items, 0)  # (B, L) True = real play
        x = self.in_drop(self.embed(items), training=training)
        seq, fwd, bwd = self.bigru(x, mask=mask, training=training)  # (B,L,2H), (B,H), (B,H)
        last = ops.concatenate([fwd, bwd], axis=-1)  # (B, 2H) global encoder
        e = self.att_v(ops.sigmoid(self.att_keys(seq) + self.att_query(last)[:, None, :]))[
            ..., 0
        ]  # (B, L)
        e = ops.where(mask, e, ops.cast(NEG, e.dtype))
        alpha = ops.softmax(e, axis=-1)  # (B, L)
        local = ops.sum(alpha[..., None] * seq, axis=1)  # (B, 2H) local encoder
        parts = [last, local]
        n = ops.maximum(ops.sum(ops.cast(mask, "int32"), axis=1) - 1, 0)  # (B,) last position
        if self.transition is not None:  # the last real play's embedding, STAMP's m_t
            m_t = ops.take_along_axis(x, n[:, None, None], axis=1)[:, 0]
            parts.append(m_t)  # (B, E)
        h = ops.concatenate(parts, axis=-1)  # (B, 4H [+ E])
        h = self.fc(self.fc_drop(h, training=training))  # (B, D)
        rep = self.to_item_space(h)  # (B, E)
        if self.transition is not None:  # linear path: factorised transition (FPMC)
            rep = rep + self.transition(m_t)  # (B, E)
        if self.succ_emb is not None:  # the last real play's own successor vector
            last_id = ops.take_along_axis(items, n[:, None], axis=1)[:, 0]  # (B,)
            rep = rep + ops.cast(self.succ_emb(last_id), rep.dtype)  # (B, E)
        return rep

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


def build_model(
    n_items: int, config: ModelConfig, n_tags: int = 0, seed: int = 0
) -> SessionRecommender:
    """Create and build the model for ``n_items`` tracks (ids 1..n_items); ``n_tags``
    > 0 adds the tag path (when ``config.tags``)."""
    model = SessionRecommender(n_items, config, n_tags if config.tags else 0, seed)
    model.build((None, config.input_len))
    model(np.zeros((1, config.input_len), np.int32))
    return model


def load_trained(model_dir: Path, expected_vocab_md5: str | None = None):
    """The model in ``model_dir`` (``model.keras``) and its ``config.json`` record.

    Refuses a model trained on another vocabulary, and a model or record saved
    by another version of the code (retrain it).
    """
    path = Path(model_dir) / "model.keras"
    cfg_path = Path(model_dir) / "config.json"
    if not path.exists() or not cfg_path.exists():
        raise PipelineError(f"{path} or its config.json not found: run train.py first")
    record = read_json(cfg_path)
    if "model" not in record:
        raise PipelineError(
            f"{cfg_path}: no 'model' section (written by another version of "
            "the code); retrain with train.py"
        )
    model_config = cfgs.load(ModelConfig, record["model"], str(cfg_path))
    if expected_vocab_md5 is not None and record.get("vocab_md5") != expected_vocab_md5:
        raise PipelineError(
            f"{path} was trained on another vocabulary (window {record.get('window')}, "
            f"vocab {record.get('vocab_md5')}) than the current splits ({expected_vocab_md5}); "
            "rerun train.py on the current splits"
        )
    try:
        model = keras.saving.load_model(path, compile=False)
    except PipelineError:
        raise
    except Exception as err:  # Keras wraps what from_config raises; one line, not a traceback
        raise PipelineError(
            f"{path}: cannot be loaded ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); "
            "retrain with train.py"
        ) from None
    if asdict(model.config) != asdict(model_config):
        raise PipelineError(f"{path}: its Keras config and {cfg_path} disagree; retrain")
    return model, record
