"""The whole pipeline in a non-default data folder: every stage finds what the last wrote."""

from __future__ import annotations

import json

import pytest


def test_every_stage_reads_and_writes_under_data_dir(small_synth, tmp_path, monkeypatch):
    pytest.importorskip("keras")
    import fetch_tags
    import preprocess
    import sessionize
    import test_model
    import train

    default = tmp_path / "default"  # where $LASTFM_DATA_DIR points: must stay unused
    monkeypatch.setenv("LASTFM_DATA_DIR", str(default))
    d = ["--data-dir", str(tmp_path / "elsewhere")]
    synth_dir = small_synth[0]
    preprocess.main(d + ["--input", str(synth_dir / "lastfm-dataset-1K"), "--months", "3"])
    sessionize.main(d + ["--min-user-sessions", "3"])
    fetch_tags.main(
        d
        + [
            "--windows",
            "3m",
            "--min-tag-count",
            "1",
            "--tags-file",
            str(synth_dir / "ground_truth" / "track_tags.tsv"),
        ]
    )
    train.main(
        d
        + [
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
            "--transitions",
            "2",
        ]
    )
    test_model.main(d + ["--window", "3m", "--methods", "POP,SR", "--n-boot", "20"])
    out = tmp_path / "elsewhere"
    res = json.loads((out / "reports" / "results.json").read_text())
    assert {"POP", "SR", "BiGRU-Att+tags"} <= set(res["methods"])
    assert res["provenance"]["command"].startswith("python test_model.py --data-dir")
    for sub in (
        "preprocessed/3m.parquet",
        "sessions/3m/train.parquet",
        "tags/3m/tags.parquet",
        "models/3m/model.keras",
        "models/3m/config.json",
        "reports/report.md",
    ):
        assert (out / sub).exists(), sub
    assert not default.exists()
