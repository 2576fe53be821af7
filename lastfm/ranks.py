"""The ``test_model.py --save-ranks`` file: every method's per-event ranks and top-20,
to merge with ``--ranks-from`` an evaluation run elsewhere (e.g. on a GPU machine).

A file is an ``.npz`` with ``meta`` (JSON: the events' fingerprint ``events_md5``, the
``methods`` in order, their ``params`` and ``seconds``, the networks' ``model_records``)
and, for each method i, the int32 arrays ``<part>_i`` of ``RANK_PARTS``. It is read and
written only here (``bench/ranks_subset.py`` calls ``read_ranks_file`` /
``write_ranks_file``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from lastfm import common
from lastfm.common import PipelineError
from lastfm.data import Events
from lastfm.metrics import EvalResult

# Each method i of a --save-ranks file: arrays <part>_i (int32, one row per event).
RANK_PARTS = ("higher", "ties", "topk")
# What of a trained model's record a --save-ranks file keeps (for its seed group).
RECORD_KEYS = ("model", "train", "best_epoch", "stopped", "history")


def events_md5(events: Events, vocab_md5: str, exclude_seen: bool, prefix_len: int) -> str:
    """Fingerprint of an evaluation: the events, the vocabulary and the protocol.
    ``events``: an ``Events``, or a scanned ``stream.EventStream`` (the same bytes: its
    prefixes read chunk by chunk)."""
    h = hashlib.md5(f"{vocab_md5}|{exclude_seen}|{prefix_len}".encode())
    for a in (events.sessions, events.positions, events.targets):
        h.update(np.ascontiguousarray(a).tobytes())
    for chunk in [events] if isinstance(events, Events) else events:
        h.update(np.ascontiguousarray(chunk.prefixes).tobytes())
    return h.hexdigest()


def write_ranks_file(path: Path, meta: dict, methods: list[dict]) -> None:
    """A ``--save-ranks`` file, written atomically: ``meta`` (JSON; its ``methods`` names
    ``methods`` in order) and each method's ``RANK_PARTS`` arrays."""

    def write(tmp: Path) -> None:
        arrays = {
            f"{part}_{i}": np.asarray(m[part]).astype(np.int32)
            for i, m in enumerate(methods)
            for part in RANK_PARTS
        }
        with open(tmp, "wb") as fh:  # a file object: np.savez adds no ".npz" to the name
            np.savez_compressed(fh, meta=np.array(json.dumps(meta)), **arrays)

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    common.write_atomic(Path(path), write)


def read_ranks_file(path: Path) -> tuple[dict, list[dict]]:
    """The meta and per-method arrays (``RANK_PARTS``) of a ``--save-ranks`` file; a
    one-line error for a missing file, another file, or one written before tie counts."""
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"--ranks-from {path}: file not found")
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files}
        missing = [k for k in ("methods", "events_md5", "params", "seconds") if k not in meta]
        if missing:
            raise KeyError(missing[0])
        names = meta["methods"]
    except (OSError, ValueError, KeyError, TypeError) as e:  # not a --save-ranks file
        raise PipelineError(
            f"--ranks-from {path}: not a file written by --save-ranks ({type(e).__name__}: {e})"
        ) from e
    if any(f"higher_{i}" not in arrays for i in range(len(names))):
        raise PipelineError(
            f"--ranks-from {path}: written before the tie counts were "
            "kept; evaluate that method again with --save-ranks"
        )
    return meta, [{part: arrays[f"{part}_{i}"] for part in RANK_PARTS} for i in range(len(names))]


def save_ranks(
    path: Path, raw: dict, results: dict, fingerprint: str, model_records: dict | None = None
) -> None:
    """Per-event ranks and top-20 of every method evaluated, to merge elsewhere; with each
    network's configuration (``model_records``) so that its seeds group where it merges."""
    names = list(raw)
    meta = {
        "events_md5": fingerprint,
        "methods": names,
        "params": {n: results[n]["params"] for n in names},
        # the session-aware rows (their own table) stay marked where they merge
        "session_aware": {
            n: results[n]["session_aware"] for n in names if "session_aware" in results[n]
        },
        "seconds": {n: raw[n].seconds for n in names},
        "model_records": {
            d: [{k: rec.get(k) for k in RECORD_KEYS}, labels]
            for d, (rec, labels) in (model_records or {}).items()
        },
    }
    write_ranks_file(
        path, meta, [{part: getattr(raw[n], part) for part in RANK_PARTS} for n in names]
    )


def load_ranks(
    path: Path, fingerprint: str, events: Events
) -> tuple[dict[str, tuple[EvalResult, dict, dict | None]], dict]:
    """Methods saved by ``--save-ranks`` (each: its result, parameters and session-aware
    marker, or None) and the networks' records (as ``model_records``, keyed by the file and
    folder); refuses ranks of other events or protocol."""
    meta, methods = read_ranks_file(path)
    if meta["events_md5"] != fingerprint:
        raise PipelineError(
            f"--ranks-from {path}: saved for other test events, vocabulary, --prefix-len or "
            "--exclude-seen than this evaluation; evaluate on the same splits and options"
        )
    out = {}
    for n, m in zip(meta["methods"], methods):
        res = EvalResult(
            m["higher"].astype(np.int64),
            m["ties"].astype(np.int64),
            events.sessions,
            events.positions,
            m["topk"].astype(np.int64),
            float(meta["seconds"][n]),
        )
        if len(res.ranks) != len(events):
            raise PipelineError(
                f"--ranks-from {path}: {n} has {len(res.ranks)} events, expected {len(events)}"
            )
        out[n] = (res, meta["params"][n], (meta.get("session_aware") or {}).get(n))
    records = {f"{path}:{d}": tuple(v) for d, v in meta.get("model_records", {}).items()}
    return out, records
