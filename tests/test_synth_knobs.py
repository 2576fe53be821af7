"""Each generator knob moves the statistic it owns, in the right direction.

Small in-memory generations (``synth.simulate``), the same seed on both sides of
each comparison; the statistics are those of the fidelity report
(``lastfm.fidelity.behaviour`` and the population counts).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import synth
from lastfm import fidelity as fid

BASE = synth.SynthConfig(users=16, plays=48_000, months=12, seed=3)


def stats(**changes) -> dict[str, float]:
    cfg = dataclasses.replace(BASE, **changes)
    cat, hist = synth.simulate(cfg)
    user = np.concatenate([np.full(len(t), u, np.int32) for u, (_, t) in enumerate(hist)])
    ts = np.concatenate([h[0] for h in hist])
    track = np.concatenate([h[1] for h in hist])
    artist = cat.track_artist[track]
    per_user = fid.behaviour(user, ts, artist, track)
    med = per_user.median()
    last_month = ts >= ts.max() - 30 * synth.DAY
    return {
        **{b.key: float(med[b.key]) for b in fid.BEHAVIOUR},
        "tracks": len(np.unique(track)),
        "artists": len(np.unique(artist)),
        "no_artist_mbid": float(np.mean(~cat.art_has_mbid[artist])),
        "no_track_mbid": float(np.mean(~cat.tr_has_mbid[track])),
        "last_month": float(last_month.mean()),
        "plays": len(track),
    }


# knob, low value, high value, statistic, direction (+1: grows with the knob)
KNOBS = [
    ("same_artist", 0.5, 0.9, "same_artist", +1),
    ("repeat_track", 0.0, 0.08, "repeat", +1),
    ("session_plays", 6.0, 20.0, "session_mean", +1),
    ("explore", 0.0, 0.3, "relisten", -1),
    ("own_taste", 0.0, 0.8, "tracks", +1),
    ("tracks_per_artist", 4.0, 30.0, "tracks", +1),
    ("artists", 800, 4000, "artists", +1),
    ("play_seconds", 200.0, 400.0, "play_gap_s", +1),
    ("play_seconds", 200.0, 400.0, "window_plays", -1),
    ("peak_hour_sd", 0.5, 4.0, "top4_hours", -1),
    ("short_breaks", 0.1, 0.8, "session_gap_h", -1),
    ("missing_artist_mbid", 0.1, 0.6, "no_artist_mbid", +1),
    ("missing_track_mbid", 0.0, 0.3, "no_track_mbid", +1),
    ("final_growth", 0.0, 0.4, "last_month", +1),
]


@pytest.mark.parametrize("knob,low,high,stat,sign", KNOBS, ids=[f"{k[0]}->{k[3]}" for k in KNOBS])
def test_knob_moves_its_statistic(knob, low, high, stat, sign):
    a, b = stats(**{knob: low})[stat], stats(**{knob: high})[stat]
    assert sign * (b - a) > 0, f"{knob} {low} -> {high}: {stat} {a:.4g} -> {b:.4g}"


def test_total_plays_exact_and_names_collide_with_common_titles(tmp_path):
    """The line count is exact; shared titles lower the distinct track names."""
    counts = {}
    for share in (0.0, 0.5):
        cfg = dataclasses.replace(BASE, common_titles=share, stray_tabs=0, bad_timestamps=0)
        summary = synth.generate(tmp_path / str(share), cfg)
        assert summary["lines"] == cfg.plays
        tsv = tmp_path / str(share) / "lastfm-dataset-1K" / synth.TSV_NAME
        names = {line.split("\t")[5] for line in tsv.read_text(encoding="utf-8").splitlines()}
        counts[share] = len(names)
    assert counts[0.5] < counts[0.0]


def test_bad_knob_is_a_clear_error():
    from lastfm.common import PipelineError

    with pytest.raises(PipelineError, match="--track-zipf"):
        dataclasses.replace(BASE, track_zipf=1.0).check()
    with pytest.raises(PipelineError, match="--same-artist"):
        dataclasses.replace(BASE, same_artist=1.5).check()
