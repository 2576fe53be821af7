"""What an evaluation writes for a reader: the results and slices tables (Markdown), the
plots, the study's one-page ``report.md`` and the log of every look at the test split.

Every function here renders a results dict (``evaluate.run_evaluation``'s, or a
``results.json`` read back: ``docs/build_results.py`` renders ``docs/RESULTS.md`` with
``results_markdown`` and ``slices_markdown``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lastfm.baselines import GRIDS
from lastfm.common import markdown_table, write_text
from lastfm.ensemble import BLEND, ENSEMBLE, HYBRID_MARK
from lastfm.metrics import CUTOFFS, segment_table

# The metrics every method is reported on (with bootstrap intervals) and logged with.
REPORT_METRICS = [f"{m}@{n}" for n in CUTOFFS for m in ("HR", "MRR", "NDCG")]


def results_markdown(res: dict) -> str:
    """``results.md``: every method's metrics with intervals, the paired differences, the
    parameters, then ``extra_markdown``."""
    rows = []
    for name, r in res["methods"].items():
        if r.get("session_aware"):  # their own table (session_aware_markdown)
            continue
        row = [name]
        for m in ("HR@1", "HR@5", "HR@10", "HR@20", "MRR@20", "NDCG@20"):
            lo, hi = r["ci"][m]
            row.append(f"{r[m]:.4f} [{lo:.4f}, {hi:.4f}]")
        row += [f"{r['coverage@20']:.3f}", f"{r.get('mean_pop@20', float('nan')):,.0f}"]
        rows.append(row)
    head = ["method", "HR@1", "HR@5", "HR@10", "HR@20", "MRR@20", "NDCG@20", "cov@20", "pop@20"]
    params = [[n, json.dumps(r["params"])] for n, r in res["methods"].items() if r.get("params")]
    seen = "included (re-listening counts)" if not res["exclude_seen"] else "excluded"
    tracks = f"{res['n_items']:,}" if res.get("n_items") else "all training"
    return (
        f"## Results: window {res['window']}, test split\n\n"
        f"Full ranking over {tracks} tracks; {res['test_events']:,} events of "
        f"{res['test_sessions']:,} sessions; tracks already in the session {seen}; "
        f"tie policy {res['tie_policy']}; {intervals_text(res)}. Baseline parameters "
        f"chosen on validation MRR@20.\n\n"
        + markdown_table(head, rows)
        + "\n\n"
        + differences_markdown(res)
        + (
            "\n\nParameters:\n\n" + markdown_table(["method", "parameters"], params)
            if params
            else ""
        )
        + extra_markdown(res)
        + "\n"
    )


def intervals_text(res: dict, resamples: bool = True) -> str:
    """What the intervals of a results dict resample (``metrics.interval_unit``'s sentence;
    files written before it: sessions), and how many resamples."""
    iv = res.get("intervals")
    text = iv["text"] if iv else "95% bootstrap intervals over sessions"
    return text + (f"; {res['n_boot']} resamples" if resamples else "")


def fmt_diff(d: list | None) -> str:
    return "{:+.4f} [{:+.4f}, {:+.4f}]".format(*d) if d else "(reference)"


def differences_markdown(res: dict) -> str:
    """The paired differences: each row against the reference baseline of each metric,
    chosen on validation (``reference_baselines``; older files: ``best_baseline``, the
    best on test MRR@20), and each hybrid against the baseline ensemble."""
    methods, refs = res["methods"], res.get("reference_baselines")
    if refs:
        vs = (
            refs["HR@20"]
            if refs["HR@20"] == refs["MRR@20"]
            else "{HR@20} / {MRR@20}".format(**refs)
        )

        def valid(m: str) -> str:
            v = (methods.get(refs[m]) or {}).get("valid") or {}
            return f", {v[m]:.4f}" if m in v else ""

        intro = (
            f"Paired differences to the reference baselines, chosen on validation (not test): "
            f"HR@20 against {refs['HR@20']} (the best validation HR@20{valid('HR@20')}), "
            f"MRR@20 against {refs['MRR@20']} (the best validation MRR@20"
            f"{valid('MRR@20')}); {intervals_text(res)}, the same draws for both methods"
        )
        key = "diff_vs_reference"
    elif res.get("best_baseline"):  # files written before the references were chosen on validation
        vs = res["best_baseline"]
        intro = (
            f"Difference to the best baseline on test MRR@20 ({vs}; a file written before the "
            f"reference was chosen on validation); paired: {intervals_text(res)}"
        )
        key = "diff_vs_best_baseline"
    else:
        return "No baseline to compare with."
    rows = [
        [n, vs, fmt_diff(r[key].get("HR@20")), fmt_diff(r[key].get("MRR@20"))]
        for n, r in methods.items()
        if key in r and not r.get("session_aware")
    ]
    ens = [
        [n, r[key]["baseline"], fmt_diff(r[key]["HR@20"]), fmt_diff(r[key]["MRR@20"])]
        for key in ("diff_vs_ensemble", "diff_vs_blend")  # the baseline comparators
        for n, r in methods.items()
        if key in r and not r.get("session_aware")
    ]
    rows += ens
    return (
        intro
        + (". The hybrids also against the baseline comparators" if ens else "")
        + ":\n\n"
        + markdown_table(["method", "vs", "HR@20 diff [95% CI]", "MRR@20 diff [95% CI]"], rows)
    )


def extra_markdown(res: dict) -> str:
    """Other tie policies, the accounting of unscored events, segments, tuning budgets."""
    parts = [
        session_aware_markdown(res),
        tie_policies_markdown(res["methods"]),
        unscored_markdown(res),
        segments_markdown(res["methods"], intervals_text(res, resamples=False)),
        seeds_markdown(res.get("seed_groups")),
        comparators_markdown(res),
        budgets_markdown(res["methods"]),
    ]
    return "".join("\n\n" + p for p in parts if p)


def session_aware_markdown(res: dict) -> str | None:
    """The session-aware baselines' own table (``test_model.py --session-aware``): each
    form with its chosen parameters, against its session-based base and the references."""
    methods = res["methods"]
    aware = {n: r for n, r in methods.items() if r.get("session_aware")}
    if not aware:
        return None
    rows = []
    for n, r in aware.items():
        base = r["session_aware"]["base"]
        ref = r.get("diff_vs_reference") or {}
        shown = {k: v for k, v in r["params"].items() if k not in ("base", "model", "provenance")}
        if "model" in r["params"]:  # a network +history: what it reads
            shown["history"] = r["params"]["model"].get("history")
        row = [n, json.dumps(shown)]
        for m in ("HR@20", "MRR@20"):
            lo, hi = r["ci"][m]
            row.append(f"{r[m]:.4f} [{lo:.4f}, {hi:.4f}]")
        vs_base = r.get("diff_vs_base") or {}
        row += [
            fmt_diff(vs_base[m]) + f" vs {base}" if m in vs_base else "-"
            for m in ("HR@20", "MRR@20")
        ]
        row += [
            fmt_diff(ref.get(m)) + f" vs {ref['baseline'][m]}" if m in ref else "-"
            for m in ("HR@20", "MRR@20")
        ]
        rows.append(row)
    head = [
        "method",
        "extensions chosen",
        "HR@20",
        "MRR@20",
        "HR@20 vs its base",
        "MRR@20 vs its base",
        "HR@20 vs the reference",
        "MRR@20 vs the reference",
    ]
    return (
        "Session-aware baselines (each listener's earlier sessions, never the current or a "
        "later one: extend, boost, remind as session-rec defines them; "
        "lastfm/session_aware.py), each tuned on validation with its base at the base's "
        f"choice; paired differences, {intervals_text(res, resamples=False)}. The networks "
        "of the main table see the current session only; a network +reminders is that "
        "network's scores with the same reminders, their weight chosen on validation; a "
        "network +history (train.py --history N) was trained and is scored on prefixes that "
        "continue into the listener's earlier sessions:\n\n" + markdown_table(head, rows)
    )


def tie_policies_markdown(methods: dict) -> str | None:
    """HR@20 / MRR@20 under the optimistic and pessimistic tie policies (when every
    method has them)."""
    if not all("optimistic" in m for m in methods.values()):
        return None
    return (
        "Other tie policies (HR@20 / MRR@20): optimistic (1 + #higher) and "
        "pessimistic (1 + #higher + #equal); share of events with a tied target:\n\n"
        + markdown_table(
            ["method", "optimistic", "pessimistic", "tied events"],
            [
                [
                    n,
                    f"{m['optimistic']['HR@20']:.4f} / {m['optimistic']['MRR@20']:.4f}",
                    f"{m['pessimistic']['HR@20']:.4f} / {m['pessimistic']['MRR@20']:.4f}",
                    f"{m.get('tied_events', 0):.3f}",
                ]
                for n, m in methods.items()
            ],
        )
    )


def unscored_markdown(res: dict) -> str | None:
    """What of the test split is not scored, and the figures counting it as misses."""
    methods = res["methods"]
    acct = (res.get("accounting") or {}).get("test")
    if not (acct and acct.get("events_before_filtering")):
        return None
    tot = acct["events_before_filtering"]
    kept = res.get("unseen") == "keep"
    after = acct.get("events_after_unseen", acct["events_spliced"])
    return (
        f"Not scored (test split): {acct['unseen_plays']:,} of {acct['plays']:,} plays "
        f"({acct['unseen_plays'] / max(acct['plays'], 1):.1%}) are tracks unseen in training "
        + (
            "and stay in the prefixes as id 0 (`sessionize.py --unseen keep`)"
            if kept
            else "and were removed"
        )
        + f"; of {tot:,} next-play events, "
        f"{acct['events_unseen_target']:,} ({acct['events_unseen_target'] / tot:.1%}) have an "
        f"unseen target and {acct['events_unscorable']:,} lost their prefix; of the "
        f"{acct['events_scored']:,} scored, {after:,} "
        f"({after / max(acct['events_scored'], 1):.1%}) "
        + (
            "have an unseen play earlier in their session"
            if kept
            else "predict across a removed track"
        )
        + ". Counting every unscored event as a miss:\n\n"
        + markdown_table(
            ["method", "HR@20", "MRR@20"],
            [
                [
                    n,
                    m["with_unscored_as_misses"]["HR@20"],
                    m["with_unscored_as_misses"]["MRR@20"],
                ]
                for n, m in methods.items()
                if "with_unscored_as_misses" in m
            ],
        )
    )


def segments_markdown(methods: dict, intervals: str = "95% intervals") -> str | None:
    """MRR@20 with its interval in each segment of the test events (``intervals``: what
    they resample, ``intervals_text``)."""
    seg_names = next((list(m["segments"]) for m in methods.values() if "segments" in m), [])
    if not seg_names:
        return None
    first = next(m["segments"] for m in methods.values() if "segments" in m)
    head = ["method"] + [f"{s} ({first[s].get('share', 0):.0%})" for s in seg_names]
    rows = []
    for n, m in methods.items():
        row = [n]
        for sname in seg_names:
            g = m["segments"][sname]
            row.append(
                f"{g['MRR@20']:.4f} [{g['ci']['MRR@20'][0]:.4f}, {g['ci']['MRR@20'][1]:.4f}]"
                if g.get("events")
                else ""
            )
        rows.append(row)
    return (
        f"MRR@20 by segment (share of test events; {intervals}): the target "
        "already in the session (repeat) or new to it; its training popularity "
        "(head, torso, tail: the tracks holding the top, middle and last third of "
        "training plays; rare: fewer than 5 plays):\n\n" + markdown_table(head, rows)
    )


def seeds_markdown(seed_groups: list[dict] | None) -> str | None:
    """The seed groups (``evaluate.group_seeds``): mean +- sd and what holds for every seed."""
    if not seed_groups:
        return None
    rows = []
    for g in seed_groups:
        holds = [
            k.split(" holds")[0]
            .replace("diff_vs_reference", "> reference")
            .replace("diff_vs_best_baseline", "> best baseline on test")
            .replace("diff_vs_ensemble", "> ensemble")
            for k, v in g.items()
            if k.endswith("every seed") and v
        ]
        rows.append(
            [
                ", ".join(g["rows"]),
                len(g["seeds"]),
                f"{g['HR@20']['mean']:.4f} +- {g['HR@20']['sd']:.4f}",
                f"{g['MRR@20']['mean']:.4f} +- {g['MRR@20']['sd']:.4f}",
                "; ".join(holds) or "none",
                ", ".join(
                    f"{e}{' (' + stop + ')' if stop and stop != 'epochs' else ''}"
                    for e, stop in zip(g.get("epochs") or [], g.get("stopped") or [])
                ),
            ]
        )
    return (
        "Seeds (the same configuration trained with different seeds; mean +- sd; "
        "a claim holds only where the paired difference's interval is above 0 for "
        "every seed):\n\n"
        + markdown_table(
            ["rows", "seeds", "HR@20", "MRR@20", "holds for every seed", "epochs (stop)"],
            rows,
        )
    )


def comparators_markdown(res: dict) -> str | None:
    """The baseline comparators (``lastfm.ensemble``): which base the ensemble chose and
    every candidate's validation figures, what the blend is, and the share of each
    hybrid's gain over the reference baseline that survives them (``hybrid_gains``)."""
    methods = res["methods"]
    parts = []
    ens = next((n for n in methods if n.endswith(ENSEMBLE)), None)

    def fitted(name) -> str:
        t = (res.get("comparator_seconds") or {}).get(name)
        return f" (fitted in {t['fit']} s, test split in {t['test']} s)" if t else ""

    rec = (methods.get(ens) or {}).get("params") or {}
    if rec.get("candidates"):
        own = rec.get("base_by_own_validation", "")
        parts.append(
            f"Baseline ensemble (a baseline + the hybrid's transition terms, weights on "
            f"validation): every baseline was a candidate base, {rec['base']} won on the "
            f"ensemble's validation MRR@20 ({rec['valid_MRR@20']:.4f})"
            + (
                f"; by the bases' own validation MRR@20 {own} would have been chosen"
                if own and own != rec["base"]
                else ""
            )
            + f"{fitted(ens)}:\n\n"
            + markdown_table(
                ["base", "base alone (valid MRR@20)", "ensemble valid MRR@20", "HR@20", "weights"],
                [
                    [
                        c["base"],
                        f"{c['base_valid_MRR@20']:.4f}",
                        f"{c['valid_MRR@20']:.4f}",
                        f"{c['valid_HR@20']:.4f}",
                        f"{c['weight']} / {c['pop_weight']}",
                    ]
                    for c in rec["candidates"]
                ],
            )
        )
    blend = (methods.get(BLEND) or {}).get("params") or {}
    if blend:
        top = ", ".join(f"{n} {v:.2f}" for n, v in list(blend["importance_gain"].items())[:5])
        parts.append(
            f"{BLEND}: LightGBM lambdarank over the union of each baseline's top "
            f"{blend['candidates_per_baseline']} tracks (on average "
            f"{blend['mean_candidates']:.0f} candidates, holding "
            f"{blend['candidate_recall']:.1%} of validation targets; every other track ties "
            f"at the bottom), features: each baseline's score, score / best and rank, the "
            f"track's plays, its plays and recency in the session, the transition count "
            f"from the last track, the prefix length; fitted on one half of the validation "
            f"events by session ({blend['fit_events']:,}), {blend['trees']} trees "
            f"early-stopped on the other "
            f"{blend['select_events']:,} (MRR@20 {blend['select_MRR@20']:.4f}){fitted(BLEND)}. "
            f"Largest shares of the split gain: {top}."
        )
    rows = []
    for g in res.get("hybrid_gains") or []:
        m = g.get("MRR@20")
        if not m:
            continue
        row = [g["hybrid"], m["reference"], f"{m['gain_vs_reference']:+.4f}"]
        for c in m["comparators"].values():
            share = c["share_surviving"]
            row.append(f"{c['gain']:+.4f}" + (f" ({share:.0%})" if share is not None else ""))
        rows.append(row)
    if rows:
        comps = list(res["hybrid_gains"][0]["MRR@20"]["comparators"])
        parts.append(
            "What survives of each hybrid's MRR@20 gain over the reference baseline (chosen "
            "on validation) against the baseline comparators: hybrid - comparator, and in "
            "brackets its share of hybrid - reference:\n\n"
            + markdown_table(
                ["hybrid", "reference", "gain vs reference"] + [f"gain vs {c}" for c in comps],
                rows,
            )
        )
    return "\n\n".join(parts) or None


def budgets_markdown(methods: dict) -> str | None:
    """How many configurations each tuned method tried on validation, and the validation
    HR@20 / MRR@20 of the one chosen (what the reference baselines are chosen by)."""
    tuned = {n: m for n, m in methods.items() if m.get("tuning") or m.get("valid")}
    if not tuned:
        return None
    head, budgets = ["method", "configurations"], []
    with_valid = any(m.get("valid") for m in tuned.values())
    if with_valid:
        head += ["valid HR@20", "valid MRR@20"]
    for n, m in tuned.items():
        row = [n, len(m["tuning"]) if m.get("tuning") else "(merged)"]
        v = m.get("valid") or {}
        if with_valid:
            row += [f"{v['HR@20']:.4f}" if v else "", f"{v['MRR@20']:.4f}" if v else ""]
        budgets.append(row)
    return (
        "Validation budget (configurations tried)"
        + (" and the chosen configuration's validation scores" if with_valid else "")
        + ":\n\n"
        + markdown_table(head, budgets)
    )


def slices_markdown(res: dict) -> str:
    """The table of a ``results_slices.json``: MRR@20 per slice, mean +- sd over slices."""
    per, summary = res["per_slice"], res["summary"]
    rows = [
        [m]
        + [f"{per[s][m]['MRR@20']:.4f}" if m in per[s] else "" for s in per]
        + [
            f"{summary[m]['MRR@20']['mean']:.4f} +- {summary[m]['MRR@20']['sd']:.4f}",
            f"{summary[m]['HR@20']['mean']:.4f} +- {summary[m]['HR@20']['sd']:.4f}",
        ]
        for m in summary
    ]
    return (
        f"## Results over {len(per)} time slices of window {res['window']}\n\n"
        "Each slice has its own train / validation / test split by time and its own "
        "tuning; MRR@20 per slice, then the mean +- sd over slices:\n\n"
        + markdown_table(["method"] + list(per) + ["MRR@20", "HR@20"], rows)
        + "\n"
    )


def log_test_evaluation(reports: Path, res: dict, prov: dict) -> None:
    """Append one line per method to ``test_log.jsonl``: how often the test split was
    looked at, by what, when."""
    lines = []
    for name, m in res["methods"].items():
        lines.append(
            json.dumps(
                {
                    "time": prov["date"],
                    "commit": prov["commit"],
                    "command": prov["command"],
                    "window": res["window"],
                    "method": name,
                    "params": m.get("params"),
                    **{k: m[k] for k in REPORT_METRICS if k in m},
                },
                default=str,
            )
        )
    with open(reports / "test_log.jsonl", "a") as fh:
        fh.write("\n".join(lines) + "\n")


# The figures' families of methods (``method_family``), in legend order: label, colour
# (Okabe-Ito, readable by colour-blind readers and in grey).
FAMILIES = {
    "baselines": ("baselines", "#0072B2"),
    "networks": ("networks", "#E69F00"),
    "hybrids": ("hybrids (network +transitions)", "#CC79A7"),
    "ensembles": ("ensembles / blends of baselines", "#009E73"),
    "session-aware": ("session-aware (the listener's earlier sessions)", "#56B4E9"),
}
BASELINE_NAMES = frozenset(g.cls.name for g in GRIDS)

# The prefix-length bins of ``results_by_prefix.png`` and ``results.json``'s ``by_prefix``:
# (label, first, last) prefix length (tracks before the target; None: no upper end).
PREFIX_BINS = (
    ("1", 1, 1),
    ("2", 2, 2),
    ("3-4", 3, 4),
    ("5-9", 5, 9),
    ("10-19", 10, 19),
    ("20+", 20, None),
)


def method_family(name: str) -> str:
    """The family of a results row, one of ``FAMILIES``: "ensembles" (a row named with
    "ensemble" or "blend": the baseline comparators), "session-aware" (SR_BR, V-SKNN_EBR,
    VSTAN_EBR, a network +reminders), "baselines" (POP, S-POP, SR, AR,
    Item-kNN, V-SKNN, VSTAN), "hybrids" (a trained network +transitions) or "networks"
    (every other row: a trained network alone)."""
    low = name.lower()
    if "ensemble" in low or "blend" in low:
        return "ensembles"
    if name.split(" (")[0].endswith(("_BR", "_EBR", "+reminders")) or "+history" in name:
        return "session-aware"
    if name.split(" (")[0] in BASELINE_NAMES:
        return "baselines"
    return "hybrids" if HYBRID_MARK in name else "networks"


def prefix_bins(positions: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks (E,) of the events in each of ``PREFIX_BINS`` (``positions``: each
    event's prefix length, ``Events.positions``)."""
    p = np.asarray(positions)
    return {
        label: (p >= lo) & (p <= (hi if hi is not None else np.iinfo(np.int64).max))
        for label, lo, hi in PREFIX_BINS
    }


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _interval_caption(res: dict) -> str:
    """What the figures' intervals resample, in a few words."""
    unit = (res.get("intervals") or {}).get("unit", "sessions")
    if unit == "listeners":
        n = res["intervals"]["listeners"]
        return f"bootstrap over the {n} listeners, each with all its sessions"
    if unit == "sessions of one listener":
        return "bootstrap over the sessions of one listener"
    return "bootstrap over sessions"


def _family_handles(families) -> list:
    from matplotlib.patches import Patch

    return [Patch(color=FAMILIES[f][1], label=FAMILIES[f][0]) for f in FAMILIES if f in families]


def plot_results(res: dict, out_dir: Path) -> None:
    """``results_bar.png`` (``plot_bars``) and ``results_by_prefix.png``
    (``plot_by_prefix``) in ``out_dir``."""
    plot_bars(res, out_dir / "results_bar.png")
    plot_by_prefix(res, out_dir / "results_by_prefix.png")


def plot_bars(res: dict, path: Path) -> None:
    """HR@20 and MRR@20 of every method as horizontal bars, each panel sorted by its
    metric (best on top), coloured by family (``method_family``), with the 95% intervals
    of ``results.json`` (``ci``) as error bars and the reference baseline of each metric
    (chosen on validation) as a dotted line; the legend below the panels."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    methods = res["methods"]
    names = list(methods)
    refs = res.get("reference_baselines") or {}
    n = len(names)
    fig, axes = plt.subplots(1, 2, figsize=(12, 1.9 + 0.3 * n), layout="constrained")
    for ax, m in zip(axes, ("HR@20", "MRR@20")):
        order = sorted(names, key=lambda k: methods[k][m])  # barh draws the first at the bottom
        v = np.array([methods[k][m] for k in order])
        ci = np.array([(methods[k].get("ci") or {}).get(m, (np.nan, np.nan)) for k in order])
        err = np.maximum(0.0, np.nan_to_num([v - ci[:, 0], ci[:, 1] - v]))  # a one-session
        # interval can round below its mean
        ax.barh(
            np.arange(n),
            v,
            xerr=err,
            height=0.7,
            color=[FAMILIES[method_family(k)][1] for k in order],
            error_kw={"ecolor": "#333333", "capsize": 3, "elinewidth": 1},
        )
        right = v + err[1]
        span = max(float(np.nanmax(right)), 1e-9)
        for i, (x, val) in enumerate(zip(right, v)):
            ax.text(
                x + span * 0.015,
                i,
                f"{val:.3f}",
                va="center",
                fontsize=8,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8},
            )
        if refs.get(m) in methods:
            ax.axvline(methods[refs[m]][m], color="#333333", ls=":", lw=1.2)
        ax.set_yticks(np.arange(n), order, fontsize=9)
        ax.set_ylim(-0.6, n - 0.4)
        ax.set_xlim(0, span * 1.16)
        ref = f" (dotted line: {refs[m]}, the reference)" if refs.get(m) in methods else ""
        ax.set_xlabel(m + ref)
        ax.set_title(f"{m}, best on top")
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
    handles = _family_handles({method_family(k) for k in names})
    if any(refs.get(m) in methods for m in REFERENCE):
        handles.append(
            Line2D(
                [], [], color="#333333", ls=":", label="reference baseline (chosen on validation)"
            )
        )
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle(
        f"Window {res.get('window', '')}, test split: error bars are 95% intervals "
        f"({_interval_caption(res)})",
        fontsize=10,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


# The metrics whose reference baselines the figures mark (``evaluate.REFERENCE_METRICS``).
REFERENCE = ("HR@20", "MRR@20")


def prefix_tables(res: dict) -> tuple[dict[str, dict], str]:
    """Each method's table by prefix-length bin (``results.json``'s ``by_prefix``: HR@20 and
    MRR@20 with 95% intervals over listeners, each with all its sessions), and what the intervals
    resample. A results dict without it (written before it was) but with ``_raw``: the
    tables computed here, the intervals over sessions (no listeners there)."""
    methods = res["methods"]
    tables = {n: m["by_prefix"] for n, m in methods.items() if m.get("by_prefix")}
    if tables:
        return tables, _interval_caption(res)
    raw = res.get("_raw") or {}
    return {
        n: segment_table(r, prefix_bins(r.positions)) for n, r in raw.items() if n in methods
    }, "bootstrap over sessions"


def prefix_plot_methods(res: dict, tables: dict) -> list[tuple[str, str]]:
    """The rows ``plot_by_prefix`` draws, with why: the reference baselines (chosen on
    validation; without them the best baseline on test MRR@20), then the best row of each
    other family on test MRR@20."""
    methods = res["methods"]
    refs = res.get("reference_baselines") or {}
    out: dict[str, str] = {}
    for m in REFERENCE:
        if refs.get(m) in tables:
            out[refs[m]] = (out[refs[m]] + ", " if refs[m] in out else "reference ") + m
    for fam in FAMILIES:
        if fam == "baselines" and out:
            continue
        rows = [n for n in tables if method_family(n) == fam and n not in out]
        if rows:
            out[max(rows, key=lambda n: methods[n]["MRR@20"])] = "best " + fam[:-1]
    return list(out.items())


def plot_by_prefix(res: dict, path: Path) -> None:
    """HR@20 and MRR@20 by prefix length (``PREFIX_BINS``, categorical ticks, each with
    its test events) of a readable subset of methods (``prefix_plot_methods``), each line
    with its 95% band per bin (``prefix_tables``: the listeners bootstrap of the
    evaluation, ``metrics.segment_table``); the legend below the panels."""
    plt = _pyplot()
    tables, unit = prefix_tables(res)
    chosen = prefix_plot_methods(res, tables)
    labels = [b[0] for b in PREFIX_BINS]
    x = np.arange(len(labels))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), layout="constrained")
    styles = ("-", "--", "-.", ":")
    markers = ("o", "s", "^", "D")
    used: dict[str, int] = {}
    for name, why in chosen:
        fam = method_family(name)
        k = used[fam] = used.get(fam, -1) + 1
        colour = FAMILIES[fam][1]
        t = tables[name]
        for ax, m in zip(axes, ("MRR@20", "HR@20")):
            cells = [t.get(b) or {} for b in labels]
            y = np.array([c.get(m, np.nan) if c.get("events") else np.nan for c in cells])
            lo, hi = (
                np.array([c["ci"][m][j] if c.get("events") else np.nan for c in cells])
                for j in (0, 1)
            )
            ax.fill_between(x, lo, hi, color=colour, alpha=0.12, lw=0)
            ax.plot(
                x,
                y,
                color=colour,
                ls=styles[k % 4],
                marker=markers[k % 4],
                ms=5,
                label=f"{name}: {why}" if ax is axes[0] else None,
            )
    first = tables[chosen[0][0]] if chosen else {}
    ticks = [f"{b}\n{(first.get(b) or {}).get('events', 0):,}" for b in labels]
    for ax, m in zip(axes, ("MRR@20", "HR@20")):
        ax.set_xticks(x, ticks, fontsize=9)
        ax.set_xlim(-0.3, len(labels) - 0.7)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("prefix length (tracks before the target); below: test events")
        ax.set_ylabel(m)
        ax.set_title(f"{m} by prefix length")
        ax.grid(alpha=0.3)
    fig.legend(
        loc="outside lower center", ncol=min(3, max(len(chosen), 1)), frameon=False, fontsize=9
    )
    fig.suptitle(
        f"Window {res.get('window', '')}, test split: the reference baselines (chosen on "
        f"validation) and the best of each other family on test MRR@20\n"
        f"bands: 95% intervals per bin ({unit})",
        fontsize=10,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(reports: Path) -> Path:
    """Gather every stage's tables and plots into ``reports/report.md``."""
    parts = ["# Last.fm-1K session-based next-track recommendation: report\n"]
    for name in (
        "preprocess_stats.md",
        "sessions.md",
        "tags.md",
        "training.md",
        "training_notags.md",
        "results.md",
    ):
        p = reports / name
        if p.exists():
            parts.append(p.read_text())
    for png in (
        "plays_per_user.png",
        "training_curves.png",
        "training_curves_notags.png",
        "results_bar.png",
        "results_by_prefix.png",
    ):
        if (reports / png).exists():
            parts.append(f"![{png}]({png})\n")
    out = reports / "report.md"
    write_text(out, "\n\n".join(parts))
    return out
