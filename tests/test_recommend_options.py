"""test_model.py --recommend on data with unseen tracks kept (id 0), its lists, and its
options: --tracks / --session without --recommend are an error, not ignored."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import test_model as evaluation
from lastfm import baselines as bl
from lastfm.common import PipelineError, run_main
from lastfm.evaluate import EvalConfig
from lastfm.paths import Layout
from lastfm.recommend import UNSEEN, recommend


@pytest.fixture(scope="module")
def kept_data(pipeline_data, tmp_path_factory):
    """The pipeline's windows sessionized again with ``--unseen keep``."""
    import shutil

    import sessionize

    data = tmp_path_factory.mktemp("kept") / "data"
    shutil.copytree(pipeline_data / "preprocessed", data / "preprocessed")
    args = ["--windows", "1m", "--min-user-sessions", "3", "--unseen", "keep"]
    sessionize.main(["--data-dir", str(data), *args])  # the flag, not the environment
    return data


def listed(text: str) -> list[str]:
    """The recommended tracks of ``recommend``'s text."""
    lines = text.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("Top "))
    out = []
    for x in lines[start + 1 :]:
        if not x[:5].strip().rstrip(".").isdigit():
            break
        out.append(x.split(". ", 1)[1].split("   <-")[0])
    return out


def test_recommend_shows_unseen_plays_and_only_scored_tracks(kept_data, monkeypatch):
    monkeypatch.setenv("LASTFM_DATA_DIR", str(kept_data))
    test = pd.read_parquet(kept_data / "sessions" / "1m" / "test.parquet")
    train = pd.read_parquet(kept_data / "sessions" / "1m" / "train.parquet")
    vocab = pd.read_parquet(kept_data / "sessions" / "1m" / "vocab.parquet")
    # a session with an unseen play in the half the recommendations follow
    sid = next(
        s
        for s, g in test.groupby("session_id", sort=False)
        if (g["item_idx"].to_numpy()[: max(1, len(g) // 2)] == 0).any()
    )
    text = recommend(Layout.at(), EvalConfig(model=False, n=20, session=int(sid)))
    assert UNSEEN in text.split("Top ")[0]  # in the session so far
    # V-SKNN (no trained model) lists only tracks it scored: as many as it scored, at most
    items = test.loc[test["session_id"] == sid, "item_idx"].tolist()
    prefix = items[: max(1, len(items) // 2)][-50:]
    pre = np.zeros((1, 50), np.int32)
    pre[0, : len(prefix)] = prefix
    scores = bl.VSKNN(k=100).fit(train, len(vocab)).sparse_scores(pre, np.array([len(prefix)]))
    n_scored = int((scores.toarray()[0, 1:] > 0).sum())
    shown = listed(text)
    assert len(shown) == min(20, n_scored) and UNSEEN not in shown


def test_tracks_or_session_without_recommend_is_an_error(capsys):
    for flags in (["--tracks", "A - B"], ["--session", "3"]):
        with pytest.raises(PipelineError, match="only apply with --recommend"):
            evaluation.parse_args(flags)
        assert run_main(evaluation.main, flags) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: --") and "\n" not in err
    evaluation.parse_args(["--recommend", "--session", "3"])  # with it: fine
