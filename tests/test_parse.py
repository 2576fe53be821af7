"""Exact parsing: every line becomes a row or a reject with its line number."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import SAMPLE, requires_sample

from lastfm.parse import FIELDS, parse_file, repair_fields, write_rejects

A = "f1b1cf71-bd35-4e99-8624-24a6e15f133a"
T = "bc2765af-208c-44c5-b3b0-cf597a646660"
GOOD = f"user_000001\t2009-05-04T23:08:57Z\t{A}\tDeep Dish\t{T}\tFuck Me Im Famous"


def crafted_lines() -> list[bytes]:
    """Lines 1..14 of a malformed file, with what each should become."""
    return [
        GOOD.encode(),  # 1 ok
        f'user_000001\t2009-05-04T23:00:00Z\t{A}\t"Weird Al" Yankovic\t{T}\t"Quoted'.encode(),  # noqa: E501  2 ok
        f"user_000001\t2009-05-04T22:00:00Z\t{A}\tArtist\t{T}\tPart 1\tPart 2".encode(),  # noqa: E501  3 repaired
        f"user_000001\t2009-05-04T21:00:00Z\t{A}\tArt\tist\t{T}\tSong".encode(),  # 4 repaired
        f"user_000001\t2009-05-04T20:00:00Z\t{A}\tArt\t\t\tSong".encode(),  # 5 ambiguous
        f"user_000001\t2009-13-45T20:00:00Z\t{A}\tArt\t{T}\tSong".encode(),  # 6 bad ts
        f"\t2009-05-04T19:00:00Z\t{A}\tArt\t{T}\tSong".encode(),  # 7 empty user
        b"user_000002\t2009-05-04T18:00:00Z\t\tCaf\xe9\t\tSong",  # 8 non-UTF-8
        b"",  # 9 empty line
        f"user_000002\t2009-05-04T17:00:00Z\t{A}\tArt".encode(),  # 10 4 fields
        "user_000002\t2009-05-04T16:00:00Z\t\t坂本龍一\t\tComposition 0919".encode(),  # 11 ok
        f"user_000002\t2009-05-04T15:00:00Z\t{A}\tA\rB\t{T}\tSong".encode(),  # 12 ok (\r)
        f"user_000002\t1970-01-01T00:00:01Z\t{A}\tOld\t{T}\tSong".encode(),  # 13 ok (old)
        b"user_000002\t2009-05-04T14:0",  # 14 truncated
    ]


def write(tmp_path, lines, newline_at_end=False):
    path = tmp_path / "plays.tsv"
    path.write_bytes(b"\n".join(lines) + (b"\n" if newline_at_end else b""))
    return path


@pytest.mark.parametrize("block", [1 << 20, 97])
@pytest.mark.parametrize("force_blocks", [False, True])
def test_crafted_file_every_line_accounted(tmp_path, block, force_blocks):
    path = write(tmp_path, crafted_lines())
    res = parse_file(path, block_bytes=block, force_blocks=force_blocks)
    assert res.lines == 14
    assert res.table.num_rows + len(res.rejects) == 14
    rejected = {line: reason for line, reason, _ in res.rejects}
    assert rejected == {
        5: "ambiguous_7_fields",
        6: "bad_timestamp",
        7: "empty_user",
        8: "non_utf8",
        9: "empty_line",
        10: "too_few_fields_4",
        14: "truncated_last_line",
    }
    rows = {r["line"]: r for r in res.table.to_pylist()}
    assert sorted(rows) == [1, 2, 3, 4, 11, 12, 13]
    assert rows[2]["artist_name"] == '"Weird Al" Yankovic' and rows[2]["track_name"] == '"Quoted'
    assert rows[3]["track_name"] == "Part 1\tPart 2" and rows[3]["track_mbid"] == T
    assert rows[4]["artist_name"] == "Art\tist" and rows[4]["track_mbid"] == T
    assert rows[11]["artist_name"] == "坂本龍一" and rows[11]["artist_mbid"] == ""
    assert rows[12]["artist_name"] == "A\rB"
    assert rows[1]["ts_s"] == int(pd.Timestamp("2009-05-04T23:08:57").timestamp())
    assert rows[13]["ts_s"] == 1
    assert res.repaired == 2


def test_rejects_file_keeps_text(tmp_path):
    res = parse_file(write(tmp_path, crafted_lines()))
    out = tmp_path / "rejects.tsv"
    write_rejects(out, res.rejects)
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "line\treason\ttext"
    assert len(lines) == 1 + len(res.rejects)
    assert any(line.startswith("8\tnon_utf8\t") and "Caf\\xe9" in line for line in lines)
    assert all(len(line.split("\t")) == 3 for line in lines)


def test_fast_path_and_block_parser_agree(small_synth):
    tsv = small_synth[0] / "lastfm-dataset-1K" / "userid-timestamp-artid-artname-traid-traname.tsv"
    big = parse_file(tsv)  # whole-file fast path
    small = parse_file(tsv, block_bytes=64 << 10, force_blocks=True)
    assert small.slow_blocks > 0 and big.slow_blocks == 0
    assert big.table.num_rows == small.table.num_rows == small_synth[1]["lines"]
    assert big.rejects == small.rejects == []
    assert big.repaired == small.repaired == 3
    assert big.table.sort_by("line").to_pylist() == small.table.sort_by("line").to_pylist()
    assert big.md5 == small.md5


def test_codes_do_not_depend_on_the_block_layout(small_synth, monkeypatch):
    """``encode`` joins the per-block dictionaries of either parser into one sorted
    vocabulary per column: the same codes from one block, many, or the block parser,
    and each code is the rank of its value among the column's distinct values."""
    import numpy as np

    import lastfm.parse as parse_mod
    from preprocess import encode

    tsv = small_synth[0] / "lastfm-dataset-1K" / "userid-timestamp-artid-artname-traid-traname.tsv"
    one = parse_file(tsv)
    monkeypatch.setattr(parse_mod, "READ_BLOCK", 16 << 10)
    many = parse_file(tsv)
    blocks = parse_file(tsv, block_bytes=64 << 10, force_blocks=True)
    assert one.table["track_name"].num_chunks <= 2  # the file, and its repaired lines
    assert many.table["track_name"].num_chunks > 10 and blocks.table["track_name"].num_chunks > 10
    enc = []
    for r in (one, many, blocks):  # encoded as parsed (a sort would join the dictionaries)
        e = encode(r.table)
        by_line = np.argsort(e["line"])
        enc.append({k: (v[by_line] if isinstance(v, np.ndarray) else v) for k, v in e.items()})
    for name in ["user_id", "artist_id", "artist_name", "track_id", "track_name", "ts_s"]:
        assert all(np.array_equal(e[name], enc[0][name]) for e in enc[1:]), name
    text = one.table.sort_by("line")["track_name"].to_pylist()
    words = sorted(set(text) - {""}, key=lambda w: w.encode())
    assert enc[1]["dict_track_name"].to_pylist() == words
    rank = {w: i for i, w in enumerate(words)}
    assert enc[1]["track_name"].tolist() == [rank.get(w, -1) for w in text]


def test_pandas_defaults_lose_rows_we_keep(tmp_path):
    # A name starting with '"' opens a quoted field that swallows following lines.
    lines = [GOOD.encode()] * 3
    lines[1] = f'user_000001\t2009-05-04T23:00:00Z\t{A}\t"Quote start\t{T}\tSong'.encode()
    closing = f'user_000001\t2009-05-04T22:00:00Z\t{A}\tArt\t{T}\tSong "Live"'.encode()
    path = write(tmp_path, lines + [GOOD.encode(), closing, GOOD.encode()], newline_at_end=True)
    ours = parse_file(path)
    theirs = pd.read_csv(path, sep="\t", header=None)
    assert ours.table.num_rows == 6 and ours.rejects == []
    assert len(theirs) < 6


def test_repair_fields_rules():
    base = ["u", "2009-05-04T23:08:57Z", A]
    assert repair_fields(base + ["Art", T, "x", "y"]) == base + ["Art", T, "x\ty"]
    assert repair_fields(base + ["Ar", "t", T, "y"]) == base + ["Ar\tt", T, "y"]
    assert repair_fields(base + ["Ar", "", "", "y"]) is None  # two readings
    assert repair_fields(["u", "t", "not-a-uuid", "a", T, "b", "c"]) is None
    assert repair_fields(base + ["a", "b", "c", "d"]) is None  # no reading
    assert repair_fields(base + ["a", T, "b"]) is None  # six fields: nothing to do


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        parse_file(empty)
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        parse_file(tmp_path / "nope.tsv")


@requires_sample()
def test_real_sample_parses_every_line():
    res = parse_file(SAMPLE / "user_000001-history.tsv")
    assert res.lines == 16_685
    assert res.table.num_rows == 16_685 and res.rejects == []
    assert res.table.column_names == [*[f if f != "timestamp" else "ts_s" for f in FIELDS], "line"]
    assert set(res.table["user"].to_pylist()) == {"user_000001"}


def test_fast_path_locates_stray_tabs_and_ambiguous_lines(tmp_path):
    lines = crafted_lines()
    keep = [lines[i] for i in (0, 1, 2, 3, 4, 10)] + [GOOD.encode()] * 3
    res = parse_file(write(tmp_path, keep, newline_at_end=True))
    assert res.slow_blocks == 0  # no fallback needed
    assert [(n, r) for n, r, _ in res.rejects] == [(5, "ambiguous_7_fields")]
    assert sorted(res.table["line"].to_pylist()) == [1, 2, 3, 4, 6, 7, 8, 9]
    assert res.repaired == 2
    rows = {r["line"]: r for r in res.table.to_pylist()}
    assert rows[3]["track_name"] == "Part 1\tPart 2" and rows[6]["artist_name"] == "坂本龍一"
