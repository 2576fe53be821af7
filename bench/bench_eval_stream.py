"""Benchmark: the evaluation's baselines fitted past memory (``test_model.py --stream``).

Generated training sessions (Zipf popularity over ``--items`` tracks, sessions of 2-20
plays, each with a time) written as ``--parts`` Parquet part files of whole sessions, as
the Dask engine writes a split. Cases, each in a fresh process per repeat (wall time and
the process's peak RSS; ``sr-dask``: the client process's, the workers' not counted):

- ``sr-memory``: SR (steps 10, the grid's widest) fitted on the whole split in memory;
- ``sr-parts``: the same SR from the part files, one part at a time (``SplitFiles``);
- ``sr-dask``: the same from the part files on a 2-worker ``LocalCluster``;
- ``knn-memory``: V-SKNN's and VSTAN's session index built in memory, then
  ``--events`` test events ranked by each (sample 5000, k 100);
- ``knn-index``: the index built from the part files and saved (its build time and size
  on disk), then the same events ranked from the memory-mapped index;
- ``knn-open``: the same from the index ``knn-index`` left (opened, not built: what a
  later evaluation of the same split costs).

    python bench/bench_eval_stream.py --train-plays 20000000 --items 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from children import median_of_children  # noqa: E402


def sessions(n_plays: int, n_items: int, seed: int, t0: int = 0):
    """Sessions (session_id, item_idx, ts_s) of about ``n_plays`` Zipf-popular plays, one
    session every 10 minutes to 2 hours from ``t0``, a play every 3 minutes."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 21, size=n_plays // 10 + 1)
    lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_plays) + 1]
    items = np.minimum(rng.zipf(1.2, size=int(lengths.sum())), n_items).astype(np.int64)
    items = (items * 2654435761 % n_items + 1).astype(np.int32)  # popular ids spread out
    sid = np.repeat(np.arange(len(lengths)), lengths)
    start = t0 + np.cumsum(rng.integers(600, 7200, len(lengths)))
    pos = np.arange(len(sid)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    ts = start[sid] + 180 * pos
    return pd.DataFrame({"session_id": sid, "item_idx": items, "ts_s": ts})


def write_parts(args) -> list[Path]:
    """The training split as ``--parts`` files (sessions dealt to parts at random)."""
    folder = Path(args.work) / f"train-{args.train_plays}-{args.items}-{args.parts}"
    if folder.exists():
        return sorted(folder.glob("*.parquet"))
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    df = sessions(args.train_plays, args.items, seed=1)
    part = np.random.default_rng(3).integers(0, args.parts, df["session_id"].iloc[-1] + 1)
    part = part[df["session_id"].to_numpy()]
    for k in range(args.parts):
        df[part == k].to_parquet(tmp / f"part-{k:05d}.parquet", index=False)
    tmp.rename(folder)
    return sorted(folder.glob("*.parquet"))


def run_one(case: str, args) -> dict:
    import pandas as pd

    from lastfm import baselines as bl
    from lastfm.data import make_events
    from lastfm.metrics import evaluate, ranker_from_scorer

    files = write_parts(args)
    out: dict = {"case": case, "train_plays": args.train_plays, "items": args.items}
    t0 = time.perf_counter()
    if case.startswith("sr"):
        sr = bl.SequentialRules(steps=10, weighting="div", pruning=20)
        if case == "sr-memory":
            sr.fit(pd.concat([pd.read_parquet(f) for f in files], ignore_index=True), args.items)
        elif case == "sr-parts":
            sr.fit(bl.SplitFiles(files), args.items)
        else:
            from lastfm.dask_stages import cluster

            with cluster(None, workers=2) as client:
                t0 = time.perf_counter()  # the cluster's start is not the fit's
                sr.fit(bl.SplitFiles(files, client=client), args.items)
        out["rules"] = int(sr.table.nnz)
    else:
        index_dir = Path(args.work) / "index"
        if case in ("knn-index", "knn-open"):
            if case == "knn-index":
                shutil.rmtree(index_dir, ignore_errors=True)
            source = bl.SplitFiles(files, index_dir=index_dir)
        else:
            source = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        vs = bl.VSKNN(k=100, sample=5000).fit(source, args.items)
        out["build_s"] = round(time.perf_counter() - t0, 1)
        if case != "knn-memory":
            size = sum(p.stat().st_size for p in index_dir.rglob("*.npy"))
            out["index_gb"] = round(size / 1e9, 2)
        vt = bl.VSTAN(k=100, sample=5000).fit(source, args.items)
        after = int(vs.sessions.last_t[-1])  # the test sessions follow the training ones
        events = make_events(sessions(args.events * 2, args.items, seed=2, t0=after), 20)
        events = events.subset(np.arange(min(args.events, len(events))))
        for m in (vs, vt):
            t1 = time.perf_counter()
            res = evaluate(ranker_from_scorer(m.scorer), events, args.items)
            out[f"{m.name}_events_per_s"] = round(len(events) / (time.perf_counter() - t1))
            out[f"{m.name}_MRR@20"] = round(res.summary["MRR@20"], 5)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["peak_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-plays", type=int, default=20_000_000)
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--work", default="data/bench/eval_stream")
    ap.add_argument("--cases", default="sr-memory,sr-parts,sr-dask,knn-memory,knn-index,knn-open")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one case, once
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)), flush=True)
        return
    write_parts(args)  # once, before the timed children
    median_of_children(__file__, sys.argv[1:], args.cases.split(","), args.repeats)


if __name__ == "__main__":
    main()
