"""Benchmark: parse + clean + windows + statistics vs. the study's pandas way; sessionizing.

Generates synthetic data of the requested size once (cached under
data/bench/), then runs each measured step in a fresh subprocess, several
times, and prints medians of wall time and peak RSS.

    python bench/bench_data.py --plays 19150000 --repeats 3
    python bench/bench_data.py --plays 19150000 --against ../other-checkout --only-against

``--against DIR`` also times the rerun of another checkout's preprocess (say, the
previous commit's, from ``git worktree add DIR COMMIT``) interleaved with this one's on
the same input: a before/after measured side by side.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STUDY_WAY = r"""
import sys, pandas as pd
# on_bad_lines="skip": pandas defaults stop at a line with a stray tab (7 fields)
# that no open quote swallowed; the study's run got past them.
df = pd.read_csv(sys.argv[1], sep="\t", header=None, on_bad_lines="skip",
                 names=["user","ts","artist_id","artist_name","track_id","track_name"])
d = df.describe()
clean = df.dropna()
d = clean.describe()
clean["ts"] = pd.to_datetime(clean["ts"])
end = clean["ts"].max()
for m in (1, 2, 3, 6):
    d = clean[clean["ts"] > end - pd.DateOffset(months=m)].describe()
print(len(df), len(clean))
"""

OURS = r"""
import sys, os, pathlib
sys.path.insert(0, sys.argv[2])
os.environ["LASTFM_DATA_DIR"] = sys.argv[3]
if "--cold-md5" in sys.argv:  # forget the input's MD5: this run computes it
    sys.argv.remove("--cold-md5")
    pathlib.Path(sys.argv[3], "preprocessed", "input_md5.json").unlink(missing_ok=True)
import preprocess
preprocess.main(["--input", sys.argv[1], "--force"] + sys.argv[4:])
"""

# A floor, not a parse: the file's six columns read as strings by pyarrow's multithreaded
# CSV reader (no quotes, lines with a stray tab skipped), nothing checked, cleaned or counted.
# Any exact parse reads the file at least once, so study / floor bounds the ratio it can reach.
READ_FLOOR = r"""
import sys, pyarrow as pa, pyarrow.csv as pc
cols = ["user", "ts", "artist_id", "artist_name", "track_id", "track_name"]
t = pc.read_csv(sys.argv[1], read_options=pc.ReadOptions(column_names=cols),
                parse_options=pc.ParseOptions(delimiter="\t", quote_char=False,
                                              invalid_row_handler=lambda row: "skip"),
                convert_options=pc.ConvertOptions(column_types={c: pa.string() for c in cols}))
print(t.num_rows)
"""

SESSIONIZE = r"""
import sys, os, time
sys.path.insert(0, sys.argv[2])
import pandas as pd
from sessionize import SessionConfig, build_sessions
df = pd.read_parquet(sys.argv[1], columns=["user_idx", "ts_s", "track_idx"])
t = time.perf_counter()
out, counts = build_sessions(df, SessionConfig())
print("SESSIONIZE_S", time.perf_counter() - t, len(df), counts["kept_sessions"])
"""


def run(code: str, *args: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in GB and stdout of ``python -c code args``."""
    wrapper = (
        "import resource, runpy, sys; code = sys.argv.pop(1); exec(compile(code, 'bench', "
        "'exec')); print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, code, *args], capture_output=True, text=True
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    rss_kb = int(proc.stdout.split("PEAK_KB")[1].split()[0])
    return wall, rss_kb / 1e6, proc.stdout


def against(tsv: Path, work: Path, other: Path, repeats: int, results: dict) -> None:
    """Reruns of ``other``'s preprocess and this checkout's, interleaved (each tree's
    MD5 cache warmed first), their medians printed and put in ``results``."""
    trees = {"this checkout": (ROOT, work), f"against {other}": (other, work.with_name("against"))}
    for root, out in trees.values():
        run(OURS, str(tsv), str(root), str(out))
    runs = {name: [] for name in trees}
    for _ in range(repeats):
        for name, (root, out) in trees.items():
            runs[name].append(run(OURS, str(tsv), str(root), str(out)))
    for name, rs in runs.items():
        results[f"rerun, {name}"] = {
            "wall_s": statistics.median(r[0] for r in rs),
            "peak_rss_gb": statistics.median(r[1] for r in rs),
            "runs_s": [round(r[0], 1) for r in rs],
        }
        r = results[f"rerun, {name}"]
        print(f"rerun, {name}: median {r['wall_s']:.1f} s, runs {r['runs_s']}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plays", type=int, default=4_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-study", action="store_true")
    ap.add_argument("--against", type=Path, help="another checkout: its rerun, interleaved")
    ap.add_argument("--only-against", action="store_true", help="with --against: nothing else")
    args = ap.parse_args()
    import synth

    base = ROOT / "data" / "bench" / f"synth_{args.plays}"
    tsv = base / "lastfm-dataset-1K" / synth.TSV_NAME
    if not tsv.exists():
        t = time.perf_counter()
        synth.generate(base, synth.SynthConfig(plays=args.plays))
        print(f"generated {args.plays:,} plays in {time.perf_counter() - t:.0f}s")
    size_gb = tsv.stat().st_size / 1e9
    work = base / "out"
    results = {}
    if args.against:
        against(tsv, work, args.against.resolve(), args.repeats, results)
        if args.only_against:
            return
    steps = [
        (
            "ours, first run (computes the MD5)",
            OURS,
            (str(tsv), str(ROOT), str(work), "--cold-md5"),
        ),
        ("ours, rerun (MD5 of the unchanged input reused)", OURS, (str(tsv), str(ROOT), str(work))),
    ]
    steps.append(("floor: pyarrow reads the six columns, no more", READ_FLOOR, (str(tsv),)))
    if not args.skip_study:
        steps.append(("study: read_csv+describe+dropna+windows", STUDY_WAY, (str(tsv),)))
    for name, code, argv in steps:
        runs = [run(code, *argv) for _ in range(args.repeats)]
        results[name] = {
            "wall_s": statistics.median(r[0] for r in runs),
            "peak_rss_gb": statistics.median(r[1] for r in runs),
            "runs_s": [round(r[0], 1) for r in runs],
        }
    run(OURS, str(tsv), str(ROOT), str(work), "--write-all")  # the full table, untimed
    all_parquet = work / "preprocessed" / "all.parquet"
    runs = [run(SESSIONIZE, str(all_parquet), str(ROOT)) for _ in range(args.repeats)]
    sess_s = [float(r[2].split("SESSIONIZE_S")[1].split()[0]) for r in runs]
    n_rows = int(runs[0][2].split("SESSIONIZE_S")[1].split()[1])
    results["sessionize (build_sessions on all.parquet)"] = {
        "wall_s": statistics.median(sess_s),
        "peak_rss_gb": statistics.median(r[1] for r in runs),
        "rows": n_rows,
    }
    print(
        f"\ninput: {args.plays:,} plays requested, {size_gb:.2f} GB TSV; "
        f"medians of {args.repeats} runs\n"
    )
    print(f"{'step':48s} {'wall s':>8s} {'peak GB':>8s}")
    for name, r in results.items():
        print(f"{name:48s} {r['wall_s']:8.1f} {r['peak_rss_gb']:8.2f}")
    study = results.get("study: read_csv+describe+dropna+windows")
    if study:  # how many times faster than the study's way, each step's median
        for name, r in results.items():
            if not name.startswith(("study", "sessionize")):
                r["study_over_this"] = round(study["wall_s"] / r["wall_s"], 2)
                print(f"the study's way / {name}: {r['study_over_this']:.2f}x")
    (ROOT / "data" / "bench").mkdir(parents=True, exist_ok=True)
    (ROOT / "data" / "bench" / f"bench_data_{args.plays}.json").write_text(
        json.dumps(results, indent=2)
    )


if __name__ == "__main__":
    main()
