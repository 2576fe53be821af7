"""The evaluation's figures (``lastfm.report``'s plot functions): families of methods,
prefix-length bins, and PNGs whose legends and labels stay off the data."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lastfm import report
from lastfm.data import Events
from lastfm.evaluate import add_segments
from lastfm.metrics import EvalResult, metric_values
from lastfm.report import (
    PREFIX_BINS,
    method_family,
    plot_bars,
    plot_by_prefix,
    plot_results,
    prefix_bins,
    prefix_plot_methods,
)

FAMILY_OF = {
    "POP": "baselines",
    "S-POP": "baselines",
    "SR": "baselines",
    "AR": "baselines",
    "Item-kNN": "baselines",
    "V-SKNN": "baselines",
    "VSTAN": "baselines",
    "BiGRU-Att+tags": "networks",
    "NARM (narm_seed2)": "networks",
    "GRU4Rec": "networks",
    "BiGRU-Att+tags+transitions": "hybrids",
    "NARM+transitions (narm_seed2)": "hybrids",
    "VSTAN+transitions (baseline ensemble)": "ensembles",
    "baseline blend (LambdaMART)": "ensembles",
}


def test_method_family():
    for name, fam in FAMILY_OF.items():
        assert method_family(name) == fam, name


def test_prefix_bins_cover_every_length_once():
    assert [b[0] for b in PREFIX_BINS] == ["1", "2", "3-4", "5-9", "10-19", "20+"]
    pos = np.arange(1, 80)
    masks = prefix_bins(pos)
    assert list(masks) == ["1", "2", "3-4", "5-9", "10-19", "20+"]
    assert (np.sum(list(masks.values()), axis=0) == 1).all()  # each length in one bin
    assert pos[masks["3-4"]].tolist() == [3, 4]
    assert pos[masks["10-19"]].tolist() == list(range(10, 20))
    assert pos[masks["20+"]].min() == 20 and pos[masks["20+"]].max() == 79


def fake_events(n_sessions: int = 40, seed: int = 0) -> Events:
    """Sessions of 1..30 events, 8 listeners."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 30, n_sessions)
    sessions = np.repeat(np.arange(n_sessions), lens)
    positions = np.concatenate([np.arange(1, k + 1) for k in lens]).astype(np.int32)
    e = len(sessions)
    targets = rng.integers(1, 50, e).astype(np.int32)
    prefixes = rng.integers(1, 50, (e, 5)).astype(np.int32)
    users = (sessions % 8).astype(np.int32)
    return Events(prefixes, np.full(e, 5, np.int32), targets, sessions, positions, None, users)


def fake_raw(events: Events, quality: float, seed: int) -> EvalResult:
    rng = np.random.default_rng(seed)
    higher = rng.geometric(quality, len(events)) - 1
    ties = np.zeros(len(events), np.int64)
    topk = np.zeros((len(events), 20), np.int64)
    return EvalResult(higher, ties, events.sessions, events.positions, topk, 1.0)


@pytest.fixture(scope="module")
def results():
    """A results dict with every family, as ``run_evaluation`` returns it."""
    events = fake_events()
    raw = {n: fake_raw(events, 0.05 + 0.02 * i, i) for i, n in enumerate(FAMILY_OF)}
    methods = {}
    for n, r in raw.items():
        vals = {m: float(v.mean()) for m, v in metric_values(r.ranks).items()}
        methods[n] = {**vals, "ci": {m: [v * 0.9, v * 1.1] for m, v in vals.items()}}
    pop = np.ones(50)
    add_segments(methods, raw, events, pop, {}, seed=0)
    return {
        "window": "1m",
        "intervals": {"unit": "listeners", "listeners": 8},
        "reference_baselines": {"HR@20": "VSTAN", "MRR@20": "SR", "chosen_on": "validation"},
        "methods": methods,
        "_raw": raw,
    }


def test_by_prefix_table_per_bin_with_intervals(results):
    for m in results["methods"].values():
        t = m["by_prefix"]
        assert list(t) == [b[0] for b in PREFIX_BINS]
        assert (
            sum(c["events"] for c in t.values())
            == m["segments"]["new"]["events"] + m["segments"]["repeat"]["events"]
        )
        for c in t.values():
            if c["events"]:
                lo, hi = c["ci"]["MRR@20"]
                assert lo <= c["MRR@20"] <= hi


def test_prefix_plot_draws_references_and_best_of_each_family(results):
    chosen = dict(prefix_plot_methods(results, {n: 1 for n in results["methods"]}))
    assert chosen["VSTAN"] == "reference HR@20" and chosen["SR"] == "reference MRR@20"
    fams = [method_family(n) for n in chosen]
    assert fams.count("networks") == fams.count("hybrids") == fams.count("ensembles") == 1
    best_net = max(
        (n for n in results["methods"] if method_family(n) == "networks"),
        key=lambda n: results["methods"][n]["MRR@20"],
    )
    assert best_net in chosen


@pytest.fixture()
def saved_figures(monkeypatch):
    """Every figure the plot functions save, drawn, for a look at its layout."""
    figs = []
    save = Figure.savefig

    def keep(fig, *a, **kw):
        save(fig, *a, **kw)
        figs.append(fig)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figs


def overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def shown_ticklabels(axis) -> list:
    """The tick labels inside the axis' view (the others are not drawn)."""
    lo, hi = sorted(axis.get_view_interval())
    i = 0 if axis.axis_name == "x" else 1
    return [t for t in axis.get_ticklabels() if lo <= t.get_position()[i] <= hi]


def check_layout(fig) -> None:
    """The legend off every axes' data area; the tick labels never overlapping."""
    FigureCanvasAgg(fig).draw()  # the figure is closed: a canvas of its own
    r = fig.canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert fig.legends and all(ax.get_legend() is None for ax in fig.axes)
    for leg in legends:
        for ax in fig.axes:
            assert not overlaps(leg.get_window_extent(r), ax.get_window_extent(r))
    inside = fig.bbox.padded(1)
    texts = [fig.get_suptitle() and fig._suptitle] + [t for leg in legends for t in leg.get_texts()]
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
        texts += shown_ticklabels(ax.xaxis) + shown_ticklabels(ax.yaxis) + ax.texts
    for t in texts:
        if t and t.get_text():  # every text whole in the figure
            box = t.get_window_extent(r)
            assert inside.x0 <= box.x0 and box.x1 <= inside.x1, t.get_text()
            assert inside.y0 <= box.y0 and box.y1 <= inside.y1, t.get_text()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [t.get_window_extent(r) for t in shown_ticklabels(axis) if t.get_text()]
            for i, a in enumerate(boxes):
                assert not any(overlaps(a, b) for b in boxes[i + 1 :])


def test_bars_sorted_coloured_by_family(results, tmp_path, saved_figures):
    plot_bars(results, tmp_path / "bar.png")
    assert (tmp_path / "bar.png").stat().st_size > 5000
    (fig,) = saved_figures
    check_layout(fig)
    methods = results["methods"]
    for ax, m in zip(fig.axes, ("HR@20", "MRR@20")):
        names = [t.get_text() for t in ax.get_yticklabels()]
        assert sorted(names) == sorted(methods)
        vals = [methods[n][m] for n in names]
        assert vals == sorted(vals)  # the best at the top
        colours = {p.get_facecolor()[:3] for p in ax.patches}
        assert len(colours) == 4  # one per family
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    families = [f for f in report.FAMILIES if f != "session-aware"]  # none in these results
    assert labels[:4] == [report.FAMILIES[f][0] for f in families]


def test_by_prefix_bins_bands_and_legend_outside(results, tmp_path, saved_figures):
    plot_by_prefix(results, tmp_path / "prefix.png")
    assert (tmp_path / "prefix.png").stat().st_size > 5000
    (fig,) = saved_figures
    check_layout(fig)
    chosen = prefix_plot_methods(results, {n: 1 for n in results["methods"]})
    for ax in fig.axes:
        ticks = [t.get_text().split("\n")[0] for t in ax.get_xticklabels()]
        assert ticks == [b[0] for b in PREFIX_BINS]
        assert len(ax.lines) == len(ax.collections) == len(chosen)  # a band per line
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(labels) == len(chosen) == len(set(labels))


def test_by_prefix_from_raw_only(results, tmp_path):
    """A results dict without ``by_prefix`` (written before it): computed from ``_raw``."""
    old = {**results, "methods": {n: dict(m) for n, m in results["methods"].items()}}
    for m in old["methods"].values():
        del m["by_prefix"]
    plot_results(old, tmp_path)
    for png in ("results_bar.png", "results_by_prefix.png"):
        assert (tmp_path / png).stat().st_size > 5000
