"""STAMP (Liu, Zeng, Mokhosi & Zhang, "STAMP: Short-Term Attention/Memory Priority Model
for Session-based Recommendation", KDD 2018), as a ``NextItemModel``.

The last track's embedding x_t (short-term interest), the mean of the prefix's
embeddings m_s, attention alpha_i = w0^T sigmoid(W1 x_i + W2 x_t + W3 m_s + b) over the
prefix, m_a = sum_i alpha_i x_i (general interest); two MLP cells h_s = tanh(Ws m_a + bs),
h_t = tanh(Wt x_t + bt); the trilinear score <h_s, h_t, x_j> is the session vector
h_s * h_t scored against the track embeddings.
"""

from __future__ import annotations

from keras import layers, ops

from lastfm.nn import NextItemModel, register


@register("stamp")
class STAMP(NextItemModel):
    def __init__(self, n_items, config, n_tags=0, seed=0, **kwargs):
        super().__init__(n_items, config, n_tags, seed, **kwargs)
        e = config.emb_dim
        self.emb_drop = layers.Dropout(config.dropout, seed=seed)
        self.w1 = layers.Dense(e, use_bias=False, name="w1")  # on each x_i
        self.w2 = layers.Dense(e, use_bias=False, name="w2")  # on x_t
        self.w3 = layers.Dense(e, name="w3")  # on m_s, with the bias b
        self.w0 = layers.Dense(1, use_bias=False, name="w0")
        self.mlp_s = layers.Dense(e, activation="tanh", name="mlp_s")
        self.mlp_t = layers.Dense(e, activation="tanh", name="mlp_t")

    def encode(self, items, training=False):
        items = ops.cast(items, "int32")
        mask = ops.cast(ops.not_equal(items, 0), "float32")  # (B, L) 1 = real play
        x = self.emb_drop(self.embed(items), training=training)  # (B, L, E)
        m = ops.cast(mask, x.dtype)[..., None]  # (B, L, 1)
        n = self.last_position(mask > 0)  # (B,)
        x_t = ops.take_along_axis(x, n[:, None, None], axis=1)[:, 0]  # (B, E)
        m_s = ops.sum(x * m, axis=1) / ops.maximum(ops.sum(m, axis=1), 1.0)  # (B, E)
        a = self.w0(ops.sigmoid(self.w1(x) + self.w2(x_t)[:, None] + self.w3(m_s)[:, None]))
        m_a = ops.sum(a * m * x, axis=1)  # (B, E)
        return self.mlp_s(m_a) * self.mlp_t(x_t)  # (B, E): h_s * h_t
