"""fetch_tags.py under faults: bad answers, failed refreshes, jitter, stops, shared caches,
broken caches and folders (each test names the failure it covers)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
from test_fetch_tags import KEY, cli

import fetch_tags as ft
from fake_lastfm import FakeLastFM
from lastfm.common import PipelineError


@pytest.fixture
def server(tag_env, tmp_path):
    srv = FakeLastFM(tag_env[2], KEY, tmp_path)
    yield srv
    srv.close()


def tagged_jobs(tag_env, n):
    _, vocab, planted, _ = tag_env
    return [j for j in ft.track_jobs(vocab) if j.key in planted][:n]


def statuses(data, keys):
    cache = ft.TagCache(data / "tags" / "cache.sqlite")
    try:
        return {k: s for k, (s, _) in cache.answers(keys).items()}
    finally:
        cache.close()


def test_bad_answers_are_errors_of_their_track_never_the_end_of_the_run(tag_env, server):
    """1 and 9: malformed answers are retried then recorded; the run goes on; the errors
    are counted in meta.json and make the exit non-zero; a rerun asks for them again."""
    data, vocab, planted, _ = tag_env
    bad = ["html200", "html403", "nonutf8", "empty_error", "malformed"]
    jobs = tagged_jobs(tag_env, len(bad) + 1)
    for job, kind in zip(jobs, bad):
        server.failures[job.key] = [kind] * 10  # more than the retries: stays an error
    server.failures[jobs[-1].key] = ["count_na"]  # a weight of "n/a": parsed as 0
    args = cli(server, "--rate", "0", "--max-retries", "1", "--min-tag-count", "1")
    with pytest.raises(PipelineError, match="5 tracks' answers are errors.*--allow-errors"):
        ft.main(args)
    meta = json.loads((data / "tags" / "1m" / "meta.json").read_text())
    assert meta["answers"]["error"] == 5
    assert meta["answers"]["ok"] + meta["answers"]["not_found"] == len(vocab) - 5
    st = statuses(data, [j.key for j in jobs])
    assert [st[j.key] for j in jobs] == ["error"] * 5 + ["ok"]
    assert all(server.per_key()[j.key] == 2 for j in jobs[:5])  # first try + 1 retry
    ft.main(args + ["--allow-errors"])  # the same bad answers again: accepted, exit 0
    server.failures.clear()  # the server heals: the rerun asks only for the 5 errors
    before = len(server.requests)
    ft.main(args)
    assert len(server.requests) - before == 5
    assert set(statuses(data, [j.key for j in jobs]).values()) == {"ok"}


def test_failed_refresh_never_destroys_good_answers(tag_env, server):
    """2: a refresh under a 503 storm keeps every good answer and the tag tables."""
    data, vocab, planted, _ = tag_env
    args = cli(server, "--rate", "0", "--max-retries", "0", "--min-tag-count", "1")
    ft.main(args)
    tables = pd.read_parquet(data / "tags" / "1m" / "track_tags.parquet")
    server.always = "503"
    ft.main(args + ["--refresh-older-than", "0.0000001"])
    assert len(server.requests) == 2 * len(vocab)  # every answer was asked again
    assert set(statuses(data, list(planted)).values()) == {"ok"}
    assert pd.read_parquet(data / "tags" / "1m" / "track_tags.parquet").equals(tables)


def test_rate_limit_holds_at_a_server_with_jitter_across_phases(tag_env, server):
    """3: one limiter for all phases; at most the limit in any 1-second window at the
    server over 300 requests that arrive after 0-80 ms of transit jitter (the limiter's
    default margin, 0.25 s, also absorbs this machine's scheduling delays under load)."""
    data, vocab, _, _ = tag_env
    server.jitter_s = 0.08
    net = ft.make_network(KEY, server.ws_server, server.ca_file)
    limiter = ft.RateLimiter(40)
    cache = ft.TagCache(data / "tags" / "cache.sqlite")
    try:
        jobs = [ft.Job(f"artist:a{i}", "artist", "", f"a{i}", "") for i in range(300)]
        ft.run_fetch(jobs[:150], cache, net, workers=8, limiter=limiter, progress=False)
        ft.run_fetch(jobs[150:], cache, net, workers=8, limiter=limiter, progress=False)
    finally:
        cache.close()
    assert len(server.requests) == 300
    assert server.max_per_second() <= 40


def interrupt_main_after(seconds: float) -> threading.Timer:
    """SIGINT to the main thread after ``seconds``, as Ctrl-C in a terminal sends it. The
    caller restores the SIGINT handler (``python_sigint``)."""
    timer = threading.Timer(
        seconds, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)
    )
    timer.start()
    return timer


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test. A process started in
    the background by a shell without job control (``cmd &``, as a CI runner may start
    pytest) inherits SIGINT ignored, and Python then installs no handler: Ctrl-C cannot
    reach such a process at all, so the test puts the terminal's situation back."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_backoff_stops_within_a_second(tag_env, server, python_sigint):
    """4: Ctrl-C while workers wait to retry: out within 1 s, nothing sent after it."""
    data, _, _, _ = tag_env
    jobs = tagged_jobs(tag_env, 6)
    server.always = "503"
    net = ft.make_network(KEY, server.ws_server, server.ca_file)
    cache = ft.TagCache(data / "tags" / "cache.sqlite")
    interrupt_main_after(0.8)
    t0 = time.monotonic()
    try:
        counts = ft.run_fetch(jobs, cache, net, rate=0, workers=3, backoff_s=20, progress=False)
    except KeyboardInterrupt:
        pass
    else:
        pytest.fail(
            f"run_fetch returned {counts} after {time.monotonic() - t0:.2f} s for {len(jobs)} "
            f"jobs; SIGINT handler {signal.getsignal(signal.SIGINT)!r}; "
            f"{len(server.requests)} requests"
        )
    stopped = time.monotonic()
    cache.close()
    assert stopped - t0 < 0.8 + 1.0
    sent = len(server.requests)
    time.sleep(1.0)
    assert len(server.requests) == sent  # nothing after the stop


def test_invalid_key_stops_at_once_with_a_worker_in_backoff(tag_env, server):
    """4: error 10 while another worker waits to retry: out within 1 s, nothing more."""
    data, _, _, _ = tag_env
    jobs = tagged_jobs(tag_env, 2)
    server.failures[jobs[0].key] = ["503"] * 5
    server.failures[jobs[1].key] = ["10"]
    net = ft.make_network(KEY, server.ws_server, server.ca_file)
    cache = ft.TagCache(data / "tags" / "cache.sqlite")
    t0 = time.monotonic()
    with pytest.raises(PipelineError, match="invalid API key"):
        ft.run_fetch(jobs, cache, net, rate=0, workers=2, backoff_s=20, progress=False)
    assert time.monotonic() - t0 < 1.0
    sent = len(server.requests)
    time.sleep(1.0)
    cache.close()
    assert len(server.requests) == sent == 2


def test_names_with_tabs_get_distinct_keys_and_old_caches_migrate(tmp_path):
    """5: ("Tab\\tArtist", "Title") and ("Tab", "Artist\\tTitle") are two keys; a schema-1
    cache moves its unambiguous keys and drops the ambiguous ones."""
    a = ft.track_key("", "Tab\tArtist", "Title")
    b = ft.track_key("", "Tab", "Artist\tTitle")
    assert a != b and ft.track_key("m-1", "x", "y") == "track:m-1"
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE answers (key TEXT PRIMARY KEY, kind TEXT, status TEXT, tags TEXT, "
        "error TEXT, fetched_at REAL, attempts INTEGER)"
    )
    rows = [
        ("track:A\tB", '[["rock", 100]]'),
        ("track:Tab\tArtist\tTitle", '[["pop", 1]]'),
        ("track:0a1b", '[["jazz", 5]]'),
    ]
    db.executemany("INSERT INTO answers VALUES (?, 'track', 'ok', ?, NULL, 1.0, 1)", rows)
    db.commit()
    db.close()
    cache = ft.TagCache(path)
    got = cache.answers([ft.track_key("", "A", "B"), a, b, "track:0a1b"])
    cache.close()
    assert got == {
        ft.track_key("", "A", "B"): ("ok", [["rock", 100]]),
        "track:0a1b": ("ok", [["jazz", 5]]),
    }


@pytest.mark.parametrize("damage", ["garbage", "truncated", "schema"])
def test_a_broken_cache_is_one_line(tag_env, server, damage):
    """6: a corrupt, truncated or foreign cache file: one line, exit 2, no request."""
    data, _, _, _ = tag_env
    path = data / "tags" / "cache.sqlite"
    if damage == "garbage":
        path.parent.mkdir(parents=True)
        path.write_bytes(b"this is no database" * 100)
    elif damage == "truncated":
        ft.main(cli(server, "--rate", "0", "--min-tag-count", "1"))
        path.write_bytes(path.read_bytes()[:1500])
        (data / "tags" / "cache.sqlite-wal").unlink(missing_ok=True)
    else:
        path.parent.mkdir(parents=True)
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE answers (key TEXT, value TEXT)")
        db.commit()
        db.close()
    sent = len(server.requests)
    with pytest.raises(PipelineError, match="not a readable tag cache"):
        ft.main(cli(server, "--rate", "0"))
    assert len(server.requests) == sent


def test_read_only_folders_fail_before_any_request(tag_env, server, small_fs):
    """6: a read-only data folder: one line before the first request."""
    data, _, _, _ = tag_env
    ro = small_fs(64, read_only=True)
    with pytest.raises(PipelineError, match="cannot write there"):
        ft.main(cli(server, "--rate", "0", "--cache", str(ro / "cache.sqlite")))
    assert server.requests == []


def test_a_full_disk_is_one_line_and_keeps_what_was_written(tag_env, server, small_fs):
    """6: the cache's disk fills up: one line; a rerun (with space) resumes."""
    data, vocab, _, _ = tag_env
    tiny = small_fs(96)
    args = cli(server, "--rate", "0", "--min-tag-count", "1", "--cache", str(tiny / "cache.sqlite"))
    with pytest.raises(PipelineError, match="full"):
        ft.main(args)
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny)], check=True)
    ft.main(args)
    assert set(server.per_key()) == {j.key for j in ft.track_jobs(vocab)}


def test_a_second_crawl_on_the_same_cache_is_refused(tag_env, server, tmp_path):
    """8: two processes on one cache: the second refuses with a clear message."""
    data, _, _, _ = tag_env
    cache = ft.TagCache(data / "tags" / "cache.sqlite")
    try:
        with pytest.raises(PipelineError, match="in use by another fetch_tags.py"):
            ft.TagCache(data / "tags" / "cache.sqlite")
        code = (
            "import sys; sys.path.insert(0, '.'); import fetch_tags as ft; "
            "from lastfm.common import run_main; "
            f"sys.exit(run_main(lambda a: ft.TagCache(__import__('pathlib').Path("
            f"{str(data / 'tags' / 'cache.sqlite')!r}))))"
        )
        r = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            cwd=ft.__file__.rsplit("/", 1)[0],
        )
        assert r.returncode == 2 and "in use by another" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        cache.close()
    ft.TagCache(data / "tags" / "cache.sqlite").close()  # free again once the first ends


def test_empty_tag_names_are_skipped(tag_env, server):
    """10: an empty <name> is no tag (it once became the tag "none")."""
    data, _, _, _ = tag_env
    job = tagged_jobs(tag_env, 1)[0]
    server.failures[job.key] = ["empty_name"]
    net = ft.make_network(KEY, server.ws_server, server.ca_file)
    cache = ft.TagCache(data / "tags" / "cache.sqlite")
    ft.run_fetch([job], cache, net, rate=0, workers=1, progress=False)
    assert cache.answers([job.key])[job.key] == ("ok", [["jazz", 80]])
    cache.close()
