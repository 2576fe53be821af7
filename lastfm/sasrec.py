"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018), as a
``NextItemModel``.

Track embeddings (scaled by sqrt(E)) plus learnt position embeddings, dropout, then
``blocks`` blocks of causal multi-head self-attention and a point-wise feed-forward
network (pre-layer-norm, residual connections, dropout), and a final layer norm; the
output at the prefix's last real position is the session vector, scored against the
track embeddings with cross-entropy over all tracks (the variant later work found
strongest, e.g. Klenitskiy & Vasilev, RecSys 2023). Prefixes are right-padded here, so a
position counts from the session's (window's) first track; padding is masked as a key.
"""

from __future__ import annotations

import math

from keras import layers, ops

from lastfm.nn import NextItemModel, register


@register("sasrec")
class SASRec(NextItemModel):
    def __init__(self, n_items, config, n_tags=0, seed=0, **kwargs):
        super().__init__(n_items, config, n_tags, seed, **kwargs)
        e, rate = config.emb_dim, config.dropout
        self.pos_emb = layers.Embedding(config.input_len, e, name="pos_emb")
        self.emb_drop = layers.Dropout(rate, seed=seed)
        self.blocks = []
        for b in range(config.blocks):
            self.blocks.append(
                (
                    layers.LayerNormalization(epsilon=1e-8, name=f"ln_att{b}"),
                    layers.MultiHeadAttention(
                        config.heads,
                        e // config.heads,
                        dropout=rate,
                        seed=seed + 10 + b,
                        name=f"att{b}",
                    ),
                    layers.LayerNormalization(epsilon=1e-8, name=f"ln_ffn{b}"),
                    layers.Dense(e, activation="relu", name=f"ffn1_{b}"),
                    layers.Dense(e, name=f"ffn2_{b}"),
                    layers.Dropout(rate, seed=seed + 20 + b),
                )
            )
        self.final_ln = layers.LayerNormalization(epsilon=1e-8, name="ln_out")

    def own_embeddings(self) -> list:
        return [self.pos_emb]

    def encode(self, items, training=False):
        items = ops.cast(items, "int32")
        mask = ops.not_equal(items, 0)  # (B, L) True = real play
        length = ops.shape(items)[1]
        pos = ops.minimum(ops.arange(length), self.input_len - 1)  # (L,) from the first track
        x = self.embed(items) * math.sqrt(self.emb_dim) + self.pos_emb(pos)[None]  # (B, L, E)
        x = self.emb_drop(x, training=training) * ops.cast(mask, x.dtype)[..., None]
        causal = ops.arange(length)[:, None] >= ops.arange(length)[None, :]  # (L, L)
        att_mask = ops.logical_and(causal[None], mask[:, None, :])  # (B, L, L) query, key
        for ln_a, att, ln_f, ffn1, ffn2, drop in self.blocks:
            q = ln_a(x)
            x = x + att(q, q, attention_mask=att_mask, training=training)
            h = ffn2(drop(ffn1(ln_f(x)), training=training))
            x = (x + drop(h, training=training)) * ops.cast(mask, x.dtype)[..., None]
        x = self.final_ln(x)  # (B, L, E)
        n = self.last_position(mask)  # (B,)
        return ops.take_along_axis(x, n[:, None, None], axis=1)[:, 0]  # (B, E)
