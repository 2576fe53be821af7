"""Every network, under whichever Keras backend runs this file: shapes, padding and
unseen plays, the loss, the ranker, save/load, training through the shared loop, and
agreement with weights saved under another backend.

The suite runs it under TensorFlow (the default); ``test_backends.py`` runs it again
under JAX and torch in processes of their own (a process has one Keras backend), with
``LASTFM_REFERENCE`` naming weights and logits written under TensorFlow.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import train as trainer  # noqa: E402
from lastfm import hybrid  # noqa: E402
from lastfm.data import load_splits, make_events  # noqa: E402
from lastfm.metrics import device_ranker  # noqa: E402
from lastfm.nn import ARCHS  # noqa: E402
from model import ModelConfig, build_model, load_trained  # noqa: E402

V = 30
ARCH_NAMES = sorted(ARCHS)
REFERENCE_INPUT = np.array(
    [[3, 5, 7, 0, 0, 0], [2, 0, 0, 0, 0, 0], [9, 9, 1, 4, 0, 0], [5, 0, 7, 9, 0, 0]], np.int32
)


def small_model(**kw):
    cfg = ModelConfig(input_len=6, emb_dim=8, hidden=6, fc_dim=8, dropout=0.0, **kw)
    return build_model(V, cfg, seed=1)


def reference_model(arch: str):
    """The network each backend builds for the cross-backend check (tags included)."""
    cfg = ModelConfig(arch=arch, input_len=6, emb_dim=8, hidden=6, fc_dim=8, tags_per_track=2)
    return build_model(V, cfg, n_tags=5, seed=1)


def write_reference(folder: Path) -> None:
    """Per network: its weights (random, the successor and tag tables filled) and its
    logits on ``REFERENCE_INPUT``, under the backend of this process."""
    rng = np.random.default_rng(11)
    folder.mkdir(parents=True, exist_ok=True)
    for arch in ARCH_NAMES:
        m = reference_model(arch)
        m.set_tags(rng.integers(0, 6, size=(V + 1, 2)), rng.random((V + 1, 2)))
        for w in m.trainable_weights:  # nothing left at its zero start
            w.assign(rng.normal(scale=0.3, size=tuple(w.shape)).astype(np.float32))
        m.save_weights(folder / f"{arch}.weights.h5")
        np.save(folder / f"{arch}.npy", keras.ops.convert_to_numpy(m.logits(m(REFERENCE_INPUT))))


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_weights_saved_under_tensorflow_give_the_same_logits_and_ranks(arch, tmp_path):
    """The same weights give the same logits (float tolerance) and the same ranks on
    every backend. Under TensorFlow the reference is written here (a save/load check)."""
    folder = Path(os.environ.get("LASTFM_REFERENCE") or tmp_path)
    if not (folder / f"{arch}.npy").exists():
        assert keras.backend.backend() == "tensorflow", "no reference from TensorFlow"
        write_reference(folder)
    want = np.load(folder / f"{arch}.npy")
    m = reference_model(arch)
    m.load_weights(folder / f"{arch}.weights.h5")
    got = keras.ops.convert_to_numpy(m.logits(m(REFERENCE_INPUT)))
    np.testing.assert_allclose(got[:, 1:], want[:, 1:], rtol=1e-4, atol=1e-4)
    targets = np.array([4, 30, 1, 7], np.int32)
    higher, ties, top = device_ranker(m)(REFERENCE_INPUT, np.array([3, 1, 4, 4]), targets)
    want_higher = (want[:, 1:] > want[np.arange(4), targets][:, None]).sum(axis=1)
    assert higher.tolist() == want_higher.tolist()
    assert (
        top[:, :5].tolist() == (np.argsort(-want[:, 1:], axis=1, kind="stable")[:, :5] + 1).tolist()
    )


def test_shapes_and_padding_column():
    m = small_model()
    x = np.array([[1, 2, 3, 0, 0, 0], [4, 0, 0, 0, 0, 0]], np.int32)
    rep = m(x)
    logits = keras.ops.convert_to_numpy(m.logits(rep))
    assert tuple(rep.shape) == (2, 8) and logits.shape == (2, V + 1)
    assert (logits[:, 0] <= -1e8).all()


def test_padding_never_changes_the_output():
    m = small_model()
    short = np.array([[5, 7, 9, 0, 0, 0]], np.int32)
    longer = np.zeros((1, 15), np.int32)
    longer[0, :3] = [5, 7, 9]
    a = keras.ops.convert_to_numpy(m.logits(m(short)))
    b = keras.ops.convert_to_numpy(m.logits(m(longer)))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_an_unseen_play_kept_in_the_prefix_is_masked(arch):
    """sessionize.py --unseen keep leaves id 0 where an unseen track was played: every
    network skips it (inside the prefix or as its last play), as it skips padding; SASRec,
    whose positions count from the first play, keeps its position."""
    cfg = ModelConfig(arch=arch, input_len=6, emb_dim=8, hidden=6, fc_dim=8, dropout=0.0)
    m = build_model(V, cfg, seed=1)
    # 5, X, 7, 9 and X, 5, 7, X, 9 (a last X looks like padding: skipped as well)
    kept = np.array([[5, 0, 7, 9, 0, 0], [0, 5, 7, 0, 9, 0]], np.int32)
    spliced = np.array([[5, 7, 9, 0, 0, 0], [5, 7, 9, 0, 0, 0]], np.int32)
    a = keras.ops.convert_to_numpy(m.logits(m(kept)))
    b = keras.ops.convert_to_numpy(m.logits(m(spliced)))
    if arch == "sasrec":
        assert not np.allclose(a, b, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    pos = keras.ops.convert_to_numpy(m.last_position(kept > 0))
    assert pos.tolist() == [3, 4]


def test_last_position_logic_in_mixed_batches():
    m = small_model()
    seqs = [[3], [4, 5], [6, 7, 8, 9, 10, 11], [12, 13, 14]]
    batch = np.zeros((4, 6), np.int32)
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
    together = keras.ops.convert_to_numpy(m(batch))
    for i, s in enumerate(seqs):
        alone = keras.ops.convert_to_numpy(m(np.array([s], np.int32)))
        np.testing.assert_allclose(together[i], alone[0], rtol=1e-5, atol=1e-5)
    # the output depends on the last real play
    other = batch.copy()
    other[1, 1] = 20
    assert not np.allclose(keras.ops.convert_to_numpy(m(other))[1], together[1])


def test_tags_are_used_as_side_information():
    m = build_model(
        V,
        ModelConfig(input_len=4, emb_dim=8, hidden=6, fc_dim=8, dropout=0.0, tags_per_track=2),
        n_tags=4,
        seed=1,
    )
    tags = np.zeros((V + 1, 2), np.int32)
    w = np.zeros((V + 1, 2), np.float32)
    x = np.array([[3, 4, 0, 0]], np.int32)
    m.set_tags(tags, w)
    before = keras.ops.convert_to_numpy(m(x))
    tags[4] = [2, 3]
    w[4] = [100, 50]
    m.set_tags(tags, w)
    assert not np.allclose(keras.ops.convert_to_numpy(m(x)), before)


def test_training_loss_is_full_softmax_cross_entropy():
    m = small_model()
    w = keras.ops.convert_to_numpy(m.succ_emb.embeddings).copy()
    w[:] = np.random.default_rng(3).normal(size=w.shape)  # successor vectors count too
    m.succ_emb.embeddings.assign(w)
    m.out_bias.assign(np.random.default_rng(4).normal(size=V + 1).astype(np.float32))
    x = np.array([[3, 5, 7, 0, 0, 0], [2, 0, 0, 0, 0, 0], [9, 9, 1, 4, 0, 0]], np.int32)
    y = np.array([4, 30, 1], np.int32)
    logits = keras.ops.convert_to_numpy(m.logits(m(x))).astype(np.float64)
    mx = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - mx).sum(axis=1)) + mx[:, 0]
    expected = (lse - logits[np.arange(3), y]).mean()  # -log softmax(target), by hand
    got = float(keras.ops.convert_to_numpy(m.compute_loss(x, y, m(x))))
    assert got == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("sparse", [False, True])
def test_fused_adam_updates_as_keras_adam(sparse):
    rng = np.random.default_rng(0)
    w0, e0 = rng.normal(size=(12, 4)).astype(np.float32), rng.normal(size=7).astype(np.float32)
    out = []
    for cls in (keras.optimizers.Adam, trainer.FusedAdam):
        w, e = keras.Variable(w0.copy()), keras.Variable(e0.copy())
        opt = cls(0.01, global_clipnorm=1.0)
        for step in range(1, 6):
            gw = keras.ops.convert_to_tensor(
                np.sin(np.arange(48) * step).reshape(12, 4).astype(np.float32)
            )
            if sparse and keras.backend.backend() == "tensorflow":  # an embedding's gradient
                import tensorflow as tf

                ge = tf.IndexedSlices(
                    tf.fill((2,), float(step)), tf.constant([1, 3]), tf.constant([7])
                )
            else:
                ge = keras.ops.convert_to_tensor(
                    np.where(np.isin(np.arange(7), [1, 3]), float(step), 0.0).astype(np.float32)
                )
            opt.apply([gw, ge], [w, e])
        out.append((keras.ops.convert_to_numpy(w), keras.ops.convert_to_numpy(e)))
    assert not np.allclose(out[1][0], w0)
    np.testing.assert_allclose(out[1][0], out[0][0], atol=1e-6)
    np.testing.assert_allclose(out[1][1], out[0][1], atol=1e-6)


def test_ranker_ranks_and_excludes_seen_tracks():
    m = small_model()
    x = np.array([[3, 4, 0, 0, 0, 0]], np.int32)
    logits = keras.ops.convert_to_numpy(m.logits(m(x)))[0]
    target = int(np.argsort(-logits[1:])[4] + 1)  # the 5th best track
    higher, ties, top = device_ranker(m)(x, np.array([2]), np.array([target]))
    assert higher.tolist() == [4] and ties.tolist() == [0] and top[0, 4] == target
    *_, top_ex = device_ranker(m, exclude_seen=True)(x, np.array([2]), np.array([target]))
    assert 3 not in top_ex[0] and 4 not in top_ex[0]


def test_last_item_embedding_feeds_the_output():
    with_last = small_model()
    without = small_model(last_item=False)
    assert with_last.transition is not None and without.transition is None
    assert with_last.fc.kernel.shape[0] == without.fc.kernel.shape[0] + 8


def test_successor_vector_of_the_last_track_only():
    m = small_model()
    off = small_model(successor=False)
    assert m.succ_emb is not None and off.succ_emb is None
    w = keras.ops.convert_to_numpy(m.succ_emb.embeddings)
    assert not w.any()  # starts at zero: the path is learnt, not random noise
    x = np.array([[3, 5, 7, 0, 0, 0]], np.int32)
    before = keras.ops.convert_to_numpy(m(x))
    w2 = w.copy()
    w2[3] = 1.0  # an earlier track's successor vector: no effect
    m.succ_emb.embeddings.assign(w2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(m(x)), before, atol=1e-6)
    w2[7] = 1.0  # the last track's: added to the session vector
    m.succ_emb.embeddings.assign(w2)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(m(x)), before + 1.0, atol=1e-5)


def test_ranker_adds_transition_counts_to_the_last_tracks_successors():
    m = small_model()
    x = np.array([[3, 4, 0, 0, 0, 0], [4, 3, 0, 0, 0, 0]], np.int32)
    lengths = np.array([2, 2])
    logits = keras.ops.convert_to_numpy(m.logits(m(x)))
    order = np.argsort(-logits[0, 1:]) + 1
    low, other = int(order[-1]), int(order[-2])  # the two worst tracks of session 0
    ids = np.zeros((V + 1, 2), np.int32)
    counts = np.zeros((V + 1, 2), np.float32)
    ids[4], counts[4] = [low, 0], [20, 0]  # 4 -> low, 20 times
    ids[3], counts[3] = [other, 0], [20, 0]  # 3 -> other
    targets = np.array([low, low])
    plays = np.zeros(V + 1, np.float32)

    def ranker(w, v=0.0):
        return device_ranker(m, boost=hybrid.Transitions(ids, counts, plays, w, v).boost)

    plain = 1 + device_ranker(m)(x, lengths, targets)[0]
    same = 1 + ranker(0.0)(x, lengths, targets)[0]
    fused, _, top = ranker(10.0)(x, lengths, targets)
    fused = 1 + fused
    assert plain[0] == V and same.tolist() == plain.tolist()
    assert fused[0] == 1 and top[0, 0] == low  # session 0 ends with 4: low first
    assert top[1, 0] == other and fused[1] == plain[1] + (plain[1] < rank_of(logits[1], other))
    # the popularity term lifts successors only: plays of a non-successor change nothing
    plays[:] = 1000.0
    plays[low] = 0.0
    ids[4] = [low, other]
    counts[4] = [1, 1]  # a tie: popularity decides
    *_, top = ranker(10.0, 1.0)(x, lengths, targets)
    assert top[0, 0] == other and top[0, 1] == low


def rank_of(row, item):
    return 1 + int((row[1:] > row[item]).sum())


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_every_network_shapes_padding_and_save_load(arch, tmp_path):
    m = build_model(
        V, ModelConfig(arch=arch, input_len=6, emb_dim=8, hidden=6, fc_dim=8, dropout=0.0), seed=1
    )
    x = np.array([[1, 2, 3, 0, 0, 0], [4, 0, 0, 0, 0, 0]], np.int32)
    rep = m(x)
    logits = keras.ops.convert_to_numpy(m.logits(rep))
    assert tuple(rep.shape) == (2, 8) and logits.shape == (2, V + 1)
    assert (logits[:, 0] <= -1e8).all()
    longer = np.zeros((2, 11), np.int32)
    longer[:, :6] = x
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(m.logits(m(longer))), logits, rtol=1e-5, atol=1e-5
    )  # padding never changes the output
    other = x.copy()
    other[0, 2] = 9  # the last real play matters
    assert not np.allclose(
        keras.ops.convert_to_numpy(m(other))[0], keras.ops.convert_to_numpy(rep)[0]
    )
    m.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert type(again).__name__ == type(m).__name__ and again.config.arch == arch
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(again.logits(again(x))), logits, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_every_network_trains_through_the_shared_loop(arch, pipeline_data, tmp_path):
    """Each network, trained by train.py for a few epochs on tiny data under this
    process's backend, beats POP on validation HR@20, and its folder loads back."""
    from lastfm import baselines as bl
    from lastfm.metrics import evaluate, ranker_from_scorer

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    flags = f"--data-dir {data} --window 1m --arch {arch} --epochs 2 --emb-dim 32 --hidden 32"
    flags += " --batch-size 128 --lr 0.01 --verbose 0 --patience 3 --transitions 0 --bucket-step 0"
    layout, mc, tc = trainer.parse_args([*flags.split(), "--no-tensorboard"])
    record = trainer.train(layout, mc, tc)
    assert record["backend"] == keras.backend.backend() and record["model"]["arch"] == arch
    splits, vocab, _ = load_splits(layout, "1m")
    pop = bl.Pop().fit(splits["train"], len(vocab))
    pop_hr = evaluate(
        ranker_from_scorer(pop.score), make_events(splits["valid"], 20), len(vocab)
    ).summary["HR@20"]
    assert max(r["valid_HR@20"] for r in record["history"]) > pop_hr
    loaded, _ = load_trained(data / "models" / "1m")
    assert loaded.config.arch == arch


@pytest.mark.parametrize("chunk", [4, 16])
def test_ranking_in_chunks_equals_ranking_all_tracks_at_once(chunk):
    """Exact full ranking in chunks of the catalogue (the default above CHUNK_ABOVE
    tracks): the same ranks, ties and top-20 as one (B, V+1) matrix, with seen tracks
    excluded and a hybrid's transition terms added, equal scores included."""
    m = small_model()
    m.item_emb.embeddings.assign(
        np.round(keras.ops.convert_to_numpy(m.item_emb.embeddings), 1)
    )  # coarse vectors: some tracks score equal
    m.item_emb.embeddings.assign(
        np.vstack([keras.ops.convert_to_numpy(m.item_emb.embeddings)[:16]] * 2)[: V + 1]
    )  # tracks 16..30 copy 0..14: exact ties across chunks
    rng = np.random.default_rng(5)
    x = rng.integers(1, V + 1, size=(40, 6)).astype(np.int32)
    lengths = rng.integers(1, 7, size=40)
    for i, n in enumerate(lengths):
        x[i, n:] = 0
    targets = rng.integers(1, V + 1, size=40)
    ids = np.zeros((V + 1, 2), np.int32)
    counts = np.zeros((V + 1, 2), np.float32)
    ids[1:] = rng.integers(1, V + 1, size=(V, 2))
    counts[1:] = rng.integers(0, 5, size=(V, 2))
    boost = hybrid.Transitions(ids, counts, np.ones(V + 1, np.float32), 0.5, 0.0).boost
    for exclude_seen in (False, True):
        for extra in (None, boost):
            whole = device_ranker(m, exclude_seen, extra, chunk=0)(x, lengths, targets)
            parts = device_ranker(m, exclude_seen, extra, chunk=chunk)(x, lengths, targets)
            for a, b in zip(whole, parts):
                np.testing.assert_array_equal(a, b)
            assert whole[1].any()  # ties were there to count


def test_the_top_k_of_wide_chunks_from_their_best_blocks_equals_the_plain_top_k():
    """``_block_top`` (the chunked ranker's top-k) on a wide block with equal scores
    across blocks, NaN and excluded (-inf) columns, rows with fewer than k scores."""
    from keras import ops

    from lastfm.metrics import _block_top, topk

    rng = np.random.default_rng(9)
    s = np.round(rng.normal(size=(6, 12_345)), 1).astype(np.float32)  # many ties
    s[1, ::7] = np.nan
    s[2, 100:] = -np.inf  # 100 scores only: still more than k
    s[3, 5:] = -np.inf  # five scores: the other places empty
    s[4] = 0.0  # all equal: the lowest ids
    a_ids, a_vals = (ops.convert_to_numpy(t) for t in _block_top(ops.convert_to_tensor(s), 20, ops))
    b_ids, b_vals = topk(s, 20)
    np.testing.assert_array_equal(a_ids, b_ids)
    np.testing.assert_array_equal(a_vals, b_vals)
    assert a_ids[4].tolist() == list(range(1, 21)) and (a_ids[3, 5:] == 0).all()


def test_a_wide_catalogue_in_chunks_ranks_as_in_one_matrix():
    """Chunks wide enough for the block top-k, a last chunk of another width."""
    m = build_model(25_000, ModelConfig(input_len=4, emb_dim=4, hidden=4, fc_dim=4), seed=2)
    rng = np.random.default_rng(1)
    x = rng.integers(1, 25_001, size=(16, 4)).astype(np.int32)
    lengths = np.full(16, 4)
    targets = rng.integers(1, 25_001, size=16)
    whole = device_ranker(m, True, chunk=0)(x, lengths, targets)
    parts = device_ranker(m, True, chunk=11_000)(x, lengths, targets)
    for a, b in zip(whole, parts):
        np.testing.assert_array_equal(a, b)


class EveryTrackOnce:
    """A sampler that 'draws' every track once, at a constant expected count."""

    in_batch = False

    def draw(self, seed):
        return keras.ops.arange(1, V + 1, dtype="int32"), keras.ops.zeros((V,))


def test_the_sampled_loss_over_every_track_is_the_full_loss_and_takes_the_same_step():
    """With every track once among the negatives (no correction left): the full-softmax
    loss, and one training step moves every weight as the full loss's step does."""
    rng = np.random.default_rng(2)
    x = rng.integers(1, V + 1, size=(32, 6)).astype(np.int32)
    x[:, 4:] = 0
    y = rng.integers(1, V + 1, size=32).astype(np.int32)
    cfg = dict(input_len=6, emb_dim=8, hidden=6, fc_dim=8, dropout=0.0)
    full = build_model(V, ModelConfig(**cfg), seed=1)
    sampled = build_model(V, ModelConfig(**cfg, loss="sampled"), seed=1)
    init = [keras.ops.convert_to_numpy(v) for v in full.weights]
    init[[w.path for w in full.weights].index(full.out_bias.path)] = rng.normal(size=V + 1)
    for m in (full, sampled):
        for v, w in zip(m.weights, init):
            v.assign(w)
    rep = full(x)
    every, log_q = EveryTrackOnce().draw(None)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(full.sampled_nll(rep, y, every, log_q)),
        keras.ops.convert_to_numpy(full.full_softmax_nll(rep, y)),
        rtol=1e-5,
    )
    sampled.sampler = EveryTrackOnce()
    for m in (full, sampled):
        m.compile(optimizer=keras.optimizers.SGD(1.0))
        m.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(full.trainable_weights, sampled.trainable_weights):
        a, b = keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    before = init[[w.path for w in full.weights].index(full.item_emb.embeddings.path)]
    assert not np.allclose(keras.ops.convert_to_numpy(full.item_emb.embeddings), before)


def test_negatives_are_drawn_by_plays_to_the_alpha_with_their_expected_counts():
    from lastfm.nn import NegativeSampler

    plays = np.r_[0.0, np.arange(1, V + 1) ** 2.0]
    plays[5] = 0.0  # never played: never drawn
    sampler = NegativeSampler(plays, 4096, alpha=0.5)
    seed = keras.random.SeedGenerator(3)
    ids = np.concatenate([keras.ops.convert_to_numpy(sampler.draw(seed)[0]) for _ in range(10)])
    q = plays**0.5 / (plays**0.5).sum()
    freq = np.bincount(ids, minlength=V + 1) / len(ids)
    assert freq[0] == 0 and freq[5] == 0
    np.testing.assert_allclose(freq, q, atol=0.004)
    drawn, log_q = (keras.ops.convert_to_numpy(t) for t in sampler.draw(seed))
    np.testing.assert_allclose(log_q, np.log(4096 * q[drawn]), rtol=1e-5)
    y = keras.ops.convert_to_tensor(np.array([3, 30], np.int32))
    p = plays / plays.sum()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(sampler.batch_log_q(y)), np.log(2 * p[[3, 30]]), rtol=1e-5
    )


def copy_model(arch: str):
    cfg = ModelConfig(arch=arch, input_len=6, emb_dim=8, hidden=6, fc_dim=8, copy=True)
    m = build_model(V, cfg, seed=1)
    rng = np.random.default_rng(5)
    for w in m.trainable_weights:  # nothing left at its zero start (the copy weights too)
        w.assign(rng.normal(scale=0.5, size=tuple(w.shape)).astype(np.float32))
    return m


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_the_copy_path_is_copynets_joint_softmax_on_every_network(arch, tmp_path):
    """``--copy``: a track of the prefix scores log(exp(s) + sum of exp(c) over its
    plays), the others s; padding and unseen plays (id 0) copy nothing; the loss is the
    joint softmax's; the scores survive save/load and ranking in chunks."""
    from lastfm.metrics import device_logits

    m = copy_model(arch)
    x = np.array([[3, 5, 3, 0, 0, 0], [2, 0, 0, 0, 0, 0], [9, 0, 1, 4, 0, 0]], np.int32)
    out = keras.ops.convert_to_numpy(m(x))
    assert out.shape == (3, 8 + 6)
    c = out[:, 8:]
    assert (c[x == 0] <= -1e8).all() and (c[x > 0] > -1e8).all()
    s = keras.ops.convert_to_numpy(m.logits(m(x)))
    want = s.copy()
    for b in range(len(x)):
        for i in set(x[b].tolist()) - {0}:
            want[b, i] = np.logaddexp(s[b, i], np.logaddexp.reduce(c[b][x[b] == i]))
    got = keras.ops.convert_to_numpy(device_logits(m, x))
    np.testing.assert_allclose(got[:, 1:], want[:, 1:], rtol=1e-5, atol=1e-5)
    y = np.array([3, 7, 4], np.int32)
    nll = m.full_softmax_nll(m(x), keras.ops.convert_to_tensor(y), x)
    z = np.logaddexp.reduce(np.concatenate([s[:, 1:], np.where(x > 0, c, -np.inf)], 1), axis=1)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(nll), z - want[np.arange(3), y], rtol=1e-5, atol=1e-5
    )
    whole = device_ranker(m)(x, np.array([3, 1, 4]), y)
    chunked = device_ranker(m, chunk=7)(x, np.array([3, 1, 4]), y)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)
    assert whole[0].tolist() == (want[:, 1:] > want[np.arange(3), y][:, None]).sum(1).tolist()
    m.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(device_logits(again, x)), got, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_the_count_path_adds_gated_successor_terms_on_every_network(arch, tmp_path):
    """``--counts``: the last real play's successors get a log(1 + count) + b log(1 +
    plays), a and b >= 0 from the network; in training the target's own transition leaves
    its count and a share of the rows loses the term; the tables are saved with the model
    and ranking in chunks gives the same ranks."""
    from lastfm.metrics import device_logits

    cfg = ModelConfig(arch=arch, input_len=6, emb_dim=8, hidden=6, fc_dim=8, counts=True)
    cfg.count_k, cfg.count_dropout = 3, 0.5
    m = build_model(V, cfg, seed=1)
    rng = np.random.default_rng(3)
    for w in m.trainable_weights:
        w.assign(rng.normal(scale=0.5, size=tuple(w.shape)).astype(np.float32))
    ids = np.zeros((V + 1, 3), np.int32)
    ids[1:, :2] = np.stack([np.arange(2, V + 2) % V + 1, np.arange(5, V + 5) % V + 1], 1)
    counts = np.where(ids > 0, rng.integers(1, 9, (V + 1, 3)), 0).astype(np.float32)
    plays = rng.integers(1, 50, V + 1).astype(np.float32)
    m.set_transitions(ids, counts, plays)
    x = np.array([[3, 5, 3, 0, 0, 0], [2, 0, 0, 0, 0, 0], [9, 0, 1, 4, 0, 0]], np.int32)
    last = np.array([3, 2, 4])
    s = keras.ops.convert_to_numpy(m.logits(m(x)))
    gate = keras.ops.convert_to_numpy(keras.ops.softplus(m.count_gate(m(x))))
    assert (gate >= 0).all()
    want = s.copy()
    for b, i in enumerate(last):
        for k in range(3):
            if ids[i, k]:
                t = gate[b, 0] * np.log1p(counts[i, k]) + gate[b, 1] * np.log1p(plays[ids[i, k]])
                want[b, ids[i, k]] += t
    got = keras.ops.convert_to_numpy(device_logits(m, x))
    np.testing.assert_allclose(got[:, 1:], want[:, 1:], rtol=1e-5, atol=1e-5)
    y = ids[last, 0]
    _, plain = m.count_terms(m(x), x)
    _, loo = m.count_terms(m(x), x, y=keras.ops.convert_to_tensor(y))
    plain, loo = keras.ops.convert_to_numpy(plain), keras.ops.convert_to_numpy(loo)
    np.testing.assert_allclose(
        loo[:, 0],
        gate[:, 0] * np.log1p(counts[last, 0] - 1) + gate[:, 1] * np.log1p(plays[y]),
        rtol=1e-5,
    )
    np.testing.assert_allclose(loo[:, 1:], plain[:, 1:], rtol=1e-6)
    big = np.repeat(x, 200, axis=0)
    _, dropped = m.count_terms(m(big), big, training=True)
    kept = (keras.ops.convert_to_numpy(dropped)[:, 0] != 0).mean()
    assert 0.35 < kept < 0.65
    whole = device_ranker(m)(x, np.array([3, 1, 4]), y)
    chunked = device_ranker(m, chunk=7)(x, np.array([3, 1, 4]), y)
    for a, b in zip(whole, chunked):
        np.testing.assert_array_equal(a, b)
    m.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(device_logits(again, x)), got, rtol=1e-5, atol=1e-5
    )
