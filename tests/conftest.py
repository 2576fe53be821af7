"""Shared fixtures: small generated datasets and an isolated data directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLE = ROOT.parent / "shared" / "data" / "lastfm-1k-sample"

import synth  # noqa: E402


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """Point every stage's data/ at a fresh temporary folder."""
    d = tmp_path / "data"
    monkeypatch.setenv("LASTFM_DATA_DIR", str(d))
    return d


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory):
    """~60K plays of 24 users over 8 months, with the archive packed."""
    out = tmp_path_factory.mktemp("synth")
    cfg = synth.SynthConfig(
        users=24, plays=60_000, months=8, seed=7, stray_tabs=3, bad_timestamps=2
    )
    summary = synth.generate(out, cfg, archive=True)
    return out, summary


def prepared(d: Path, synth_dir: Path, months: str) -> Path:
    """``synth_dir``'s archive through preprocess (``months``) and sessionize into ``d``."""
    import os

    import preprocess
    import sessionize

    old = os.environ.get("LASTFM_DATA_DIR")
    os.environ["LASTFM_DATA_DIR"] = str(d)
    try:
        preprocess.main(["--input", str(synth_dir / "lastfm-dataset-1K"), "--months", months])
        sessionize.main(["--min-user-sessions", "3"])
    finally:
        if old is None:
            del os.environ["LASTFM_DATA_DIR"]
        else:
            os.environ["LASTFM_DATA_DIR"] = old
    return d


@pytest.fixture(scope="session")
def pipeline_data(tmp_path_factory, small_synth):
    """Preprocessed and sessionized small synthetic data (1m and 3m windows)."""
    return prepared(tmp_path_factory.mktemp("pipe") / "data", small_synth[0], "1,3")


@pytest.fixture(scope="session")
def tag_synth(tmp_path_factory):
    """~8K plays of 12 users over 2 months (a few hundred tracks): the tag crawl's tests
    send a request per track, so a smaller catalogue than ``small_synth``'s."""
    out = tmp_path_factory.mktemp("tagsynth")
    cfg = synth.SynthConfig(users=12, plays=8_000, months=2, seed=7, stray_tabs=3, bad_timestamps=2)
    synth.generate(out, cfg, archive=False)
    return out


@pytest.fixture(scope="session")
def tag_pipeline(tmp_path_factory, tag_synth):
    """``tag_synth`` preprocessed (1m) and sessionized."""
    return prepared(tmp_path_factory.mktemp("tagpipe") / "data", tag_synth, "1")


def requires_sample():
    return pytest.mark.skipif(not SAMPLE.exists(), reason="../shared sample not present")


@pytest.fixture
def small_fs(tmp_path):
    """mount(kb, read_only) -> a fresh tmpfs folder of that size; skips where mounting is
    not allowed (not root, no privileges). Unmounted afterwards."""
    import subprocess

    mounted = []

    def mount(kb: int = 96, read_only: bool = False) -> Path:
        d = tmp_path / f"fs{len(mounted)}"
        d.mkdir()
        opts = f"size={kb}k" + (",ro" if read_only else "")
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small filesystem here: {r.stderr.decode().strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture
def tag_env(tag_pipeline, tag_synth, tmp_path, monkeypatch):
    """A private copy of ``tag_pipeline``'s sessions, its 1m vocabulary and planted tags."""
    import shutil

    import pandas as pd

    import fetch_tags as ft

    data = tmp_path / "data"
    shutil.copytree(tag_pipeline / "sessions", data / "sessions")
    monkeypatch.setenv("LASTFM_DATA_DIR", str(data))
    monkeypatch.delenv("LASTFM_API_KEY", raising=False)
    vocab = pd.read_parquet(data / "sessions" / "1m" / "vocab.parquet")
    truth = pd.read_csv(
        tag_synth / "ground_truth" / "track_tags.tsv",
        sep="\t",
        quoting=3,
        keep_default_na=False,
    )
    by_name = {
        k: list(zip(g["tag"], g["weight"].astype(int)))
        for k, g in truth.groupby(["artist", "track"])
    }
    planted = {}
    for job in ft.track_jobs(vocab):
        tags = by_name.get((job.artist, job.title))
        if tags:
            planted[job.key] = tags
    return data, vocab, planted, truth
