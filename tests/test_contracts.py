"""The structure's contracts: one-way imports, typed configs, one ranking contract."""

from __future__ import annotations

import argparse
import ast
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from lastfm import config as cfgs
from lastfm.common import PipelineError
from lastfm.config import option
from lastfm.metrics import ranker_from_scorer, target_ranks

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["preprocess", "sessionize", "fetch_tags", "train", "test_model"]
TOP_LIBRARY = ["model", "synth"]  # top-level modules the user named, below the stages


def local_imports(path: Path) -> set[str]:
    """Project modules imported by ``path`` (top-level names and lastfm.<module>)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        mods = []
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for m in mods:
            if m in STAGES or m in TOP_LIBRARY:
                names.add(m)
            elif m.startswith("lastfm.") and (ROOT / "lastfm" / f"{m.split('.')[1]}.py").exists():
                names.add("lastfm." + m.split(".")[1])
    return names


def graph() -> dict[str, set[str]]:
    g = {m: local_imports(ROOT / f"{m}.py") for m in STAGES + TOP_LIBRARY}
    for p in (ROOT / "lastfm").glob("*.py"):
        if p.stem != "__init__":
            g["lastfm." + p.stem] = local_imports(p)
    return g


def test_imports_point_one_way_without_cycles():
    g = graph()
    for m in STAGES:  # no stage imports another stage
        assert not (g[m] & set(STAGES)), (m, g[m])
    for m in TOP_LIBRARY:  # model modules import only the package
        assert all(d.startswith("lastfm.") for d in g[m]), (m, g[m])
    for m in (k for k in g if k.startswith("lastfm.")):  # the package never imports upward
        assert all(d.startswith("lastfm.") for d in g[m]), (m, g[m])
    state: dict[str, int] = {}

    def visit(m, path):  # depth-first search for a cycle
        state[m] = 1
        for d in g.get(m, ()):
            assert state.get(d) != 1, f"import cycle: {' -> '.join(path + [d])}"
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in g:
        if m not in state:
            visit(m, [m])


def test_following_window_from_train_never_enters_test_model():
    g, seen, todo = graph(), set(), ["train"]
    while todo:
        m = todo.pop()
        seen.add(m)
        todo += [d for d in g.get(m, ()) if d not in seen]
    assert "test_model" not in seen and "train" in seen


@dataclass
class Toy:
    size: int = option(3, "a count")
    rate: float = option(0.5, "a rate")
    name: str = option("a", "a choice", choices=["a", "b"])
    on: bool = option(True, "a switch that defaults on")
    off: bool = option(False, "a switch that defaults off")
    path: str | None = option(None, "optional")

    def check(self):
        if self.size < 1:
            raise PipelineError("--size must be at least 1")


def parse(argv):
    ap = argparse.ArgumentParser()
    cfgs.add_flags(ap, Toy)
    return cfgs.from_args(Toy, ap.parse_args(argv))


def test_flags_come_from_the_dataclass():
    assert parse([]) == Toy()
    got = parse(["--size", "7", "--rate", "2", "--name", "b", "--no-on", "--off", "--path", "x"])
    assert got == Toy(7, 2.0, "b", False, True, "x")
    with pytest.raises(SystemExit):
        parse(["--name", "c"])
    with pytest.raises(PipelineError, match="at least 1"):
        parse(["--size", "0"])


def test_saved_configs_load_strictly():
    assert cfgs.load(Toy, cfgs.as_dict(Toy(size=4)), "x.json") == Toy(size=4)
    with pytest.raises(PipelineError, match="unknown \\['extra'\\]"):
        cfgs.load(Toy, {**cfgs.as_dict(Toy()), "extra": 1}, "x.json")
    saved = cfgs.as_dict(Toy())
    del saved["rate"]
    with pytest.raises(PipelineError, match="missing \\['rate'\\].*retrain"):
        cfgs.load(Toy, saved, "x.json")


def test_every_stage_takes_data_dir_and_its_config_flags():
    import fetch_tags
    import preprocess
    import sessionize
    import test_model
    import train

    layout, cfg, options, engine = preprocess.parse_args(
        ["--data-dir", "/x", "--months", "1", "--dataset", "yambda", "--input", "/in"]
        + ["--organic-only", "--engine", "dask", "--partitions", "8"]
    )
    assert layout.root == Path("/x") and cfg.month_list() == [1]
    assert options.dataset == "yambda" and options.organic_only
    assert engine.engine == "dask" and engine.partitions == 8
    layout, cfg, _ = sessionize.parse_args(["--data-dir", "/y", "--max-session-len", "9"])
    assert layout.sessions("1m") == Path("/y/sessions/1m") and cfg.max_session_len == 9
    layout, cfg = fetch_tags.parse_args(["--data-dir", "/z", "--workers", "2"])
    assert layout.tags("1m") == Path("/z/tags/1m") and cfg.workers == 2
    layout, mc, tc = train.parse_args(["--data-dir", "/w", "--emb-dim", "16", "--no-tags"])
    assert mc.emb_dim == 16 and not mc.tags and layout.models("1m") == Path("/w/models/1m")
    layout, ec = test_model.parse_args(["--data-dir", "/v", "--prefix-len", "30", "--no-model"])
    assert ec.prefix_len == 30 and not ec.model
    for bad in (["--workers", "0"], ["--rate", "-5"]):
        with pytest.raises(PipelineError):
            fetch_tags.parse_args(bad)
    for bad in (["--epochs", "0"], ["--batch-size", "0"], ["--input-len", "0"]):
        with pytest.raises(PipelineError):
            train.parse_args(bad)
    for bad in (["--gap-minutes", "-5"], ["--max-session-len", "-1"]):
        with pytest.raises(PipelineError):
            sessionize.parse_args(bad)
    with pytest.raises(PipelineError, match="a date"):
        preprocess.parse_args(["--valid-from", "notadate"])


# Deliberately tied scores, NaNs and a padding column that outscores everything.
TIED = np.array(
    [
        [9.0, 0.5, 0.9, 0.1, 0.9, 0.9],
        [9.0, 0.2, 0.2, 0.2, 0.2, 0.2],
        [9.0, 0.3, np.nan, 0.1, 0.3, 0.0],
        [np.nan, np.nan, np.nan, np.nan, np.nan, np.nan],
        [9.0, 1.0, 0.5, np.nan, 0.5, 0.2],
    ],
    np.float32,
)
TARGETS = np.array([2, 3, 2, 1, 4])
EXPECTED = [2.0, 3.0, 5.0, 5.0, 2.5]  # average ranks; a NaN target ranks last (V = 5)
HIGHER, TIES = [0, 0, 4, 4, 1], [2, 4, 0, 0, 1]


def avg(higher, ties):
    return (1 + np.asarray(higher) + np.asarray(ties) / 2).tolist()


def test_tie_policy_and_nan_on_the_numpy_path():
    assert target_ranks(TIED, TARGETS).tolist() == EXPECTED
    higher, ties, top = ranker_from_scorer(lambda p, n: TIED)(
        np.zeros((5, 1), np.int32), np.ones(5, np.int32), TARGETS
    )
    assert higher.tolist() == HIGHER and ties.tolist() == TIES
    assert avg(higher, ties) == EXPECTED
    # padding never recommended; a row of NaN scores lists no track (id 0: none)
    assert (top[[0, 1, 2, 4], 0] != 0).all() and not top[3].any()


class FixedScores:
    """A stand-in model whose logits are given (the device ranker's interface)."""

    input_len = 1

    def __init__(self, scores):
        self.scores, self.n_items = scores, scores.shape[1] - 1

    def predict_on_batch(self, x):
        return np.arange(len(x), dtype=np.float32)

    def logits(self, rep):
        from keras import ops

        return ops.convert_to_tensor(self.scores)


def test_numpy_and_device_paths_rank_identically():
    pytest.importorskip("keras")
    from keras import ops

    from lastfm.metrics import device_ranker

    assert (
        ops.convert_to_numpy(target_ranks(ops.convert_to_tensor(TIED), TARGETS, ops)).tolist()
        == EXPECTED
    )
    x, n = np.zeros((5, 1), np.int32), np.ones(5, np.int32)
    dev = device_ranker(FixedScores(TIED))(x, n, TARGETS)
    cpu = ranker_from_scorer(lambda p, n: TIED)(x, n, TARGETS)
    assert dev[0].tolist() == cpu[0].tolist() == HIGHER
    assert dev[1].tolist() == cpu[1].tolist() == TIES
    rng = np.random.default_rng(0)  # random scores with many ties
    scores = rng.integers(0, 4, size=(64, 40)).astype(np.float32)
    targets = rng.integers(1, 40, size=64)
    x = np.zeros((64, 1), np.int32)
    dev = device_ranker(FixedScores(scores))(x, np.ones(64), targets)
    cpu = ranker_from_scorer(lambda p, n: scores)(x, np.ones(64), targets)
    assert dev[0].tolist() == cpu[0].tolist() and dev[1].tolist() == cpu[1].tolist()
    assert sum(dev[1]) > 0


def test_an_old_saved_model_asks_for_retraining(tmp_path):
    pytest.importorskip("keras")
    from model import load_trained

    (tmp_path / "model.keras").write_bytes(b"x")
    (tmp_path / "config.json").write_text(
        json.dumps({"model": {"emb_dim": 64, "output": "tied"}, "vocab_md5": "a"})
    )
    with pytest.raises(PipelineError, match="retrain"):
        load_trained(tmp_path)


def test_results_doc_builds_from_every_results_file_but_the_fidelity_report():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_results", ROOT / "docs" / "build_results.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.build()
    for p in (ROOT / "results").glob("*.json"):
        assert (f"`results/{p.name}`" in text) == (p.stem != "fidelity"), p.name


def test_provenance_names_a_given_commit_beside_the_detected_one(monkeypatch):
    """A lent machine's copy of the tree can carry stale git metadata: $LASTFM_COMMIT is
    recorded beside the commit git detects, never over it; library versions are kept."""
    from lastfm.common import git_commit, provenance

    monkeypatch.delenv("LASTFM_COMMIT", raising=False)
    p = provenance("python x.py")
    assert p["commit"] == git_commit() and "named_commit" not in p
    assert p["tree_clean"] == (not p["commit"].endswith("+changes"))
    assert {"python", "numpy", "pandas", "keras"} <= set(p["versions"])
    monkeypatch.setenv("LASTFM_COMMIT", "abc1234")
    p = provenance(" python x.py ")
    assert p["commit"] == git_commit() and p["named_commit"] == "abc1234"
    assert p["command"] == "python x.py"


def test_results_doc_and_readme_tables_match_a_rebuild_from_the_results_files():
    """docs/RESULTS.md and the README's headline tables are generated: a rebuild from
    results/*.json reproduces both, and the README's tables are the generated ones."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "build_results", ROOT / "docs" / "build_results.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "RESULTS.md").read_text() == mod.build()
    assert mod.update_readme(readme) == readme
    blocks = mod.BLOCK.findall(readme)
    assert len(blocks) >= 2
    # a figure typed over a generated one is caught
    tampered = readme.replace("| 0.4683 [", "| 0.4690 [", 1)
    assert tampered != readme and mod.update_readme(tampered) == readme
    # the networks-alone view: no hybrid and no session-aware row, the comparators kept
    res = json.loads((ROOT / "results" / "real-sample-session-aware.json").read_text())
    full, alone = mod.headline("x", res), mod.headline("x", res, alone=True)
    assert "+transitions (" in full
    rows = [r.split(" | ")[0] for r in alone.splitlines() if r.startswith("| ")]
    assert "| baseline blend (LambdaMART)" in rows and any("baseline ensemble" in r for r in rows)
    assert not any("+transitions (" in r and "ensemble" not in r for r in rows)
    assert not any("+history" in r or "+reminders" in r for r in rows)


def test_every_requirement_is_pinned_in_the_lock_file():
    """CI installs requirements.lock: each package requirements.txt names is pinned there."""
    import re

    def name(line: str) -> str:
        return re.split(r"[\[<>=~! ;#]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")

    wanted = {name(x) for x in (ROOT / "requirements.txt").read_text().splitlines() if name(x)}
    pinned = {
        name(x): x.split("==", 1)[1]
        for x in (ROOT / "requirements.lock").read_text().splitlines()
        if "==" in x and not x.startswith("#")
    }
    assert wanted <= set(pinned), sorted(wanted - set(pinned))
    assert "jaxlib" in pinned  # jax[cpu]'s extra is pinned too
