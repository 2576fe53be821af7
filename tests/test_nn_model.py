"""model.py / train.py / lastfm.hybrid: shapes, masking, training, save/load, refusals."""

from __future__ import annotations

import json

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


def test_monitor_keeps_the_epoch_best_on_its_metric(pipeline_data, tmp_path):
    """--monitor HR@20: the kept epoch is the first with the best validation HR@20 and the
    record says so (the default, MRR@20: the other training tests); another metric is
    refused."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    flags = ["--data-dir", str(data), "--window", "3m", "--epochs", "3", "--emb-dim", "8"]
    flags += ["--hidden", "8", "--fc-dim", "8", "--verbose", "0", "--transitions", "0"]
    flags += ["--no-tensorboard", "--patience", "3", "--lr", "0.02"]
    record = trainer.train(*trainer.parse_args(flags + ["--monitor", "HR@20"]))
    scores = [r["valid_HR@20"] for r in record["history"]]
    assert record["monitor"] == "HR@20" and len(scores) == 3
    assert record["best_epoch"] == 1 + int(np.argmax(scores))
    assert record["best_valid"] == pytest.approx(max(scores), abs=1e-4)
    with pytest.raises(SystemExit):
        trainer.parse_args(flags + ["--monitor", "NDCG@20"])
