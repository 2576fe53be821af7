"""train.py --stream: examples read file by file through a bounded shuffle buffer."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from lastfm import hybrid
from lastfm.common import PipelineError
from lastfm.data import load_splits, make_events
from lastfm.paths import Layout
from lastfm.stream import ShuffleStream, count_examples, split_files

L = 8


def rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each example as one row (prefix, target), the rows sorted: a multiset to compare."""
    both = np.column_stack([x, y])
    return both[np.lexsort(both.T[::-1])]


@pytest.fixture
def train_split(pipeline_data):
    splits, vocab, _ = load_splits(Layout.at(pipeline_data), "3m", ("train",))
    return splits["train"], len(vocab), pipeline_data / "sessions" / "3m" / "train.parquet"


def parts_of(train: pd.DataFrame, folder, n: int = 3):
    """The split as ``n`` part files of whole sessions (the Dask engine's layout)."""
    folder.mkdir()
    cut = np.array_split(train["session_id"].unique(), n)
    for k, ids in enumerate(cut):
        train[train["session_id"].isin(ids)].to_parquet(folder / f"part-{k:05d}.parquet")
    return folder


def epoch_rows(stream: ShuffleStream, number: int):
    batches = list(stream.epoch(number))
    assert len(batches) == len(stream)
    assert all(len(y) == stream.batch_size for _, y in batches[:-1])
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    return x, y


@pytest.mark.parametrize("layout", ["one file", "parts"])
def test_every_example_once_per_epoch_in_a_seeded_order(train_split, tmp_path, layout):
    train, _, path = train_split
    if layout == "parts":
        path = parts_of(train, tmp_path / "train.parquet")
    want = make_events(train, L)
    # small record batches: sessions cut by a batch's end are carried to the next one
    stream = ShuffleStream(split_files(path), L, 64, buffer=500, seed=3, read_rows=97)
    assert stream.n_examples == len(want.targets) == count_examples(split_files(path))
    x0, y0 = epoch_rows(stream, 0)
    x1, y1 = epoch_rows(stream, 1)
    expected = rows(want.prefixes, want.targets)
    np.testing.assert_array_equal(rows(x0, y0), expected)
    np.testing.assert_array_equal(rows(x1, y1), expected)
    assert not np.array_equal(y0, y1)  # each epoch its own order
    again = ShuffleStream(split_files(path), L, 64, buffer=500, seed=3, read_rows=97)
    np.testing.assert_array_equal(epoch_rows(again, 1)[1], y1)  # seeded
    # the order is shuffled beyond the buffer's reach: not the files' order
    assert np.corrcoef(np.arange(len(y0)), np.argsort(np.argsort(y0)))[0, 1] < 0.5


def test_a_buffer_larger_than_the_split_and_refusals(train_split, tmp_path):
    train, _, path = train_split
    stream = ShuffleStream([path], L, 1000, buffer=10**7)
    x, y = epoch_rows(stream, 0)
    want = make_events(train, L)
    np.testing.assert_array_equal(rows(x, y), rows(want.prefixes, want.targets))
    with pytest.raises(PipelineError, match="shuffle-buffer"):
        ShuffleStream([path], L, 64, buffer=10)
    unsorted = tmp_path / "unsorted.parquet"
    train.iloc[::-1].to_parquet(unsorted)
    with pytest.raises(PipelineError, match="not ordered by session_id"):
        list(ShuffleStream([unsorted], L, 64, buffer=100).epoch(0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="without Parquet"):
        split_files(tmp_path / "empty")


def test_transitions_from_part_files_equal_those_of_the_whole_split(train_split, tmp_path):
    train, n_items, _ = train_split
    folder = parts_of(train, tmp_path / "train.parquet", n=4)
    a = hybrid.Transitions.from_train(train, n_items, 5)
    b = hybrid.Transitions.from_files(split_files(folder), n_items, 5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.counts, b.counts)
    np.testing.assert_array_equal(a.plays, b.plays)


def test_train_py_stream_trains_on_every_example_of_the_parts(pipeline_data, tmp_path):
    """train.py --stream on the Dask engine's layout (part files): the same examples as
    the in-memory path, a model that beats chance, the hybrid from the files."""
    import train as trainer

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    folder = data / "sessions" / "3m"
    whole = pd.read_parquet(folder / "train.parquet")
    (folder / "train.parquet").unlink()
    parts_of(whole, folder / "train.parquet")
    flags = f"--data-dir {data} --window 3m --epochs 2 --emb-dim 16 --hidden 16 --fc-dim 16"
    flags += " --batch-size 128 --verbose 0 --transitions 4 --no-tensorboard --stream"
    record = trainer.train(*trainer.parse_args([*flags.split(), "--shuffle-buffer", "1000"]))
    assert record["train_examples"] == len(make_events(whole, 20).targets)
    assert record["train"]["stream"] and "transitions" in record
    chance = 20 / record["n_items"]  # HR@20 of a random ranking of the vocabulary
    assert max(r["valid_HR@20"] for r in record["history"]) > 2 * chance
    with pytest.raises(PipelineError, match="not with --stream"):
        trainer.parse_args([*flags.split(), "--max-train-examples", "10"])


def test_stream_batches_are_asked_in_order(train_split):
    import train as trainer

    _, _, path = train_split
    batches = trainer.StreamBatches(ShuffleStream([path], L, 64, buffer=500))
    first, second = batches[0], batches[1]
    assert batches[0] is first and batches[1] is second  # Keras reads them twice
    batches[2]
    with pytest.raises(PipelineError, match="asked before"):
        batches[7]
    batches.on_epoch_end()
    assert not np.array_equal(batches[0][1], first[1])  # a new epoch, a new order


@pytest.mark.parametrize(
    "flag, value, words",
    [
        ("--shuffle-buffer", "0", "shuffle-buffer"),
        ("--shuffle-buffer", "-5", "shuffle-buffer"),
        ("--devices", "-1", "devices"),
        ("--shard-tracks", "0", "shard-tracks"),
        ("--negatives", "0", "negatives"),
        ("--sample-alpha", "-0.5", "sample-alpha"),
    ],
)
def test_bad_scale_options_are_one_line(flag, value, words, tmp_path):
    """The new training options refuse zero and negative values (NaN and infinity are
    refused by every float flag's parser) with one line naming the flag."""
    import train as trainer

    with pytest.raises((PipelineError, SystemExit)) as err:
        trainer.parse_args(["--data-dir", str(tmp_path), flag, value])
    if err.type is PipelineError:
        assert words in str(err.value)
    for bad in ("nan", "inf"):
        with pytest.raises(SystemExit):
            trainer.parse_args(["--data-dir", str(tmp_path), "--sample-alpha", bad])


def test_event_stream_gives_the_events_and_results_of_the_whole_split(train_split, tmp_path):
    """The test split read part by part (``EventStream``): the same events, in the same
    order within each part, and ``evaluate`` gives the same per-event results."""
    from lastfm import baselines as bl
    from lastfm.metrics import evaluate, ranker_from_scorer
    from lastfm.stream import EventStream

    train, n_items, _ = train_split
    files = split_files(parts_of(train, tmp_path / "test.parquet"))
    stream = EventStream(files, L, rows=101)  # sessions cut by record batches
    chunks = list(stream)
    assert len(chunks) > len(files)
    whole = make_events(pd.concat([pd.read_parquet(f) for f in files], ignore_index=True), L)
    for name in ("prefixes", "lengths", "targets", "sessions", "positions", "times", "users"):
        got = np.concatenate([getattr(c, name) for c in chunks])
        np.testing.assert_array_equal(got, getattr(whole, name), err_msg=name)
    sr = bl.SequentialRules().fit(train, n_items)
    ranker = ranker_from_scorer(sr.scorer)
    a, b = evaluate(ranker, whole, n_items), evaluate(ranker, stream, n_items)
    for name in ("higher", "ties", "sessions", "positions", "topk"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)
    assert {k: v for k, v in b.summary.items() if "per_s" not in k and k != "seconds"} == {
        k: v for k, v in a.summary.items() if "per_s" not in k and k != "seconds"
    }
