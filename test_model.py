"""Stage 5: full-ranking top-N evaluation of the model and strong baselines.

(This is the evaluation stage, not a test file: pytest's testpaths exclude it.)

For a window's splits (``<data>/sessions/<window>/``) it
1. tunes each baseline's few parameters on the validation split (MRR@20),
2. evaluates every baseline and the trained model (``<data>/models/<window>/``,
   when present, or ``--models``) on the test split, on exactly the same
   events, with the ranking contract of ``lastfm.metrics``,
3. writes ``<data>/reports/results.{md,json}`` (method x metric with 95%
   bootstrap intervals, differences to the best baseline), ``results_bar.png``
   and ``results_by_prefix.png``, and the study's one-page ``report.md``.

``--recommend`` shows the top-N tracks for a test session (``--session``) or
for tracks given by name (``--tracks "Artist - Title; Artist - Title"``), next
to what was played next.

The work is in the package: ``lastfm.evaluate`` (tuning, running the methods, paired
differences, seed groups, time slices; ``EvalConfig``), ``lastfm.ensemble`` (the baseline
ensemble), ``lastfm.ranks`` (the ``--save-ranks`` files), ``lastfm.report`` (tables,
plots, ``report.md``, the test log) and ``lastfm.recommend``.
"""

from __future__ import annotations

from pathlib import Path

from lastfm import config as cfgs
from lastfm.common import folder_lock, log, run_main, write_json, write_text
from lastfm.evaluate import EvalConfig, evaluate_slices, provenance, run_evaluation
from lastfm.paths import Layout, make
from lastfm.recommend import recommend
from lastfm.report import log_test_evaluation, plot_results, results_markdown, write_report


def load_trained(model_dir: Path, **kw):
    """``model.load_trained``: Keras is imported only when a model is evaluated."""
    from model import load_trained as load

    return load(model_dir, **kw)


def parse_args(argv=None) -> tuple[Layout, EvalConfig]:
    ap = cfgs.parser("Full-ranking evaluation and recommendations.")
    cfgs.add_data_dir(ap)
    cfgs.add_flags(ap, EvalConfig, "evaluation")
    args = ap.parse_args(argv)
    return Layout.at(args.data_dir), cfgs.from_args(EvalConfig, args)


def main(argv=None) -> None:
    layout, ec = parse_args(argv)
    if ec.recommend:
        print(recommend(layout, ec, load_trained))
        return
    with folder_lock(layout.reports()):  # one evaluation writes the reports at a time
        if ec.slices:
            print(evaluate_slices(layout, ec, argv, load_trained))
            return
        evaluate_window(layout, ec, argv)


def evaluate_window(layout: Layout, ec: EvalConfig, argv) -> None:
    """The window's evaluation and its reports (the caller holds the reports folder)."""
    res = run_evaluation(layout, ec, load_trained)
    reports = make(layout.reports())
    md = results_markdown(res)
    plot_results(res, reports)  # before the tables, so a failure leaves no half-new set
    prov = provenance(argv, ec)
    write_json(
        reports / "results.json",
        {**{k: v for k, v in res.items() if k != "_raw"}, "provenance": prov},
    )
    log_test_evaluation(reports, res, prov)
    write_text(reports / "results.md", md)
    report = write_report(reports)
    print(md)
    log(f"wrote {reports / 'results.md'} and {report}")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
