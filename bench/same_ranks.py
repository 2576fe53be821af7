"""Are two evaluations identical, event by event? (the check behind a refactor's
"same results" claim).

    python bench/same_ranks.py A.npz B.npz [A_results.json B_results.json]

A.npz and B.npz are ``test_model.py --save-ranks`` files of two code versions
run on the same data and seed; prints, per method, whether the per-event ranks
and top-20 lists are identical, and (with the results files) which summary
figures differ. Exits 1 when anything differs.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def main(argv: list[str]) -> int:
    a, b = np.load(argv[0]), np.load(argv[1])
    ma, mb = json.loads(str(a["meta"])), json.loads(str(b["meta"]))
    same = ma["events_md5"] == mb["events_md5"]
    print("same events fingerprint:", same)
    for i, name in enumerate(ma["methods"]):
        if name not in mb["methods"]:
            print(f"{name}: only in {argv[0]}")
            same = False
            continue
        j = mb["methods"].index(name)
        key = "higher" if f"higher_{i}" in a else "ranks"
        ranks = np.array_equal(a[f"{key}_{i}"], b[f"{key}_{j}"])
        if key == "higher":
            ranks = ranks and np.array_equal(a[f"ties_{i}"], b[f"ties_{j}"])
        top = np.array_equal(a[f"topk_{i}"], b[f"topk_{j}"])
        same &= ranks and top
        print(
            f"{name:32s} events {len(a[f'{key}_{i}'])} ranks identical {ranks} "
            f"top-20 identical {top}"
        )
    if len(argv) == 4:
        ra, rb = (json.load(open(p)) for p in argv[2:])
        for name, x in ra["methods"].items():
            y = rb["methods"].get(name, {})
            diff = [
                k
                for k in x
                if k != "events_per_s" and not isinstance(x[k], dict) and x[k] != y.get(k)
            ]
            same &= not diff
            print(f"{name}: differing result fields {diff}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
