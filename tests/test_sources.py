"""Each layout adapter reads exactly what the writers wrote, whatever the layout.

The generator's plays (``synth.user_chunks``, with a few equal times planted) are
written in every layout by ``lastfm.layouts`` with seeded malformed lines and a broken
archive member; each adapter must read back the same plays (ids mapped back through
the writer's id files), reject exactly the seeded lines at their places, count the
broken member, split byte ranges without losing or doubling a line, and refuse a
checksum mismatch in one line.
"""

from __future__ import annotations

import bz2
import csv
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import synth
from lastfm import layouts, parse, sources
from lastfm.common import PipelineError
from lastfm.sources import Piece, SourceOptions

CFG = synth.SynthConfig(users=6, plays=5_000, months=3, seed=11)
ROOTS = {  # where each layout's input lies under the writer's folder
    "lfm1k": "lastfm-dataset-1K",
    "lfm1b": "LFM-1b",
    "lfm2b": "LFM-2b",
    "mlhd": "MLHD",
    "mlhdplus": "MLHD+",
    "yambda": "yambda",
    "table": "table/plays.csv",
}
INT_IDS = ("lfm1b", "lfm2b", "yambda")
HAS_ARTIST = ("lfm1k", "lfm1b", "mlhd", "mlhdplus", "table")


def chunks_with_ties() -> list[layouts.UserPlays]:
    """The generator's users, a few plays moved onto the time of the play before (equal
    times must come back in listening order, in every layout)."""
    out = []
    for c in synth.user_chunks(CFG):
        ts = c.ts_s.copy()
        for i in (3, 4, 10):  # a run of three equal times and a pair
            ts[i] = ts[i - 1]
        c.ts_s = ts
        out.append(c)
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every layout written once, with malformed lines and broken members."""
    base = tmp_path_factory.mktemp("layouts")
    chunks = chunks_with_ties()
    summaries = {}
    for layout in layouts.LAYOUTS:
        rng = np.random.default_rng(5)
        summaries[layout] = layouts.write_layout(
            layout, chunks, base / layout, rng, malformed=True, users_per_tar=2, row_group_rows=700
        )
    return base, chunks, summaries


def root(base: Path, layout: str) -> Path:
    return base / layout / ROOTS[layout]


def options(dataset: str) -> SourceOptions:
    """Default options; the written table names its artist column."""
    return SourceOptions(dataset, artist_col="artist" if dataset == "table" else None)


def read_all(dataset: str, path: Path, opts: SourceOptions | None = None, target: int = 30_000):
    opts = opts or options(dataset)
    pieces = sources.find_pieces(dataset, path, opts, target_bytes=target)
    results = [sources.read_piece(p, dataset, opts) for p in pieces]
    for p, r in zip(pieces, results):  # every line a row, a reject or set aside
        assert r.table.schema == sources.PLAY_SCHEMA
        assert r.table.num_rows + sources.lines_accounted(r.counts) == r.lines, (p, r.counts)
        for reason in {why for _, why, _ in r.rejects}:
            assert r.counts[reason] == sum(why == reason for _, why, _ in r.rejects)
    return pieces, results


def absolute_lines(pieces, results):
    """Per piece, the offset of its lines in its file (byte ranges and row-group runs
    of one file are numbered on; TAR members start at 1)."""
    offsets, seen = [], {}
    for p, r in zip(pieces, results):
        key = (p.path, p.member)
        offsets.append(seen.get(key, 0))
        seen[key] = seen.get(key, 0) + r.lines
    return offsets


def id_maps(base: Path, layout: str) -> dict:
    folder = base / layout / "layout_ids"
    maps = {}
    for name in ("users", "tracks", "artists"):
        with open(folder / f"{name}.tsv", encoding="utf-8") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
        maps[name] = {r[0]: r[1] for r in rows}
    return maps


def expected_plays(chunks) -> dict[str, list]:
    return {
        c.user: [
            (int(t), a or None, m or None) for t, a, m in zip(c.ts_s, c.artist_mbid, c.track_mbid)
        ]
        for c in chunks
    }


def plays_read(base: Path, layout: str, chunks) -> dict[str, list]:
    """Each user's plays as read, in chronological order, ids mapped back."""
    pieces, results = read_all(layout, root(base, layout))
    rows = []
    for p, r in zip(pieces, results):
        t = r.table.to_pydict()
        for u, ts, a, m, line in zip(t["user"], t["ts_s"], t["artist"], t["track"], t["line"]):
            rows.append((u, ts, p.index, line, a, m))
    if layout in INT_IDS:
        maps = id_maps(base, layout)
        user = maps["users"].get
        track = lambda m: maps["tracks"][m] or None  # noqa: E731
        artist = lambda a: maps["artists"][a] or None  # noqa: E731
    elif layout in ("mlhd", "mlhdplus"):
        by_uuid = {layouts.user_uuid(c.user): c.user for c in chunks}
        user, track, artist = by_uuid.get, (lambda m: m), (lambda a: a)
    else:
        user, track, artist = (lambda u: u), (lambda m: m), (lambda a: a)
    sign = -1 if sources.newest_first(layout) else 1
    rows.sort(key=lambda r: (r[0], r[1], sign * r[2], sign * r[3]))
    out: dict[str, list] = {}
    for u, ts, _, _, a, m in rows:
        a = artist(a) if (a is not None and layout in HAS_ARTIST) else None
        out.setdefault(user(u), []).append((ts, a, None if m is None else track(m)))
    return out


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_the_same_plays_read_back_in_every_layout(written, layout):
    base, chunks, summaries = written
    want = expected_plays(chunks)
    got = plays_read(base, layout, chunks)
    assert summaries[layout]["plays"] == sum(len(v) for v in want.values())
    assert sorted(got) == sorted(want)
    for user, plays in want.items():
        if layout not in HAS_ARTIST:
            plays = [(t, None, m) for t, _, m in plays]
        assert got[user] == plays, (layout, user)


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_malformed_lines_are_rejected_where_they_were_written(written, layout):
    base, _, summaries = written
    pieces, results = read_all(layout, root(base, layout))
    offsets = absolute_lines(pieces, results)
    found = []
    for p, r, off in zip(pieces, results, offsets):
        rel = Path(p.path).relative_to(base / layout).as_posix()
        for line, reason, raw in r.rejects:
            if reason.startswith("corrupt"):
                continue
            assert raw, (layout, line, reason)
            at = line if p.member else off + line
            found.append((rel, p.member, at, reason))
    planted = [
        (m["file"], m["member"], m["line"], m["reason"]) for m in summaries[layout]["malformed"]
    ]
    assert len(planted) >= 3
    assert sorted(found) == sorted(planted)


@pytest.mark.parametrize("layout", ["mlhd", "mlhdplus"])
def test_a_broken_member_is_one_record_and_the_rest_is_read(written, layout):
    base, chunks, summaries = written
    pieces, results = read_all(layout, root(base, layout))
    broken = [(p, r) for p, r in zip(pieces, results) if r.counts.get("corrupt_member")]
    assert len(broken) == 1 == len(summaries[layout]["broken_members"])
    piece, result = broken[0]
    assert piece.member == summaries[layout]["broken_members"][0]["member"]
    assert result.table.num_rows == 0 and result.lines == 0
    assert result.rejects[0][:2] == (0, "corrupt_member")
    users = {u for r in results for u in r.table["user"].to_pylist()}
    assert users == {layouts.user_uuid(c.user) for c in chunks}


def test_an_archive_whose_listing_breaks_is_one_record(written, tmp_path):
    base, chunks, _ = written
    src = root(base, "mlhd")
    tars = sorted(src.glob("MLHD_*.tar"))
    damaged = tmp_path / "MLHD"
    damaged.mkdir()
    shutil.copy(tars[0], damaged / tars[0].name)
    pieces = sources.find_pieces("mlhd", damaged, SourceOptions("mlhd"))
    second = pieces[1]
    data = bytearray((damaged / tars[0].name).read_bytes())
    header = second.start - 512  # the second member's header block
    data[header : header + 512] = b"\xff" * 512
    (damaged / tars[0].name).write_bytes(bytes(data))
    pieces, results = read_all("mlhd", damaged)
    assert [p.member for p in pieces] == [pieces[0].member, None]
    assert results[1].counts == {"corrupt_tar": 1} and results[1].table.num_rows == 0
    assert results[0].table.num_rows > 0


def test_a_broken_bz2_stream_keeps_the_complete_lines_before_it(written, tmp_path):
    base, _, _ = written
    whole = read_all("lfm2b", root(base, "lfm2b"))[1][0]
    blob = (root(base, "lfm2b") / "listening-events.tsv.bz2").read_bytes()
    folder = tmp_path / "LFM-2b"
    folder.mkdir()
    (folder / "listening-events.tsv.bz2").write_bytes(blob[: int(len(blob) * 0.8)])
    _, results = read_all("lfm2b", folder)
    cut = results[0]
    assert cut.counts["corrupt_stream"] == 1
    assert [r for r in cut.rejects if r[1] == "corrupt_stream"][0][0] == cut.lines + 1
    assert 0 < cut.table.num_rows < whole.table.num_rows
    assert cut.table.equals(whole.table.slice(0, cut.table.num_rows))
    assert len(bz2.decompress(blob).splitlines()) == whole.lines


def test_lfm2b_in_batches_reads_what_one_batch_reads(written, monkeypatch):
    """The Dask engine reads LFM-2b's one stream in batches: cut into many small ones,
    the rows, line numbers, rejects and counts add up to the whole read."""
    from lastfm.sources import lfm2b

    base, _, _ = written
    piece = sources.find_pieces("lfm2b", root(base, "lfm2b"), options("lfm2b"))[0]
    whole = sources.read_piece(piece, "lfm2b", options("lfm2b"))
    monkeypatch.setattr(lfm2b, "BLOCK_BYTES", 2048)
    parts = list(lfm2b.iter_piece(piece, options("lfm2b"), batch_bytes=4096))
    assert len(parts) > 3
    assert pa.concat_tables([p.table for p in parts]).equals(whole.table)
    assert sum(p.lines for p in parts) == whole.lines
    assert sorted(r for p in parts for r in p.rejects) == sorted(whole.rejects)
    total = {}
    for p in parts:
        for k, v in p.counts.items():
            total[k] = total.get(k, 0) + v
    assert total == whole.counts


def test_a_checksum_mismatch_is_a_one_line_error(written, tmp_path):
    base, _, _ = written
    folder = tmp_path / "MLHD"
    shutil.copytree(root(base, "mlhd"), folder)
    assert sources.find_pieces("mlhd", folder, SourceOptions("mlhd"))  # the list matches
    tar = sorted(folder.glob("MLHD_*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[700] ^= 0x01
    tar.write_bytes(bytes(data))
    with pytest.raises(PipelineError) as err:
        sources.find_pieces("mlhd", folder, SourceOptions("mlhd"))
    assert "\n" not in str(err.value) and tar.name in str(err.value)
    assert "differs from the published" in str(err.value)
    # a list named by the option must name every file of the input
    events = root(base, "lfm1b") / "LFM-1b_LEs.txt"
    other = tmp_path / "sums.txt"
    other.write_text(f"{'0' * 64}  something-else.txt\n")
    with pytest.raises(PipelineError, match="not in the checksum list"):
        sources.find_pieces("lfm1b", events, SourceOptions("lfm1b", checksums=str(other)))
    other.write_text(f"{'0' * 32}  LFM-1b_LEs.txt\n")
    with pytest.raises(PipelineError, match="md5 .* differs"):
        sources.find_pieces("lfm1b", events, SourceOptions("lfm1b", checksums=str(other)))


def _lfm1k_file(base: Path, tmp_path: Path, tail: bytes) -> Path:
    """The written lfm1k file with lines every path of the parser must handle, and a
    last line without its newline."""
    text = (root(base, "lfm1k") / layouts.LFM1K_TSV).read_bytes()
    lines = text.split(b"\n")
    good = lines[5]
    extra = [
        good.replace(b"Z\t", b"Z\t", 1) + b"\t(Live)",  # a stray tab: repaired or not
        b"",  # an empty line
        b"user_000001\t2009-01-01T00:00:00Z\t\t\xff\xfebad\t\tbytes",  # not UTF-8
        good + b"\r",  # a carriage return
        b"\tuser-less" + good[good.index(b"\t") :],
    ]
    lines[40:40] = extra
    path = tmp_path / layouts.LFM1K_TSV
    path.write_bytes(b"\n".join(lines[:-1]) + b"\n" + tail)
    return path


def _random_cuts(path: Path, rng: np.random.Generator, k: int) -> list[Piece]:
    data = path.read_bytes()
    newlines = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)
    cuts = set(rng.integers(1, len(data), size=k).tolist())
    cuts |= {int(n) for n in rng.choice(newlines, 3)} | {
        int(n) + 1 for n in rng.choice(newlines, 3)
    }
    cuts = sorted(c for c in cuts if 0 < c < len(data))
    bounds = [0, *cuts, -1]
    return [Piece(i, str(path), None, s, e) for i, (s, e) in enumerate(zip(bounds, bounds[1:]))]


@pytest.mark.parametrize(
    "tail", [b"", b"user_000009\t2009-01-01T00:00:00Z\t\tA\t\tB", b"cut\tshort"]
)
def test_lfm1k_byte_ranges_read_exactly_what_parse_file_reads(written, tmp_path, tail):
    base, _, _ = written
    path = _lfm1k_file(base, tmp_path, tail)
    whole = parse.parse_file(path, with_md5=False)
    rng = np.random.default_rng(len(tail))
    for k in (1, 7, 40):
        pieces = _random_cuts(path, rng, k)
        results = [sources.read_piece(p, "lfm1k", SourceOptions()) for p in pieces]
        offsets = absolute_lines(pieces, results)
        rows, rejects, repaired = [], [], 0
        for r, off in zip(results, offsets):
            t = r.table.to_pydict()
            rows += [
                (u, ts, a or "", an, m or "", mn, off + ln)
                for u, ts, a, m, an, mn, ln in zip(*(t[c] for c in sources.PLAY_SCHEMA.names))
            ]
            rejects += [(off + ln, reason, raw) for ln, reason, raw in r.rejects]
            repaired += r.counts.get("repaired", 0)
        w = whole.table.to_pydict()
        cols = ["user", "ts_s", "artist_mbid", "artist_name", "track_mbid", "track_name", "line"]
        want = sorted(zip(*(w[c] for c in cols)), key=lambda r: r[-1])
        assert rows == want
        assert rejects == whole.rejects
        assert repaired == whole.repaired
        assert sum(r.lines for r in results) == whole.lines


@pytest.mark.parametrize("dataset", ["lfm1b", "table"])
def test_byte_ranges_partition_the_lines_of_a_file(written, tmp_path, dataset):
    base, _, _ = written
    src = root(base, dataset)
    src = src / "LFM-1b_LEs.txt" if dataset == "lfm1b" else src
    path = tmp_path / src.name
    path.write_bytes(
        src.read_bytes() + (b"7\t1\t1\t1\t1234567890" if dataset == "lfm1b" else b"u,1,x,y")
    )
    opts = SourceOptions(dataset)
    one = sources.read_piece(Piece(0, str(path)), dataset, opts)
    assert one.table["line"][-1].as_py() == one.lines  # the last line, without newline, read
    rng = np.random.default_rng(3)
    for k in (2, 25, 90):
        pieces = _random_cuts(path, rng, k)
        results = [sources.read_piece(p, dataset, opts) for p in pieces]
        offsets = absolute_lines(pieces, results)
        tables = [
            r.table.set_column(6, "line", pa.array(np.asarray(r.table["line"]) + off, pa.int64()))
            for r, off in zip(results, offsets)
        ]
        assert pa.concat_tables(tables).equals(one.table)
        merged = [
            (off + ln, why, raw) for r, off in zip(results, offsets) for ln, why, raw in r.rejects
        ]
        assert merged == one.rejects
        assert sum(r.counts.get("header", 0) for r in results) == one.counts.get("header", 0)


def test_yambda_options_set_plays_aside_and_count_them(written, tmp_path):
    base, _, _ = written
    listens = root(base, "yambda") / "listens.parquet"
    raw = pq.read_table(listens).to_pydict()
    ok = [t is not None for t in raw["timestamp"]]
    organic = [o == 1 for o in raw["is_organic"]]
    share = [p >= 60 for p in raw["played_ratio_pct"]]
    opts = SourceOptions("yambda", organic_only=True, min_played_share=0.6)
    _, results = read_all("yambda", listens, opts, target=1)
    counts = {}
    for r in results:
        for k, n in r.counts.items():
            counts[k] = counts.get(k, 0) + n
    assert counts["null_timestamp"] == ok.count(False)
    assert counts["not_organic"] == sum(k and not o for k, o in zip(ok, organic))
    want = sum(k and o and s for k, o, s in zip(ok, organic, share))
    assert counts["below_min_played_share"] == sum(
        k and o and not s for k, o, s in zip(ok, organic, share)
    )
    assert sum(r.table.num_rows for r in results) == want
    # multi_event: only listens are plays
    multi = tmp_path / "multi_event.parquet"
    pq.write_table(
        pa.table(
            {
                "uid": pa.array([1, 1, 2], pa.uint32()),
                "timestamp": pa.array([5, 10, 15], pa.uint32()),
                "item_id": pa.array([7, 8, 9], pa.uint32()),
                "is_organic": pa.array([1, 0, 1], pa.uint8()),
                "played_ratio_pct": pa.array([100, None, 20], pa.uint16()),
                "event_type": ["listen", "like", "listen"],
            }
        ),
        multi,
    )
    _, (r,) = read_all("yambda", tmp_path, SourceOptions("yambda"))
    assert r.counts == {"not_listen": 1} and r.table["track"].to_pylist() == ["7", "9"]


def test_table_time_units_and_parquet(tmp_path):
    csv_path = tmp_path / "p.csv"
    csv_path.write_text(
        'who,when,song,band\n"a, b",2009-04-08T01:57:47Z,s1,x\n'
        "a,2009-04-08T03:57:47+02:00,s2,\n"
        "b,2009-04-08 01:57:48.9,,y\n"
        "b,not a time,s3,y\n"
        ",2009-04-08T01:57:47Z,s4,y\n"
    )
    opts = SourceOptions("table", "who", "when", "song", "band", time_unit="iso")
    _, (r,) = read_all("table", csv_path, opts)
    t = r.table.to_pydict()
    assert t["user"] == ["a, b", "a", "b"] and t["ts_s"] == [1239155867, 1239155867, 1239155868]
    assert t["track"] == ["s1", "s2", None] and t["artist"] == ["x", None, "y"]
    assert [(ln, why) for ln, why, _ in r.rejects] == [(5, "bad_when"), (6, "empty_who")]
    tsv_path = tmp_path / "p.tsv"
    tsv_path.write_text('u\tms\ti\nx\t1239155867999\t"q\nx\t-1\tz\n')
    _, (r,) = read_all("table", tsv_path, SourceOptions("table", "u", "ms", "i", time_unit="ms"))
    assert r.table["ts_s"].to_pylist() == [1239155867, -1] and r.table["track"][0].as_py() == '"q'
    pq_path = tmp_path / "p.parquet"
    pq.write_table(
        pa.table(
            {
                "u": [1, 2, None],
                "t": pa.array([10_500, 20_000, 1], pa.timestamp("ms")),
                "i": [5, 6, 7],
            }
        ),
        pq_path,
    )
    _, (r,) = read_all("table", pq_path, SourceOptions("table", "u", "t", "i"))
    assert r.table.to_pydict()["ts_s"] == [10, 20] and r.table["user"].to_pylist() == ["1", "2"]
    assert r.counts == {"empty_u": 1}
    pq.write_table(
        pa.table(
            {
                "u": ["a", "b"],
                "t": [-1_500, 2_000],
                "w": ["2009-04-08T01:57:47Z", "x"],
                "i": ["s", ""],
            }
        ),
        pq_path,
    )
    _, (r,) = read_all("table", pq_path, SourceOptions("table", "u", "t", "i", time_unit="ms"))
    assert r.table["ts_s"].to_pylist() == [-2, 2] and r.table["track"].to_pylist() == ["s", None]
    _, (r,) = read_all("table", pq_path, SourceOptions("table", "u", "w", "i", time_unit="iso"))
    assert r.table["ts_s"].to_pylist() == [1239155867] and r.counts == {"bad_w": 1}
    with pytest.raises(PipelineError, match="no column"):
        sources.find_pieces("table", csv_path, SourceOptions("table"))


def test_names_come_back_verbatim(written):
    base, chunks, summaries = written
    names = {}
    for c in chunks:
        for t, an, tn in zip(c.track, c.artist_name, c.track_name):
            names[str(int(t) + 1)] = (an, tn)
    assert any(tn.startswith('"') for _, tn in names.values())  # quotes in some names
    for layout in ("lfm1b", "lfm2b"):
        table = sources.load_names(layout, root(base, layout))
        got = {
            t: (a, n)
            for t, a, n in zip(
                *(table[c].to_pylist() for c in ("track", "artist_name", "track_name"))
            )
        }
        assert {t: got[t] for t in names} == names
    lfm2b = sources.load_names("lfm2b", root(base, "lfm2b"))
    assert lfm2b.schema.metadata[b"skipped"] == b'{"too_many_fields_4": 1}'
    assert summaries["lfm2b"]["names_skipped"] == {"too_many_fields_4": 1}
    for layout in ("lfm1k", "mlhd", "mlhdplus", "yambda", "table"):
        assert sources.load_names(layout, root(base, layout)) is None


@pytest.mark.parametrize("dataset", sources.DATASETS)
def test_a_missing_layout_is_a_one_line_error_naming_the_path(tmp_path, dataset):
    with pytest.raises(PipelineError) as err:
        sources.find_pieces(dataset, tmp_path, SourceOptions(dataset))
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_pieces_and_options_are_picklable(written):
    base, _, _ = written
    opts = SourceOptions("mlhdplus", checksums=None)
    pieces = sources.find_pieces("mlhdplus", root(base, "mlhdplus"), opts)
    again = pickle.loads(pickle.dumps((pieces, opts)))
    assert again == (pieces, opts)
    assert sources.read_piece(again[0][0], "mlhdplus", again[1]).lines > 0


def test_the_streamed_generator_writes_a_readable_log(tmp_path):
    out = tmp_path / "s"
    synth.main(
        ["--layout", "lfm1b", "--stream", "--plays", "30000", "--users", "3", "--out", str(out)]
    )
    _, results = read_all("lfm1b", out / "LFM-1b", target=100_000)
    table = pa.concat_tables([r.table for r in results])
    assert table.num_rows == 30_000 and not any(r.rejects for r in results)
    df = table.to_pandas()
    assert df["user"].nunique() == 3
    assert (df.groupby("user")["ts_s"].apply(lambda s: s.is_monotonic_increasing)).all()
    assert df["track"].value_counts().iloc[0] > 30  # Zipf: a few tracks are played a lot


def test_the_streamed_generator_holds_the_catalogue_it_is_given(tmp_path):
    """--stream-tracks fixes the catalogue (benchmarks that double the plays, not the
    tracks); without --stream it is an error."""
    out = tmp_path / "s"
    args = ["--layout", "lfm1b", "--stream", "--plays", "20000", "--users", "2"]
    synth.main([*args, "--stream-tracks", "50", "--out", str(out)])
    _, results = read_all("lfm1b", out / "LFM-1b", target=100_000)
    df = pa.concat_tables([r.table for r in results]).to_pandas()
    assert df["track"].nunique() == 50  # 20,000 Zipf draws over 50 tracks reach every one
    assert df["artist"].nunique() == 5
    with pytest.raises(SystemExit):
        synth.main(["--layout", "lfm1b", "--stream-tracks", "50", "--out", str(out)])


def test_crlf_lines_read_alike_whole_and_in_pieces(tmp_path):
    path = tmp_path / "p.tsv"
    rows = [f"u{i % 3}\t{1_000 + i}\tt{i}\r\n" for i in range(400)]
    rows[150] = "u1\t77\tlone\rcr\r\n"  # a lone CR stays inside its line
    path.write_bytes(("user\ttimestamp\titem\r\n" + "".join(rows)).encode())
    opts = SourceOptions("table")
    one = sources.read_piece(Piece(0, str(path)), "table", opts)
    assert one.table.num_rows == 400 and not one.rejects
    assert "\r" not in "".join(one.table["track"].to_pylist()[:150])
    assert one.table["track"][150].as_py() == "lone\rcr"
    rng = np.random.default_rng(8)
    for k in (3, 30):
        pieces = _random_cuts(path, rng, k)
        results = [sources.read_piece(p, "table", opts) for p in pieces]
        got = pa.concat_tables([r.table for r in results])
        assert got.drop_columns("line").equals(one.table.drop_columns("line"))


@pytest.mark.parametrize("layout", layouts.LAYOUTS)
def test_writing_in_slices_changes_nothing(written, tmp_path, monkeypatch, layout):
    """Long chunks are turned into text a slice at a time (bounded memory): with tiny
    slices the files read back the same and the seeded lines are where they were."""
    base, chunks, summaries = written
    monkeypatch.setattr(layouts, "SLICE", 7)
    small = layouts.write_layout(
        layout,
        chunks,
        tmp_path / layout,
        np.random.default_rng(5),
        malformed=True,
        users_per_tar=2,
        row_group_rows=700,
    )
    assert small["malformed"] == summaries[layout]["malformed"]
    assert plays_read(tmp_path, layout, chunks) == plays_read(base, layout, chunks)
    if layout in ("lfm1k", "lfm1b", "table"):
        for f in summaries[layout]["files"]:
            assert (tmp_path / layout / f).read_bytes() == (base / layout / f).read_bytes()
