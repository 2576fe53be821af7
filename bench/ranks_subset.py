"""Drop methods from a ``test_model.py --save-ranks`` file, e.g. rows that a later run redid
(a GPU call's training cut short by its time budget, then rerun), so that the rest merges
with ``--ranks-from`` beside the new file without a name clash.

    python bench/ranks_subset.py IN.npz OUT.npz --drop "NAME" [--drop "NAME" ...]

A dropped network's record goes too; a name not in the file is an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lastfm.common import PipelineError, log, run_main  # noqa: E402
from lastfm.ranks import read_ranks_file, write_ranks_file  # noqa: E402


def subset(src: Path, dst: Path, drop: list[str]) -> list[str]:
    """Write ``dst``: ``src`` without the methods ``drop``; returns the methods kept."""
    meta, methods = read_ranks_file(src)
    names = meta["methods"]
    unknown = sorted(set(drop) - set(names))
    if unknown:
        raise PipelineError(f"{src}: no method {unknown}; it has {names}")
    keep = [i for i, n in enumerate(names) if n not in drop]
    kept = [names[i] for i in keep]
    new_meta = {
        **meta,
        "methods": kept,
        "params": {n: meta["params"][n] for n in kept},
        "seconds": {n: meta["seconds"][n] for n in kept},
        "model_records": {
            d: v for d, v in meta.get("model_records", {}).items() if not set(v[1]) & set(drop)
        },
    }
    write_ranks_file(dst, new_meta, [methods[i] for i in keep])
    return kept


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--drop", action="append", required=True, help="a method's name")
    args = ap.parse_args(argv)
    keep = subset(args.src, args.dst, args.drop)
    log(f"wrote {args.dst}: {len(keep)} methods ({', '.join(keep)})")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
