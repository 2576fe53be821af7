"""NARM (Li, Ren, Chen, Ren, Lian & Ma, "Neural Attentive Session-based Recommendation",
CIKM 2017), as a ``NextItemModel``.

A GRU over the prefix's track embeddings; the global encoder is its last hidden state
h_t, the local encoder a sum of all hidden states weighted by
alpha_j = v^T sigmoid(A1 h_t + A2 h_j) (not normalised, as in the paper); the session
vector c = [h_t; c_local] is mapped by the bilinear decoder B (2H -> E) and scored against
the track embeddings. Dropout on the embeddings and before the decoder (the paper: 0.25,
0.5; here ``--dropout`` for both).
"""

from __future__ import annotations

from keras import layers, ops

from lastfm.nn import NextItemModel, register, run_right_padded


@register("narm")
class NARM(NextItemModel):
    def __init__(self, n_items, config, n_tags=0, seed=0, **kwargs):
        super().__init__(n_items, config, n_tags, seed, **kwargs)
        h = config.hidden
        self.emb_drop = layers.Dropout(config.dropout, seed=seed)
        self.gru = layers.GRU(h, return_sequences=True, return_state=True, name="gru")
        self.a1 = layers.Dense(h, use_bias=False, name="a1")  # on h_t
        self.a2 = layers.Dense(h, use_bias=False, name="a2")  # on every h_j
        self.v = layers.Dense(1, use_bias=False, name="v")
        self.ct_drop = layers.Dropout(config.dropout, seed=seed + 1)
        self.decoder = layers.Dense(config.emb_dim, use_bias=False, name="bilinear")  # B

    def encode(self, items, training=False):
        items, mask = self.rnn_inputs(items)  # (B, L) right-padded; True = read
        x = self.emb_drop(self.embed(items), training=training)  # (B, L, E)
        seq, last = run_right_padded(self.gru, x, mask, training)  # (B, L, H), (B, H)
        alpha = self.v(ops.sigmoid(self.a1(last)[:, None, :] + self.a2(seq)))[..., 0]  # (B, L)
        alpha = alpha * ops.cast(mask, alpha.dtype)
        local = ops.sum(alpha[..., None] * seq, axis=1)  # (B, H)
        c = ops.concatenate([last, local], axis=-1)  # (B, 2H)
        return self.decoder(self.ct_drop(c, training=training))  # (B, E)
