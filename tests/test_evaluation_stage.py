"""test_model.py (the evaluation stage, its work in lastfm.evaluate, lastfm.report,
lastfm.ranks, lastfm.recommend): reports, recommendations, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import test_model as evaluation
from lastfm.common import PipelineError
from lastfm.evaluate import EvalConfig
from lastfm.paths import Layout
from lastfm.recommend import recommend


def test_baseline_report_and_plots(pipeline_data, monkeypatch, capsys):
    monkeypatch.setenv("LASTFM_DATA_DIR", str(pipeline_data))
    evaluation.main(["--window", "1m", "--no-model", "--n-boot", "100"])
    rep = pipeline_data / "reports"
    res = json.loads((rep / "results.json").read_text())
    ens = [n for n in res["methods"] if n.endswith("(baseline ensemble)")]
    assert set(res["methods"]) - set(ens) == {
        "POP",
        "S-POP",
        "SR",
        "AR",
        "Item-kNN",
        "V-SKNN",
        "VSTAN",
        "baseline blend (LambdaMART)",
    }
    assert len(ens) == 1 and res["methods"][ens[0]]["params"]["grid_size"] == 104
    # every baseline was a candidate base, each with its validation figure
    cands = res["methods"][ens[0]]["params"]["candidates"]
    assert len(cands) == 7 and all(0 <= c["valid_MRR@20"] <= 1 for c in cands)
    assert set(res["comparator_seconds"]) == {ens[0], "baseline blend (LambdaMART)"}
    assert res["hybrid_gains"] == []  # no network here
    assert res["accounting"]["test"]["events_scored"] == res["test_events"]
    for m in res["methods"].values():
        assert set(m["segments"]) == {"repeat", "new", "head", "torso", "tail", "rare (<5 plays)"}
    for m in res["methods"].values():
        lo, hi = m["ci"]["HR@20"]
        assert lo <= m["HR@20"] <= hi
        assert m["events"] == res["test_events"]
    assert res["tie_policy"].startswith("average")
    n_users = res["intervals"]["listeners"]
    assert res["intervals"]["unit"] == "listeners" and n_users > 1
    md = (rep / "results.md").read_text()
    listeners = (
        f"95% bootstrap intervals over listeners (each with all its sessions), {n_users} listeners"
    )
    assert md.count(listeners) == 3  # the results, the differences, the segments
    assert all({"optimistic", "pessimistic"} <= set(m) for m in res["methods"].values())
    for png in ("results_bar.png", "results_by_prefix.png"):
        assert (rep / png).stat().st_size > 2000
    report = (rep / "report.md").read_text()
    assert "Preprocessing statistics" in report and "Results: window 1m" in report
    assert "HR@20" in capsys.readouterr().out


def test_recommend_is_readable(pipeline_data, monkeypatch):
    monkeypatch.setenv("LASTFM_DATA_DIR", str(pipeline_data))

    def rec(**kw):
        return recommend(Layout.at(), EvalConfig(model=False, n=5, **kw))

    text = rec()
    assert "Top 5 next tracks" in text and "Actually played next" in text
    assert " - " in text.splitlines()[1]
    with pytest.raises(PipelineError, match="not a test session"):
        rec(session=-5)
    with pytest.raises(PipelineError, match="not in the training vocabulary"):
        rec(tracks="Nobody - Nothing")


def test_missing_splits_and_unknown_method(data_dir):
    with pytest.raises(PipelineError, match="run sessionize.py"):
        evaluation.main(["--window", "1m", "--no-model"])
    with pytest.raises(PipelineError, match="unknown baseline"):
        evaluation.main(["--methods", "FOO"])


def test_ranks_saved_in_one_run_join_another(pipeline_data, monkeypatch, tmp_path):
    monkeypatch.setenv("LASTFM_DATA_DIR", str(pipeline_data))
    rep = pipeline_data / "reports"
    saved = tmp_path / "sr.npz"
    only = ["--no-ensemble", "--no-blend"]  # the baselines' rows alone are compared here
    evaluation.main(
        ["--methods", "SR", "--no-model", "--n-boot", "50", "--save-ranks", str(saved)] + only
    )
    sr = json.loads((rep / "results.json").read_text())["methods"]["SR"]
    evaluation.main(
        ["--methods", "POP", "--no-model", "--n-boot", "50", "--ranks-from", str(saved)] + only
    )
    res = json.loads((rep / "results.json").read_text())
    assert set(res["methods"]) == {"POP", "SR"}
    merged = res["methods"]["SR"]
    for m in ("HR@1", "HR@20", "MRR@20", "NDCG@20", "coverage@20", "events"):
        assert merged[m] == pytest.approx(sr[m])
    assert merged["ranks_from"] == str(saved)
    # A merged baseline counts as a baseline: its validation scores, refitted here at its
    # configuration, are those its own tuning recorded; it is the reference on both.
    assert merged["valid"] == pytest.approx(sr["valid"])
    refs = res["reference_baselines"]
    assert refs == {"chosen_on": "validation", "HR@20": "SR", "MRR@20": "SR"}
    assert res["methods"]["POP"]["diff_vs_reference"]["baseline"] == {"HR@20": "SR", "MRR@20": "SR"}
    # Same method with the same ranks is kept once; other events or protocol are refused.
    evaluation.main(
        ["--methods", "SR", "--no-model", "--n-boot", "50", "--ranks-from", str(saved)] + only
    )
    assert set(json.loads((rep / "results.json").read_text())["methods"]) == {"SR"}
    with pytest.raises(PipelineError, match="saved for other test events"):
        evaluation.main(
            ["--methods", "POP", "--no-model", "--prefix-len", "10", "--ranks-from", str(saved)]
        )
    with pytest.raises(PipelineError, match="file not found"):
        evaluation.main(["--methods", "POP", "--no-model", "--ranks-from", str(tmp_path / "x")])
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    with pytest.raises(PipelineError, match="not a file written by --save-ranks"):
        evaluation.main(["--methods", "POP", "--no-model", "--ranks-from", str(bad)])


def test_time_slices_are_disjoint_time_ordered_and_evaluated(pipeline_data, tmp_path):
    """Sliding-window protocol: N consecutive slices, each with its own time split
    (unseen tracks kept, so that every session keeps the last play that placed it)."""
    import shutil

    import sessionize

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "preprocessed", data / "preprocessed")
    d = ["--data-dir", str(data)]
    flags = ["--windows", "3m", "--slices", "3", "--min-user-sessions", "1", "--unseen", "keep"]
    sessionize.main(d + flags)
    spans = []
    for k in (1, 2, 3):
        folder = data / "sessions" / f"3m.slice{k}"
        parts = {s: pd.read_parquet(folder / f"{s}.parquet") for s in ("train", "valid", "test")}
        bounds = json.loads((folder / "meta.json").read_text())["split_bounds"]
        ends = {s: p.groupby("session_id")["ts_s"].max() for s, p in parts.items()}
        assert ends["train"].max() < bounds["valid_from_s"] <= ends["valid"].min()
        assert ends["valid"].max() < bounds["test_from_s"] <= ends["test"].min()
        spans.append(
            (
                min(p["ts_s"].min() for p in parts.values()),
                max(p["ts_s"].max() for p in parts.values()),
            )
        )
    assert spans[0][1] < spans[1][0] and spans[1][1] < spans[2][0]  # disjoint, in order
    evaluation.main(
        d
        + ["--window", "3m", "--slices", "3", "--no-model", "--n-boot", "20", "--methods", "POP,SR"]
    )
    res = json.loads((data / "reports" / "results_slices.json").read_text())
    assert list(res["per_slice"]) == ["3m.slice1", "3m.slice2", "3m.slice3"]
    sr = [res["per_slice"][s]["SR"]["MRR@20"] for s in res["per_slice"]]
    assert res["summary"]["SR"]["MRR@20"]["mean"] == pytest.approx(sum(sr) / 3)
    log = (data / "reports" / "test_log.jsonl").read_text().splitlines()
    assert len(log) >= 6 and json.loads(log[0])["method"] == "POP"  # every look is logged


def test_models_name_each_slices_folders_through_window():
    """--models with {window}: each evaluated window (a slice under --slices) gets its own
    folders, whose names (the rows' labels) are the same in every slice."""
    from dataclasses import replace

    ec = EvalConfig(models="m/slices/{window}/sasrec_cfg0,m/1m/narm_cfg1")
    assert ec.model_dirs() == [Path("m/slices/1m/sasrec_cfg0"), Path("m/1m/narm_cfg1")]
    sliced = replace(ec, window="1m.slice2").model_dirs()
    assert sliced == [Path("m/slices/1m.slice2/sasrec_cfg0"), Path("m/1m/narm_cfg1")]


def test_ranks_subset_drops_methods_so_a_rerun_can_replace_them(
    pipeline_data, monkeypatch, tmp_path
):
    """bench/ranks_subset.py: the kept methods merge unchanged; a dropped one is gone; a
    name not in the file is an error."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "ranks_subset", Path(evaluation.__file__).parent / "bench" / "ranks_subset.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setenv("LASTFM_DATA_DIR", str(pipeline_data))
    rep = pipeline_data / "reports"
    both, kept = tmp_path / "both.npz", tmp_path / "kept.npz"
    only = ["--no-ensemble", "--no-blend"]  # the baselines' rows alone are compared here
    evaluation.main(
        ["--methods", "SR,POP", "--no-model", "--n-boot", "20", "--save-ranks", str(both)] + only
    )
    before = json.loads((rep / "results.json").read_text())["methods"]
    assert mod.subset(both, kept, ["SR"]) == ["POP"]
    evaluation.main(
        ["--methods", "S-POP", "--no-model", "--n-boot", "20", "--ranks-from", str(kept)] + only
    )
    after = json.loads((rep / "results.json").read_text())["methods"]
    assert set(after) == {"S-POP", "POP"}
    for m in ("HR@20", "MRR@20", "coverage@20"):
        assert after["POP"][m] == pytest.approx(before["POP"][m])
    with pytest.raises(PipelineError, match="no method"):
        mod.subset(both, kept, ["VSTAN"])


def test_unseen_tracks_kept_in_the_prefixes_end_to_end(pipeline_data, monkeypatch, tmp_path):
    """sessionize.py --unseen keep -> test_model.py: the same unseen-target count as
    splicing, no event spliced, more events scored (those whose prefix was only unseen
    tracks), the mode stated in the results."""
    import shutil

    import sessionize

    data = tmp_path / "data"
    shutil.copytree(pipeline_data / "preprocessed", data / "preprocessed")
    monkeypatch.setenv("LASTFM_DATA_DIR", str(data))
    sessionize.main(["--windows", "1m", "--min-user-sessions", "3", "--unseen", "keep"])
    splits = {s: pd.read_parquet(data / "sessions" / "1m" / f"{s}.parquet") for s in ("test",)}
    assert (splits["test"]["item_idx"] == 0).any()
    evaluation.main(["--window", "1m", "--methods", "SR", "--no-model", "--n-boot", "20"])
    keep = json.loads((data / "reports" / "results.json").read_text())
    spliced = json.loads((pipeline_data / "sessions" / "1m" / "meta.json").read_text())
    a, b = keep["accounting"]["test"], spliced["accounting"]["test"]
    assert keep["unseen"] == "keep" and a["events_spliced"] == 0
    assert a["events_unseen_target"] == b["events_unseen_target"] > 0
    assert a["events_scored"] >= b["events_scored"] and a["events_unscorable"] == 0
    assert a["events_after_unseen"] >= b["events_spliced"]
    assert keep["test_events"] == a["events_scored"]
    md = (data / "reports" / "results.md").read_text()
    assert "stay in the prefixes as id 0" in md


def _figures(x):
    """results.json's figures without the timings (which differ between runs)."""
    if isinstance(x, dict):
        return {
            k: _figures(v)
            for k, v in x.items()
            if "per_s" not in k and "seconds" not in k and k != "tuning"
        }
    if isinstance(x, list):
        return [_figures(v) for v in x]
    return x


def test_stream_gives_the_same_results_from_part_files(pipeline_data, tmp_path, monkeypatch):
    """``--stream``: training split and test split as folders of part files (whole
    sessions each), the baselines fitted part by part and V-SKNN/VSTAN from the session
    index on disk, the test events read part by part: every figure as in memory."""
    import shutil

    import numpy as np

    got = {}
    for mode in ("memory", "stream"):
        data = tmp_path / mode
        shutil.copytree(pipeline_data, data)
        if mode == "stream":
            w = data / "sessions" / "1m"
            for split in ("train", "test"):
                df = pd.read_parquet(w / f"{split}.parquet")
                (w / f"{split}.parquet").unlink()
                (w / f"{split}.parquet").mkdir()
                for k, ids in enumerate(np.array_split(df["session_id"].unique(), 3)):
                    part = df[df["session_id"].isin(ids)]
                    part.to_parquet(w / f"{split}.parquet" / f"part-{k:05d}.parquet")
        monkeypatch.setenv("LASTFM_DATA_DIR", str(data))
        flags = ["--stream"] if mode == "stream" else []
        evaluation.main(["--window", "1m", "--no-model", "--n-boot", "50", *flags])
        got[mode] = json.loads((data / "reports" / "results.json").read_text())
    a, b = got["memory"], got["stream"]
    assert b["data"]["test_events_md5"] == a["data"]["test_events_md5"]
    assert b["test_events"] == a["test_events"] and b["intervals"] == a["intervals"]
    assert _figures(b["methods"]) == _figures(a["methods"])
    assert (tmp_path / "stream" / "sessions" / "1m" / "index").is_dir()


def test_scheduler_needs_stream(tmp_path):
    with pytest.raises(PipelineError, match="--scheduler only applies with --stream"):
        evaluation.main(["--data-dir", str(tmp_path), "--scheduler", "tcp://127.0.0.1:1"])
