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
    ("own_taste", 0.0, 0.8, "tracks", +1),
    ("library_scale", 0.2, 2.0, "relisten", -1),
    ("favourite_zipf", 0.5, 1.3, "top10_tracks", +1),
    ("session_loop", 0.0, 0.8, "session_repeat", +1),
    ("loop_plays", 4.0, 30.0, "session_repeat", -1),
    ("tracks_per_artist", 4.0, 30.0, "tracks", +1),
    ("artists", 800, 4000, "artists", +1),
    ("play_seconds", 200.0, 400.0, "play_gap_s", +1),
    ("play_seconds", 200.0, 400.0, "window_plays", -1),
    ("peak_hour_sd", 0.5, 4.0, "top4_hours", -1),
    ("short_breaks", 0.1, 0.8, "session_gap_h", -1),
    ("missing_artist_mbid", 0.1, 0.6, "no_artist_mbid", +1),
    ("missing_track_mbid", 0.0, 0.3, "no_track_mbid", +1),
    ("final_growth", 0.0, 1.0, "last_month", +1),
]


@pytest.mark.parametrize("knob,low,high,stat,sign", KNOBS, ids=[f"{k[0]}->{k[3]}" for k in KNOBS])
def test_knob_moves_its_statistic(knob, low, high, stat, sign):
    a, b = stats(**{knob: low})[stat], stats(**{knob: high})[stat]
    assert sign * (b - a) > 0, f"{knob} {low} -> {high}: {stat} {a:.4g} -> {b:.4g}"


def test_explore_reaches_artists_outside_the_favourites():
    """Exploring runs add artists where the favourites leave some out (a catalogue
    larger than the tiny base one, whose favourites cover nearly every artist)."""
    few, more = (stats(explore=e, artists=20_000) for e in (0.0, 0.3))
    assert more["artists"] > few["artists"] and more["relisten"] < few["relisten"]


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
    for knob, bad in (
        ("library_scale", 0.0),
        ("library_scale", float("nan")),
        ("library_zipf", -0.5),
        ("taste_months", -1.0),
        ("loop_plays", 1.0),
        ("loop_plays", float("inf")),
    ):
        with pytest.raises(PipelineError, match="--" + knob.replace("_", "-")):
            dataclasses.replace(BASE, **{knob: bad}).check()


def test_no_accidental_back_to_back_repeat():
    """Without deliberate repeats no play repeats the one before in its session, loops
    included (a replacement is checked against the next play too)."""
    from lastfm.data import session_starts

    cfg = dataclasses.replace(BASE, repeat_track=0.0, session_loop=1.0, loop_plays=3.0)
    _, hist = synth.simulate(cfg)
    for ts, tracks in hist:
        new = session_starts(np.zeros(len(ts), np.int64), ts, "gap", 1200)
        assert not ((tracks[1:] == tracks[:-1]) & ~new[1:]).any()


def _periodic_share(cfg) -> float:
    """Share of gap sessions (12+ plays) whose tracks repeat with some period k >= 2."""
    from lastfm.data import session_starts

    _, hist = synth.simulate(cfg)
    hits = total = 0
    for ts, tracks in hist:
        new = session_starts(np.zeros(len(ts), np.int64), ts, "gap", 1200)
        for s in np.split(tracks, np.flatnonzero(new)[1:]):
            if len(s) < 12:
                continue
            total += 1
            hits += any((s[k:] == s[:-k]).all() for k in range(2, len(s) // 2 + 1))
    return hits / total


def test_sessions_on_repeat_replay_their_opening_plays_in_order():
    """session_loop 1: (nearly) every long session is its opening plays over and over
    (gap sessions that merge two of the generator's are the exception); 0: none is."""
    looping = dataclasses.replace(BASE, session_loop=1.0, loop_plays=4.0)
    assert _periodic_share(looping) > 0.8
    assert _periodic_share(dataclasses.replace(BASE, session_loop=0.0)) < 0.05


def test_a_listener_plays_an_artist_within_a_library_that_grows_with_its_plays():
    """Without album order, repeats and loops, a listener's distinct tracks of an artist
    stay within its library (scale * plays ** exp; a back-to-back clash may add one)."""
    cfg = dataclasses.replace(BASE, album_order=0.0, repeat_track=0.0, session_loop=0.0)
    cat, hist = synth.simulate(cfg)
    over = pairs = 0
    for _, tracks in hist:
        art = cat.track_artist[tracks]
        u_art, n = np.unique(art, return_counts=True)
        distinct = np.array([len(np.unique(tracks[art == a])) for a in u_art])
        lib = np.clip(np.rint(cfg.library_scale * n**cfg.library_exp), 1, cat.ntracks[u_art])
        over += int((distinct > lib + 1).sum())
        pairs += len(u_art)
    assert over / pairs < 0.02
    big = dataclasses.replace(cfg, library_scale=5.0)
    assert stats(**dataclasses.asdict(big))["tracks"] > stats(**dataclasses.asdict(cfg))["tracks"]
