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
GRU reads the past only. ``encode`` returns the session representation (B, E)
(``call`` adds the copy scores with ``--copy``: ``lastfm.nn``); ``logits`` turns it
into scores over all tracks (B, V+1) against the track embeddings (tied output),
column 0 (padding) set to a large negative value.

Tags (optional): each track's top-K tag ids and weights are constant tables
stored in the model (non-trainable weights), so the only input stays track
ids; a track's tag vector is the weight-averaged tag embeddings, added to its
track embedding.

Only Keras layers and ``keras.ops``: the file runs with KERAS_BACKEND
tensorflow (default), jax or torch (tests/test_backends.py). The GRUs read
right-padded prefixes (``lastfm.nn.run_right_padded``: unmasked on JAX and torch, whose
fused kernels take no mask). Options removed after losing their
comparisons are listed in docs/DECISIONS.md.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import keras
import numpy as np
from keras import layers, ops

from lastfm import config as cfgs
from lastfm import gru4rec, narm, sasrec, stamp  # noqa: F401 - the peers register their arch
from lastfm.common import PipelineError, file_md5, read_json
from lastfm.nn import ARCHS, NEG, ModelConfig, NextItemModel, register, run_right_padded


@register("bigru_att")
class SessionRecommender(NextItemModel):
    """Embedding -> Bi-GRU -> attention -> FC -> scores over all tracks."""

    def __init__(self, n_items: int, config: ModelConfig, n_tags: int = 0, seed: int = 0, **kwargs):
        super().__init__(n_items, config, n_tags, seed, **kwargs)
        c = config
        self.in_drop = layers.Dropout(c.dropout, seed=seed)
        # reset_after=True and tanh/sigmoid defaults keep the fused (cuDNN) kernels; the
        # layer holds both directions' weights, ``call`` runs each without a mask.
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

    def own_embeddings(self) -> list:
        return [self.succ_emb]

    def encode(self, items, training=False):
        items, mask = self.rnn_inputs(items)  # (B, L) right-padded; True = read
        x = self.in_drop(self.embed(items), training=training)
        # the two directions of self.bigru, each unmasked (nn.run_right_padded)
        seq_f, fwd = run_right_padded(self.bigru.forward_layer, x, mask, training)  # (B,L,H)
        seq_b, bwd = run_right_padded(self.bigru.backward_layer, x, mask, training)  # (B,H)
        seq = ops.concatenate([seq_f, seq_b], axis=-1)  # (B, L, 2H)
        last = ops.concatenate([fwd, bwd], axis=-1)  # (B, 2H) global encoder
        e = self.att_v(ops.sigmoid(self.att_keys(seq) + self.att_query(last)[:, None, :]))
        e = ops.where(mask, e[..., 0], ops.cast(NEG, e.dtype))  # (B, L)
        alpha = ops.softmax(e, axis=-1)  # (B, L)
        local = ops.sum(alpha[..., None] * seq, axis=1)  # (B, 2H) local encoder
        parts = [last, local]
        n = self.last_position(mask)  # (B,)
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


def build_model(n_items: int, config: ModelConfig, n_tags: int = 0, seed: int = 0) -> NextItemModel:
    """Create and build the network ``config.arch`` for ``n_items`` tracks (ids
    1..n_items); ``n_tags`` > 0 adds the tag path (when ``config.tags``)."""
    model = ARCHS[config.arch](n_items, config, n_tags if config.tags else 0, seed)
    model.build((None, config.input_len))
    model(np.zeros((1, config.input_len), np.int32))
    return model


def check_folder(model_dir: Path, record: dict, skip: tuple[str, ...] = ()) -> None:
    """PipelineError unless every file ``config.json`` lists (``outputs``: the model,
    the hybrid's table, the history) is there with its recorded size and MD5: a folder
    whose parts come from different runs, or a damaged file, is never scored."""
    listed = record.get("outputs")
    if not listed:
        raise PipelineError(
            f"{model_dir}/config.json lists no files with checksums (written by an older "
            "version of train.py); retrain with train.py"
        )
    for name, rec in listed.items():
        if name in skip:
            continue
        path = model_dir / name
        if not path.exists():
            raise PipelineError(f"{path}: missing, but {model_dir}/config.json lists it; retrain")
        if path.stat().st_size != rec.get("bytes") or file_md5(path) != rec.get("md5"):
            raise PipelineError(
                f"{path}: not the file {model_dir}/config.json was written with (size or "
                "MD5 differ: another or interrupted run wrote it, or it is damaged); "
                f"retrain, or rerun train.py --transitions-only --out {model_dir}"
            )


def load_trained(
    model_dir: Path, expected_vocab_md5: str | None = None, skip_check: tuple[str, ...] = ()
):
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
    check_folder(Path(model_dir), record, skip_check)
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
