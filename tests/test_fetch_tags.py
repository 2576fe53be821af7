"""fetch_tags.py against a local HTTPS server speaking the Last.fm API (real pylast)."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

import fetch_tags as ft
from fake_lastfm import FakeLastFM
from lastfm.common import PipelineError

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def server(tag_env, tmp_path):
    srv = FakeLastFM(tag_env[2], KEY, tmp_path)
    yield srv
    srv.close()


def cli(server, *extra):
    return [
        "--windows",
        "1m",
        "--api-key",
        KEY,
        "--ws-server",
        server.ws_server,
        "--ca-file",
        server.ca_file,
        "--backoff",
        "0.01",
        *extra,
    ]


def test_every_track_cached_once_and_key_never_shown(tag_env, server, capsys, caplog):
    data, vocab, planted, _ = tag_env
    caplog.set_level(logging.DEBUG)
    ft.main(cli(server, "--rate", "0", "--workers", "4", "--min-tag-count", "1"))
    counts = server.per_key()
    assert len(counts) == len(vocab) and set(counts.values()) == {1}
    cache = ft.TagCache(data / "tags" / "cache.sqlite")
    answers = cache.answers([j.key for j in ft.track_jobs(vocab)])
    cache.close()
    assert len(answers) == len(vocab)
    assert {k for k, (s, _) in answers.items() if s == "ok"} == set(planted)
    assert all(s == "not_found" for k, (s, _) in answers.items() if k not in planted)
    tags = pd.read_parquet(data / "tags" / "1m" / "tags.parquet")
    tt = pd.read_parquet(data / "tags" / "1m" / "track_tags.parquet")
    assert tt["item_idx"].nunique() == len(planted)
    assert set(tags["tag"]) == {ft.normalise_tag(t) for v in planted.values() for t, _ in v}
    assert tt.groupby("item_idx").size().max() <= 5
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert "tracks with tags" in out.out
    assert KEY not in text


def test_killed_run_resumes_without_asking_twice(tag_env, server):
    data, vocab, _, _ = tag_env
    cache = ft.TagCache(data / "tags" / "cache.sqlite")
    net = ft.make_network(KEY, server.ws_server, server.ca_file)
    jobs = ft.track_jobs(vocab)
    with pytest.raises(KeyboardInterrupt):
        ft.run_fetch(jobs, cache, net, rate=0, workers=3, stop_after=15, progress=False)
    finished = {k for k in (j.key for j in jobs) if k in cache.answers([k])}
    cache.close()
    assert len(finished) >= 15
    ft.main(cli(server, "--rate", "0", "--workers", "3", "--min-tag-count", "1"))
    counts = server.per_key()
    assert all(counts[k] == 1 for k in finished)
    assert len(counts) == len(vocab)
    assert sum(counts.values()) <= len(vocab) + 3  # at most the requests in flight


def test_rate_limit_is_never_exceeded(tag_env, server):
    data, vocab, _, _ = tag_env
    server.latency_s = 0.02
    cache = ft.TagCache(data / "tags" / "cache.sqlite")
    net = ft.make_network(KEY, server.ws_server, server.ca_file)
    jobs = ft.track_jobs(vocab)[:45]
    ft.run_fetch(jobs, cache, net, rate=15, workers=4, progress=False)
    cache.close()
    assert len(server.requests) == 45
    assert server.max_per_second() <= 15
    span = server.requests[-1][0] - server.requests[0][0]
    assert span >= 2.0  # 15 in each of three 1-second windows at best


def test_transient_failures_are_retried(tag_env, server):
    data, vocab, planted, _ = tag_env
    jobs = [j for j in ft.track_jobs(vocab) if j.key in planted][:6]
    kinds = ["503", "29", "drop", "malformed", "500", "11"]
    for job, kind in zip(jobs, kinds):
        server.failures[job.key] = [kind, kind]
    cache = ft.TagCache(data / "tags" / "cache.sqlite")
    net = ft.make_network(KEY, server.ws_server, server.ca_file)
    counts = ft.run_fetch(jobs, cache, net, rate=0, workers=3, backoff_s=0.01, progress=False)
    answers = cache.answers([j.key for j in jobs])
    cache.close()
    assert counts == {"ok": 6, "not_found": 0, "error": 0}
    assert all(answers[j.key][0] == "ok" and answers[j.key][1] for j in jobs)
    assert all(server.per_key()[j.key] == 3 for j in jobs)


def test_errors_after_retries_are_recorded_and_asked_again(tag_env, server):
    data, vocab, planted, _ = tag_env
    job = [j for j in ft.track_jobs(vocab) if j.key in planted][0]
    server.failures[job.key] = ["503"] * 3
    cache = ft.TagCache(data / "tags" / "cache.sqlite")
    net = ft.make_network(KEY, server.ws_server, server.ca_file)
    ft.run_fetch(
        [job], cache, net, rate=0, workers=1, max_retries=2, backoff_s=0.01, progress=False
    )
    assert cache.answers([job.key])[job.key][0] == "error"
    assert cache.todo([job.key], None) == [job.key]
    ft.run_fetch([job], cache, net, rate=0, workers=1, progress=False)
    assert cache.answers([job.key])[job.key][0] == "ok"
    cache.close()


def test_invalid_key_stops_with_a_clear_message(tag_env, server, capsys):
    with pytest.raises(PipelineError, match="invalid API key.*LASTFM_API_KEY"):
        ft.main(
            [
                "--windows",
                "1m",
                "--api-key",
                "wrong",
                "--ws-server",
                server.ws_server,
                "--ca-file",
                server.ca_file,
                "--rate",
                "0",
                "--workers",
                "2",
            ]
        )
    assert len(server.requests) <= 4


def test_no_key_and_no_file_exits_cleanly(tag_env, capsys):
    data = tag_env[0]
    ft.main(["--windows", "1m"])
    assert "without tags" in capsys.readouterr().out
    assert not (data / "tags").exists()


def test_tags_file_import_and_require_tags(tag_env, tag_synth, capsys):
    data, vocab, planted, _ = tag_env
    ft.main(
        [
            "--windows",
            "1m",
            "--tags-file",
            str(tag_synth / "ground_truth" / "track_tags.tsv"),
            "--require-tags",
            "--min-tag-count",
            "1",
        ]
    )
    import json

    meta = json.loads((data / "tags" / "1m" / "meta.json").read_text())
    assert meta["tracks_with_tags"] == len(planted)
    eff = meta["require_tags_effect"]["train"]
    assert eff["plays"][1] < eff["plays"][0]
    from lastfm.data import load_tag_tables
    from lastfm.paths import Layout

    ids, w, n_tags = load_tag_tables(Layout.at(), "1m", len(vocab), 5)
    assert n_tags == meta["distinct_tags"] and (ids > 0).sum(axis=1).astype(bool).sum() == len(
        planted
    )
    assert "Dropping untagged tracks" in capsys.readouterr().out


def test_tags_file_errors(tag_env, tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("artist\ttrack\ttag\tweight\nA\tB\trock\tlots\n")
    with pytest.raises(PipelineError, match="line 2: weight 'lots'"):
        ft.main(["--windows", "1m", "--tags-file", str(bad)])
    bad.write_text("artist\ttrack\n")
    with pytest.raises(PipelineError, match="missing column"):
        ft.main(["--windows", "1m", "--tags-file", str(bad)])


def test_rate_limiter_with_a_fake_clock():
    now = [0.0]
    starts = []

    def sleep(s):
        now[0] += s

    limiter = ft.RateLimiter(4, margin=0.25, clock=lambda: now[0], sleep=sleep)
    for _ in range(13):
        slot = limiter.acquire()
        starts.append(now[0])
        now[0] += 0.1  # the answer takes 0.1 s
        limiter.done(slot)
    for t in starts:  # never more than 4 starts in any window of 1 s + the answer time
        assert sum(t <= u < t + 1.1 for u in starts) <= 4
    assert starts[4] == pytest.approx(0.1 + 1.25, abs=0.06)  # a window after the 1st answer
    limiter.slow_down(10)
    assert limiter.rate == 2 and limiter.window() == (2, 1.25)
    now[0] += 100
    held = [limiter.acquire(), limiter.acquire()]  # two requests still running
    assert all(s == [float("inf")] for s in held)  # their slots count until they answer
    limiter.stop.set()
    with pytest.raises(ft.Stopped):
        limiter.acquire()
