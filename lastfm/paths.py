"""Where every stage reads and writes: one data root, one layout.

Every stage takes ``--data-dir`` (default ``$LASTFM_DATA_DIR``, else ``data/``
beside the scripts) and finds its inputs and outputs here, so a pipeline run
in another folder stays consistent from the download to the report.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def default_data_root() -> Path:
    """``$LASTFM_DATA_DIR`` or ``data/`` beside the scripts."""
    return Path(os.environ.get("LASTFM_DATA_DIR", ROOT / "data"))


@dataclass(frozen=True)
class Layout:
    """The folders of one data root (created on first use by ``make``)."""

    root: Path

    @classmethod
    def at(cls, root: Path | str | None = None) -> Layout:
        return cls(Path(root) if root else default_data_root())

    def raw(self) -> Path:
        return self.root / "raw"

    def synthetic(self) -> Path:
        return self.root / "synthetic"

    def preprocessed(self) -> Path:
        return self.root / "preprocessed"

    def sessions(self, window: str) -> Path:
        return self.root / "sessions" / window

    def sessions_root(self) -> Path:
        return self.root / "sessions"

    def tags(self, window: str) -> Path:
        return self.root / "tags" / window

    def tag_cache(self) -> Path:
        return self.root / "tags" / "cache.sqlite"

    def models(self, window: str) -> Path:
        return self.root / "models" / window

    def reports(self) -> Path:
        return self.root / "reports"


def slice_name(window: str, k: int) -> str:
    """The name of a window's k-th time slice (sessionize.py --slices)."""
    return f"{window}.slice{k}"


def make(path: Path) -> Path:
    """``path``, created with its parents."""
    path.mkdir(parents=True, exist_ok=True)
    return path
