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
  direct input to the output layer (the ``last_item`` option), since the
  next play depends most on the last one; with it, a linear map of that
  embedding is also added to the session representation, a factorised
  track-to-track transition term as in Rendle et al., "Factorizing
  Personalized Markov Chains for Next-Basket Recommendation", WWW 2010, which
  can memorise "track A is followed by track B" without the tanh bottleneck.
- Yi et al., "Sampling-Bias-Corrected Neural Modeling for Large Corpus Item
  Recommendations", RecSys 2019: in-batch + sampled negatives with the
  log-Q correction (the ``sampled`` option).

Contract: input ``items`` (B, L) int32, the most recent L tracks of a session
prefix in play order, right-padded with 0 (padding; ``mask`` True = a real
play). Only the prefix is ever input, so the backward GRU reads the past
only. ``call`` returns the session representation (B, E), or (B, 2E) with
successor vectors scored against their own output vectors (the session vector
then the last track's successor vector); ``logits`` turns it into scores over
all tracks (B, V+1), column 0 (padding) set to a large negative value.

Tags (optional): each track's top-K tag ids and weights are constant tables
stored in the model (non-trainable weights), so the only input stays track
ids; a track's tag vector is the weight-averaged tag embeddings, added to its
track embedding.

Only Keras layers and ``keras.ops``: the file runs with KERAS_BACKEND
tensorflow (default), jax or torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import keras
import numpy as np
from keras import layers, ops

NEG = -1e9


@dataclass
class ModelConfig:
    emb_dim: int = 64          # track (and tag) embedding size E
    hidden: int = 100          # GRU units per direction H
    fc_dim: int = 128          # fully connected layer D
    dropout: float = 0.25
    output: str = "tied"       # "tied": vs. the track embeddings; "dense": own output matrix
    sampled: int = 0           # >0: sampled softmax with this many popularity negatives
    use_tags: bool = True      # use tags when a tag table is given
    unroll: bool = False       # unroll the GRU loop (faster on CPU for short prefixes)
    last_item: bool = True     # last track's embedding to the FC (STAMP) + transition term
    successor: bool = True     # per-track successor vectors (FPMC's own factor), see the class
    successor_output: str = "tied"  # "tied": added to the session vector (scored against
                                    # the track embeddings); "own": own output vectors


@keras.saving.register_keras_serializable(package="lastfm")
class SessionRecommender(keras.Model):
    """Embedding -> Bi-GRU -> attention -> FC -> scores over all tracks.

    The constructor's defaults are those of the first saved models (tied
    output, no last-track paths), so that those still load as trained;
    ``ModelConfig`` holds the current defaults.
    """

    def __init__(self, n_items: int, emb_dim: int = 64, hidden: int = 100, fc_dim: int = 128,
                 dropout: float = 0.25, output: str = "tied", sampled: int = 0,
                 n_tags: int = 0, tags_per_track: int = 0, seed: int = 0, unroll: bool = False,
                 last_item: bool = False, successor: bool = False,
                 successor_output: str = "tied", **kwargs):
        super().__init__(**kwargs)
        if output not in ("tied", "dense"):
            raise ValueError(f"output={output!r}: expected 'tied' or 'dense'")
        self.n_items, self.emb_dim, self.hidden, self.fc_dim = n_items, emb_dim, hidden, fc_dim
        self.dropout_rate, self.output_kind, self.sampled = dropout, output, sampled
        self.n_tags, self.tags_per_track, self.seed = n_tags, tags_per_track, seed
        self.unroll, self.last_item, self.successor = unroll, last_item, successor
        if successor_output not in ("tied", "own"):
            raise ValueError(f"successor_output={successor_output!r}: expected 'tied' or 'own'")
        self.successor_output = successor_output
        self.succ_own = successor and successor_output == "own"
        self._pad = np.where(np.arange(n_items + 1) == 0, NEG, 0.0).astype(np.float32)
        self.item_emb = layers.Embedding(n_items + 1, emb_dim, name="item_emb")
        self.tag_emb = layers.Embedding(n_tags + 1, emb_dim, name="tag_emb") if n_tags else None
        self.in_drop = layers.Dropout(dropout, seed=seed)
        # reset_after=True and tanh/sigmoid defaults keep the cuDNN kernel on GPU.
        self.bigru = layers.Bidirectional(
            layers.GRU(hidden, return_sequences=True, return_state=True, unroll=unroll), name="bigru")
        self.att_keys = layers.Dense(hidden, use_bias=False, name="att_keys")
        self.att_query = layers.Dense(hidden, name="att_query")
        self.att_v = layers.Dense(1, use_bias=False, name="att_v")
        self.fc_drop = layers.Dropout(dropout, seed=seed + 1)
        self.fc = layers.Dense(fc_dim, activation="tanh", name="fc")
        self.to_item_space = layers.Dense(emb_dim, use_bias=False, name="to_item_space")
        self.transition = (layers.Dense(emb_dim, use_bias=False, name="transition")
                           if last_item else None)
        # FPMC's item-to-item factor: each track owns a vector pointing at the tracks
        # that follow it (score(j | last i) = <succ_i, out_j>); unlike the shared
        # linear map above, it can memorise one track's own successors.
        self.succ_emb = (layers.Embedding(n_items + 1, emb_dim, embeddings_initializer="zeros",
                                          name="succ_emb") if successor else None)
        # "own": successor vectors are scored against their own output vectors, so the
        # track-to-track codes need not share the track embeddings' similarity
        # structure (where a track's album siblings sit close to its successor).
        self.succ_out = (layers.Embedding(n_items + 1, emb_dim, name="succ_out")
                         if self.succ_own else None)
        self.out_emb = (layers.Embedding(n_items + 1, emb_dim, name="out_emb")
                        if output == "dense" else None)
        self.seed_gen = keras.random.SeedGenerator(seed + 2)

    def build(self, input_shape=None):
        self.out_bias = self.add_weight(shape=(self.n_items + 1,), initializer="zeros",
                                        name="out_bias")
        k = max(self.tags_per_track, 1)
        # Constant lookup tables (filled by set_tables): track -> top-K tags, weights.
        self.track_tags = self.add_weight(shape=(self.n_items + 1, k), dtype="int32",
                                          initializer="zeros", trainable=False, name="track_tags")
        self.track_tag_w = self.add_weight(shape=(self.n_items + 1, k), initializer="zeros",
                                           trainable=False, name="track_tag_w")
        # Sampling table for negatives (item ids repeated ~ popularity^0.75) and log Q.
        self.neg_table = self.add_weight(shape=(max(self.sampled, 1) * 64,), dtype="int32",
                                         initializer="zeros", trainable=False, name="neg_table")
        self.log_q = self.add_weight(shape=(self.n_items + 1,), initializer="zeros",
                                     trainable=False, name="log_q")
        self.log_pop = self.add_weight(shape=(self.n_items + 1,), initializer="zeros",
                                       trainable=False, name="log_pop")
        self.item_emb.build((None,))
        if self.tag_emb is not None:
            self.tag_emb.build((None,))
        if self.out_emb is not None:
            self.out_emb.build((None,))
        if self.succ_emb is not None:
            self.succ_emb.build((None,))
        if self.succ_out is not None:
            self.succ_out.build((None,))
        super().build(input_shape)
        # Build every sub-layer now (a loaded model must own all its weights before
        # they are restored): one forward pass on a dummy prefix.
        length = (input_shape[1] if input_shape and len(input_shape) > 1 else None) or 1
        self.call(ops.zeros((1, length), "int32"))

    def set_tables(self, tags: np.ndarray | None = None, tag_weights: np.ndarray | None = None,
                   popularity: np.ndarray | None = None) -> None:
        """Fill the constant tables: tags (V+1, K) ids, weights, training counts (V+1,)."""
        if tags is not None:
            self.track_tags.assign(tags.astype(np.int32))
            self.track_tag_w.assign(tag_weights.astype(np.float32))
        if popularity is not None:
            pop = popularity.astype(np.float64) + 1e-3
            pop[0] = 0.0
            self.log_pop.assign(np.log(np.maximum(pop / pop.sum(), 1e-12)).astype(np.float32))
            if self.sampled:
                q = pop ** 0.75
                q /= q.sum()
                size = self.neg_table.shape[0]
                table = np.repeat(np.arange(len(q)), np.floor(q * size).astype(int))
                table = np.resize(table if len(table) else np.arange(1, len(q)), size)
                self.neg_table.assign(table.astype(np.int32))
                self.log_q.assign(np.log(np.maximum(q, 1e-12)).astype(np.float32))

    def embed(self, items):
        x = self.item_emb(items)                                    # (B, L, E)
        if self.tag_emb is not None:
            tags = ops.take(self.track_tags, items, axis=0)         # (B, L, K)
            w = ops.take(self.track_tag_w, items, axis=0)           # (B, L, K)
            t = self.tag_emb(tags)                                  # (B, L, K, E)
            t = ops.sum(t * w[..., None], axis=2) / (ops.sum(w, axis=2, keepdims=True) + 1e-6)
            x = x + ops.cast(t, x.dtype)                            # (B, L, E)
        return x

    def call(self, items, training=False):
        items = ops.cast(items, "int32")
        mask = ops.not_equal(items, 0)                              # (B, L) True = real play
        x = self.in_drop(self.embed(items), training=training)
        seq, fwd, bwd = self.bigru(x, mask=mask, training=training)  # (B,L,2H), (B,H), (B,H)
        last = ops.concatenate([fwd, bwd], axis=-1)                 # (B, 2H) global encoder
        e = self.att_v(ops.sigmoid(self.att_keys(seq)
                                   + self.att_query(last)[:, None, :]))[..., 0]  # (B, L)
        e = ops.where(mask, e, ops.cast(NEG, e.dtype))
        alpha = ops.softmax(e, axis=-1)                             # (B, L)
        local = ops.sum(alpha[..., None] * seq, axis=1)             # (B, 2H) local encoder
        parts = [last, local]
        n = ops.maximum(ops.sum(ops.cast(mask, "int32"), axis=1) - 1, 0)  # (B,) last position
        if self.last_item:  # the last real play's (dropped-out) embedding, STAMP's m_t
            m_t = ops.take_along_axis(x, n[:, None, None], axis=1)[:, 0]
            parts.append(m_t)                                       # (B, E)
        h = ops.concatenate(parts, axis=-1)                         # (B, 4H [+ E])
        h = self.fc(self.fc_drop(h, training=training))             # (B, D)
        rep = self.to_item_space(h)                                 # (B, E)
        if self.last_item:  # linear path: a factorised track-to-track transition (FPMC)
            rep = rep + self.transition(m_t)                        # (B, E)
        if self.successor:  # the last real play's own successor vector
            last_id = ops.take_along_axis(items, n[:, None], axis=1)[:, 0]  # (B,)
            succ = ops.cast(self.succ_emb(last_id), rep.dtype)      # (B, E)
            if self.succ_own:  # scored separately by logits(): carry it alongside
                return ops.concatenate([rep, succ], axis=-1)        # (B, 2E)
            rep = rep + succ                                        # (B, E)
        return rep

    def _score(self, rep, w, own=None):
        """Dot scores (B, C) of ``rep`` against track rows ``w`` (C, E); with own
        successor output rows ``own`` (C, E), rep is (B, 2E) and its second half is
        scored against them."""
        w = ops.cast(w, rep.dtype)
        if own is None:
            return ops.matmul(rep, ops.transpose(w))
        e = self.emb_dim
        return (ops.matmul(rep[:, :e], ops.transpose(w))
                + ops.matmul(rep[:, e:], ops.transpose(ops.cast(own, rep.dtype))))

    def _out_matrix(self):
        return self.item_emb.embeddings if self.out_emb is None else self.out_emb.embeddings

    def logits(self, rep):
        """Scores (B, V+1) of every track; column 0 (padding) pushed to NEG.

        The padding column is excluded by a constant added to the bias (one
        broadcast add, in float32) rather than a separate (B, V+1) select.
        """
        own = self.succ_out.embeddings if self.succ_own else None
        s = ops.cast(self._score(rep, self._out_matrix(), own), "float32")
        pad = ops.convert_to_tensor(self._pad)                     # (V+1,) NEG at 0
        return s + (ops.cast(self.out_bias, "float32") + pad)[None, :]

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        y = ops.cast(ops.reshape(y, (-1,)), "int32")
        if self.sampled and training:
            return self._sampled_loss(y_pred, y)
        return ops.mean(self._full_softmax_nll(y_pred, y))

    def _target_logits(self, rep, y):
        """The targets' own logits (B,), as ``logits`` computes them, from their rows."""
        e = self.emb_dim
        w = ops.cast(ops.take(self._out_matrix(), y, axis=0), rep.dtype)  # (B, E)
        s = ops.sum(rep[:, :e] * w, axis=-1)
        if self.succ_own:
            own = ops.cast(ops.take(self.succ_out.embeddings, y, axis=0), rep.dtype)
            s = s + ops.sum(rep[:, e:] * own, axis=-1)
        return ops.cast(s, "float32") + ops.cast(ops.take(self.out_bias, y), "float32")

    def _full_softmax_nll(self, rep, y):
        """Full-softmax cross-entropy (B,) = logsumexp(logits) - target logit.

        The same value as sparse categorical cross-entropy on ``logits(rep)``,
        but cheaper on the CPU: the target's logit comes from its own rows (a
        (B, E) product), so the backward pass builds no (B, V+1) one-hot, and
        the log-sum-exp is plain max, exp and sum. With TensorFlow on the CPU,
        256 x 30,001 scores with their matmul, forward and backward: 37 ms
        against 51 ms for Keras' sparse cross-entropy (bench/bench_step_parts.py).
        """
        logits = self.logits(rep)                                       # (B, V+1)
        m = ops.stop_gradient(ops.max(logits, axis=-1))                 # (B,)
        lse = ops.log(ops.sum(ops.exp(logits - m[:, None]), axis=-1)) + m
        return lse - self._target_logits(rep, y)

    def _sampled_loss(self, rep, y):
        """In-batch + popularity-sampled negatives, with the log-Q correction."""
        n = self.neg_table.shape[0]
        pick = keras.random.randint((self.sampled,), 0, n, seed=self.seed_gen, dtype="int32")
        neg = ops.take(self.neg_table, pick)                         # (N,)
        cand = ops.concatenate([y, neg])                             # (B + N,)
        b = ops.shape(y)[0]
        w = ops.take(self._out_matrix(), cand, axis=0)              # (B+N, E)
        own = ops.take(self.succ_out.embeddings, cand, axis=0) if self.succ_own else None
        s = self._score(rep, w, own) + ops.cast(ops.take(self.out_bias, cand), rep.dtype)
        s = ops.cast(s, "float32")                                   # (B, B+N)
        log_q = ops.concatenate([
            ops.take(self.log_pop, y) + ops.log(ops.cast(b, "float32")),
            ops.take(self.log_q, neg) + float(np.log(self.sampled))])
        s = s - log_q[None, :]
        rows = ops.arange(b)
        own = ops.equal(ops.arange(ops.shape(cand)[0])[None, :], rows[:, None])
        hit = ops.equal(cand[None, :], y[:, None]) & ~own            # accidental hits
        s = ops.where(hit, NEG, s)
        return ops.mean(keras.losses.sparse_categorical_crossentropy(rows, s, from_logits=True))

    def get_config(self):
        return {**super().get_config(), "n_items": self.n_items, "emb_dim": self.emb_dim,
                "hidden": self.hidden, "fc_dim": self.fc_dim, "dropout": self.dropout_rate,
                "output": self.output_kind, "sampled": self.sampled, "n_tags": self.n_tags,
                "tags_per_track": self.tags_per_track, "seed": self.seed, "unroll": self.unroll,
                "last_item": self.last_item, "successor": self.successor,
                "successor_output": self.successor_output}


def build_model(n_items: int, cfg: ModelConfig, n_tags: int = 0, tags_per_track: int = 0,
                seed: int = 0, max_len: int = 20) -> SessionRecommender:
    """Create and build the model for ``n_items`` tracks (ids 1..n_items)."""
    model = SessionRecommender(
        n_items, emb_dim=cfg.emb_dim, hidden=cfg.hidden, fc_dim=cfg.fc_dim, dropout=cfg.dropout,
        output=cfg.output, sampled=cfg.sampled, n_tags=n_tags if cfg.use_tags else 0,
        tags_per_track=tags_per_track if cfg.use_tags else 0, seed=seed, unroll=cfg.unroll,
        last_item=cfg.last_item, successor=cfg.successor,
        successor_output=cfg.successor_output)
    model.build((None, max_len))
    model(np.zeros((1, max_len), np.int32))
    return model


def config_dict(cfg: ModelConfig) -> dict:
    return asdict(cfg)
