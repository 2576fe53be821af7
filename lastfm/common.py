"""Shared helpers of every stage: the error path, logging, JSON manifests, tables.

Every stage writes its outputs next to a ``meta.json`` manifest (counts,
parameters, input checksums); ``params_match`` tells whether a manifest was
written for the same parameters. ``run_main`` is the one error path: a
``PipelineError`` (or an OS error such as a missing file or a full disk)
becomes one line on stderr and exit code 2. ``folder_lock`` gives a stage's output
folder one writer at a time and sweeps what dead writers left there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
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


# What a writer leaves while it works, named by its process id: ``write_atomic``'s
# temporary files, ``ensure_writable``'s probe, preprocess.py's extraction folder.
LITTER = re.compile(r"^\.(?:.+\.tmp|write-test|extract)-(\d+)$")
LOCK_NAME = ".lock"


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists on this machine (this one included)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_litter(folder: Path) -> list[str]:
    """Remove from ``folder`` the temporary files and folders of writers that died (a
    killed stage's ``.NAME.tmp-PID``, ``.extract-PID``), never those of a live process;
    return the names removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = LITTER.match(entry.name)
        if not m or pid_alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry.name)
    if removed:
        log(f"{folder}: removed {len(removed)} leftover(s) of killed runs: {sorted(removed)}")
    return removed


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[Path]:
    """Hold ``folder`` (created if needed) for one writer: a second run that asks for it
    while this one holds it gets a PipelineError naming the folder and the holder.

    The lock is an advisory ``flock`` on ``folder/.lock``, released by the kernel when
    the holder ends however it ends, so a killed run never leaves a stale lock. Once
    held, the leftovers of dead writers in the folder are removed (``sweep_litter``).
    Every read of the folder's manifest and every write of its files happens under it,
    so a manifest only ever describes files of the run that wrote it.
    """
    folder = ensure_writable(folder)
    path = folder / LOCK_NAME
    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise PipelineError(
            f"{folder} is being written by another run ({holder}); wait for it to end "
            "or give this run its own folder"
        ) from None
    try:
        fh.seek(0)
        fh.truncate()
        # the script, not its arguments: they may hold an API key
        fh.write(f"pid {os.getpid()}, {Path(sys.argv[0]).name}")
        fh.flush()
        sweep_litter(folder)
        yield folder
    finally:
        fh.close()  # releases the lock


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


def write_parquet(path: Path, table, compression: str = "snappy", statistics=True) -> None:
    """A pyarrow Table or pandas DataFrame to ``path``, atomically; ``statistics``: True,
    or the columns whose min/max go into the file (on a string column with a large
    dictionary they cost more than the column's encoding)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    write_atomic(
        path,
        lambda tmp: pq.write_table(
            table, tmp, compression=compression, write_statistics=statistics
        ),
    )


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


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries a result depends on (those imported)."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    always = ("numpy", "pandas", "pyarrow", "scipy", "keras", "lightgbm")
    for name in (*always, "tensorflow", "jax", "torch"):
        if name not in always and name not in sys.modules:
            continue
        # a module's distribution may go by another name (tensorflow-cpu)
        for dist in (name, f"{name}-cpu"):
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return out


def code_provenance() -> dict[str, Any]:
    """The code behind a result: the commit git detects (``+changes`` when tracked files
    differ), whether the tree was clean, the library versions, and beside them (never
    over them) a commit named by ``$LASTFM_COMMIT``, for a copy whose git metadata is
    missing or stale (a lent GPU machine's copy of the working tree)."""
    commit = git_commit()
    out: dict[str, Any] = {
        "commit": commit,
        "tree_clean": commit != "unknown" and not commit.endswith("+changes"),
        "versions": library_versions(),
    }
    named = os.environ.get("LASTFM_COMMIT", "").strip()
    if named:
        out["named_commit"] = named
    return out


def provenance(command: str) -> dict[str, Any]:
    """The command, the code (``code_provenance``) and the UTC date of a results file."""
    from datetime import UTC, datetime

    return {
        "command": command.strip(),
        **code_provenance(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what a batch scheduler sends before it kills a job), raised in the main
    thread so that a stage stops as on Ctrl-C: ``finally`` blocks run, work is kept."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def run_main(fn, argv: Sequence[str] | None = None) -> int:
    """Run a stage's main: a PipelineError (or an OS error) is one line and exit 2;
    Ctrl-C and SIGTERM stop it like one another (exit 130 and 143), with what the stage
    says it kept."""
    import signal
    import threading

    handled = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if handled else None
    try:
        fn(argv)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # missing or unreadable file, read-only folder, full disk
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        term = isinstance(err, Terminated)
        said = f": {err}" if str(err) else ""
        print(f"{'terminated (SIGTERM)' if term else 'interrupted'}{said}", file=sys.stderr)
        return 143 if term else 130
    finally:
        if handled:
            signal.signal(signal.SIGTERM, previous)
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
