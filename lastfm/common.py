"""Shared helpers of every stage: the error path, logging, JSON manifests, tables.

Every stage writes its outputs next to a ``meta.json`` manifest (counts,
parameters, input checksums); ``params_match`` tells whether a manifest was
written for the same parameters. ``run_main`` is the one error path: a
``PipelineError`` (or an OS error such as a missing file or a full disk)
becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


class PipelineError(RuntimeError):
    """An error a user can act on; ``main()`` prints it without a traceback."""


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


def ensure_writable(folder: Path) -> Path:
    """``folder``, created if needed; PipelineError now (before any long work) when it
    cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise PipelineError(
            f"{folder}: cannot write there ({err.strerror or err}); fix its "
            "permissions or free space, or choose another --data-dir"
        ) from None
    return folder


def _tmp(path: Path) -> Path:
    return Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}")


def write_atomic(path: Path, write) -> None:
    """Call ``write(tmp_path)``, then rename the file into place: an interrupted write
    never leaves a file at ``path`` that looks complete."""
    tmp = _tmp(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_parquet(path: Path, table, compression: str = "snappy") -> None:
    """A pyarrow Table or pandas DataFrame to ``path``, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression=compression))


def write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    write_text(path, text)


def read_json(path: Path) -> Any:
    """The JSON in ``path``; a corrupt file is a PipelineError naming it."""
    try:
        return json.loads(Path(path).read_text())
    except ValueError as err:
        raise PipelineError(
            f"{path}: not valid JSON ({err}); delete it and rerun the stage that wrote it"
        ) from None


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


def git_commit() -> str:
    """The checkout's short commit, ``+changes`` when tracked files differ; ``unknown``
    without git."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            text=True,
            capture_output=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            text=True,
            capture_output=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


def provenance(command: str) -> dict[str, str]:
    """The command, commit (``+changes`` when the tree differs) and UTC date of a
    results file. ``$LASTFM_COMMIT`` names the commit instead, for a copy of the code whose
    git metadata is missing or stale (a lent GPU machine's copy of the working tree)."""
    from datetime import UTC, datetime

    named = os.environ.get("LASTFM_COMMIT", "").strip()
    commit = f"{named} (named by LASTFM_COMMIT)" if named else git_commit()
    return {
        "command": command.strip(),
        "commit": commit,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_main(fn, argv: Sequence[str] | None = None) -> int:
    """Run a stage's main, turning PipelineError into a one-line message + exit 2."""
    try:
        fn(argv)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # missing or unreadable file, read-only folder, full disk
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def outputs_record(folder: Path, names) -> dict[str, dict]:
    """Size and MD5 of each output ``folder/name``, for a manifest written after them."""
    return {
        n: {"bytes": (Path(folder) / n).stat().st_size, "md5": file_md5(Path(folder) / n)}
        for n in names
    }


def outputs_match(folder: Path, record: Mapping[str, Any] | None) -> bool:
    """True when every output a manifest lists exists with its recorded size and MD5."""
    if not record:
        return False
    for name, rec in record.items():
        path = Path(folder) / name
        if (
            not path.exists()
            or path.stat().st_size != rec.get("bytes")
            or file_md5(path) != rec.get("md5")
        ):
            return False
    return True


def stage_current(meta_path: Path, params: Mapping[str, Any]) -> bool:
    """A stage may skip its work: its manifest (written last) exists, was written for
    ``params``, and every output it lists is there, unchanged."""
    if not params_match(meta_path, params):
        return False
    return outputs_match(Path(meta_path).parent, read_json(meta_path).get("outputs"))


def params_match(meta_path: Path, params: Mapping[str, Any]) -> bool:
    """True when ``meta_path`` exists and recorded exactly ``params``."""
    if not Path(meta_path).exists():
        return False
    try:
        return read_json(meta_path).get("params") == json.loads(
            json.dumps(dict(params), default=_json_default)
        )
    except (PipelineError, OSError):
        return False
