"""Benchmark: the data stages on Dask at growing sizes, and Dask against the local engine.

Two measurements, each stage run as a fresh process (with ``--force``, so every task is
redone), its wall time and the peak memory of the stage and all its descendants (the
Dask scheduler, nannies and workers) sampled together every 0.2 s:

1. ``--sizes 25,50,100,200``: a streamed LFM-1b-layout log of that many million plays
   (``synth.py --layout lfm1b --stream``, generated once under ``--work``), then
   ``preprocess.py --dataset lfm1b --engine dask`` and ``sessionize.py --engine dask``
   (windows of 1 and 6 months) on a ``LocalCluster`` of ``--workers`` processes;
   the ratio of wall times per doubling.
2. ``--compare TSV``: the same Last.fm-1K file through ``preprocess.py`` on the local
   engine and on Dask; plays per second of each.

    python bench/bench_scale.py --sizes 25,50,100,200 --repeats 1 --work /tmp/scale
    python bench/bench_scale.py --sizes 25,50,100,200 --tracks 1000000 --work /tmp/scale
    python bench/bench_scale.py --compare data/synthetic/lastfm-dataset-1K --repeats 3

Results go to ``--out`` (JSON) and are printed as Markdown; figures: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def measure(cmd: list[str]) -> dict:
    """Run ``cmd``; its wall time and the peak of the summed RSS of its process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]

    def sample() -> None:
        p = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                procs = [p, *p.children(recursive=True)]
                total = 0
                for q in procs:
                    try:
                        total += q.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], total)
            except psutil.Error:
                pass
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    t.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.decode()[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_gb": round(peak[0] / 2**30, 3)}


def median_runs(cmd: list[str], repeats: int) -> dict:
    runs = [measure(cmd) for _ in range(repeats)]
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "peak_gb": statistics.median(r["peak_gb"] for r in runs),
        "runs": runs,
    }


def scale(args) -> dict:
    out = {}
    for size in [int(s) for s in args.sizes.split(",")]:
        held = f"-t{args.tracks}" if args.tracks else ""
        folder = Path(args.work) / f"lfm1b-{size}m{held}"
        generated = None
        if not (folder / "synth_meta.json").exists():  # the generator's memory is bounded too
            generated = measure(
                [PY, "synth.py", "--out", str(folder), "--layout", "lfm1b", "--stream"]
                + ["--plays", str(size * 1_000_000), "--users", str(max(100, size * 60))]
                + (["--stream-tracks", str(args.tracks)] if args.tracks else [])
            )
            print(f"generated {size}M plays: {generated}", flush=True)
        data = folder / "data"
        engine = ["--engine", "dask", "--workers", str(args.workers), "--data-dir", str(data)]
        pre = [PY, "preprocess.py", "--dataset", "lfm1b", "--input", str(folder / "LFM-1b")]
        pre += ["--months", "1,6", "--force", *engine]
        ses = [PY, "sessionize.py", "--force", *engine]
        row = {"generate": generated, "preprocess": median_runs(pre, args.repeats)}
        row["sessionize"] = median_runs(ses, args.repeats)
        row["wall_s"] = round(row["preprocess"]["wall_s"] + row["sessionize"]["wall_s"], 1)
        row["peak_gb"] = max(row["preprocess"]["peak_gb"], row["sessionize"]["peak_gb"])
        meta = json.loads((data / "preprocessed" / "meta.json").read_text())
        row["plays"] = meta["rows_parsed"]
        out[size] = row
        print(f"{size}M: {row['wall_s']}s, peak {row['peak_gb']} GB", flush=True)
        if args.clean:  # the stages' outputs (the generated input stays)
            shutil.rmtree(data, ignore_errors=True)
    sizes = sorted(out)
    for a, b in zip(sizes, sizes[1:]):
        if b == 2 * a:
            out[b]["ratio_to_half"] = round(out[b]["wall_s"] / out[a]["wall_s"], 2)
    return out


def compare(args) -> dict:
    """Local and Dask runs interleaved (local, dask, local, ...), so that a slow minute of
    this shared machine falls on both engines alike."""
    cmds = {}
    for engine in ("local", "dask"):
        data = Path(args.work) / f"compare-{engine}"
        cmd = [PY, "preprocess.py", "--input", args.compare, "--force", "--data-dir", str(data)]
        if engine == "dask":
            cmd += ["--engine", "dask", "--workers", str(args.workers)]
        cmds[engine] = (cmd, data)
    runs: dict[str, list] = {engine: [] for engine in cmds}
    for _ in range(args.repeats):
        for engine, (cmd, _data) in cmds.items():
            runs[engine].append(measure(cmd))
    res = {}
    for engine, (_cmd, data) in cmds.items():
        rs = runs[engine]
        res[engine] = {
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "peak_gb": statistics.median(r["peak_gb"] for r in rs),
            "runs": rs,
        }
        meta = json.loads((data / "preprocessed" / "meta.json").read_text())
        res[engine]["plays_per_s"] = round(meta["rows_parsed"] / res[engine]["wall_s"])
    res["dask_over_local"] = round(res["dask"]["plays_per_s"] / res["local"]["plays_per_s"], 3)
    return res


def plot_scale(scale: dict, path: Path) -> None:
    """Wall time against plays (log-log) per stage, with the line of linear growth
    through the smallest size: the curve beside the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [scale[k] for k in sorted(scale, key=int)]
    plays = [r["plays"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for key, label in (("preprocess", "preprocess"), ("sessionize", "sessionize"), ("", "both")):
        wall = [r[key]["wall_s"] if key else r["wall_s"] for r in rows]
        ax.plot(plays, wall, marker="o", label=label)
    first = rows[0]["wall_s"]
    ax.plot(plays, [first * p / plays[0] for p in plays], "k:", label="linear from the first")
    ax.set(xscale="log", yscale="log", xlabel="plays", ylabel="wall s (median)")
    ax.set_title("Data stages on Dask, 2 workers", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="", help="millions of plays, e.g. 25,50,100,200")
    ap.add_argument("--compare", default="", help="a Last.fm-1K TSV (or folder): local vs Dask")
    ap.add_argument("--work", default="/tmp/bench_scale")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--tracks",
        type=int,
        default=0,
        help="hold the generated catalogue at this many tracks at every size "
        "(default 0: the generator's plays // 100, capped at 2M)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="")
    ap.add_argument("--clean", action="store_true", help="remove each size's outputs after it")
    ap.add_argument("--plot", default="", help="write the curve of --sizes (or --plot-from) here")
    ap.add_argument("--plot-from", default="", help="an earlier --out JSON to plot")
    args = ap.parse_args()
    if args.plot_from:
        plot_scale(json.loads(Path(args.plot_from).read_text())["scale"], Path(args.plot))
        return
    result = {"workers": args.workers, "repeats": args.repeats}
    if args.sizes:
        result["scale"] = scale(args)
        print("| plays | preprocess s | sessionize s | total s | peak GB | ratio to half |")
        print("|---|---|---|---|---|---|")
        for r in result["scale"].values():
            print(
                f"| {r['plays']:,} | {r['preprocess']['wall_s']} | {r['sessionize']['wall_s']} "
                f"| {r['wall_s']} | {r['peak_gb']} | {r.get('ratio_to_half', '')} |"
            )
        if args.plot:
            plot_scale(result["scale"], Path(args.plot))
    if args.compare:
        result["compare"] = compare(args)
        print(json.dumps(result["compare"], indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
