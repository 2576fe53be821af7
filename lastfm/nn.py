"""What every next-track network shares (Keras 3, ``keras.ops`` only: any backend).

``ModelConfig`` holds every network's hyperparameters (``arch`` picks the network; a
network ignores the fields it has no use for). ``NextItemModel`` is the base class: track
embeddings with the optional tag vectors, the output (scores against the track
embeddings plus a bias, padding pushed to ``NEG``), the full-softmax loss, and saving.
A network subclasses it, creates its layers in ``__init__`` and maps a prefix to a
session vector in ``encode``:

    items (B, L) int32, right-padded with 0  ->  session vector (B, E)

so that training, early stopping, ranking and evaluation are the same for all of them.

``--copy`` (any network): a repeat-aware output, CopyNet's joint softmax (Gu et al., ACL
2016; the repeat mode of RepeatNet, Ren et al., AAAI 2019, is its mixture form). Each
real play p of the prefix gets a copy score c_p = <W rep, e(x_p)> / sqrt(E) + r(d_p) + b
(d_p: plays from the prefix's last real play to p, r a learned weight per distance), and

    P(i) = (exp(s_i) + sum_{p: x_p = i} exp(c_p)) / (sum_j exp(s_j) + sum_p exp(c_p)),

s the network's scores: a track already in the prefix gains the mass of its plays there,
others are scored as without the copy path. ``call`` then returns [rep, c] (B, E + L).
For ranking, the added mass is a term at the prefix's tracks only (``prefix_terms``:
log(exp(s_i) + C_i) = s_i + softplus(C_i - s_i)), added as the hybrid's terms are; the
loss needs no (B, V+1) term at all (``full_softmax_nll``).

``--counts`` (any network): a count-aware output. The last real play's ``count_k`` most
frequent training successors (``hybrid.Transitions``, kept in the model as constant
tables) get t_k = a(rep) log(1 + count_k) + b(rep) log(1 + plays_k), a and b >= 0 from
the session vector (softplus of a linear map): the hybrid's terms with weights the
network sets per prefix, trained jointly. In training the example's own transition is
taken out of its count (leave-one-out: a count that includes the target would teach the
gate to trust counts more than held-out data allows), and the whole term is dropped for
a share ``count_dropout`` of the examples, so that the network also learns alone
(Neubig & Dyer, EMNLP 2016).
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
    counts: bool = option(
        False,
        "count-aware output: the last track's most frequent training successors get a "
        "term from their counts, gated by the network and trained jointly (lastfm/nn.py)",
    )
    count_k: int = option(16, "with --counts: successors per track")
    count_dropout: float = option(0.5, "with --counts: share of training examples without it")
    copy: bool = option(
        False,
        "repeat-aware output: the prefix's tracks also scored by a copy path (CopyNet's "
        "joint softmax over the catalogue and the prefix's plays; lastfm/nn.py)",
    )
    sample_alpha: float = option(0.75, "--loss sampled draws tracks by plays ** alpha")
    history: int = option(
        0,
        "session-aware input: each prefix continues back into the listener's earlier "
        "sessions, up to N of their last plays before the session within --input-len "
        "(never the current session's future or a later session; 0: the session only; "
        "lastfm/session_aware.py)",
    )

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
            "count_k",
        )
        cfgs.require_at_least(self, 0, "history")
        if not 0 <= self.count_dropout < 1:
            raise PipelineError(f"--count-dropout {self.count_dropout}: must be in [0, 1)")
        if self.counts and self.copy:
            raise PipelineError("--counts and --copy: one output path at a time")
        if self.counts and self.loss != "full":
            raise PipelineError("--counts: with --loss full only")
        if not self.sample_alpha >= 0:  # NaN fails too
            raise PipelineError(f"--sample-alpha {self.sample_alpha}: must be 0 or more")
        if not 0 <= self.dropout < 1:
            raise PipelineError(f"--dropout {self.dropout}: must be in [0, 1)")
        if self.copy and self.loss != "full":
            raise PipelineError("--copy: with --loss full only (its loss adds the copy mass)")


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
        self.copy_query = (
            layers.Dense(config.emb_dim, use_bias=False, name="copy_query") if config.copy else None
        )
        self.count_gate = layers.Dense(2, name="count_gate") if config.counts else None
        if config.counts:
            self.count_seed = keras.random.SeedGenerator(seed + 202)
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
        if self.count_gate is not None:  # constant tables (set_transitions)
            k = self.config.count_k
            self.succ_ids = self.add_weight(
                shape=(self.n_items + 1, k),
                dtype="int32",
                initializer="zeros",
                trainable=False,
                name="succ_ids",
            )
            self.succ_counts = self.add_weight(
                shape=(self.n_items + 1, k),
                initializer="zeros",
                trainable=False,
                name="succ_counts",
            )
            self.track_plays = self.add_weight(
                shape=(self.n_items + 1,), initializer="zeros", trainable=False, name="track_plays"
            )
        if self.copy_query is not None:  # r(d) per distance from the last play, and b
            self.copy_recency = self.add_weight(
                shape=(self.input_len,), initializer="zeros", name="copy_recency"
            )
            self.copy_bias = self.add_weight(shape=(), initializer="zeros", name="copy_bias")
        if self.count_gate is not None:  # called only by the loss and the ranker
            self.count_gate.build((None, self.emb_dim))
        for emb in (self.item_emb, self.tag_emb, *self.own_embeddings()):
            if emb is not None:
                emb.build((None,))
        super().build(input_shape)
        # Build every sub-layer now (a loaded model must own all its weights before
        # they are restored): one forward pass on a dummy prefix.
        length = (input_shape[1] if input_shape and len(input_shape) > 1 else None) or 1
        self.call(ops.zeros((1, length), "int32"))

    def encode(self, items, training=False):
        """The network's session vector (B, E) of prefixes ``items`` (B, L)."""
        raise NotImplementedError

    def call(self, items, training=False):
        """The session vector (B, E), and with ``--copy`` each position's copy score:
        [rep, c] (B, E + L), c = NEG where there is no real play."""
        rep = self.encode(items, training=training)
        if self.copy_query is None:
            return rep
        # float32 (under mixed precision too): c holds NEG, beyond float16's range
        return ops.concatenate([ops.cast(rep, "float32"), self.copy_scores(rep, items)], axis=-1)

    def rep_of(self, out):
        """The session vector (B, E) of ``call``'s output."""
        return out if self.copy_query is None else out[:, : self.emb_dim]

    def copy_scores(self, rep, items):
        """c (B, L) float32: <W rep, e(x_p)> / sqrt(E) + r(distance from the last real
        play) + b at each real play p, NEG elsewhere (padding, unseen plays)."""
        items = ops.cast(items, "int32")
        real = ops.not_equal(items, 0)
        q = ops.cast(self.copy_query(rep), "float32")  # (B, E)
        k = ops.cast(self.embed(items), "float32")  # (B, L, E)
        c = ops.sum(q[:, None, :] * k, axis=-1) / np.sqrt(self.emb_dim)
        pos = ops.arange(ops.shape(items)[1], dtype="int32")[None, :]
        dist = ops.clip(self.last_position(real)[:, None] - pos, 0, self.input_len - 1)
        c = c + ops.take(self.copy_recency, dist) + self.copy_bias
        return ops.where(real, c, NEG)

    def copy_parts(self, out, items):
        """(C (B, L), first (B, L)): each position's track's copy mass log sum_{q: x_q =
        x_p} exp(c_q), and whether p is its track's first position in the prefix (the one
        that carries the track's term)."""
        items = ops.cast(items, "int32")
        c = ops.cast(out[:, self.emb_dim :], "float32")
        real = ops.not_equal(items, 0)
        same = ops.logical_and(ops.equal(items[:, :, None], items[:, None, :]), real[:, None, :])
        mass = ops.logsumexp(ops.where(same, c[:, None, :], NEG), axis=2)  # (B, L)
        pos = ops.arange(ops.shape(items)[1], dtype="int32")
        earlier = ops.logical_and(same, (pos[None, :] < pos[:, None])[None, :, :])
        first = ops.logical_and(real, ops.logical_not(ops.any(earlier, axis=2)))
        return mass, first

    def set_transitions(self, ids: np.ndarray, counts: np.ndarray, plays: np.ndarray) -> None:
        """``--counts``' tables: each track's successors (V+1, K) (0: none), their training
        counts (V+1, K) and every track's training plays (V+1,) (``hybrid.Transitions``)."""
        self.succ_ids.assign(np.asarray(ids, np.int32))
        self.succ_counts.assign(np.asarray(counts, np.float32))
        self.track_plays.assign(np.asarray(plays, np.float32))

    def count_terms(self, rep, items, y=None, training=False):
        """``--counts``' terms: (ids (B, K) int32, values (B, K) float32), the last real
        play's successors and t_k (module docstring); with ``y`` (training) the target's
        own transition is taken out of its count, and in training a share
        ``count_dropout`` of the rows gets no term."""
        items = ops.cast(items, "int32")
        last = ops.take_along_axis(items, self.last_position(items > 0)[:, None], axis=1)[:, 0]
        ids = ops.take(self.succ_ids, last, axis=0)  # (B, K)
        counts = ops.take(self.succ_counts, last, axis=0)
        if y is not None:
            own = ops.equal(ids, ops.cast(y, "int32")[:, None])
            counts = ops.maximum(counts - ops.cast(own, counts.dtype), 0.0)
        filled = ops.cast(ids > 0, "float32")
        plays = ops.take(self.track_plays, ids)
        gate = ops.softplus(ops.cast(self.count_gate(self.rep_of(rep)), "float32"))  # (B, 2)
        values = (gate[:, :1] * ops.log1p(counts) + gate[:, 1:] * ops.log1p(plays)) * filled
        if training and self.config.count_dropout > 0:
            u = keras.random.uniform((ops.shape(items)[0], 1), seed=self.count_seed)
            values = values * ops.cast(u >= self.config.count_dropout, "float32")
        return ids, values

    def prefix_terms(self, out, items):
        """With ``--copy``: (ids (B, L) int32, values (B, L) float32) to add to ``logits``
        (at each track's first position in the prefix: softplus(C - s), making its score
        log(exp(s) + C's mass); 0 at other positions, whose id is 0). With ``--counts``:
        ``count_terms``. None without either."""
        if self.count_gate is not None:
            return self.count_terms(out, items)
        if self.copy_query is None:
            return None
        items = ops.cast(items, "int32")
        mass, first = self.copy_parts(out, items)
        s = self.item_logits(self.rep_of(out), items)  # (B, L)
        values = ops.where(first, ops.softplus(mass - s), 0.0)
        return ops.where(first, items, 0), values

    def item_logits(self, rep, ids):
        """Logits (B, L) of each row's own tracks ``ids`` (B, L), as ``logits`` makes them."""
        w = ops.cast(ops.take(self.item_emb.embeddings, ids, axis=0), rep.dtype)  # (B, L, E)
        s = ops.cast(ops.sum(rep[:, None, :] * w, axis=-1), "float32")
        return s + ops.cast(ops.take(self.out_bias, ids), "float32")

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
        rep = self.rep_of(rep)
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
            nll = self.full_softmax_nll(y_pred, y, x, training=training)
        if sample_weight is not None:
            nll = nll * ops.cast(ops.reshape(sample_weight, (-1,)), nll.dtype)
        return ops.mean(nll) / replicas_in_sync()

    def set_sampler(self, plays: np.ndarray) -> None:
        """The sampled loss's tables from each track's training plays (V+1,)."""
        self.sampler = NegativeSampler(plays, self.config.negatives, self.config.sample_alpha)

    def candidate_logits(self, rep, ids):
        """Logits (B, N) of the tracks ``ids`` (N,), from their rows (as ``logits``)."""
        rep = self.rep_of(rep)
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
        rep = self.rep_of(rep)
        w = ops.cast(ops.take(self.item_emb.embeddings, y, axis=0), rep.dtype)  # (B, E)
        s = ops.sum(rep * w, axis=-1)
        return ops.cast(s, "float32") + ops.cast(ops.take(self.out_bias, y), "float32")

    def full_softmax_nll(self, rep, y, items=None, training=False):
        """Full-softmax cross-entropy (B,) = logsumexp(logits) - target logit.

        The same value as sparse categorical cross-entropy on ``logits(rep)``,
        computed more cheaply: the target's logit comes from its own rows (a
        (B, E) product), so the backward pass builds no (B, V+1) one-hot
        (bench/bench_step_parts.py compares the two). With ``--copy`` (``items``: the
        prefixes), CopyNet's: the normaliser gains every real play's exp(c_p) and the
        target's score its own plays' (see the module docstring). With ``--counts`` the
        successors' terms are added to the logits (``count_terms``).
        """
        logits = self.logits(rep)  # (B, V+1)
        target = self.target_logits(rep, y)
        if (self.copy_query is not None or self.count_gate is not None) and items is None:
            raise ValueError("--copy / --counts: the loss needs the prefixes")
        if self.count_gate is not None:
            # leave-one-out in training: the counts were made from these very examples
            ids, values = self.count_terms(rep, items, y if training else None, training)
            b, k = ops.shape(ids)
            rows = ops.broadcast_to(ops.arange(b, dtype="int32")[:, None], (b, k))
            index = ops.reshape(ops.stack([rows, ids], axis=-1), (-1, 2))
            logits = logits + ops.scatter(index, ops.reshape(values, (-1,)), ops.shape(logits))
            target = target + ops.sum(ops.where(ops.equal(ids, y[:, None]), values, 0.0), axis=1)
        m = ops.stop_gradient(ops.max(logits, axis=-1))  # (B,)
        lse = ops.log(ops.sum(ops.exp(logits - m[:, None]), axis=-1)) + m
        if self.copy_query is None:
            return lse - target
        items = ops.cast(items, "int32")
        c = ops.cast(rep[:, self.emb_dim :], "float32")  # (no per-track masses needed here)
        lse = ops.logaddexp(lse, ops.logsumexp(c, axis=1))
        hit = ops.logical_and(ops.equal(items, y[:, None]), ops.not_equal(items, 0))
        own = ops.logsumexp(ops.where(hit, c, NEG), axis=1)  # NEG-ish: no play of the target
        return lse - ops.logaddexp(target, own)

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
