"""``test_model.py --recommend``: the top-N tracks for a test session (``--session``) or
for tracks given by name (``--tracks "Artist - Title; Artist - Title"``), next to what
was played next; by the trained model (its hybrid when training chose one), else V-SKNN.

A play of a track unseen in training (id 0, ``sessionize.py --unseen keep``) is shown as
``UNSEEN``; a list holds only the tracks the method scored (``metrics.topk``), so it can
be shorter than N.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lastfm import baselines as bl
from lastfm.common import PipelineError
from lastfm.data import load_splits
from lastfm.evaluate import (
    EvalConfig,
    LoadTrained,
    default_model_dirs,
    hybrid_weights,
    model_rankers,
)
from lastfm.metrics import ranker_from_scorer
from lastfm.paths import Layout

UNSEEN = "(unseen track)"


def _find_tracks(vocab: pd.DataFrame, spec: str) -> list[int]:
    """Item ids of 'Artist - Title; ...' (exact, case-insensitive)."""
    key = (
        vocab["artist_name"].astype(str).str.lower()
        + " - "
        + vocab["track_name"].astype(str).str.lower()
    )
    lookup = dict(zip(key, vocab["item_idx"]))
    items = []
    parts = [p.strip() for p in spec.split(";") if p.strip()]
    if not parts:
        raise PipelineError(
            f"--tracks {spec!r}: no track given (write 'Artist - Title', separated by ';')"
        )
    for part in parts:
        if part.lower() not in lookup:
            raise PipelineError(
                f"--tracks: {part!r} is not in the training vocabulary "
                "(write 'Artist - Title', separated by ';')"
            )
        items.append(int(lookup[part.lower()]))
    return items


def _prefix_and_next(test: pd.DataFrame, vocab: pd.DataFrame, ec: EvalConfig):
    """The tracks to recommend after (``--tracks``, or the first half of the test session
    ``--session``, default the first) and what was played next (the second half)."""
    actual = []
    if ec.tracks:
        prefix = _find_tracks(vocab, ec.tracks)
    else:
        ids = test["session_id"].unique()
        if len(ids) == 0:
            raise PipelineError(f"window {ec.window}: the test split has no session")
        sid = int(ids[0]) if ec.session is None else ec.session
        rows = test[test["session_id"] == sid]
        if rows.empty:
            raise PipelineError(
                f"--session {sid} is not a test session of window {ec.window} "
                f"(ids run {ids.min()}..{ids.max()})"
            )
        items = rows["item_idx"].tolist()
        cut = max(1, len(items) // 2)
        prefix, actual = items[:cut], items[cut:]
    return prefix, actual


def recommend(layout: Layout, ec: EvalConfig, load_trained: LoadTrained | None = None) -> str:
    """The recommendations as text: the session so far, the top ``ec.n`` next tracks by
    the trained model (loaded by ``load_trained``) or V-SKNN, and what was played next."""
    splits, vocab, meta = load_splits(layout, ec.window)
    n_items = len(vocab)
    names = dict(
        zip(
            vocab["item_idx"].astype(int),
            vocab["artist_name"].astype(str) + " - " + vocab["track_name"].astype(str),
        )
    )
    names[0] = UNSEEN  # a kept unseen play; never a recommendation
    prefix, actual = _prefix_and_next(splits["test"], vocab, ec)
    p = prefix[-ec.prefix_len :]
    pre = np.zeros((1, ec.prefix_len), np.int32)
    pre[0, : len(p)] = p
    lengths = np.array([len(p)], np.int32)
    dirs = default_model_dirs(layout, ec) if ec.model else []
    if dirs:
        rankers, record = model_rankers(dirs[0], meta["vocab_md5"], False, load_trained)
        ranker = rankers[-1][1]  # the hybrid when training chose one
        hybrid = hybrid_weights(record)
        label = "trained model" + (f" + transition counts {hybrid}" if hybrid else "")
    else:
        method = bl.VSKNN(k=100).fit(splits["train"], n_items)
        ranker, label = ranker_from_scorer(method.scorer), "V-SKNN (no trained model)"
    *_, top = ranker(pre, lengths, np.array([max(prefix)], np.int32))  # any known track
    listed = [int(t) for t in top[0][: ec.n] if t > 0]
    lines = ["Session so far:"] + [f"  {i + 1:2d}. {names[t]}" for i, t in enumerate(prefix)]
    lines += [f"Top {ec.n} next tracks ({label}):"]
    lines += [
        f"  {i + 1:2d}. {names[t]}" + ("   <- played next" if actual and t == actual[0] else "")
        for i, t in enumerate(listed)
    ]
    if len(listed) < ec.n:
        lines += [f"      ({len(listed) or 'no'} track{'s' * (len(listed) != 1)} scored)"]
    if actual:
        lines += ["Actually played next:"] + [f"      {names[t]}" for t in actual[:5]]
    return "\n".join(lines)
