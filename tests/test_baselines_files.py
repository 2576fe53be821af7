"""Baselines fitted from a split's part files (``baselines.SplitFiles``): the same scores as
fitted on the whole split in memory, the count tables added up part by part and the
session neighbourhoods read from the memory-mapped, per-track capped index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lastfm import baselines as bl

N_ITEMS = 40


def random_split(seed: int = 0, sessions: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows, t = [], 0
    for s in range(sessions):
        t += int(rng.integers(1, 5000))
        n = int(rng.integers(1, 9))
        hub = int(rng.integers(1, N_ITEMS + 1))  # repeats and shared tracks, as in music
        items = np.where(rng.random(n) < 0.4, hub, rng.integers(1, N_ITEMS + 1, n))
        rows += [(s, int(i), t + 60 * p) for p, i in enumerate(items)]
    df = pd.DataFrame(rows, columns=["session_id", "item_idx", "ts_s"])
    order = df.groupby("session_id").cumcount()
    df = df.sort_values(["session_id"]).assign(position=order).reset_index(drop=True)
    return df.astype({"item_idx": np.int32})


def write_parts(df: pd.DataFrame, folder, parts: int = 3) -> list:
    """Whole sessions per part, sessions shuffled between parts (as a hash of the user)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    part_of = rng.integers(0, parts, df["session_id"].max() + 1)[df["session_id"].to_numpy()]
    files = []
    for k in range(parts):
        path = folder / f"part-{k:03d}.parquet"
        df[part_of == k].to_parquet(path, index=False)
        files.append(path)
    return files


def queries(seed: int = 2, n: int = 64, L: int = 6):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, L + 1, n)
    prefixes = rng.integers(1, N_ITEMS + 1, (n, L)).astype(np.int32)
    prefixes[np.arange(L)[None, :] >= lengths[:, None]] = 0
    prefixes[0, 0] = 0  # a kept unseen play
    times = np.full(n, 2_000_000, np.int64)
    return prefixes, lengths, times


def on_disk(a) -> bool:
    """Whether ``a`` is a view of a memory-mapped file (not a copy in memory)."""
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = getattr(a, "base", None)
    return False


CASES = [
    (bl.Pop, {}),
    (bl.SessionPop, {}),
    (bl.SequentialRules, {"steps": 10, "weighting": "div", "pruning": 5}),
    (bl.SequentialRules, {"steps": 3, "weighting": "quadratic", "pruning": 0}),
    (bl.AssociationRules, {"pruning": 5}),
    (bl.ItemKNN, {"k": 10, "lam": 20.0, "alpha": 0.75}),
]


@pytest.mark.parametrize(("cls", "params"), CASES, ids=lambda c: getattr(c, "name", ""))
def test_count_baselines_from_parts_equal_the_whole_split(tmp_path, cls, params):
    df = random_split()
    files = write_parts(df, tmp_path / "train")
    whole = cls(**params).fit(df, N_ITEMS)
    parts = cls(**params).fit(bl.SplitFiles(files), N_ITEMS)
    np.testing.assert_array_equal(parts.pop, whole.pop)
    pre, lengths, times = queries()
    a, b = whole.score(pre, lengths, times), parts.score(pre, lengths, times)
    # float32 sums of rule weights in another order: equal to rounding, and the ranks too
    np.testing.assert_allclose(b, a, rtol=1e-6)
    if hasattr(whole, "table"):
        assert (whole.table != parts.table).nnz == 0 or cls is bl.SequentialRules


@pytest.mark.parametrize("cls", [bl.VSKNN, bl.VSTAN])
def test_session_knn_from_a_capped_index_on_disk_equals_the_whole_split(tmp_path, monkeypatch, cls):
    df = random_split()
    files = write_parts(df, tmp_path / "train")
    pre, lengths, times = queries()
    # a cap far below the sessions a track has, so the index really drops sessions
    monkeypatch.setattr(bl, "INDEX_CAP", 4)
    for sample in (2, 4):
        whole = cls(k=3, sample=sample).fit(df, N_ITEMS)
        assert whole.sessions.cap == 4
        whole.sessions = bl.TrainingSessions(df, N_ITEMS, cap=0)  # every session of a track
        source = bl.SplitFiles(files, index_dir=tmp_path / "index")
        parts = cls(k=3, sample=sample).fit(source, N_ITEMS)
        assert parts.sessions.cap == 4
        assert on_disk(parts.sessions.binary_t.indices) and on_disk(parts.sessions.keys)
        full = np.diff(whole.sessions.binary_t.indptr)
        assert full.max() > 4 and np.diff(parts.sessions.binary_t.indptr).max() == 4
        np.testing.assert_array_equal(
            parts.score(pre, lengths, times), whole.score(pre, lengths, times)
        )
        np.testing.assert_array_equal(parts.pop, whole.pop)
    assert [p.name for p in (tmp_path / "index").iterdir()] == ["sessions-cap4"]


def test_a_cap_below_the_sample_would_change_the_neighbours(tmp_path):
    """The check that the cap test can fail: an index capped below ``sample`` drops
    neighbours the whole split has."""
    df = random_split()
    pre, lengths, times = queries()
    whole = bl.VSKNN(k=50, sample=20).fit(df, N_ITEMS)
    capped = bl.VSKNN(k=50, sample=20).fit(df, N_ITEMS)
    capped.sessions = bl.TrainingSessions(df, N_ITEMS, cap=3)
    assert whole.sessions.cap == bl.INDEX_CAP
    assert not np.array_equal(capped.score(pre, lengths, times), whole.score(pre, lengths, times))


def test_the_index_is_rebuilt_when_the_files_change_and_reused_otherwise(tmp_path):
    df = random_split()
    files = write_parts(df, tmp_path / "train")
    source = bl.SplitFiles(files, index_dir=tmp_path / "index")
    bl.VSKNN(sample=0).fit(source, N_ITEMS)
    stamp = (tmp_path / "index" / "sessions-cap0" / "index.json").stat().st_mtime_ns
    bl.VSKNN(sample=0).fit(source, N_ITEMS)
    assert (tmp_path / "index" / "sessions-cap0" / "index.json").stat().st_mtime_ns == stamp
    df[df["session_id"] < 100].to_parquet(files[0], index=False)  # other plays
    again = bl.VSKNN(sample=0).fit(source, N_ITEMS)
    assert (tmp_path / "index" / "sessions-cap0" / "index.json").stat().st_mtime_ns != stamp
    assert again.sessions.n == len(set(df["session_id"][df["session_id"] < 100])) + sum(
        pd.read_parquet(f)["session_id"].nunique() for f in files[1:]
    )
    assert not (tmp_path / "index" / "sessions-cap0.partial").exists()
