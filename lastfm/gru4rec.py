"""GRU4Rec (Hidasi, Karatzoglou, Baltrunas & Tikk, "Session-based Recommendations with
Recurrent Neural Networks", ICLR 2016; Hidasi & Karatzoglou, CIKM 2018), as a
``NextItemModel``.

One GRU layer over the prefix's track embeddings; its final hidden state, after dropout,
is mapped to the embedding space and scored against the track embeddings (the official
implementation's "constrained embedding": input and output item vectors shared), with
cross-entropy over the full catalogue (the loss that Hidasi & Czapp, RecSys 2023, found
strongest, here without sampling). Trained by the shared loop (every prefix predicts its
next track) instead of session-parallel mini-batches: the examples are the same, the
hidden state is recomputed from the prefix instead of carried over.
"""

from __future__ import annotations

from keras import layers

from lastfm.nn import NextItemModel, register, run_right_padded


@register("gru4rec")
class GRU4Rec(NextItemModel):
    def __init__(self, n_items, config, n_tags=0, seed=0, **kwargs):
        super().__init__(n_items, config, n_tags, seed, **kwargs)
        self.emb_drop = layers.Dropout(config.dropout, seed=seed)
        self.gru = layers.GRU(config.hidden, return_sequences=True, name="gru")
        self.out_drop = layers.Dropout(config.dropout, seed=seed + 1)
        self.to_item_space = layers.Dense(config.emb_dim, use_bias=False, name="to_item_space")

    def encode(self, items, training=False):
        items, mask = self.rnn_inputs(items)  # (B, L) right-padded; True = read
        x = self.emb_drop(self.embed(items), training=training)  # (B, L, E)
        _, h = run_right_padded(self.gru, x, mask, training)  # (B, H) after the last real step
        return self.to_item_space(self.out_drop(h, training=training))  # (B, E)
