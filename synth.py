"""Generate a synthetic Last.fm-1K dataset in the real archive's exact layout.

Writes ``lastfm-dataset-1K/userid-timestamp-artid-artname-traid-traname.tsv``,
``userid-profile.tsv`` and ``README.txt`` (optionally packed as
``lastfm-dataset-1K.tar.gz``) plus ``ground_truth/`` (each track's taste cluster
and planted tags, the format ``fetch_tags.py --tags-file`` reads).

The generator carries the real data's shape, so that models learn something
real from it:
- plays per user log-normal (heavy users and light ones), users active over
  spans of different lengths, most of them until the end of the data;
- artists in taste clusters, Zipf popularity of artists and of tracks within
  an artist; each user has one to three clusters and a Zipf-weighted set of
  favourite artists (so ~80% of plays are re-listens);
- sessions: plays a track-length apart (150-420 s), then gaps of hours;
  inside a session, runs of one artist (next play by the same artist ~75% of
  the time), often in album order (track k, then k+1);
- missing MBIDs (~3% of artists, ~11% of tracks), Unicode names, names that
  contain or start with ``"``, rare lines with a stray tab inside a name, a
  few timestamps far outside 2005-2009, rows ordered by user and newest first.

Usage: ``python synth.py --out data/synthetic --users 40 --plays 200000``.
"""

from __future__ import annotations

import argparse
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lastfm import config as cfgs
from lastfm.common import log, run_main, write_json
from lastfm.paths import Layout

TSV_NAME = "userid-timestamp-artid-artname-traid-traname.tsv"
END_TS = int(np.datetime64("2009-05-05T00:00:00", "s").astype(np.int64))
DAY = 86_400

GENRES = [
    ("rock", ["classic rock", "hard rock", "70s", "guitar"]),
    ("indie", ["indie rock", "alternative", "indie pop", "british"]),
    ("electronic", ["electronica", "idm", "ambient", "techno"]),
    ("hip-hop", ["rap", "hip hop", "underground hip-hop", "east coast rap"]),
    ("jazz", ["smooth jazz", "bebop", "jazz fusion", "saxophone"]),
    ("metal", ["heavy metal", "death metal", "thrash metal", "black metal"]),
    ("pop", ["dance", "female vocalists", "80s", "catchy"]),
    ("folk", ["singer-songwriter", "acoustic", "indie folk", "americana"]),
    ("classical", ["piano", "baroque", "orchestral", "composers"]),
    ("punk", ["punk rock", "hardcore", "post-punk", "emo"]),
    ("soul", ["rnb", "funk", "motown", "neo-soul"]),
    ("reggae", ["dub", "ska", "roots reggae", "dancehall"]),
    ("j-pop", ["japanese", "j-rock", "anime", "visual kei"]),
    ("blues", ["blues rock", "delta blues", "chicago blues", "guitar virtuoso"]),
    ("trip-hop", ["downtempo", "chillout", "lounge", "bristol"]),
    ("country", ["alt-country", "bluegrass", "outlaw country", "honky tonk"]),
]
EXTRA_TAGS = [
    "seen live",
    "favorites",
    "awesome",
    "beautiful",
    "mellow",
    "love",
    "00s",
    "90s",
    "german",
    "swedish",
    "canadian",
    "french",
    "instrumental",
    "male vocalists",
    "chill",
    "party",
    "sad",
    "epic",
    "experimental",
    "cover",
]
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ra",
    "ven",
    "dor",
    "the",
    "sun",
    "el",
    "tri",
    "on",
    "ax",
    "mo",
    "ni",
    "ber",
    "sta",
    "qu",
    "ill",
    "ro",
    "za",
    "pe",
    "lix",
    "gra",
    "vu",
]
UNICODE_WORDS = [
    "坂本",
    "龍一",
    "Björk",
    "Sigur Rós",
    "Мумий",
    "Тролль",
    "Mötley",
    "Café",
    "東京",
    "Niño",
    "Zoë",
    "Œuvre",
    "Ærø",
    "Süß",
    "Ελλάδα",
    "Ñu",
]


@dataclass
class SynthConfig:
    users: int = 992
    plays: int = 19_150_000  # approximate total (rounded per user)
    months: int = 51  # history length before END (Feb 2005 .. May 2009)
    clusters: int = 16
    artists: int = 0  # 0: plays // 110 (the real ratio), at least 60
    tracks_per_artist: float = 6.0  # mean
    session_plays: float = 13.0  # mean plays per session (20-minute gaps)
    same_artist: float = 0.75  # P(next play by the same artist)
    album_order: float = 0.6  # P(next same-artist track is the following one)
    missing_artist_mbid: float = 0.03
    missing_track_mbid: float = 0.11
    stray_tabs: int = -1  # lines with a tab inside a name; -1: 1 per 2M plays, >= 2
    bad_timestamps: int = -1  # plays dated outside 2005-2009; -1: 1 per 1M plays, >= 1
    untagged_tracks: float = 0.3  # share of tracks with no planted tags
    seed: int = 0


def _uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    out = []
    for row in raw:
        h = row.tobytes().hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return np.array(out, dtype=object)


def _names(rng: np.random.Generator, n: int, words: tuple[int, int]) -> list[str]:
    counts = rng.integers(words[0], words[1] + 1, size=n)
    syl = rng.integers(0, len(SYLLABLES), size=(n, words[1], 3))
    nsyl = rng.integers(1, 4, size=(n, words[1]))
    kind = rng.random(n)
    uni = rng.integers(0, len(UNICODE_WORDS), size=n)
    names = []
    for i in range(n):
        ws = [
            "".join(SYLLABLES[s] for s in syl[i, w, : nsyl[i, w]]).capitalize()
            for w in range(counts[i])
        ]
        if kind[i] < 0.06:
            ws.insert(0, UNICODE_WORDS[uni[i]])
        name = " ".join(ws)
        if 0.06 <= kind[i] < 0.07:
            name = f'"{name}"'  # starts with a quote
        elif 0.07 <= kind[i] < 0.08:
            name = f'{name} ("{ws[0]}" Mix)'  # contains quotes
        names.append(name)
    return names


def _zipf_weights(n: int, a: float, rng: np.random.Generator) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** a
    return rng.permutation(w / w.sum()) if n > 1 else np.ones(1)


class Catalogue:
    """Artists (in clusters, with Zipf popularity) and their tracks."""

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator):
        n_art = cfg.artists or max(60, cfg.plays // 110)
        self.cluster = rng.integers(0, cfg.clusters, size=n_art)
        self.pop = _zipf_weights(n_art, 1.0, rng)
        n_tr = 1 + rng.poisson(cfg.tracks_per_artist - 1, size=n_art)
        self.first = np.concatenate([[0], np.cumsum(n_tr)[:-1]])
        self.ntracks = n_tr
        n_tracks = int(n_tr.sum())
        self.track_artist = np.repeat(np.arange(n_art), n_tr)
        art_mbid = _uuids(rng, n_art)
        art_mbid[rng.random(n_art) < cfg.missing_artist_mbid] = ""
        tr_mbid = _uuids(rng, n_tracks)
        tr_mbid[rng.random(n_tracks) < cfg.missing_track_mbid] = ""
        art_name = np.array(_names(rng, n_art, (1, 3)), dtype=object)
        tr_name = np.array(_names(rng, n_tracks, (1, 4)), dtype=object)
        tr_name[rng.random(n_tracks) < 2e-4] = ""  # a few tracks without a title
        self.art_mbid, self.art_name = art_mbid, art_name
        self.tr_mbid, self.tr_name = tr_mbid, tr_name
        ta = self.track_artist
        self.suffix = np.array(
            [f"{art_mbid[a]}\t{art_name[a]}\t{tr_mbid[t]}\t{tr_name[t]}" for t, a in enumerate(ta)],
            dtype=object,
        )
        self.by_cluster = [np.flatnonzero(self.cluster == c) for c in range(cfg.clusters)]

    def stray_tab_suffix(self, t: int, rng: np.random.Generator) -> str:
        """The line tail of track ``t`` with a tab inside its artist or track name."""
        a = self.track_artist[t]
        art, tr = self.art_name[a], self.tr_name[t] or "Untitled"
        if rng.random() < 0.5:
            tr = tr + "\t" + "(Live)"
        else:
            art = art + "\t" + "& Friends"
        return f"{self.art_mbid[a]}\t{art}\t{self.tr_mbid[t]}\t{tr}"


def _user_plays(cfg: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    w = rng.lognormal(0.0, 1.1, size=cfg.users)
    n = np.maximum(60, np.round(w / w.sum() * cfg.plays)).astype(np.int64)
    return n


def _user_history(cfg, cat: Catalogue, n_plays: int, rng: np.random.Generator):
    """Return (ts_s ascending, track ids) of one user's history."""
    k = int(rng.integers(1, 4))
    clusters = rng.choice(cfg.clusters, size=k, replace=False)
    cl_w = rng.dirichlet(np.full(k, 2.0))
    # Favourite artists per cluster, Zipf-weighted, drawn by global popularity.
    favs, fav_w = [], []
    for c in clusters:
        pool = cat.by_cluster[c]
        if len(pool) == 0:
            pool = np.arange(len(cat.pop))
        m = int(min(len(pool), max(5, np.sqrt(n_plays) * 1.5)))
        p = cat.pop[pool] / cat.pop[pool].sum()
        chosen = rng.choice(pool, size=m, replace=False, p=p)
        favs.append(chosen)
        fav_w.append(_zipf_weights(m, 1.1, rng))
    # Sessions and their lengths.
    n_sess = max(1, int(round(n_plays / cfg.session_plays)))
    p_len = rng.geometric(1.0 / cfg.session_plays, size=n_sess).astype(np.float64)
    lens = 1 + rng.multinomial(n_plays - n_sess, p_len / p_len.sum())
    # Artist runs: each play continues the artist with p=same_artist.
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    new_run = rng.random(n_plays) >= cfg.same_artist
    new_run[starts] = True
    run_id = np.cumsum(new_run) - 1
    n_runs = int(run_id[-1]) + 1
    sess_of_play = np.repeat(np.arange(n_sess), lens)
    sess_cluster = rng.choice(k, size=n_sess, p=cl_w)
    run_sess = sess_of_play[np.flatnonzero(new_run)]
    run_cl = sess_cluster[run_sess]
    run_artist = np.empty(n_runs, dtype=np.int64)
    explore = rng.random(n_runs) < 0.15
    for ci in range(k):
        sel = np.flatnonzero(run_cl == ci)
        pick = rng.choice(len(favs[ci]), size=len(sel), p=fav_w[ci])
        run_artist[sel] = favs[ci][pick]
        ex = sel[explore[sel]]
        pool = cat.by_cluster[clusters[ci]]
        if len(ex) and len(pool):
            p = cat.pop[pool] / cat.pop[pool].sum()
            run_artist[ex] = rng.choice(pool, size=len(ex), p=p)
    art = run_artist[run_id]
    nt = cat.ntracks[art]
    # Track inside the artist: Zipf-ish random pick, or the next one (album order).
    zipf_pick = np.minimum(rng.zipf(1.6, size=n_plays) - 1, nt - 1)
    offset = zipf_pick.copy()
    seq = (rng.random(n_plays) < cfg.album_order) & ~new_run
    # Album order: offset = previous offset + 1; resolve chains with a cumulative trick.
    idx = np.arange(n_plays)
    anchor = np.where(seq, 0, idx)
    anchor = np.maximum.accumulate(anchor)
    offset = (offset[anchor] + (idx - anchor)) % nt
    tracks = cat.first[art] + offset
    # Timestamps: plays a track length apart; gaps between sessions of hours.
    span = int(rng.uniform(0.08, 1.0) * cfg.months * 30.4 * DAY)
    end = END_TS - (0 if rng.random() < 0.87 else int(rng.uniform(0, 0.5) * span))
    dur = rng.integers(150, 420, size=n_plays)
    busy = int(dur.sum())
    gaps = rng.exponential(1.0, size=n_sess)
    free = max(span - busy, n_sess * 1800)
    gaps = 1260 + gaps / gaps.sum() * free
    step = np.concatenate([[0], dur[:-1]]).astype(np.float64)
    step[starts[1:]] = gaps[1:]
    ts = np.cumsum(step)
    ts = np.round(ts - ts[-1]).astype(np.int64) + end - int(dur[-1])
    return ts, tracks


def generate(out: Path, cfg: SynthConfig, archive: bool = False) -> dict:
    """Write the synthetic dataset under ``out``; return its summary."""
    rng = np.random.default_rng(cfg.seed)
    root = Path(out) / "lastfm-dataset-1K"
    root.mkdir(parents=True, exist_ok=True)
    cat = Catalogue(cfg, rng)
    n_user_plays = _user_plays(cfg, rng)
    total = int(n_user_plays.sum())
    n_stray = cfg.stray_tabs if cfg.stray_tabs >= 0 else max(2, total // 2_000_000)
    n_badts = cfg.bad_timestamps if cfg.bad_timestamps >= 0 else max(1, total // 1_000_000)
    special = rng.choice(total, size=n_stray + n_badts, replace=False)
    stray = set(special[:n_stray].tolist())
    badts = set(special[n_stray:].tolist())
    played = np.zeros(len(cat.suffix), dtype=bool)
    n_lines, n_same, offset = 0, 0, 0
    with open(root / TSV_NAME, "w", encoding="utf-8", newline="\n") as fh:
        for u in range(cfg.users):
            ts, tracks = _user_history(cfg, cat, int(n_user_plays[u]), rng)
            played[tracks] = True
            n_same += int((cat.track_artist[tracks[1:]] == cat.track_artist[tracks[:-1]]).sum())
            ts_str = np.datetime_as_string(ts.astype("datetime64[s]"), unit="s")
            user = f"user_{u + 1:06d}"
            suffix = cat.suffix[tracks]
            lines = [f"{user}\t{t}Z\t{s}" for t, s in zip(ts_str, suffix)]
            for g in range(offset, offset + len(lines)):
                if g in stray:
                    i = g - offset
                    lines[i] = f"{user}\t{ts_str[i]}Z\t{cat.stray_tab_suffix(tracks[i], rng)}"
                if g in badts:
                    i = g - offset
                    bogus = f"1970-01-01T00:00:{int(rng.integers(0, 60)):02d}Z"
                    lines[i] = f"{user}\t{bogus}\t{suffix[i]}"
            offset += len(lines)
            lines.reverse()  # the real file lists each user's plays newest first
            fh.write("\n".join(lines))
            fh.write("\n")
            n_lines += len(lines)
    _write_profiles(root / "userid-profile.tsv", cfg.users, rng)
    (root / "README.txt").write_text(
        "lastfm-dataset-1K (SYNTHETIC, generated by synth.py)\n\n"
        "userid \\t timestamp \\t musicbrainz-artist-id \\t artist-name \\t "
        "musicbrainz-track-id \\t track-name\n\n"
        f"Total Lines: {n_lines:,}\nUnique Users: {cfg.users:,}\nConfig: {asdict(cfg)}\n"
    )
    gt = _write_ground_truth(Path(out) / "ground_truth", cat, played, cfg, rng)
    summary = {
        "config": asdict(cfg),
        "lines": n_lines,
        "users": cfg.users,
        "artists": len(cat.art_name),
        "tracks": len(cat.suffix),
        "tracks_played": int(played.sum()),
        "stray_tab_lines": n_stray,
        "bad_timestamp_lines": n_badts,
        "same_artist_next": n_same / max(1, n_lines - cfg.users),
        **gt,
    }
    if archive:
        with tarfile.open(Path(out) / "lastfm-dataset-1K.tar.gz", "w:gz", compresslevel=1) as tar:
            tar.add(root, arcname="lastfm-dataset-1K")
    write_json(Path(out) / "synth_meta.json", summary)
    return summary


def _write_profiles(path: Path, n_users: int, rng: np.random.Generator) -> None:
    countries = [
        "Japan",
        "Peru",
        "United States",
        "Germany",
        "United Kingdom",
        "Brazil",
        "Poland",
        "Sweden",
        "Canada",
        "Finland",
        "",
    ]
    rows = ["#id\tgender\tage\tcountry\tregistered"]
    months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    for u in range(n_users):
        g = rng.choice(["m", "f", ""], p=[0.6, 0.3, 0.1])
        age = str(rng.integers(16, 60)) if rng.random() < 0.7 else ""
        c = countries[rng.integers(0, len(countries))]
        reg = f"{months[rng.integers(0, 12)]} {rng.integers(1, 29)}, {rng.integers(2003, 2009)}"
        rows.append(f"user_{u + 1:06d}\t{g}\t{age}\t{c}\t{reg}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _write_ground_truth(
    out: Path, cat: Catalogue, played: np.ndarray, cfg: SynthConfig, rng: np.random.Generator
) -> dict:
    """Each track's taste cluster, and planted tags (artist, track, tag, weight)."""
    out.mkdir(parents=True, exist_ok=True)
    n_tags = 0
    with (
        open(out / "tracks.tsv", "w", encoding="utf-8") as ft,
        open(out / "track_tags.tsv", "w", encoding="utf-8") as fg,
    ):
        ft.write("track_mbid\tartist_name\ttrack_name\tcluster\n")
        fg.write("artist\ttrack\ttag\tweight\n")
        for t in np.flatnonzero(played):
            a = cat.track_artist[t]
            c = int(cat.cluster[a]) % len(GENRES)
            art, name = cat.art_name[a], cat.tr_name[t]
            ft.write(f"{cat.tr_mbid[t]}\t{art}\t{name}\t{cat.cluster[a]}\n")
            if not name or "\t" in art or rng.random() < cfg.untagged_tracks:
                continue
            genre, sub = GENRES[c]
            tags = [(genre, 100)] + [
                (s, int(rng.integers(20, 90))) for s in rng.choice(sub, size=2, replace=False)
            ]
            tags.append((EXTRA_TAGS[(a * 7) % len(EXTRA_TAGS)], int(rng.integers(5, 40))))
            for tag, w in tags:
                fg.write(f"{art}\t{name}\t{tag}\t{w}\n")
                n_tags += 1
    return {"planted_tag_rows": n_tags}


def parse_args(argv=None) -> tuple[Path, SynthConfig, bool]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="default <data>/synthetic")
    ap.add_argument("--archive", action="store_true", help="also pack lastfm-dataset-1K.tar.gz")
    cfgs.add_flags(ap, SynthConfig, "generator")
    args = ap.parse_args(argv)
    return args.out or Layout.at().synthetic(), cfgs.from_args(SynthConfig, args), args.archive


def main(argv=None) -> None:
    out, cfg, archive = parse_args(argv)
    log(f"generating {cfg.users} users, ~{cfg.plays:,} plays into {out}")
    summary = generate(out, cfg, archive=archive)
    log(
        f"wrote {summary['lines']:,} lines, {summary['tracks_played']:,} tracks played; "
        f"next play by the same artist {summary['same_artist_next']:.0%}"
    )


if __name__ == "__main__":
    raise SystemExit(run_main(main))
