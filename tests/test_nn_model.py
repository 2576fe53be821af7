"""model.py / train.py / lastfm.hybrid: shapes, masking, training, save/load, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

import train as trainer  # noqa: E402
from lastfm import hybrid  # noqa: E402
from lastfm.baselines import SequentialRules  # noqa: E402
from lastfm.common import PipelineError  # noqa: E402
from lastfm.data import load_splits, make_events, recent, sample_events  # noqa: E402
from lastfm.metrics import device_ranker  # noqa: E402
from model import ModelConfig, build_model, load_trained  # noqa: E402

V = 30


def small_model(**kw):
    cfg = ModelConfig(input_len=6, emb_dim=8, hidden=6, fc_dim=8, dropout=0.0, **kw)
    return build_model(V, cfg, seed=1)


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


@pytest.mark.parametrize("arch", ["bigru_att", "narm", "gru4rec", "sasrec", "stamp"])
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


def test_recent_keeps_most_recent_items():
    pre = np.array([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0]], np.int32)
    out = recent(pre, np.array([5, 2]), 3)
    assert out.tolist() == [[3, 4, 5], [6, 7, 0]]


def test_short_training_learns_saves_and_refuses_mismatch(pipeline_data, monkeypatch, capsys):
    monkeypatch.setenv("LASTFM_DATA_DIR", str(pipeline_data))
    import test_model as evaluation
    from lastfm import baselines as bl
    from lastfm.metrics import evaluate, ranker_from_scorer

    layout, mc, tc = trainer.parse_args(
        [
            "--window",
            "3m",
            "--epochs",
            "4",
            "--emb-dim",
            "32",
            "--hidden",
            "32",
            "--fc-dim",
            "64",
            "--batch-size",
            "64",
            "--lr",
            "0.005",
            "--verbose",
            "0",
            "--patience",
            "4",
        ]
    )
    config = trainer.train(layout, mc, tc)
    rows = config["history"]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert config["stopped"] == "epochs" and len(rows) == 4
    # validation HR@20 beats POP on the same validation split
    splits, vocab, meta = load_splits(layout, "3m")

    pop = bl.Pop().fit(splits["train"], len(vocab))
    pop_hr = evaluate(
        ranker_from_scorer(pop.score), make_events(splits["valid"], 20), len(vocab)
    ).summary["HR@20"]
    assert max(r["valid_HR@20"] for r in rows) > pop_hr
    # save/load round trip gives the same scores
    path = pipeline_data / "models" / "3m" / "model.keras"
    loaded, cfg = load_trained(path.parent, meta["vocab_md5"])
    x = np.array([[1, 2, 3] + [0] * 17], np.int32)
    again, _ = load_trained(path.parent, meta["vocab_md5"])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(again(x)), rtol=1e-6
    )
    assert cfg["best_epoch"] >= 1 and json.loads(path.with_name("config.json").read_text())
    with pytest.raises(PipelineError, match="another vocabulary"):
        load_trained(path.parent, "0" * 32)
    # the evaluation stage picks the model up
    evaluation.main(["--window", "3m", "--n-boot", "50", "--methods", "POP,SR"])
    res = json.loads((pipeline_data / "reports" / "results.json").read_text())
    assert (
        "BiGRU-Att" in res["methods"]
        and res["methods"]["BiGRU-Att"]["HR@20"] > res["methods"]["POP"]["HR@20"]
    )
    # transition counts: weight chosen on validation (0 = the network alone), table saved;
    # the evaluation shows the network alone and, with a weight > 0, the hybrid
    t = cfg["transitions"]
    assert [(r["weight"], r["pop_weight"]) for r in t["tried"]] == [
        (w, v) for w in hybrid.WEIGHTS for v in hybrid.POP_WEIGHTS
    ]
    best = next(
        r for r in t["tried"] if r["valid_MRR@20"] == max(q["valid_MRR@20"] for q in t["tried"])
    )
    assert (t["weight"], t["pop_weight"]) == (best["weight"], best["pop_weight"])
    # the model alone in the grid is exactly the training's best validation figure
    assert t["tried"][0]["valid_MRR@20"] == pytest.approx(cfg["best_valid"], abs=1e-4)
    assert (path.parent / "transitions.npz").exists()
    is_hybrid = t["weight"] > 0 or t["pop_weight"] > 0
    assert ("BiGRU-Att+transitions" in res["methods"]) == is_hybrid
    if is_hybrid:  # the ranker with the chosen weights gives the recorded validation figure
        trans = hybrid.load(path.parent, cfg["transitions"])
        valid = sample_events(make_events(splits["valid"], 20), 20_000, 0)
        mrr = evaluate(device_ranker(loaded, boost=trans.boost), valid, len(vocab)).summary[
            "MRR@20"
        ]
        assert mrr == pytest.approx(t["valid_MRR@20"], abs=1e-4)
    trainer.main(["--window", "3m", "--transitions-only", "--transitions", "4"])
    refit = json.loads(path.with_name("config.json").read_text())["transitions"]
    assert refit["k"] == 4 and len(refit["tried"]) == len(t["tried"])
    # An experiment with --out keeps its report beside its model.
    record = (pipeline_data / "reports" / "training.md").read_text()
    exp = pipeline_data / "experiment"
    trainer.train(
        *trainer.parse_args(
            [
                "--window",
                "3m",
                "--epochs",
                "1",
                "--emb-dim",
                "8",
                "--hidden",
                "8",
                "--fc-dim",
                "8",
                "--verbose",
                "0",
                "--out",
                str(exp),
            ]
        )
    )
    assert (exp / "training.md").exists() and (exp / "training_curves.png").exists()
    assert (pipeline_data / "reports" / "training.md").read_text() == record


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


def test_length_buckets_cover_every_example_once_with_tight_widths():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 21, size=1000)
    x = np.zeros((1000, 20), np.int32)
    for i, n in enumerate(lengths):
        x[i, :n] = rng.integers(1, V + 1, size=n)
    y = np.arange(1000, dtype=np.int32)
    for step in (1, 4):
        ds = trainer.LengthBuckets(x, lengths, y, batch_size=64, seed=0, step=step)
        for _epoch in range(2):
            seen = []
            for i in range(len(ds)):
                xb, yb = ds[i]
                seen.extend(yb.tolist())
                w = xb.shape[1]
                assert w >= lengths[yb].max() and (w % step == 0 or w == 20)
                assert w - lengths[yb].max() < step
                np.testing.assert_array_equal(xb, x[yb, :w])  # only padding is cut
            assert sorted(seen) == y.tolist()
            assert ds[0][0].shape[1] != ds[1][0].shape[1]  # width left free
            ds.on_epoch_end()
    full = trainer.LengthBuckets(x, lengths, y, batch_size=64, seed=0, step=0)
    assert all(full[i][0].shape[1] == 20 for i in range(len(full)))
    a = trainer.LengthBuckets(x, lengths, y, batch_size=64, seed=5)
    b = trainer.LengthBuckets(x, lengths, y, batch_size=64, seed=5)
    assert all((a[i][1] == b[i][1]).all() for i in range(len(a)))  # seeded, reproducible


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


def test_top_successors_ranks_next_tracks_by_training_count():
    # sessions (id, tracks): 1: 5 6 5 7 ; 2: 5 7 5 7 ; 3: 9 (a session boundary is no pair)
    import pandas as pd

    train = pd.DataFrame(
        {"session_id": [1, 1, 1, 1, 2, 2, 2, 2, 3], "item_idx": [5, 6, 5, 7, 5, 7, 5, 7, 9]}
    )
    table = SequentialRules(steps=1).fit(train, 10).table
    ids, counts = hybrid.top_successors(table, k=2)
    assert ids.shape == counts.shape == (11, 2) and ids.dtype == np.int32
    assert ids[5].tolist() == [7, 6] and counts[5].tolist() == [3, 1]
    assert ids[6].tolist() == [5, 0] and ids[7].tolist() == [5, 0] and counts[7].tolist() == [1, 0]
    assert not ids[9].any() and not ids[0].any()  # 7->9 crosses sessions: not counted
    assert hybrid.top_successors(table, 1)[0][5].tolist() == [7]
    t = hybrid.Transitions.from_train(train, 10, 2)
    assert t.ids.tolist() == ids.tolist() and t.plays[5] == 4 and t.plays[9] == 1


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


def test_seeds_of_one_configuration_are_grouped(pipeline_data, tmp_path, monkeypatch):
    """Two seeds of one configuration: a group with mean, sd and the every-seed verdict,
    also when one seed's ranks come from a --save-ranks file (a GPU machine's) and the
    runs had different time budgets (a limit, not a configuration)."""
    import shutil

    import test_model as evaluation

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    monkeypatch.setenv("LASTFM_DATA_DIR", str(data))
    dirs = []
    for seed in (1, 2):
        out = tmp_path / f"seed{seed}"
        trainer.main(
            [
                "--window",
                "3m",
                "--epochs",
                "1",
                "--emb-dim",
                "8",
                "--hidden",
                "8",
                "--fc-dim",
                "8",
                "--verbose",
                "0",
                "--no-tensorboard",
                "--seed",
                str(seed),
                "--out",
                str(out),
                "--transitions",
                "0",
                "--time-budget",
                str(3600 * seed),
            ]
        )
        dirs.append(str(out))
    saved = tmp_path / "ranks.npz"
    flags = ["--window", "3m", "--n-boot", "20", "--models"]
    evaluation.main(flags + [dirs[1], "--methods", "", "--save-ranks", str(saved)])
    evaluation.main(flags + [dirs[0], "--methods", "POP,SR", "--ranks-from", str(saved)])
    res = json.loads((data / "reports" / "results.json").read_text())
    (group,) = res["seed_groups"]
    assert group["seeds"] == [1, 2] and len(group["rows"]) == 2
    assert group["epochs"] == [1, 1] and group["stopped"] == ["epochs", "epochs"]
    assert res["methods"][group["rows"][1]]["ranks_from"] == str(saved)
    vals = [res["methods"][r]["MRR@20"] for r in group["rows"]]
    assert group["MRR@20"]["mean"] == pytest.approx(np.mean(vals))
    assert group["MRR@20"]["sd"] == pytest.approx(np.std(vals, ddof=1))
    verdict = all(res["methods"][r]["diff_vs_reference"]["MRR@20"][1] > 0 for r in group["rows"])
    assert group["MRR@20 diff_vs_reference holds for every seed"] == verdict


PEERS = ["narm", "gru4rec", "sasrec", "stamp"]


@pytest.mark.parametrize("arch", PEERS)
def test_peer_shapes_padding_and_save_load(arch, tmp_path):
    m = build_model(
        V, ModelConfig(arch=arch, input_len=6, emb_dim=8, hidden=6, dropout=0.0), seed=1
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


@pytest.mark.parametrize("arch", PEERS)
def test_peer_short_training_beats_pop(arch, pipeline_data, tmp_path, monkeypatch):
    """Each peer, trained by the shared loop for a few epochs on tiny data, beats POP on
    validation HR@20."""
    import shutil

    from lastfm import baselines as bl
    from lastfm.metrics import evaluate, ranker_from_scorer

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    layout, mc, tc = trainer.parse_args(
        [
            "--data-dir",
            str(data),
            "--window",
            "3m",
            "--arch",
            arch,
            "--epochs",
            "3",
            "--emb-dim",
            "32",
            "--hidden",
            "32",
            "--batch-size",
            "64",
            "--lr",
            "0.005",
            "--verbose",
            "0",
            "--patience",
            "3",
            "--transitions",
            "0",
            "--no-tensorboard",
        ]
    )
    record = trainer.train(layout, mc, tc)
    splits, vocab, _ = load_splits(layout, "3m")
    pop = bl.Pop().fit(splits["train"], len(vocab))
    pop_hr = evaluate(
        ranker_from_scorer(pop.score), make_events(splits["valid"], 20), len(vocab)
    ).summary["HR@20"]
    assert record["model"]["arch"] == arch
    assert max(r["valid_HR@20"] for r in record["history"]) > pop_hr
    loaded, _ = load_trained(data / "models" / "3m")
    assert type(loaded).__name__.lower().startswith(arch[:4])


def test_time_budget_stops_before_an_epoch_that_would_overrun(pipeline_data, tmp_path):
    """--time-budget: no epoch starts that the last one's time says would end past it; the
    stop is recorded; a negative budget is refused."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    flags = ["--data-dir", str(data), "--window", "3m", "--epochs", "4", "--emb-dim", "8"]
    flags += ["--hidden", "8", "--fc-dim", "8", "--verbose", "0", "--transitions", "0"]
    flags += ["--no-tensorboard", "--patience", "4"]
    record = trainer.train(*trainer.parse_args(flags + ["--time-budget", "0.001"]))
    assert record["stopped"] == "time budget" and len(record["history"]) == 1
    saved = json.loads((data / "models" / "3m" / "config.json").read_text())
    assert saved["stopped"] == "time budget" and saved["best_epoch"] == 1
    # a budget larger than the run: every epoch runs
    record = trainer.train(*trainer.parse_args(flags + ["--time-budget", "3600"]))
    assert record["stopped"] == "epochs" and len(record["history"]) == 4
    with pytest.raises(PipelineError, match="--time-budget -1"):
        trainer.parse_args(flags + ["--time-budget", "-1"])


def test_every_network_runs_under_jax():
    """The same code under KERAS_BACKEND=jax: each network builds, trains a step, ranks."""
    import os
    import subprocess
    import sys

    pytest.importorskip("jax")
    code = """
import numpy as np, keras
from model import build_model
from lastfm.nn import ARCHS, ModelConfig
from lastfm.metrics import device_ranker
assert keras.backend.backend() == "jax"
rng = np.random.default_rng(0)
x = rng.integers(1, 31, size=(64, 6)).astype(np.int32)
x[:, 4:] = 0
y = rng.integers(1, 31, size=64).astype(np.int32)
for arch in sorted(ARCHS):
    m = build_model(30, ModelConfig(arch=arch, input_len=6, emb_dim=8, hidden=6), seed=1)
    m.compile(optimizer=keras.optimizers.Adam(0.01))
    loss = m.fit(x, y, epochs=2, batch_size=32, verbose=0).history["loss"]
    higher, ties, top = device_ranker(m)(x[:4], np.full(4, 4), y[:4])
    assert np.isfinite(loss).all() and top.shape == (4, 20), arch
print("ok", sorted(ARCHS))
"""
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    root = str(Path(trainer.__file__).parent)
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ok ['bigru_att', 'gru4rec', 'narm', 'sasrec', 'stamp']" in r.stdout
