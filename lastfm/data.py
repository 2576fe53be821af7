"""The data contract between stages: columns, readers, next-item events.

The columns each stage hands to the next are declared once in ``SCHEMAS`` and
checked by ``read_table`` when read; the readers of one stage's outputs that a
later stage uses (``load_splits``, ``load_tag_tables``) live here, beside the
events every method is trained and scored on (``make_events``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lastfm.common import PipelineError, outputs_match, read_json
from lastfm.paths import Layout

SPLITS = ("train", "valid", "test")

# Columns (and their meaning) of the Parquet files handed between stages.
SCHEMAS: dict[str, dict[str, str]] = {
    # preprocess.py -> preprocessed/<window>.parquet
    "plays": {
        "user_idx": "int32 index into users (0-based, dataset order)",
        "ts_s": "int64 UTC seconds since 1970-01-01",
        "artist_idx": "int32 artist code (MBID, or name with --keep-missing-mbid)",
        "track_idx": "int32 track code (MBID, or artist+name with --keep-missing-mbid)",
        "artist_name": "dictionary string, for display",
        "track_name": "dictionary string, for display",
        "track_mbid": "dictionary string, the track's MusicBrainz id (null without one)",
    },
    # sessionize.py -> sessions/<window>/{train,valid,test}.parquet
    "sessions": {
        "session_id": "int64 session id, increasing with start time",
        "user_idx": "int32 user index",
        "position": "int16 0-based position inside the session",
        "item_idx": "int32 1-based track index into vocab.parquet (0: padding, or a track "
        "unseen in training kept by sessionize.py --unseen keep)",
        "ts_s": "int64 UTC seconds",
    },
    # sessionize.py -> sessions/<window>/vocab.parquet
    "vocab": {
        "item_idx": "int32 1-based track index (0 is padding)",
        "track_key": "string: track MBID, or 'artist\\ttrack' without one",
        "artist_name": "string",
        "track_name": "string",
        "train_count": "int64 plays in the training split",
    },
    # fetch_tags.py -> tags/<window>/tags.parquet (tag vocabulary)
    "tags": {
        "tag_idx": "int32 1-based tag index (0 is padding)",
        "tag": "string, normalised (lower case, single spaces)",
        "tracks": "int64 tracks of the window carrying the tag",
    },
    # fetch_tags.py -> tags/<window>/track_tags.parquet (top K per track)
    "track_tags": {
        "item_idx": "int32 track index of the window's vocabulary",
        "tag_idx": "int32 tag index into tags.parquet",
        "weight": "float32 Last.fm tag weight (0-100)",
    },
}


def session_starts(user: np.ndarray, ts_s: np.ndarray, mode: str, gap_s: float) -> np.ndarray:
    """Boolean per play (sorted by user, then time): True where a new session starts.

    ``mode`` "gap": after more than ``gap_s`` seconds without a play; "window":
    at each fixed clock window of ``gap_s`` seconds (UTC).
    """
    new = np.ones(len(ts_s), dtype=bool)
    if len(ts_s) > 1:
        same_user = user[1:] == user[:-1]
        if mode == "gap":
            cont = (ts_s[1:] - ts_s[:-1]) <= gap_s
        elif mode == "window":
            cont = (ts_s[1:] // gap_s) == (ts_s[:-1] // gap_s)
        else:
            raise PipelineError(f"--mode {mode!r}: expected 'gap' or 'window'")
        new[1:] = ~(same_user & cont)
    return new


def require_columns(columns: Iterable[str], schema: str, source: str | Path) -> None:
    """Raise PipelineError naming ``source`` when a column of ``schema`` is missing."""
    missing = [c for c in SCHEMAS[schema] if c not in set(columns)]
    if missing:
        raise PipelineError(
            f"{source}: missing column(s) {missing} of the '{schema}' table; "
            f"it was written by an older or different stage, rerun that stage"
        )


def read_table(path: Path, schema: str, hint: str) -> pd.DataFrame:
    """Read a Parquet file written by a previous stage and check its columns."""
    if not Path(path).exists():
        raise PipelineError(f"{path} not found: run {hint} first")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise PipelineError(
            f"{path}: unreadable ({type(err).__name__}: {err}); rerun {hint}"
        ) from None
    require_columns(frame.columns, schema, path)
    return frame


def load_splits(
    layout: Layout, window: str, names: tuple[str, ...] = SPLITS
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, dict]:
    """The window's train / valid / test plays (``names`` of them), vocabulary and
    manifest (sessionize.py)."""
    d = layout.sessions(window)
    if not (d / "meta.json").exists():
        raise PipelineError(f"{d}/meta.json not found: run sessionize.py (window {window}) first")
    splits = {s: read_table(d / f"{s}.parquet", "sessions", "sessionize.py") for s in names}
    vocab = read_table(d / "vocab.parquet", "vocab", "sessionize.py")
    return splits, vocab, read_json(d / "meta.json")


def popularity(vocab: pd.DataFrame) -> np.ndarray:
    """Training plays of every track id (V+1,), 0 for padding."""
    pop = np.zeros(len(vocab) + 1)
    pop[vocab["item_idx"].to_numpy()] = vocab["train_count"].to_numpy()
    return pop


def load_tag_tables(
    layout: Layout, window: str, n_items: int, k: int, vocab_md5: str | None = None
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(V+1, K) tag ids and weights and the tag count (fetch_tags.py), or None when the
    window has no tags. PipelineError when its manifest is missing, lists tables that
    changed since, or was written for another vocabulary than ``vocab_md5`` (item ids of
    another sessionize.py run would put tags on the wrong tracks)."""
    d = layout.tags(window)
    path = d / "track_tags.parquet"
    if not path.exists():
        return None
    meta = read_json(d / "meta.json") if (d / "meta.json").exists() else {}
    if not outputs_match(d, meta.get("outputs")):
        raise PipelineError(
            f"{d}: its tables are not the ones its meta.json lists (an interrupted or older "
            "fetch_tags.py run); rerun fetch_tags.py (cached answers are not asked again)"
        )
    if vocab_md5 is not None and meta.get("vocab_md5") != vocab_md5:
        raise PipelineError(
            f"{d}: tags fetched for another vocabulary ({meta.get('vocab_md5')}) than the "
            f"current splits ({vocab_md5}); rerun fetch_tags.py --windows {window}"
        )
    tt = read_table(path, "track_tags", "fetch_tags.py")
    n_tags = len(read_table(d / "tags.parquet", "tags", "fetch_tags.py"))
    tt = tt[(tt["item_idx"] >= 1) & (tt["item_idx"] <= n_items)]
    tt = tt.sort_values(["item_idx", "weight"], ascending=[True, False], kind="stable")
    tt["rank"] = tt.groupby("item_idx").cumcount()
    tt = tt[tt["rank"] < k]
    ids = np.zeros((n_items + 1, k), np.int32)
    w = np.zeros((n_items + 1, k), np.float32)
    ids[tt["item_idx"].to_numpy(), tt["rank"].to_numpy()] = tt["tag_idx"].to_numpy()
    w[tt["item_idx"].to_numpy(), tt["rank"].to_numpy()] = tt["weight"].to_numpy()
    return ids, w, n_tags


@dataclass
class Events:
    """All next-item events of a split: right-padded prefixes and targets."""

    prefixes: np.ndarray  # (E, L) int32, items in play order, 0-padded on the right
    lengths: np.ndarray  # (E,) int32, real prefix length (<= L)
    targets: np.ndarray  # (E,) int32
    sessions: np.ndarray  # (E,) int64 session id of each event
    positions: np.ndarray  # (E,) int32 position t of the target in its session
    times: np.ndarray | None = None  # (E,) int64 UTC seconds of the prefix's last play
    # (E,) int32 user (listener) of each event's session: the unit the intervals resample
    users: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def repeat_mask(self) -> np.ndarray:
        """(E,) whether each event's target is already in its prefix (a re-listen)."""
        return (self.prefixes == self.targets[:, None]).any(axis=1)

    def subset(self, idx: np.ndarray) -> Events:
        times = None if self.times is None else self.times[idx]
        users = None if self.users is None else self.users[idx]
        return Events(
            self.prefixes[idx],
            self.lengths[idx],
            self.targets[idx],
            self.sessions[idx],
            self.positions[idx],
            times,
            users,
        )


def make_events(split: pd.DataFrame, prefix_len: int) -> Events:
    """Every (most recent ``prefix_len`` plays, next track) of ``split`` (sorted by
    session, position): for each session and each position t >= 1 whose track is in the
    vocabulary. A play of a track unseen in training (item 0, kept by ``sessionize.py
    --unseen keep``) is never a target but keeps its place in later prefixes."""
    sid = split["session_id"].to_numpy()
    items = split["item_idx"].to_numpy().astype(np.int32)
    new = np.r_[True, sid[1:] != sid[:-1]]
    start = np.maximum.accumulate(np.where(new, np.arange(len(sid)), 0))
    pos = np.arange(len(sid)) - start
    ev = np.flatnonzero((pos >= 1) & (items > 0))
    lengths = np.minimum(pos[ev], prefix_len).astype(np.int32)
    prefixes = np.zeros((len(ev), prefix_len), dtype=np.int32)
    for j in range(prefix_len):  # column j holds the (j+1)-th most ancient kept prefix item
        src = ev - lengths + j
        ok = j < lengths
        prefixes[ok, j] = items[src[ok]]
    times = split["ts_s"].to_numpy()[ev - 1] if "ts_s" in split else None
    users = split["user_idx"].to_numpy()[ev] if "user_idx" in split else None
    return Events(prefixes, lengths, items[ev], sid[ev], pos[ev].astype(np.int32), times, users)


def sample_events(events: Events, n: int, seed: int) -> Events:
    """All ``events``, or ``n`` of them drawn without replacement with ``seed``, in order."""
    if len(events) <= n:
        return events
    rng = np.random.default_rng(seed)
    return events.subset(np.sort(rng.choice(len(events), n, replace=False)))


def last_real_position(mask, ops=np):
    """(B,) index of each row's last True in ``mask`` (B, L): the last real play of a
    prefix, right padding and masked plays inside it (tracks unseen in training, id 0)
    skipped; 0 when there is none. ``ops``: numpy, or ``keras.ops`` inside a network."""
    pos = ops.arange(ops.shape(mask)[1], dtype="int32")[None, :]
    return ops.max(ops.where(mask, pos, 0), axis=1)


def last_known_items(prefixes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(B,) the last known track of each right-padded prefix (B, L): the last non-zero id
    at or before position ``lengths - 1`` (plays of tracks unseen in training, id 0, kept
    by ``sessionize.py --unseen keep``, skipped, as ``last_real_position`` does for the
    networks); 0 when the prefix holds none (all unseen, or empty)."""
    prefixes = np.asarray(prefixes)
    lengths = np.asarray(lengths)
    if prefixes.shape[1] == 0:
        return np.zeros(len(prefixes), prefixes.dtype)
    inside = np.arange(prefixes.shape[1])[None, :] < lengths[:, None]
    mask = inside & (prefixes > 0)
    items = prefixes[np.arange(len(prefixes)), last_real_position(mask)]
    return np.where(mask.any(axis=1), items, 0).astype(prefixes.dtype)


def recent(prefixes: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
    """The most recent ``max_len`` items of right-padded prefixes, right-padded."""
    out = np.zeros((len(prefixes), max_len), np.int32)
    if prefixes.shape[1] <= max_len:
        out[:, : prefixes.shape[1]] = prefixes
        return out
    keep = np.minimum(lengths, max_len)
    for j in range(max_len):
        ok = j < keep
        src = lengths - keep + j
        out[ok, j] = prefixes[np.flatnonzero(ok), src[ok]]
    return out
