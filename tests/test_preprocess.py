"""preprocess.py: download (local HTTP server), safe extraction, cleaning, windows."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import SAMPLE, requires_sample

import preprocess
from lastfm.common import PipelineError
from lastfm.data import SCHEMAS


class ArchiveServer:
    """Loopback HTTP server for one file; honours Range; can cut a response short."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.cut_after: int | None = None  # bytes sent before dropping the connection
        self.requests: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append(rng)
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                body = outer.payload[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                if rng:
                    self.send_header(
                        "Content-Range",
                        f"bytes {start}-{len(outer.payload) - 1}/{len(outer.payload)}",
                    )
                self.end_headers()
                if outer.cut_after is not None:
                    self.wfile.write(body[: outer.cut_after])
                    outer.cut_after = None
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/lastfm-dataset-1K.tar.gz"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(small_synth):
    srv = ArchiveServer((small_synth[0] / "lastfm-dataset-1K.tar.gz").read_bytes())
    yield srv
    srv.close()


def test_download_resumes_verifies_and_skips(server, tmp_path):
    dest = tmp_path / "a.tar.gz"
    md5 = hashlib.md5(server.payload).hexdigest()
    server.cut_after = 10_000
    with pytest.raises(PipelineError, match="rerun to resume"):
        preprocess.download(server.url, dest, md5=md5)
    assert (tmp_path / "a.tar.gz.part").stat().st_size == 10_000
    preprocess.download(server.url, dest, md5=md5)
    assert server.requests == [None, "bytes=10000-"]
    assert dest.read_bytes() == server.payload
    preprocess.download(server.url, dest, md5=md5)  # verified: no new request
    assert len(server.requests) == 2


def test_archive_placed_by_hand_is_used_without_network(small_synth, tmp_path):
    dest = tmp_path / "a.tar.gz"
    dest.write_bytes((small_synth[0] / "lastfm-dataset-1K.tar.gz").read_bytes())
    assert preprocess.download("http://127.0.0.1:9/unreachable", dest) == dest
    with pytest.raises(PipelineError, match="does not match"):
        (tmp_path / "a.tar.gz.verified").unlink()
        preprocess.download("http://127.0.0.1:9/unreachable", dest, md5="0" * 32)


def test_download_md5_mismatch_deletes_and_says_so(server, tmp_path):
    with pytest.raises(PipelineError, match="does not match"):
        preprocess.download(server.url, tmp_path / "a.tar.gz", md5="0" * 32)
    assert not (tmp_path / "a.tar.gz").exists() and not (tmp_path / "a.tar.gz.part").exists()


def test_unreachable_network_tells_what_to_do(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(PipelineError, match="place the archive by hand.*synthetic"):
        preprocess.download(f"http://127.0.0.1:{port}/x.tar.gz", tmp_path / "x.tar.gz", timeout=2)


def test_extract_refuses_paths_outside_target(tmp_path):
    bad = tmp_path / "evil.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(PipelineError, match="unsafe member"):
        preprocess.extract(bad, tmp_path / "out")
    assert not (tmp_path / "escaped.txt").exists()


def test_extract_corrupt_archive(small_synth, tmp_path):
    data = (small_synth[0] / "lastfm-dataset-1K.tar.gz").read_bytes()
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match="corrupt or truncated"):
        preprocess.extract(broken, tmp_path / "out")


def test_end_to_end_from_http(server, data_dir, capsys):
    preprocess.main(["--url", server.url, "--months", "1,2"])
    out = data_dir / "preprocessed"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["lines_accounted"] == meta["input"]["lines"]
    assert meta["rejects"] == {} and meta["repaired"] == 3
    assert "### raw" in capsys.readouterr().out
    one, two = (pq.read_table(out / f"{w}.parquet").to_pandas() for w in ("1m", "2m"))
    assert set(SCHEMAS["plays"]) <= set(one.columns)
    assert 0 < len(one) < len(two)
    assert one["ts_s"].min() >= two["ts_s"].min() and one["ts_s"].max() == two["ts_s"].max()
    # Sorted by user, then time ascending; no missing IDs after cleaning.
    key = one["user_idx"].to_numpy().astype(np.int64) * 10**10 + one["ts_s"].to_numpy()
    assert np.all(np.diff(key) >= 0)
    assert one["track_mbid"].notna().all() and (one["track_idx"] >= 0).all()
    assert (data_dir / "reports" / "plays_per_user.png").stat().st_size > 1000
    stats = json.loads((data_dir / "reports" / "preprocess_stats.json").read_text())
    assert stats["tables"]["raw"]["user_id"]["unique"] == 24
    assert stats["sizes"]["1m"]["rows"] == len(one)
    # A rerun with the same parameters skips the work.
    mtime = (out / "1m.parquet").stat().st_mtime_ns
    preprocess.main(["--url", server.url, "--months", "1,2"])
    assert (out / "1m.parquet").stat().st_mtime_ns == mtime


def test_cleaned_rows_match_an_independent_pandas_read(small_synth, data_dir):
    folder = small_synth[0] / "lastfm-dataset-1K"
    preprocess.main(["--input", str(folder), "--months", "1", "--write-all"])
    ours = pq.read_table(data_dir / "preprocessed" / "all.parquet").to_pandas()
    # pandas without quote processing; it skips the 3 planted stray-tab lines we repair.
    df = pd.read_csv(
        folder / preprocess.TSV.split("/")[1],
        sep="\t",
        header=None,
        quoting=3,
        keep_default_na=False,
        on_bad_lines="skip",
    )
    ts = pd.to_datetime(df[1], format="%Y-%m-%dT%H:%M:%SZ")
    ok = (
        (df[[2, 3, 4, 5]] != "").all(axis=1)
        & (ts >= preprocess.VALID_FROM)
        & (ts < preprocess.VALID_TO)
    )
    assert len(df) == small_synth[1]["lines"] - 3
    assert 0 <= len(ours) - ok.sum() <= 3
    assert 0 <= ours["track_mbid"].nunique() - df.loc[ok, 4].nunique() <= 3
    stats = json.loads((data_dir / "reports" / "preprocess_stats.json").read_text())["tables"]
    assert stats["raw"]["user_id"]["count"] == small_synth[1]["lines"]
    assert stats["raw"]["track_id"]["count"] - (df[4] != "").sum() in range(0, 4)


def test_keep_missing_mbid_keys_tracks_by_names(small_synth, data_dir):
    preprocess.main(
        [
            "--input",
            str(small_synth[0] / "lastfm-dataset-1K"),
            "--months",
            "1",
            "--keep-missing-mbid",
        ]
    )
    df = pq.read_table(data_dir / "preprocessed" / "1m.parquet").to_pandas()
    assert df["track_mbid"].isna().any()
    pairs = df.groupby(["artist_name", "track_name"], observed=True)["track_idx"].nunique()
    assert (pairs == 1).all()
    assert df.groupby("track_idx")["track_name"].nunique().max() == 1


def test_bad_arguments_and_inputs(tmp_path, data_dir, small_synth):
    with pytest.raises(PipelineError, match="no such file"):
        preprocess.main(["--input", str(tmp_path / "missing.tsv")])
    with pytest.raises(PipelineError, match="--months"):
        preprocess.main(["--input", str(small_synth[0] / "lastfm-dataset-1K"), "--months", "x"])
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    with pytest.raises(PipelineError, match="empty"):
        preprocess.main(["--input", str(empty)])
    with pytest.raises(PipelineError, match="plausible time range"):
        preprocess.main(
            [
                "--input",
                str(small_synth[0] / "lastfm-dataset-1K"),
                "--valid-from",
                "2001-01-01",
                "--valid-to",
                "2002-01-01",
            ]
        )


def test_window_anchors(small_synth, data_dir):
    tsv = str(small_synth[0] / "lastfm-dataset-1K")
    preprocess.main(["--input", tsv, "--months", "1", "--anchor", "start"])
    meta = json.loads((data_dir / "preprocessed" / "meta.json").read_text())
    w = meta["windows"]["1m"]
    start = pd.Timestamp(w["start_s"], unit="s")
    assert pd.Timestamp(w["end_s"], unit="s") == start + pd.DateOffset(months=1)
    assert start >= pd.Timestamp(preprocess.VALID_FROM)


@requires_sample()
def test_real_sample_end_to_end(data_dir):
    preprocess.main(["--input", str(SAMPLE / "user_000001-history.tsv"), "--write-all"])
    meta = json.loads((data_dir / "preprocessed" / "meta.json").read_text())
    assert meta["input"]["lines"] == meta["rows_parsed"] == 16_685
    stats = json.loads((data_dir / "reports" / "preprocess_stats.json").read_text())
    raw = stats["tables"]["raw"]
    assert raw["user_id"] == {"count": 16_685, "unique": 1, "top": "user_000001", "freq": 16_685}
    # The independent check: pandas on the same file without quote processing.
    df = pd.read_csv(SAMPLE / "user_000001-history.tsv", sep="\t", header=None, quoting=3)
    assert raw["track_id"]["count"] == df[4].notna().sum()
    assert raw["track_id"]["unique"] == df[4].nunique()
    assert raw["artist_name"]["unique"] == df[3].nunique()
    assert raw["timestamp"]["unique"] == df[1].nunique()


def test_every_tables_timestamp_statistics_match_pandas(small_synth, data_dir):
    """The report sorts the times twice (clean plays, the others) and slices each
    window out of the clean ones: every table's count, unique, top and freq equal
    pandas' on the same plays (raw and clean from the parse, windows from their files)."""
    from lastfm.parse import parse_file

    tsv = small_synth[0] / "lastfm-dataset-1K"
    preprocess.main(["--input", str(tsv), "--months", "1,2,3,6"])
    tables = json.loads((data_dir / "reports" / "preprocess_stats.json").read_text())["tables"]
    parsed = parse_file(tsv / "userid-timestamp-artid-artname-traid-traname.tsv").table
    frame = parsed.to_pandas()
    missing = (frame[["artist_mbid", "artist_name", "track_mbid", "track_name"]] == "").any(axis=1)
    times = {"raw": frame["ts_s"], "clean": frame["ts_s"][~missing.to_numpy()]}
    for name in ["1m", "2m", "3m", "6m"]:
        times[name] = pd.read_parquet(data_dir / "preprocessed" / f"{name}.parquet")["ts_s"]
    assert times["raw"].nunique() > times["clean"].nunique() > times["6m"].nunique()
    for name, ts in times.items():
        got, counts = tables[name]["timestamp"], ts.value_counts()
        top = int(pd.Timestamp(got["top"]).timestamp())
        assert (got["count"], got["unique"]) == (len(ts), ts.nunique()), name
        assert got["freq"] == counts.max() == counts[top], name
