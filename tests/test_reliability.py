"""One writer per data folder, model folders whose parts agree, numbers that are numbers,
the rate limit across a slow-down, litter of killed runs, SIGTERM (each test names the
failure it covers)."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fetch_tags as ft
from lastfm import config as cfgs
from lastfm.common import PipelineError, folder_lock, run_main, sweep_litter

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--emb-dim", "8", "--hidden", "8", "--fc-dim", "8", "--verbose", "0"]
TINY += ["--no-tensorboard", "--valid-events", "300", "--max-train-examples", "3000"]


def one_line_error(err: str) -> bool:
    """The error is one line, the last one, and no traceback (progress lines before it
    are the stage's log)."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------- 1. one writer per folder
def test_a_second_writer_of_a_folder_is_refused_naming_the_holder(tmp_path):
    with folder_lock(tmp_path / "f") as held:
        with pytest.raises(PipelineError) as err:
            with folder_lock(held):
                pass
        assert str(tmp_path / "f") in str(err.value) and f"pid {os.getpid()}" in str(err.value)
    with folder_lock(tmp_path / "f"):  # free once the holder ends
        pass


@pytest.mark.parametrize("stage", ["preprocess", "sessionize", "train", "fetch_tags", "test_model"])
def test_every_stage_refuses_a_folder_another_run_writes(
    stage, pipeline_data, small_synth, tmp_path, monkeypatch, capsys
):
    """1: preprocess.py, sessionize.py, train.py (and fetch_tags.py --tags-file) on a
    folder another run holds: one line, exit 2, naming the folder; nothing written."""
    import preprocess
    import sessionize
    import test_model
    import train

    data = tmp_path / "data"
    for part in ("preprocessed", "sessions"):
        shutil.copytree(pipeline_data / part, data / part)
    monkeypatch.setenv("LASTFM_DATA_DIR", str(data))
    tsv = str(small_synth[0] / "lastfm-dataset-1K")
    runs = {
        "preprocess": (preprocess.main, ["--input", tsv, "--months", "1"], "preprocessed"),
        "sessionize": (sessionize.main, ["--windows", "1m", "--force"], "sessions/1m"),
        "train": (train.main, ["--window", "1m", "--epochs", "1", *TINY], "models/1m"),
        "fetch_tags": (
            ft.main,
            ["--tags-file", str(small_synth[0] / "ground_truth" / "track_tags.tsv")],
            "tags/1m",
        ),
        "test_model": (test_model.main, ["--no-model", "--methods", "POP"], "reports"),
    }
    main, argv, folder = runs[stage]

    def listing():
        return sorted(p.name for p in (data / folder).glob("*") if p.name != ".lock")

    before = listing() if (data / folder).exists() else []
    with folder_lock(data / folder):
        capsys.readouterr()
        assert run_main(main, argv) == 2
        err = capsys.readouterr().err
    assert one_line_error(err) and "being written by another run" in err
    assert str(data / folder) in err
    assert listing() == before


def test_two_sessionize_runs_at_once_never_leave_a_mixed_window(pipeline_data, tmp_path):
    """1: two runs with different --gap-minutes started together: the second is refused
    or runs after the first; the manifest always describes the files beside it."""
    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "preprocessed", data / "preprocessed")
    env = {**os.environ, "LASTFM_DATA_DIR": str(data)}
    cmd = [sys.executable, "sessionize.py", "--windows", "3m", "--min-user-sessions", "3"]
    procs = [
        subprocess.Popen(
            cmd + ["--gap-minutes", gap], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
        )
        for gap in ("20", "45")
    ]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for code, err in results:
        assert code == 0 or (code == 2 and "being written by another run" in err), err[-800:]
    folder = data / "sessions" / "3m"
    meta = json.loads((folder / "meta.json").read_text())
    gap = meta["params"]["gap_minutes"]
    assert f"{gap:g} min" in (folder / "stats.md").read_text()
    p = subprocess.run(cmd + ["--gap-minutes", f"{gap:g}"], cwd=ROOT, env=env, capture_output=True)
    assert p.returncode == 0 and b"is current; skipping" in p.stderr


# ---------------------------------------------------------------- 2. model folder parts
@pytest.fixture(scope="module")
def trained(pipeline_data, tmp_path_factory):
    """A tiny trained model (with a hybrid table of 2 successors) on the 1m window."""
    pytest.importorskip("keras")
    data = tmp_path_factory.mktemp("model") / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    env = {**os.environ, "LASTFM_DATA_DIR": str(data)}
    args = [sys.executable, "train.py", "--window", "1m", "--epochs", "1", "--transitions", "2"]
    p = subprocess.run(args + TINY, cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    return data


def evaluate_model(folder: Path, data: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LASTFM_DATA_DIR": str(data)}
    args = [sys.executable, "test_model.py", "--methods", "POP", "--no-ensemble"]
    args += ["--models", str(folder), "--n-boot", "10"]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)


def test_a_model_folder_lists_its_files_with_checksums_and_provenance(trained):
    record = json.loads((trained / "models" / "1m" / "config.json").read_text())
    assert set(record["outputs"]) == {"model.keras", "transitions.npz", "history.csv"}
    prov = record["provenance"]
    assert prov["commit"] and "tree_clean" in prov and "keras" in prov["versions"]
    assert record["backend"] != "tensorflow" or "tensorflow" in prov["versions"]
    assert prov["data"]["vocab_md5"] == record["vocab_md5"]
    assert all(prov["data"][f"{s}.parquet"] for s in ("train", "valid", "test", "vocab"))


def test_every_results_row_and_file_carries_its_provenance(trained):
    """22.6: a results file names the code (commit, clean tree, versions) and the data (the
    splits' MD5s); each network row names its model's code, backend and training data."""
    p = evaluate_model(trained / "models" / "1m", trained)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((trained / "reports" / "results.json").read_text())
    meta = json.loads((trained / "sessions" / "1m" / "meta.json").read_text())
    assert res["data"]["vocab_md5"] == meta["vocab_md5"]
    assert res["data"]["test.parquet"] == meta["outputs"]["test.parquet"]["md5"]
    prov = res["provenance"]
    assert prov["commit"] and "tree_clean" in prov and "numpy" in prov["versions"]
    rows = [r for r in res["methods"].values() if "best_epoch" in (r.get("params") or {})]
    assert rows and all(r["params"]["provenance"]["backend"] for r in rows)
    data = rows[0]["params"]["provenance"]["data"]
    assert data["train.parquet"] == meta["outputs"]["train.parquet"]["md5"]


@pytest.mark.parametrize("damage", ["other_k", "truncated", "garbage", "model_changed"])
def test_a_model_folder_whose_parts_disagree_is_one_line(trained, tmp_path, damage):
    """2 and 5: transitions.npz of another K beside config.json (a --transitions-only
    run that died before its config), truncated or garbage, or another model.keras:
    test_model.py says which file, exit 2, no traceback."""
    from lastfm import hybrid

    folder = tmp_path / "model"
    shutil.copytree(trained / "models" / "1m", folder)
    table = folder / hybrid.TABLE
    if damage == "other_k":
        with np.load(table) as z:
            ids, counts, plays = z["ids"][:, :1], z["counts"][:, :1], z["plays"]
        hybrid.Transitions(ids, counts, plays).save(folder)
    elif damage == "truncated":
        table.write_bytes(table.read_bytes()[:200])
    elif damage == "garbage":
        table.write_bytes(b"not a zip file at all" * 10)
    else:
        shutil.copy(folder / "history.csv", folder / "model.keras")
    p = evaluate_model(folder, trained)
    assert p.returncode == 2 and one_line_error(p.stderr), p.stderr[-2000:]
    name = "model.keras" if damage == "model_changed" else hybrid.TABLE
    assert name in p.stderr


def test_a_damaged_table_alone_is_one_line(trained, tmp_path):
    """5: hybrid.load on a truncated table (whatever the manifest says) is a PipelineError."""
    from lastfm import hybrid

    folder = tmp_path / "model"
    shutil.copytree(trained / "models" / "1m", folder)
    record = json.loads((folder / "config.json").read_text())["transitions"]
    record = {**record, "weight": 1.0}
    (folder / hybrid.TABLE).write_bytes((folder / hybrid.TABLE).read_bytes()[:300])
    with pytest.raises(PipelineError, match="not a readable transitions table"):
        hybrid.load(folder, record)


# ---------------------------------------------------------------- 3. NaN and infinity
@pytest.mark.parametrize(
    "argv",
    [
        ["--rate", "inf"],
        ["--rate", "nan"],
        ["--rate-margin", "nan"],
        ["--backoff", "nan"],
        ["--refresh-older-than", "-inf"],
    ],
)
def test_non_finite_float_options_are_refused_where_parsed(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        ft.parse_args(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and one_line_error(err) and argv[0] in err


def test_train_refuses_a_nan_learning_rate_and_every_range_check_refuses_nan(capsys):
    import train

    with pytest.raises(SystemExit) as stop:
        train.parse_args(["--lr", "nan"])
    assert stop.value.code == 2 and one_line_error(capsys.readouterr().err)
    for bad in (math.nan, math.inf):  # a config built in code, not from flags
        with pytest.raises(PipelineError, match="--rate-margin"):
            ft.TagsConfig(rate_margin=bad).check()
        with pytest.raises(PipelineError, match="--lr"):
            train.TrainConfig(lr=bad).check()


def test_a_worker_that_dies_fails_the_crawl(tag_env, tmp_path):
    """3: an exception outside a request (the limiter's, say) ends a worker: the run
    fails with one message, never finishes with answers missing."""
    data, vocab, _, _ = tag_env
    cache = ft.TagCache(tmp_path / "cache.sqlite")

    class Broken(ft.RateLimiter):
        def acquire(self):
            raise OverflowError("cannot convert float infinity to integer")

    jobs = ft.track_jobs(vocab)[:8]
    try:
        with pytest.raises(PipelineError, match="a fetch worker failed .*OverflowError"):
            ft.run_fetch(jobs, cache, None, workers=4, progress=False, limiter=Broken(5))
    finally:
        cache.close()


def test_answers_that_never_came_make_the_exit_code_non_zero(tag_env, tmp_path):
    """3: workers that end without answering every job (no exception): the run fails."""
    data, vocab, _, _ = tag_env
    cache = ft.TagCache(tmp_path / "cache.sqlite")
    jobs = ft.track_jobs(vocab)[:6]

    class Vanishing(ft.RateLimiter):
        def acquire(self):
            raise ft.Stopped  # a worker ends quietly, the stop never set

    try:
        with pytest.raises(PipelineError, match="6 of 6 answers never came"):
            ft.run_fetch(jobs, cache, None, workers=2, progress=False, limiter=Vanishing(5))
    finally:
        cache.close()


def poisoned(train, epoch: int | None = None):
    """train.py's callback, with every weight set to NaN at the start of training (or of
    the 0-based ``epoch``): the loss becomes NaN from there on."""
    import keras

    def nan_weights(model) -> None:
        for w in model.trainable_weights:
            w.assign(keras.ops.full(w.shape, float("nan"), dtype=w.dtype))

    class Poisoned(train.ValidationCallback):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if epoch is None:
                nan_weights(self.rec_model)

        def on_epoch_begin(self, e, logs=None):
            super().on_epoch_begin(e, logs)
            if e == epoch:
                nan_weights(self.rec_model)

    return Poisoned


def test_a_loss_that_becomes_nan_keeps_the_last_good_model(pipeline_data, tmp_path, monkeypatch):
    """3: the loss becomes NaN in epoch 2: training stops with one line (exit 2), the
    folder holds epoch 1's model (finite weights), never a NaN one."""
    pytest.importorskip("keras")
    import keras

    import train
    from model import load_trained

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    monkeypatch.setenv("LASTFM_DATA_DIR", str(data))

    monkeypatch.setattr(train, "ValidationCallback", poisoned(train, epoch=1))  # from epoch 2
    argv = ["--window", "1m", "--epochs", "3", "--patience", "3", "--transitions", "0", *TINY]
    with pytest.raises(PipelineError, match="loss became nan .* epoch 2.*best model before it"):
        train.main(argv)
    model, record = load_trained(data / "models" / "1m")
    assert record["best_epoch"] == 1 and record["stopped"] == "loss not finite"
    assert all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)


def test_a_loss_nan_from_the_start_saves_nothing(pipeline_data, tmp_path, monkeypatch):
    pytest.importorskip("keras")

    import train

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    monkeypatch.setenv("LASTFM_DATA_DIR", str(data))

    monkeypatch.setattr(train, "ValidationCallback", poisoned(train))
    with pytest.raises(PipelineError, match="loss became nan.*nothing saved"):
        train.main(["--window", "1m", "--epochs", "2", "--transitions", "0", *TINY])
    assert not (data / "models" / "1m" / "config.json").exists()
    assert not (data / "models" / "1m" / "model.keras").exists()


def test_a_failed_training_leaves_the_previous_model_whole(trained, tmp_path, monkeypatch):
    """5 (review): a run that diverges before any good epoch keeps the folder's previous
    model and hybrid, still loadable; nothing of the failed run is left beside them."""
    pytest.importorskip("keras")

    import train
    from lastfm import hybrid
    from model import load_trained

    data = tmp_path / "data"
    shutil.copytree(trained / "sessions", data / "sessions")
    shutil.copytree(trained / "models", data / "models")
    monkeypatch.setenv("LASTFM_DATA_DIR", str(data))
    before = {p.name: p.read_bytes() for p in (data / "models" / "1m").iterdir() if p.is_file()}

    monkeypatch.setattr(train, "ValidationCallback", poisoned(train))
    with pytest.raises(PipelineError, match="loss became nan"):
        train.main(["--window", "1m", "--epochs", "1", "--transitions", "0", *TINY])
    after = {p.name: p.read_bytes() for p in (data / "models" / "1m").iterdir() if p.is_file()}
    assert {n: b for n, b in after.items() if n != ".lock"} == {
        n: b for n, b in before.items() if n != ".lock"
    }
    _, record = load_trained(data / "models" / "1m")
    hybrid.load(data / "models" / "1m", record["transitions"])  # its table reads (no error)


def test_transitions_only_repairs_a_folder_whose_table_disagrees(trained, tmp_path):
    """2 (review): the recovery the error names works: --transitions-only on a folder
    whose table was damaged rewrites it, and the folder is scored again."""
    from lastfm import hybrid

    data = tmp_path / "data"
    shutil.copytree(trained / "sessions", data / "sessions")
    shutil.copytree(trained / "models", data / "models")
    folder = data / "models" / "1m"
    (folder / hybrid.TABLE).write_bytes(b"damaged")
    assert evaluate_model(folder, data).returncode == 2
    env = {**os.environ, "LASTFM_DATA_DIR": str(data)}
    args = [sys.executable, "train.py", "--window", "1m", "--transitions-only"]
    p = subprocess.run(args + ["--transitions", "3"], cwd=ROOT, env=env, capture_output=True)
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    record = json.loads((folder / "config.json").read_text())
    assert record["transitions"]["k"] == 3 and record["train"]["transitions"] == 3
    p = evaluate_model(folder, data)
    assert p.returncode == 0, p.stderr[-2000:]


def test_tags_of_another_vocabulary_or_changed_tables_are_refused(
    pipeline_data, small_synth, tmp_path, monkeypatch
):
    """1 (review): train.py never puts one vocabulary's tags on another's tracks."""
    import train

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    monkeypatch.setenv("LASTFM_DATA_DIR", str(data))
    tags_file = small_synth[0] / "ground_truth" / "track_tags.tsv"
    ft.main(["--windows", "1m", "--tags-file", str(tags_file)])
    meta_path = data / "tags" / "1m" / "meta.json"
    meta = json.loads(meta_path.read_text())
    argv = ["--window", "1m", "--epochs", "1", "--transitions", "0", *TINY]
    meta_path.write_text(json.dumps({**meta, "vocab_md5": "another"}))
    with pytest.raises(PipelineError, match="another vocabulary"):
        train.main(argv)
    meta_path.write_text(json.dumps(meta))
    table = data / "tags" / "1m" / "track_tags.parquet"
    table.write_bytes(table.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(PipelineError, match="not the ones its meta.json lists"):
        train.main(argv)


def test_tags_file_weights_must_be_finite_and_a_bom_is_not_a_column(tag_env, tmp_path):
    path = tmp_path / "tags.tsv"
    path.write_bytes(b"artist\ttrack\ttag\tweight\nA\tB\trock\tinf\n")
    with pytest.raises(PipelineError, match="line 2: weight 'inf' is not a finite"):
        ft.main(["--windows", "1m", "--tags-file", str(path)])
    path.write_bytes("\ufeffartist\ttrack\ttag\tweight\nA\tB\trock\t5\n".encode())
    ft.main(["--windows", "1m", "--tags-file", str(path)])  # no "missing column" error


# ---------------------------------------------------------------- 4. the rate after error 29
def simulate(rate: float, n_requests: int, workers: int, slow_at: int, seed: int):
    """Requests through one limiter on a fake clock: ``workers`` in flight at once, each
    answered after a random latency and reaching the server at a random moment between
    its start and its answer; the ``slow_at``-th answer is Last.fm's error 29. Returns
    (arrival, start, limit in force at its start) per request."""
    rng = random.Random(seed)
    now = [0.0]
    flight: list[tuple[float, list]] = []  # (answer time, slot)
    limiter = None

    def sleep(s):
        now[0] += s
        for end, slot in sorted(flight, key=lambda f: f[0]):
            if end <= now[0]:
                flight.remove((end, slot))
                limiter.done(slot)
                answered[0] += 1
                if answered[0] == slow_at:
                    limiter.slow_down(3.0)

    answered = [0]
    limiter = ft.RateLimiter(rate, margin=0.05, clock=lambda: now[0], sleep=sleep)
    out = []
    for _ in range(n_requests):
        while len(flight) >= workers:
            sleep(0.01)
        slot = limiter.acquire()
        start, latency = now[0], rng.uniform(0.02, 0.6)
        flight.append((start + latency, slot))
        out.append((start + rng.uniform(0, latency), start, limiter.window()[0]))
    return out


@pytest.mark.parametrize("rate,seed", [(5, 0), (5, 1), (5, 2), (2.5, 3), (2.5, 4), (7.5, 5)])
def test_no_one_second_window_exceeds_the_limit_across_a_slow_down(rate, seed):
    """4: every 1-second window holds at most the limit in force when its last request
    started: before, around and after a slow-down and when the rate comes back."""
    reqs = simulate(rate, 80, workers=4, slow_at=12, seed=seed)
    limits = {r[2] for r in reqs}
    assert len(limits) > 1  # the slow-down happened and changed the limit
    arrivals = sorted(reqs)
    for a, _, _ in arrivals:
        inside = [r for r in arrivals if a <= r[0] < a + 1.0]
        last = max(inside, key=lambda r: r[1])
        assert len(inside) <= last[2], (a, inside)


# ---------------------------------------------------------------- 5. the tags file
@pytest.mark.parametrize(
    "content,match",
    [
        (b"artist\ttrack\ttag\tweight\nA\tB\trock\t5\nA\t\xff\xfe\tpop\t3\n", "line 3: byte 0xff"),
        (b"", "empty"),
        (b"\n  \n", "empty"),
    ],
)
def test_a_tags_file_that_is_not_utf8_or_is_empty_is_one_line(tag_env, tmp_path, content, match):
    path = tmp_path / "tags.tsv"
    path.write_bytes(content)
    with pytest.raises(PipelineError, match=match):
        ft.main(["--windows", "1m", "--tags-file", str(path)])


# ---------------------------------------------------------------- 6. litter
def test_leftovers_of_dead_writers_are_removed_and_only_theirs(tmp_path):
    dead, live = dead_pid(), os.getpid()
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / f".train.parquet.tmp-{dead}").write_bytes(b"x")
    (folder / f".extract-{dead}").mkdir()
    (folder / f".extract-{dead}" / "part.tsv").write_bytes(b"x")
    (folder / f".train.parquet.tmp-{live}").write_bytes(b"x")
    (folder / "keep.tmp-1").write_bytes(b"x")  # not a writer's name: never touched
    removed = sweep_litter(folder)
    assert sorted(removed) == sorted([f".train.parquet.tmp-{dead}", f".extract-{dead}"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f".train.parquet.tmp-{live}", "keep.tmp-1"]
    )


def test_the_next_run_of_a_stage_removes_what_a_killed_one_left(pipeline_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "preprocessed", data / "preprocessed")
    dead = dead_pid()
    folder = data / "sessions" / "3m"
    folder.mkdir(parents=True)
    litter = [folder / f".train.parquet.tmp-{dead}", data / "reports" / f".sessions.md.tmp-{dead}"]
    for p in litter:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a file")
    env = {**os.environ, "LASTFM_DATA_DIR": str(data)}
    cmd = [sys.executable, "sessionize.py", "--windows", "3m", "--min-user-sessions", "3"]
    assert subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True).returncode == 0
    assert not any(p.exists() for p in litter)


# ---------------------------------------------------------------- 7. SIGTERM
def test_sigterm_stops_a_crawl_like_ctrl_c_and_says_how_to_resume(tag_env, tmp_path):
    from test_fetch_tags import KEY, cli

    from fake_lastfm import FakeLastFM

    data, _, planted, _ = tag_env
    server = FakeLastFM(planted, KEY, tmp_path)
    try:
        env = {**os.environ, "LASTFM_DATA_DIR": str(data)}
        p = subprocess.Popen(
            [sys.executable, "fetch_tags.py", *cli(server, "--rate", "4", "--workers", "2")],
            cwd=ROOT,
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while len(server.requests) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    finally:
        server.close()
    assert p.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "terminated (SIGTERM)" in err
    assert "saved in" in err and "rerun the same command to resume" in err
    assert KEY not in err


def test_config_float_flags_parse_finite_numbers():
    assert cfgs.finite_float("2.5") == 2.5
    for bad in ("nan", "inf", "-inf", "five"):
        with pytest.raises(argparse.ArgumentTypeError):
            cfgs.finite_float(bad)


def test_other_out_keeps_what_a_run_monitoring_the_other_metric_keeps(pipeline_data, tmp_path):
    """--other-out: one training keeps the best epoch by each metric; the other folder
    holds what a run with that --monitor and the same seed keeps (epoch, history and
    weights), its history ends where that run would have stopped, and both folders load."""
    pytest.importorskip("keras")
    import keras

    import train
    from model import load_trained

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    d = ["--data-dir", str(data), "--window", "1m", "--epochs", "5", "--patience", "1"]
    d += ["--transitions", "0", "--lr", "0.02", *TINY]
    both, alone = (
        train.train(
            *train.parse_args(
                [*d, "--out", str(tmp_path / "mrr"), "--other-out", str(tmp_path / "hr")]
            )
        ),
        None,
    )
    alone = train.train(
        *train.parse_args([*d, "--monitor", "HR@20", "--out", str(tmp_path / "hr_alone")])
    )
    m_hr, r_hr = load_trained(tmp_path / "hr")
    m_alone, r_alone = load_trained(tmp_path / "hr_alone")
    for k in ("monitor", "best_epoch", "best_valid", "stopped"):
        assert r_hr[k] == r_alone[k] == alone[k], k
    assert [dict(r, train_s=0, valid_s=0, examples_per_s=0) for r in r_hr["history"]] == [
        dict(r, train_s=0, valid_s=0, examples_per_s=0) for r in r_alone["history"]
    ]
    assert r_hr["train"]["monitor"] == "HR@20" and r_hr["trained_beside"] == str(tmp_path / "mrr")
    for a, b in zip(m_hr.weights, m_alone.weights, strict=True):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    _, r_mrr = load_trained(tmp_path / "mrr")
    assert r_mrr == both and r_mrr["monitor"] == "MRR@20"
    best = max(r["valid_MRR@20"] for r in r_mrr["history"])
    assert r_mrr["best_valid"] == pytest.approx(best, abs=1e-4)
    hist = (tmp_path / "hr" / "history.csv").read_text().splitlines()
    assert len(hist) == 1 + len(r_hr["history"])


def test_a_watched_metric_stops_as_its_own_run_would(tmp_path):
    """Watch: the best epoch saved, then after --patience epochs without a gain it stops
    for good (a later gain is not kept: its own run would have ended)."""
    pytest.importorskip("keras")
    import train

    saved = []

    class Model:
        def save(self, path):
            saved.append(path)

    w = train.Watch("HR@20", tmp_path / "m.keras")
    for epoch, value in enumerate([0.1, 0.3, 0.2, 0.25, 0.9], start=1):
        w.see(value, epoch, 2, Model())
    assert (w.best, w.best_epoch, w.last_epoch, w.stopped) == (0.3, 2, 4, "early stopping")
    assert len(saved) == 2


def test_other_out_refuses_the_models_own_folder(pipeline_data, tmp_path):
    import train

    argv = ["--data-dir", str(pipeline_data), "--out", str(tmp_path / "m")]
    for other in (tmp_path / "m", tmp_path / "m" / ".partial", tmp_path):
        with pytest.raises(PipelineError, match="--other-out .* the model's own folder"):
            train.train(*train.parse_args([*argv, "--other-out", str(other)]))
