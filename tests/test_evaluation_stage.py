"""test_model.py (the evaluation stage): reports, recommendations, clear errors."""
from __future__ import annotations

import json

import pytest

import test_model as evaluation
from common import PipelineError


def test_baseline_report_and_plots(pipeline_data, monkeypatch, capsys):
    monkeypatch.setenv("LASTFM_DATA_DIR", str(pipeline_data))
    evaluation.main(["--window", "1m", "--no-model", "--n-boot", "100"])
    rep = pipeline_data / "reports"
    res = json.loads((rep / "results.json").read_text())
    assert set(res["methods"]) == {"POP", "S-POP", "SR", "Item-kNN", "V-SKNN"}
    for m in res["methods"].values():
        lo, hi = m["ci"]["HR@20"]
        assert lo <= m["HR@20"] <= hi
        assert m["events"] == res["test_events"]
    assert res["tie_policy"].startswith("optimistic")
    for png in ("results_bar.png", "results_by_prefix.png"):
        assert (rep / png).stat().st_size > 2000
    report = (rep / "report.md").read_text()
    assert "Preprocessing statistics" in report and "Results: window 1m" in report
    assert "HR@20" in capsys.readouterr().out


def test_recommend_is_readable(pipeline_data, monkeypatch):
    monkeypatch.setenv("LASTFM_DATA_DIR", str(pipeline_data))
    text = evaluation.recommend("1m", None, None, 5, use_model=False)
    assert "Top 5 next tracks" in text and "Actually played next" in text
    assert " - " in text.splitlines()[1]
    with pytest.raises(PipelineError, match="not a test session"):
        evaluation.recommend("1m", -5, None, 5, use_model=False)
    with pytest.raises(PipelineError, match="not in the training vocabulary"):
        evaluation.recommend("1m", None, "Nobody - Nothing", 5, use_model=False)


def test_missing_splits_and_unknown_method(data_dir):
    with pytest.raises(PipelineError, match="run sessionize.py"):
        evaluation.main(["--window", "1m", "--no-model"])
    with pytest.raises(PipelineError, match="unknown baseline"):
        evaluation.main(["--methods", "FOO"])
