"""``--copy`` (``lastfm.nn``): the repeat-aware output wins where the next track repeats
one of the session's, and is refused where it cannot apply."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from lastfm.common import PipelineError  # noqa: E402
from lastfm.data import Events  # noqa: E402
from lastfm.metrics import device_ranker, evaluate  # noqa: E402
from model import ModelConfig, build_model  # noqa: E402
from train import FusedAdam  # noqa: E402

V, L = 300, 6


def trained_mrr(cfg: ModelConfig, x, y, events, epochs: int, batch: int, tables=None) -> float:
    """MRR@20 on ``events`` of the network ``cfg`` trained on (x, y) (seeded)."""
    keras.utils.set_random_seed(0)
    m = build_model(V, cfg, seed=0)
    if tables is not None:
        m.set_transitions(*tables)
    m.compile(optimizer=FusedAdam(0.01))
    m.fit(x, y, batch_size=batch, epochs=epochs, verbose=0)
    return evaluate(device_ranker(m), events, V).summary["MRR@20"]


def repeats(n: int, seed: int):
    """Prefixes of 5 distinct random tracks; the next play repeats the second one: no
    track predicts another, only the position does."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, L), np.int32)
    x[:, :5] = np.argsort(rng.random((n, V)), axis=1)[:, :5] + 1
    return x, x[:, 1].copy()


@pytest.mark.parametrize("arch", ["gru4rec", "bigru_att"])
def test_the_copy_path_learns_a_repeat_that_the_plain_network_cannot(arch):
    x, y = repeats(4000, seed=0)
    tx, ty = repeats(500, seed=1)
    events = Events(tx, np.full(len(tx), 5, np.int32), ty, np.arange(len(tx)), np.ones(len(tx)))
    mrr = {
        copy: trained_mrr(
            ModelConfig(arch=arch, input_len=L, emb_dim=16, hidden=16, fc_dim=16, copy=copy),
            x,
            y,
            events,
            epochs=3,
            batch=128,
        )
        for copy in (False, True)
    }
    assert mrr[True] > 0.9 and mrr[False] < 0.2, mrr


def test_copy_needs_the_full_softmax():
    with pytest.raises(PipelineError, match="--copy: with --loss full only"):
        ModelConfig(copy=True, loss="sampled").check()


def test_the_count_path_learns_transitions_that_the_plain_network_has_seen_twice():
    """``--counts``: every track has one successor, seen twice in training; the count
    path (its table filled as ``train.py`` fills it) ranks it first, the same network
    without it has not learnt 300 transitions from two examples each."""
    rng = np.random.default_rng(0)
    succ = rng.permutation(V) + 1  # track i -> succ[i - 1]

    def prefixes(last):
        x = np.zeros((len(last), L), np.int32)
        x[:, :4] = rng.integers(1, V + 1, (len(last), 4))
        x[:, 4] = last
        return x, succ[last - 1].astype(np.int32)

    x, y = prefixes(np.repeat(np.arange(1, V + 1), 2))
    tx, ty = prefixes(np.arange(1, V + 1))
    events = Events(tx, np.full(len(tx), 5, np.int32), ty, np.arange(len(tx)), np.ones(len(tx)))
    ids = np.zeros((V + 1, 4), np.int32)
    ids[1:, 0] = succ
    counts = np.where(ids > 0, 2.0, 0.0).astype(np.float32)
    tables = (ids, counts, np.full(V + 1, 2.0, np.float32))
    mrr = {
        on: trained_mrr(
            ModelConfig(arch="gru4rec", input_len=L, emb_dim=16, hidden=16, counts=on, count_k=4),
            x,
            y,
            events,
            epochs=4,
            batch=64,
            tables=tables if on else None,
        )
        for on in (False, True)
    }
    assert mrr[True] > 0.9 and mrr[False] < 0.3, mrr


def test_counts_and_copy_refusals():
    with pytest.raises(PipelineError, match="one output path at a time"):
        ModelConfig(copy=True, counts=True).check()
    with pytest.raises(PipelineError, match="--counts: with --loss full only"):
        ModelConfig(counts=True, loss="sampled").check()
    with pytest.raises(PipelineError, match="--count-dropout"):
        ModelConfig(counts=True, count_dropout=1.0).check()


@pytest.mark.parametrize("flag", ["--copy", "--counts"])
def test_train_py_trains_saves_and_evaluates_each_output_path(flag, pipeline_data, tmp_path):
    """``train.py --copy`` / ``--counts`` end to end: trained by the shared loop (the count
    tables filled from the training split), saved, loaded back (its tables too), and
    named for what it is in the results."""
    import shutil

    import train as trainer
    from lastfm.data import load_splits, make_events
    from lastfm.evaluate import network_name
    from lastfm.metrics import device_logits
    from model import load_trained

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    flags = f"--data-dir {data} --window 3m --epochs 2 --emb-dim 16 --hidden 16 --fc-dim 16"
    flags += " --batch-size 128 --verbose 0 --transitions 0 --bucket-step 0 " + flag
    layout, mc, tc = trainer.parse_args([*flags.split(), "--no-tensorboard"])
    record = trainer.train(layout, mc, tc)
    assert network_name(record) == "BiGRU-Att" + flag.replace("--", "+")
    splits, vocab, _ = load_splits(layout, "3m", ("train", "valid"))
    x = make_events(splits["valid"], 20).prefixes[:64]
    model, _ = load_trained(data / "models" / "3m")
    if flag == "--counts":
        from lastfm.hybrid import Transitions

        trans = Transitions.from_train(splits["train"], len(vocab), mc.count_k)
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.succ_ids), trans.ids)
    assert max(r["valid_MRR@20"] for r in record["history"]) > 0
    again = keras.ops.convert_to_numpy(device_logits(model, x))
    assert np.isfinite(again[:, 1:]).all()
