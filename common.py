"""Shared helpers for the pipeline stages: paths, manifests, column checks, tables.

Every stage writes its outputs under ``data/<stage>/`` next to a ``meta.json``
manifest (counts, parameters, input checksums). The columns each stage hands to
the next are declared once in ``SCHEMAS`` and checked by ``require_columns``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

ROOT = Path(__file__).resolve().parent


def data_root() -> Path:
    """Where generated files go: ``$LASTFM_DATA_DIR`` or ``data/`` beside the scripts."""
    return Path(os.environ.get("LASTFM_DATA_DIR", ROOT / "data"))

# Columns (and their meaning) of the Parquet files handed between stages.
SCHEMAS: dict[str, dict[str, str]] = {
    # preprocess.py -> data/preprocessed/<window>.parquet
    "plays": {
        "user_idx": "int32 index into users (0-based, dataset order)",
        "ts_s": "int64 UTC seconds since 1970-01-01",
        "artist_idx": "int32 artist code (MBID, or name with --keep-missing-mbid)",
        "track_idx": "int32 track code (MBID, or artist+name with --keep-missing-mbid)",
        "artist_name": "dictionary string, for display",
        "track_name": "dictionary string, for display",
        "track_mbid": "dictionary string, the track's MusicBrainz id (null without one)",
    },
    # sessionize.py -> data/sessions/<window>/{train,valid,test}.parquet
    "sessions": {
        "session_id": "int64 session id, increasing with start time",
        "user_idx": "int32 user index",
        "position": "int16 0-based position inside the session",
        "item_idx": "int32 1-based track index into vocab.parquet (0 is padding)",
        "ts_s": "int64 UTC seconds",
    },
    # sessionize.py -> data/sessions/<window>/vocab.parquet
    "vocab": {
        "item_idx": "int32 1-based track index (0 is padding)",
        "track_key": "string: track MBID, or 'artist\\ttrack' without one",
        "artist_name": "string",
        "track_name": "string",
        "train_count": "int64 plays in the training split",
    },
    # fetch_tags.py -> data/tags/<window>/tags.parquet (tag vocabulary)
    "tags": {
        "tag_idx": "int32 1-based tag index (0 is padding)",
        "tag": "string, normalised (lower case, single spaces)",
        "tracks": "int64 tracks of the window carrying the tag",
    },
    # fetch_tags.py -> data/tags/<window>/track_tags.parquet (top K per track)
    "track_tags": {
        "item_idx": "int32 track index of the window's vocabulary",
        "tag_idx": "int32 tag index into tags.parquet",
        "weight": "float32 Last.fm tag weight (0-100)",
    },
}


class PipelineError(RuntimeError):
    """An error a user can act on; ``main()`` prints it without a traceback."""


def stage_dir(stage: str, *parts: str) -> Path:
    path = data_root().joinpath(stage, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_columns(columns: Iterable[str], schema: str, source: str | Path) -> None:
    """Raise PipelineError naming ``source`` when a column of ``schema`` is missing."""
    missing = [c for c in SCHEMAS[schema] if c not in set(columns)]
    if missing:
        raise PipelineError(
            f"{source}: missing column(s) {missing} of the '{schema}' table; "
            f"it was written by an older or different stage, rerun that stage")


def read_table(path: Path, schema: str, hint: str):
    """Read a Parquet file written by a previous stage and check its columns."""
    import pandas as pd

    if not Path(path).exists():
        raise PipelineError(f"{path} not found: run {hint} first")
    frame = pd.read_parquet(path)
    require_columns(frame.columns, schema, path)
    return frame


def file_md5(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprint(path: Path) -> dict[str, Any]:
    """Cheap identity of an input file: size and modification time (no read)."""
    st = Path(path).stat()
    return {"path": str(path), "bytes": st.st_size, "mtime": int(st.st_mtime)}


def write_json(path: Path, obj: Any) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}" if abs(v) < 1 else f"{v:,.2f}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_main(fn, argv: Sequence[str] | None = None) -> int:
    """Run a stage's main, turning PipelineError into a one-line message + exit 2."""
    try:
        fn(argv)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def params_match(meta_path: Path, params: Mapping[str, Any]) -> bool:
    """True when ``meta_path`` exists and recorded exactly ``params``."""
    if not Path(meta_path).exists():
        return False
    try:
        return read_json(meta_path).get("params") == json.loads(json.dumps(dict(params), default=_json_default))
    except (ValueError, OSError):
        return False
