"""The stages under faults: lying download servers, corrupt archives, kills at random
points, full and read-only disks, bad inputs. Each test names the failure it covers."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

import preprocess
from lastfm.common import PipelineError

ROOT = Path(__file__).resolve().parents[1]


class FaultServer:
    """Loopback HTTP server for one file that can misbehave (``mode``)."""

    def __init__(self, payload: bytes):
        self.payload, self.mode, self.requests = payload, None, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.requests.append(self.headers.get("Range"))
                outer.answer(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/lastfm-dataset-1K.tar.gz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def answer(self, h) -> None:
        data, n = self.payload, len(self.payload)
        rng = h.headers.get("Range")
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        if rng and start >= n:
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{n}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if self.mode == "range_from_zero" and rng:  # 206, but the body starts at byte 0
            h.send_response(206)
            h.send_header("Content-Range", f"bytes 0-{n - 1}/{n}")
            h.send_header("Content-Length", str(n))
            h.end_headers()
            h.wfile.write(data)
            return
        body = data[start:]
        if self.mode == "short_length":  # says (and sends) less than the file holds
            body = body[: len(body) - 5000]
            self.mode = None
        h.send_response(206 if rng else 200)
        if self.mode != "no_length":
            h.send_header("Content-Length", str(len(body)))
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{n - 1}/{n}")
        h.end_headers()
        if self.mode == "trickle":
            for i in range(len(body)):
                h.wfile.write(body[i : i + 1])
                h.wfile.flush()
                time.sleep(0.3)
            return
        if self.mode == "no_length":  # no length, and the connection closes early
            h.wfile.write(body[: len(body) // 2])
            h.close_connection = True
            self.mode = None
            return
        h.wfile.write(body)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def archive(small_synth):
    return (small_synth[0] / "lastfm-dataset-1K.tar.gz").read_bytes()


@pytest.fixture
def fserver(archive):
    srv = FaultServer(archive)
    yield srv
    srv.close()


def test_a_resume_answered_from_byte_zero_is_not_appended(fserver, archive, tmp_path):
    """11: a 206 whose body starts at 0 (Content-Range checked): restart, file exact."""
    dest = tmp_path / "a.tar.gz"
    Path(str(dest) + ".part").write_bytes(archive[:10_000])
    fserver.mode = "range_from_zero"
    preprocess.download(fserver.url, dest)
    assert dest.read_bytes() == archive and fserver.requests == ["bytes=10000-", None]


def test_a_part_longer_than_the_file_is_refetched(fserver, archive, tmp_path):
    """11: a .part longer than the remote file (416 compared with bytes */N)."""
    dest = tmp_path / "a.tar.gz"
    Path(str(dest) + ".part").write_bytes(archive + b"junk" * 100)
    preprocess.download(fserver.url, dest)
    assert dest.read_bytes() == archive


@pytest.mark.parametrize("mode", ["short_length", "no_length"])
def test_a_short_or_missing_length_never_gives_a_verified_truncated_file(
    fserver, archive, tmp_path, mode
):
    """11: Content-Length shorter than the file, or none: not verified; a rerun resumes."""
    dest = tmp_path / "a.tar.gz"
    fserver.mode = mode
    with pytest.raises(PipelineError, match="rerun to resume"):
        preprocess.download(fserver.url, dest)
    assert not dest.exists() and not Path(str(dest) + ".verified").exists()
    preprocess.download(fserver.url, dest)
    assert dest.read_bytes() == archive


def test_a_trickle_stops_instead_of_hanging(fserver, tmp_path):
    """11: 1 byte every 0.3 s, below the minimum rate: stopped, partial file kept."""
    fserver.mode = "trickle"
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match="below"):
        preprocess.download(fserver.url, tmp_path / "a.tar.gz", min_rate=100, stall_s=1.0)
    assert time.monotonic() - t0 < 5


def test_md5_in_any_case_and_url_naming_a_folder(fserver, archive, tmp_path):
    """11 and 16: an upper-case --md5 matches; --url naming a folder is one line."""
    md5 = hashlib.md5(archive).hexdigest().upper()
    preprocess.download(fserver.url, tmp_path / "a.tar.gz", md5=md5)
    preprocess.download(fserver.url, tmp_path / "a.tar.gz", md5=md5)  # verified: skipped
    assert len(fserver.requests) == 1
    with pytest.raises(PipelineError, match="no such file"):
        preprocess.download(str(tmp_path), tmp_path / "b.tar.gz")


def test_a_corrupt_archive_is_never_parsed_as_data(archive, tmp_path, data_dir):
    """12: 64 flipped bytes in the .tar.gz: refused (the gzip CRC), not garbage lines."""
    bad = bytearray(archive)
    rng = random.Random(0)
    for i in rng.sample(range(1000, len(bad) - 1000), 64):
        bad[i] ^= 0xFF
    src = tmp_path / "corrupt.tar.gz"
    src.write_bytes(bytes(bad))
    with pytest.raises(PipelineError, match="corrupt|truncated"):
        preprocess.main(["--url", str(src), "--months", "1"])
    assert not (data_dir / "preprocessed" / "1m.parquet").exists()


def test_a_failed_extraction_unverifies_and_a_partial_tsv_is_redone(
    small_synth, tmp_path, data_dir
):
    """11 and 13: a gzip that is no tar loses its .verified mark; a TSV left by a killed
    extraction (no completion marker) is extracted again, whole."""
    notar = tmp_path / "notar.tar.gz"
    notar.write_bytes(gzip.compress(b"not a tar archive at all" * 100))
    raw = data_dir / "raw"
    with pytest.raises(PipelineError, match="corrupt or truncated archive"):
        preprocess.main(["--url", str(notar), "--months", "1"])
    assert not (raw / "lastfm-dataset-1K.tar.gz.verified").exists()
    (raw / "lastfm-dataset-1K.tar.gz").unlink()
    good = small_synth[0] / "lastfm-dataset-1K.tar.gz"
    tsv = raw / preprocess.TSV
    tsv.parent.mkdir(parents=True, exist_ok=True)
    tsv.write_text("user_000001\t2009-01-01T00:00:00Z\t\tA\t\tB\n")  # a killed extraction
    preprocess.main(["--url", str(good), "--months", "1"])
    want = tarfile.open(good).extractfile(preprocess.TSV).read()
    assert tsv.read_bytes() == want


def test_the_published_plays_md5_is_checked_for_the_real_archive(
    small_synth, tmp_path, monkeypatch
):
    """11: the real archive is checked against the published MD5 of its plays file."""
    good = small_synth[0] / "lastfm-dataset-1K.tar.gz"
    with pytest.raises(PipelineError, match="published MD5"):
        preprocess.extract(good, tmp_path, tsv_md5=preprocess.KNOWN_MD5[Path(preprocess.TSV).name])
    assert not (tmp_path / preprocess.TSV).exists()


def run_stage(args, data, env_extra=None):
    env = {**os.environ, "LASTFM_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def tables(folder: Path) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))}


def same_tables(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].equals(b[k]) for k in a)


def kill_then_rerun(args, data, delays) -> None:
    """Run ``args``, SIGKILL it after each delay (a fresh run each time), then rerun it
    to completion without --force."""
    for delay in delays:
        p = run_stage(args + ["--force"], data)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
    p = run_stage(args, data)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err.decode()[-2000:]


def test_killed_preprocess_and_sessionize_reruns_give_identical_outputs(small_synth, tmp_path):
    """13: SIGKILL at random points of preprocess and sessionize; every rerun (without
    --force) gives outputs identical to an uninterrupted run."""
    tsv = str(small_synth[0] / "lastfm-dataset-1K")
    pre = ["preprocess.py", "--input", tsv, "--months", "1,3", "--write-all"]
    ses = ["sessionize.py", "--min-user-sessions", "3"]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for args in (pre, ses):
        p = run_stage(args, clean)
        assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    rng = random.Random(1)
    kill_then_rerun(pre, killed, [rng.uniform(0.5, 4.0) for _ in range(3)])
    assert same_tables(tables(clean / "preprocessed"), tables(killed / "preprocessed"))
    kill_then_rerun(ses, killed, [rng.uniform(0.5, 4.0) for _ in range(3)])
    for w in ("1m", "3m"):
        a, b = clean / "sessions" / w, killed / "sessions" / w
        assert same_tables(tables(a), tables(b))
        for split in ("train", "valid", "test"):
            assert (a / f"{split}.tsv").read_bytes() == (b / f"{split}.tsv").read_bytes()
    # an output deleted or truncated behind the manifest's back: the stage redoes its work
    (killed / "sessions" / "1m" / "valid.parquet").unlink()
    tsvfile = killed / "sessions" / "3m" / "train.tsv"
    tsvfile.write_bytes(tsvfile.read_bytes()[:100])
    p = run_stage(ses, killed)
    assert p.wait(timeout=600) == 0
    assert same_tables(tables(clean / "sessions" / "1m"), tables(killed / "sessions" / "1m"))
    assert tsvfile.read_bytes() == (clean / "sessions" / "3m" / "train.tsv").read_bytes()


def test_a_killed_training_never_pairs_an_old_model_with_a_new_config(pipeline_data, tmp_path):
    """14: SIGKILL during training: no config.json beside a model it did not describe;
    the rerun gives the uninterrupted run's history."""
    pytest.importorskip("keras")
    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    args = [
        "train.py",
        "--window",
        "1m",
        "--epochs",
        "2",
        "--emb-dim",
        "8",
        "--hidden",
        "8",
        "--fc-dim",
        "8",
        "--verbose",
        "0",
        "--no-tensorboard",
        "--transitions",
        "2",
    ]
    p = run_stage(args, data)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    folder = data / "models" / "1m"
    clean = json.loads((folder / "config.json").read_text())
    rng = random.Random(2)
    for delay in (rng.uniform(3, 6), rng.uniform(6, 10)):  # a new configuration, killed
        p = run_stage(args + ["--emb-dim", "16", "--epochs", "50", "--patience", "50"], data)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        # Either untouched (killed before it began: the old model with its own config) or
        # no model at all; never the old model beside the new configuration.
        if (folder / "config.json").exists():
            assert json.loads((folder / "config.json").read_text())["model"]["emb_dim"] == 8
            assert (folder / "model.keras").exists()
        else:
            assert not (folder / "model.keras").exists()
    p = run_stage(args, data)
    assert p.wait(timeout=600) == 0
    again = json.loads((folder / "config.json").read_text())
    strip = [
        {k: v for k, v in r.items() if not k.endswith("_s") and k != "examples_per_s"}
        for r in clean["history"]
    ]
    assert strip == [
        {k: v for k, v in r.items() if not k.endswith("_s") and k != "examples_per_s"}
        for r in again["history"]
    ]


def test_stage_errors_are_one_line(pipeline_data, tmp_path, capsys, monkeypatch):
    """16: a truncated Parquet or corrupt meta.json read by a later stage, a truncated
    model, no track given: one line each, exit 2, no traceback."""
    import test_model
    from lastfm.common import run_main

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    monkeypatch.setenv("LASTFM_DATA_DIR", str(data))
    train = data / "sessions" / "1m" / "train.parquet"
    good = train.read_bytes()
    train.write_bytes(good[: len(good) // 2])
    assert run_main(test_model.main, ["--no-model", "--n-boot", "10"]) == 2
    assert "unreadable" in capsys.readouterr().err
    train.write_bytes(good)
    meta = data / "sessions" / "1m" / "meta.json"
    meta.write_text(meta.read_text()[:50])
    assert run_main(test_model.main, ["--no-model", "--n-boot", "10"]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "Traceback" not in err
    shutil.copy(pipeline_data / "sessions" / "1m" / "meta.json", meta)
    assert run_main(test_model.main, ["--recommend", "--no-model", "--tracks", ";"]) == 2
    assert "no track given" in capsys.readouterr().err
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.keras").write_bytes(b"PK\x03\x04truncated")
    pytest.importorskip("keras")
    from dataclasses import asdict

    from lastfm.common import outputs_record
    from model import ModelConfig

    vocab_md5 = json.loads(meta.read_text())["vocab_md5"]
    listed = outputs_record(folder, ["model.keras"])  # the manifest agrees: Keras refuses it
    (folder / "config.json").write_text(
        json.dumps({"model": asdict(ModelConfig()), "vocab_md5": vocab_md5, "outputs": listed})
    )
    assert run_main(test_model.main, ["--models", str(folder), "--n-boot", "10"]) == 2
    err = capsys.readouterr().err
    assert "cannot be loaded" in err and "retrain" in err and "Traceback" not in err


def test_full_and_read_only_disks_are_one_line(small_synth, small_fs, tmp_path):
    """15: a full or read-only data folder: one line, exit 2; a rerun with space works."""
    tsv = str(small_synth[0] / "lastfm-dataset-1K")
    full = small_fs(40)
    p = run_stage(["preprocess.py", "--input", tsv, "--months", "1", "--data-dir", str(full)], full)
    _, err = p.communicate(timeout=600)
    text = err.decode()
    assert p.returncode == 2 and "Traceback" not in text, text[-2000:]
    assert text.strip().splitlines()[-1].startswith("error:")
    ro = small_fs(64, read_only=True)
    p = run_stage(["preprocess.py", "--input", tsv, "--months", "1", "--data-dir", str(ro)], ro)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 2 and "Traceback" not in err.decode()
    subprocess.run(["mount", "-o", "remount,size=64m", str(full)], check=True)
    p = run_stage(["preprocess.py", "--input", tsv, "--months", "1", "--data-dir", str(full)], full)
    assert p.wait(timeout=600) == 0
    assert (full / "preprocessed" / "1m.parquet").exists()


def test_a_single_test_session_gives_a_report_not_a_traceback(pipeline_data, tmp_path, monkeypatch):
    """16: one test session: intervals of zero width plot without error."""
    import test_model

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    monkeypatch.setenv("LASTFM_DATA_DIR", str(data))
    test = pd.read_parquet(data / "sessions" / "1m" / "test.parquet")
    first = test["session_id"].iloc[0]
    test[test["session_id"] == first].to_parquet(
        data / "sessions" / "1m" / "test.parquet", index=False
    )
    test_model.main(["--no-model", "--n-boot", "20", "--methods", "POP,SR"])
    res = json.loads((data / "reports" / "results.json").read_text())
    assert res["test_sessions"] == 1


def test_non_utf8_rows_parse_silently(tmp_path, capfd):
    """16: a non-UTF-8 row with a wrong field count: a reject, and no "Exception ignored"
    traceback printed by pyarrow."""
    from lastfm.parse import parse_file

    path = tmp_path / "plays.tsv"
    good = b"user_000001\t2009-05-04T22:00:00Z\t\tArt\t\tSong\n"
    path.write_bytes(b"user_000001\t2009-05-04T23:00:00Z\t\tArt\xff\t\tSong\textra\n" + good * 3)
    res = parse_file(path)
    assert res.table.num_rows == 3 and [r[1] for r in res.rejects] == ["non_utf8"]
    assert "Exception ignored" not in capfd.readouterr().err


def test_a_killed_evaluation_leaves_old_or_complete_results(pipeline_data, tmp_path):
    """13: SIGKILL of test_model.py at random points: results.json is never partial, and
    the rerun gives the uninterrupted run's figures."""
    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "sessions", data / "sessions")
    args = ["test_model.py", "--window", "1m", "--no-model", "--n-boot", "200"]
    p = run_stage(args, data)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()[-2000:]
    path = data / "reports" / "results.json"
    clean = json.loads(path.read_text())
    rng = random.Random(3)
    for delay in (rng.uniform(1, 4) for _ in range(3)):
        p = run_stage(args, data)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        json.loads(path.read_text())  # whole: the old file or a complete new one
    p = run_stage(args, data)
    assert p.wait(timeout=600) == 0

    def figures(res):
        return {
            n: {k: v for k, v in m.items() if k not in ("events_per_s",)}
            for n, m in res["methods"].items()
        }

    assert figures(json.loads(path.read_text())) == figures(clean)


def test_a_missing_window_file_is_one_line(pipeline_data, tmp_path, monkeypatch):
    """16: a window file gone from preprocessed/: one line naming the stage to run."""
    import sessionize

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "preprocessed", data / "preprocessed")
    (data / "preprocessed" / "1m.parquet").unlink()
    with pytest.raises(PipelineError, match="1m.parquet not found: run preprocess.py"):
        sessionize.main(["--data-dir", str(data), "--windows", "1m"])
