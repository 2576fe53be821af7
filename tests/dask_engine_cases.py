"""The data stages on Dask (issue 23): the same outputs as the local engine, resumable.

Each test starts a 2-worker ``LocalCluster`` (``--workers 2``) on tiny generated data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("distributed")

import preprocess  # noqa: E402
import sessionize  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DASK = ["--engine", "dask", "--workers", "2", "--piece-mb", "0.5"]


@pytest.fixture(autouse=True)
def collect_cluster_garbage():
    """Collect what the clusters leave before the next test: finalizers of distributed's
    objects that run later, inside another test, would swallow a KeyboardInterrupt meant
    for it (the Ctrl-C tests of the tag crawl)."""
    import gc

    yield
    gc.collect()


def _run(stage, data: Path, args: list[str]) -> None:
    stage.main(["--data-dir", str(data), *args])


def _window(data: Path, w: str) -> pd.DataFrame:
    df = pd.read_parquet(data / "preprocessed" / f"{w}.parquet")
    for c in ("artist_name", "track_name", "track_mbid"):
        df[c] = df[c].astype(object)
    return df


def _canonical(data: Path, w: str, split: str) -> pd.DataFrame:
    """A split's plays in (user, time, position) order, sessions named by their
    (user, first time): ids are labels, the partition into sessions is what counts."""
    df = pd.read_parquet(data / "sessions" / w / f"{split}.parquet")
    first = df.groupby("session_id")["ts_s"].transform("min")
    df = df.assign(start=first.to_numpy()).drop(columns="session_id")
    return df.sort_values(["user_idx", "start", "position"]).reset_index(drop=True)


def both_engines(small_synth, tmp_path_factory):
    """The small generated Last.fm-1K through both engines (1m and 3m windows)."""
    src = str(small_synth[0] / "lastfm-dataset-1K")
    out = {}
    for name, extra in (("local", []), ("dask", DASK)):
        d = tmp_path_factory.mktemp(name) / "data"
        _run(preprocess, d, ["--input", src, "--months", "1,3", *extra])
        _run(sessionize, d, ["--min-user-sessions", "3", *extra])
        out[name] = d
    return out


def _windows_and_statistics_are_identical(both_engines):
    local, dask = both_engines["local"], both_engines["dask"]
    for w in ("1m", "3m"):
        a, b = _window(local, w), _window(dask, w)
        # parts hold whole listeners, in bucket order: each listener's rows in time order
        b = b.sort_values("user_idx", kind="stable").reset_index(drop=True)
        cols = ["user_idx", "ts_s", "artist_name", "track_name", "track_mbid"]
        pd.testing.assert_frame_equal(a[cols], b[cols])
    sa = json.loads((local / "reports" / "preprocess_stats.json").read_text())
    sb = json.loads((dask / "reports" / "preprocess_stats.json").read_text())
    assert sa == sb
    ma = json.loads((local / "preprocessed" / "meta.json").read_text())
    mb = json.loads((dask / "preprocessed" / "meta.json").read_text())
    for key in ("rows_parsed", "rejects", "repaired", "out_of_range", "dropped_missing"):
        assert ma[key] == mb[key], key
    for w in ("1m", "3m"):
        for key in ("start_s", "end_s", "rows", "tracks", "users"):
            assert ma["windows"][w][key] == mb["windows"][w][key], (w, key)
    assert mb["engine"] == "dask" and mb["buckets"] >= 2


def _sessions_splits_and_vocabulary_are_identical(both_engines):
    local, dask = both_engines["local"], both_engines["dask"]
    for w in ("1m", "3m"):
        va = pd.read_parquet(local / "sessions" / w / "vocab.parquet")
        vb = pd.read_parquet(dask / "sessions" / w / "vocab.parquet")
        cols = ["item_idx", "track_key", "train_count", "artist_name", "track_name"]
        pd.testing.assert_frame_equal(va[cols].astype(object), vb[cols].astype(object))
        for split in ("train", "valid", "test"):
            pd.testing.assert_frame_equal(_canonical(local, w, split), _canonical(dask, w, split))
        ma = json.loads((local / "sessions" / w / "meta.json").read_text())
        mb = json.loads((dask / "sessions" / w / "meta.json").read_text())
        for key in ("counts", "split_bounds", "accounting", "splits", "vocab_size", "vocab_md5"):
            assert ma[key] == mb[key], (w, key)


def _dask_sessions_export_gru4rec_and_recbole(both_engines):
    d = both_engines["dask"] / "sessions" / "1m"
    test = pd.read_parquet(d / "test.parquet")
    shards = sorted((d / "gru4rec" / "test").glob("part-*.tsv"))
    assert len(shards) >= 2
    gru = pd.concat([pd.read_csv(f, sep="\t") for f in shards], ignore_index=True)
    assert list(gru.columns) == ["SessionId", "ItemId", "Time"] and len(gru) == len(test)
    inter = pd.read_csv(d / "recbole" / "1m.test.inter", sep="\t")
    assert list(inter.columns) == ["session_id:token", "item_id:token", "timestamp:float"]
    assert sorted(inter["item_id:token"]) == sorted(test["item_idx"])
    assert test.groupby("session_id").size().min() >= 2


def _vocabulary_caps_on_both_engines(both_engines):
    """--min-track-plays / --max-tracks: the same capped vocabulary on both engines, and
    capped tracks are out of every split (spliced)."""
    res = {}
    for name in ("local", "dask"):
        d = both_engines[name]
        extra = DASK if name == "dask" else []
        _run(
            sessionize,
            d,
            [
                "--windows",
                "3m",
                "--min-user-sessions",
                "3",
                "--min-track-plays",
                "3",
                "--max-tracks",
                "400",
                *extra,
            ],
        )
        res[name] = pd.read_parquet(d / "sessions" / "3m" / "vocab.parquet")
        train = pd.read_parquet(d / "sessions" / "3m" / "train.parquet")
        assert len(res[name]) == 400 and res[name]["train_count"].min() >= 3
        assert train["item_idx"].between(1, 400).all()
    cols = ["item_idx", "track_key", "train_count"]
    pd.testing.assert_frame_equal(res["local"][cols], res["dask"][cols])


def test_local_and_dask_engines_agree(small_synth, tmp_path_factory):
    """One run of each engine (a cluster start costs seconds), then every comparison."""
    runs = both_engines(small_synth, tmp_path_factory)
    _windows_and_statistics_are_identical(runs)
    _sessions_splits_and_vocabulary_are_identical(runs)
    _dask_sessions_export_gru4rec_and_recbole(runs)
    _vocabulary_caps_on_both_engines(runs)


@pytest.fixture(scope="module")
def scheduler():
    """One 2-worker cluster the stages join with --scheduler (as on a real cluster)."""
    import gc

    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as lc:
        yield lc.scheduler_address
    gc.collect()  # see collect_cluster_garbage


def _sessions_by_source_ids(data: Path, w: str, root: Path, layout: str) -> dict:
    """Every split's sessions as (user, times, track MBIDs) in the generator's ids."""
    users = pd.read_parquet(data / "preprocessed" / "users.parquet")["user"].to_numpy()
    vocab = pd.read_parquet(data / "sessions" / w / "vocab.parquet")
    track = dict(zip(vocab["item_idx"], vocab["track_mbid"].astype(str)))
    if layout in ("lfm1b", "lfm2b"):
        ids = pd.read_csv(root / "layout_ids" / "users.tsv", sep="\t", dtype=str)
        by_id = dict(zip(ids["id"], ids["user"]))
        users = np.array([by_id[u] for u in users], object)
        tr = pd.read_csv(root / "layout_ids" / "tracks.tsv", sep="\t", dtype=str)
        mbid = dict(zip(tr["id"], tr["mbid"]))
        track = {k: mbid[v] for k, v in track.items()}
    if layout in ("mlhd", "mlhdplus"):
        from lastfm import layouts

        by_uuid = {layouts.user_uuid(f"user_{u:06d}"): f"user_{u:06d}" for u in range(1, 100)}
        users = np.array([by_uuid[u] for u in users], object)
    out = {}
    for split in ("train", "valid", "test"):
        df = pd.read_parquet(data / "sessions" / w / f"{split}.parquet")
        df = df.sort_values(["session_id", "position"])
        out[split] = sorted(
            (users[g["user_idx"].iloc[0]], tuple(g["ts_s"]), tuple(track[i] for i in g["item_idx"]))
            for _, g in df.groupby("session_id")
        )
    return out


def test_the_same_plays_in_five_layouts_give_the_same_sessions(tmp_path, scheduler):
    """Last.fm-1K, LFM-1b, LFM-2b, MLHD and MLHD+ files of the same plays (every play
    with its MBIDs),
    through both Dask stages on a running cluster: the same sessions in every split."""
    import synth

    cfg = synth.SynthConfig(
        users=12,
        plays=24_000,
        months=4,
        seed=5,
        missing_artist_mbid=0.0,
        no_track_mbid_artists=0.0,
        missing_track_mbid=0.0,
        stray_tabs=0,
        bad_timestamps=0,
    )
    join = ["--engine", "dask", "--scheduler", scheduler]

    found = {}
    layouts_ = (("lfm1k", "lastfm-dataset-1K"), ("lfm1b", "LFM-1b"), ("lfm2b", "LFM-2b"))
    layouts_ += (("mlhd", "MLHD"), ("mlhdplus", "MLHD+"))
    for layout, sub in layouts_:
        root = tmp_path / layout
        synth.generate_layout(root, cfg, layout)
        d = tmp_path / f"data-{layout}"
        _run(
            preprocess,
            d,
            [
                "--dataset",
                layout,
                "--input",
                str(root / sub),
                "--months",
                "2",
                "--partitions",
                "3",
                *join,
            ],
        )
        _run(sessionize, d, ["--min-user-sessions", "2", *join])
        found[layout] = _sessions_by_source_ids(d, "2m", root, layout)
    assert sum(len(v) for v in found["lfm1k"].values()) > 100
    for layout in ("lfm1b", "lfm2b", "mlhd", "mlhdplus"):
        assert found[layout] == found["lfm1k"], layout
    # LFM-1b and LFM-2b name their tracks in side files: the vocabulary carries the names
    named = pd.read_parquet(tmp_path / "data-lfm1k" / "sessions" / "2m" / "vocab.parquet")
    named = dict(zip(named["track_mbid"].astype(str), named["track_name"].astype(str)))
    for layout in ("lfm1b", "lfm2b"):
        vocab = pd.read_parquet(tmp_path / f"data-{layout}" / "sessions" / "2m" / "vocab.parquet")
        tr = pd.read_csv(tmp_path / layout / "layout_ids" / "tracks.tsv", sep="\t", dtype=str)
        mbid = dict(zip(tr["id"], tr["mbid"]))
        got = [named[mbid[t]] == n for t, n in zip(vocab["track_mbid"], vocab["track_name"])]
        assert len(got) > 100 and all(got), layout


def _outputs(data: Path) -> dict:
    pre = data / "preprocessed"
    meta = json.loads((pre / "meta.json").read_text())
    return {
        "windows": {
            p.name: pd.read_parquet(p) for p in sorted(pre.glob("*.parquet/part-*.parquet"))
        },
        "users": pd.read_parquet(pre / "users.parquet"),
        "rejects": (pre / "rejects.tsv").read_text(),
        "stats": json.loads((data / "reports" / "preprocess_stats.json").read_text()),
        "meta": {k: meta[k] for k in ("rows_parsed", "rejects", "windows", "lines_accounted")},
    }


def test_a_killed_dask_run_resumes_to_the_same_outputs(small_synth, tmp_path, scheduler):
    """SIGKILL to the stage and its whole cluster in the middle of the ingest; the rerun
    keeps the pieces already done and ends with the outputs of an uninterrupted run."""
    src = str(small_synth[0] / "lastfm-dataset-1K")
    args = ["--input", src, "--months", "1,3", "--engine", "dask", "--piece-mb", "0.1"]
    whole = tmp_path / "whole"
    _run(preprocess, whole, [*args, "--scheduler", scheduler])
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "preprocess.py"), "--data-dir", str(killed), *args]
        + ["--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=ROOT,
    )
    ingest = killed / "preprocessed" / "_work" / "ingest"
    deadline = time.monotonic() + 120
    while len(list(ingest.glob("p*/manifest.json"))) < 3 and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p: p.stat().st_mtime_ns for p in ingest.glob("p*/manifest.json")}
    assert 3 <= len(done) < 60 and not (killed / "preprocessed" / "meta.json").exists()
    _run(preprocess, killed, [*args, "--scheduler", scheduler])
    assert all(p.stat().st_mtime_ns == t for p, t in done.items())  # kept, not redone
    a, b = _outputs(whole), _outputs(killed)
    assert a["windows"].keys() == b["windows"].keys()
    for name in a["windows"]:
        pd.testing.assert_frame_equal(a["windows"][name], b["windows"][name])
    pd.testing.assert_frame_equal(a["users"], b["users"])
    assert a["rejects"] == b["rejects"] and a["stats"] == b["stats"] and a["meta"] == b["meta"]


def test_a_rerun_redoes_only_the_buckets_whose_outputs_are_gone(small_synth, tmp_path, scheduler):
    """Buckets resume like pieces: after one bucket's manifest and another's window part
    are removed, a rerun redoes those two buckets only (the others' parts and partial
    statistics keep their files) and ends with the same outputs and statistics."""
    src = str(small_synth[0] / "lastfm-dataset-1K")
    args = ["--input", src, "--months", "1,3", "--engine", "dask", "--piece-mb", "0.5"]
    data = tmp_path / "data"
    _run(preprocess, data, [*args, "--partitions", "6", "--scheduler", scheduler])
    before = _outputs(data)
    pre = data / "preprocessed"
    work = pre / "_work"
    files = sorted(work.glob("stats/*/b*.parquet")) + sorted(pre.glob("*.parquet/part-*"))
    stamp = {f: f.stat().st_mtime_ns for f in files}
    (work / "buckets" / "b00001.json").unlink()
    gone = sorted(pre.glob("1m.parquet/part-*"))[-1]
    gone.unlink()
    redo = {"00001", gone.name[5:10]}
    (pre / "meta.json").unlink()  # the stage runs again, without --force: tasks resume
    _run(preprocess, data, [*args, "--partitions", "6", "--scheduler", scheduler])
    for f, t in stamp.items():
        bucket = f.name[5:10] if f.name.startswith("part") else f.name[1:6]
        assert (f.stat().st_mtime_ns == t) == (bucket not in redo), f
    after = _outputs(data)
    assert before["windows"].keys() == after["windows"].keys()
    for name in before["windows"]:
        pd.testing.assert_frame_equal(before["windows"][name], after["windows"][name])
    assert before["stats"] == after["stats"] and before["meta"] == after["meta"]


def test_a_worker_killed_mid_run_ends_in_a_completed_run(small_synth, tmp_path):
    """One worker process SIGKILLed during the ingest: its nanny restarts it, the
    scheduler reruns its tasks, and the outputs are those of an undisturbed run."""
    import threading

    from distributed import Client, LocalCluster

    src = str(small_synth[0] / "lastfm-dataset-1K")
    args = ["--input", src, "--months", "1", "--engine", "dask", "--piece-mb", "0.1"]
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as lc,
        Client(lc) as client,
    ):
        _run(preprocess, tmp_path / "whole", [*args, "--scheduler", lc.scheduler_address])
        victim = next(iter(client.run(os.getpid).values()))
        ingest = tmp_path / "hit" / "preprocessed" / "_work" / "ingest"
        killed = []

        def kill_when_started():
            deadline = time.monotonic() + 60
            while len(list(ingest.glob("p*/manifest.json"))) < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            os.kill(victim, signal.SIGKILL)
            killed.append(len(list(ingest.glob("p*/manifest.json"))))

        t = threading.Thread(target=kill_when_started)
        t.start()
        _run(preprocess, tmp_path / "hit", [*args, "--scheduler", lc.scheduler_address])
        t.join()
    assert killed and killed[0] < 60  # the worker died while pieces were left
    a, b = _outputs(tmp_path / "whole"), _outputs(tmp_path / "hit")
    for name in a["windows"]:
        pd.testing.assert_frame_equal(a["windows"][name], b["windows"][name])
    assert a["stats"] == b["stats"] and a["meta"] == b["meta"]


@pytest.fixture
def threads_cluster():
    """A cluster of threads in this process, so that a test can patch what tasks call."""
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as lc:
        yield lc.scheduler_address


def test_a_full_disk_on_a_worker_is_one_line(
    small_synth, tmp_path, threads_cluster, monkeypatch, capsys
):
    import errno

    from lastfm import common, dask_stages
    from lastfm.common import run_main

    calls = []
    real = common.write_parquet

    def fill_up(path, table, compression="snappy"):
        calls.append(path)
        if len(calls) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, table, compression)

    monkeypatch.setattr(dask_stages.common, "write_parquet", fill_up)
    src = str(small_synth[0] / "lastfm-dataset-1K")
    argv = ["--data-dir", str(tmp_path), "--input", src, "--engine", "dask"]
    argv += ["--scheduler", threads_cluster, "--piece-mb", "0.5"]
    assert run_main(preprocess.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "No space left on device" in err[-1]
    assert not (tmp_path / "preprocessed" / "meta.json").exists()


def test_broken_members_are_counted_and_the_rest_is_processed(tmp_path, scheduler):
    """MLHD+ with malformed lines and a truncated zstd member, through the Dask stage."""
    import synth

    cfg = synth.SynthConfig(users=8, plays=12_000, months=3, seed=9)
    summary = synth.generate_layout(tmp_path / "in", cfg, "mlhdplus", malformed=True)
    d = tmp_path / "data"
    _run(
        preprocess,
        d,
        ["--dataset", "mlhdplus", "--input", str(tmp_path / "in" / "MLHD+")]
        + ["--months", "2", "--engine", "dask", "--scheduler", scheduler],
    )
    meta = json.loads((d / "preprocessed" / "meta.json").read_text())
    assert meta["rejects"].get("corrupt_member") == len(summary["broken_members"]) >= 1
    bad = sum(v for k, v in meta["rejects"].items() if k != "corrupt_member")
    assert bad == len(summary["malformed"]) >= 1
    rejects = pd.read_csv(d / "preprocessed" / "rejects.tsv", sep="\t", quoting=3)
    assert len(rejects) == bad + len(summary["broken_members"])
    assert meta["rows_parsed"] == 12_000  # every play of the readable members


def test_keep_missing_mbid_agrees_on_both_engines(small_synth, tmp_path, scheduler):
    """Tracks named by (artist, title): plays without a track MBID are kept, and the
    vocabulary (ordered by name on ties) is the same on both engines."""
    src = str(small_synth[0] / "lastfm-dataset-1K")
    vocab = {}
    for name, extra in (("local", []), ("dask", ["--engine", "dask", "--scheduler", scheduler])):
        d = tmp_path / name
        _run(preprocess, d, ["--input", src, "--months", "3", "--keep-missing-mbid", *extra])
        _run(sessionize, d, ["--min-user-sessions", "3", *extra])
        vocab[name] = pd.read_parquet(d / "sessions" / "3m" / "vocab.parquet")
        window = _window(d, "3m")
        assert window["track_mbid"].isna().any()  # plays without an MBID were kept
    cols = ["item_idx", "train_count", "artist_name", "track_name"]
    pd.testing.assert_frame_equal(
        vocab["local"][cols].astype(object), vocab["dask"][cols].astype(object)
    )


def test_reruns_follow_changed_options_and_engine_switches(small_synth, tmp_path, scheduler):
    """One data folder: local, then Dask (16 buckets, some empty in the window), a changed
    --unseen and --valid-to (no task reused from the earlier run), then local again."""
    src = str(small_synth[0] / "lastfm-dataset-1K")
    d = tmp_path / "data"
    dask = ["--engine", "dask", "--scheduler", scheduler]
    _run(preprocess, d, ["--input", src, "--months", "1"])
    _run(sessionize, d, ["--min-user-sessions", "3"])
    local_vocab = pd.read_parquet(d / "sessions" / "1m" / "vocab.parquet")
    _run(preprocess, d, ["--input", src, "--months", "1", "--partitions", "16", *dask])
    assert (d / "preprocessed" / "1m.parquet").is_dir()
    assert len(list((d / "preprocessed" / "1m.parquet").glob("part-*"))) < 16  # empty buckets
    _run(sessionize, d, ["--min-user-sessions", "3", *dask])
    vocab = pd.read_parquet(d / "sessions" / "1m" / "vocab.parquet")
    assert vocab["track_key"].tolist() == local_vocab["track_key"].tolist()
    _run(sessionize, d, ["--min-user-sessions", "3", "--unseen", "keep", *dask])
    test = pd.read_parquet(d / "sessions" / "1m" / "test.parquet")
    assert (test["item_idx"] == 0).any()  # unseen tracks kept: not the spliced parts
    end = json.loads((d / "preprocessed" / "meta.json").read_text())["windows"]["1m"]["end_s"]
    _run(preprocess, d, ["--input", src, "--months", "1", "--valid-to", "2009-03-01", *dask])
    meta = json.loads((d / "preprocessed" / "meta.json").read_text())
    assert meta["windows"]["1m"]["end_s"] <= pd.Timestamp("2009-03-01").timestamp() < end
    _run(preprocess, d, ["--input", src, "--months", "1"])
    _run(sessionize, d, ["--min-user-sessions", "3"])
    assert (d / "preprocessed" / "1m.parquet").is_file()
    assert not (d / "sessions" / "1m" / "recbole").exists()
    vocab = pd.read_parquet(d / "sessions" / "1m" / "vocab.parquet")
    assert vocab["track_key"].tolist() == local_vocab["track_key"].tolist()


def test_count_baselines_from_tables_computed_on_the_cluster(tmp_path):
    """``SplitFiles(client=...)``: each part's count tables computed by a worker and summed
    in a tree on the cluster; the same models as fitted one part at a time here."""
    from test_baselines_files import N_ITEMS, queries, random_split, write_parts

    from lastfm import baselines as bl
    from lastfm.dask_stages import cluster

    files = write_parts(random_split(sessions=400), tmp_path / "train", parts=5)
    pre, lengths, times = queries()
    with cluster(None, workers=2) as client:
        for cls, params in [
            (bl.SequentialRules, {"steps": 5, "pruning": 3}),
            (bl.AssociationRules, {}),
            (bl.ItemKNN, {"k": 5}),
            (bl.SessionPop, {}),
        ]:
            here = cls(**params).fit(bl.SplitFiles(files), N_ITEMS)
            there = cls(**params).fit(bl.SplitFiles(files, client=client), N_ITEMS)
            np.testing.assert_array_equal(there.pop, here.pop)
            np.testing.assert_array_equal(
                there.score(pre, lengths, times), here.score(pre, lengths, times)
            )
