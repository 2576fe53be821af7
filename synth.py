"""Generate a synthetic Last.fm-1K dataset in the real archive's exact layout.

Writes ``lastfm-dataset-1K/userid-timestamp-artid-artname-traid-traname.tsv``,
``userid-profile.tsv`` and ``README.txt`` (optionally packed as
``lastfm-dataset-1K.tar.gz``) plus ``ground_truth/`` (each track's taste cluster
and planted tags, the format ``fetch_tags.py --tags-file`` reads).

The generator is calibrated to the real data (``bench/fidelity.py`` measures
it; ``docs/FIDELITY.md`` holds the report): the study's population figures
(plays, users, distinct artists and tracks per table and month window, fixed
20-minute sessions) and the behaviour of the real sample's user, taken as a
typical user. Its parts:
- plays per user log-normal; each user listens from a start date until the end
  of the data (most users) or an earlier date, more in recent months;
- artists in taste clusters with Zipf popularity; popular artists have more
  tracks; each user has one to three clusters and a Zipf-weighted set of
  favourite artists, and of each artist a library of tracks that grows with
  the user's plays of it, drawn by the tracks' popularity (so most plays are
  re-listens, spread over many tracks rather than piled onto a few hits);
- sessions of a geometric number of plays a track-length apart, starting
  around the user's own hour of the day; inside a session, runs of one artist,
  often in album order, rarely the same track twice in a row, and some
  sessions on repeat (their opening plays replayed in order, as an album or
  playlist left looping);
- MBIDs missing for the least played artists (~39% of artists, ~3% of plays)
  and for tracks (~11% of plays, every play without an artist MBID among
  them), Unicode names, names that contain or start with ``"``, rare lines
  with a stray tab inside a name, a few timestamps far outside 2005-2009,
  rows ordered by user and newest first.

Usage: ``python synth.py --out data/synthetic --users 40 --plays 200000``.

``--layout lfm1b|lfm2b|mlhd|mlhdplus|yambda|table`` writes the same generated plays in
another published layout instead (``lastfm.layouts``; ``--malformed`` seeds lines each
reader must reject and a broken archive member); ``--stream`` writes a simple,
uncalibrated log (Zipf tracks, sessions) user by user in bounded memory, for
benchmarks at any ``--plays``.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lastfm import config as cfgs
from lastfm.common import PipelineError, log, run_main, write_json
from lastfm.layouts import LAYOUTS, UserPlays, write_layout
from lastfm.paths import Layout

TSV_NAME = "userid-timestamp-artid-artname-traid-traname.tsv"
END_TS = int(np.datetime64("2009-05-05T00:00:00", "s").astype(np.int64))
DAY = 86_400
COMMON_TITLES = 20_000  # the pool of titles that many artists share

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
# Name parts: a syllable is an onset and a vowel, a word one to three syllables,
# so that names collide about as rarely as real ones.
ONSETS = "b c d f g h j k l m n p r s t v w z br ch cr dr fl gr kl pr sh st tr th".split()
VOWELS = "a e i o u y ai ei ou".split()
SYLLABLES = [o + v for o in ONSETS for v in VOWELS]
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
    """The generator's knobs; the comment after each names the statistic it moves."""

    users: int = 992
    plays: int = 19_150_868  # lines in all (the archive's 19,150,868)
    months: int = 51  # history length before the end (Feb 2005 .. May 2009)
    clusters: int = 16
    artists: int = 0  # catalogue artists; 0: plays // 25 -> distinct artists
    tracks_per_artist: float = 14.0  # catalogue tracks per artist, mean -> distinct tracks
    track_zipf: float = 1.5  # popularity of an artist's tracks (> 1) -> distinct tracks
    own_taste: float = 0.05  # (user, artist) pairs that favour other tracks than the hits
    favourites: float = 1.8  # favourite artists per cluster: this * sqrt(user plays)
    favourite_zipf: float = 0.85  # how a user's plays spread over its favourites -> 1m artists
    taste_months: float = 6.0  # sd of a favourite's time in a history (months; 0: none)
    explore: float = 0.03  # artist runs outside the favourites -> distinct artists
    play_seconds: float = 255.0  # mean time from a play to the next in a session
    session_plays: float = 13.4  # mean plays per session (20-minute gaps)
    same_artist: float = 0.79  # P(next play by the same artist), within a session
    library_scale: float = 0.35  # a user's library of an artist: scale * plays ** exp tracks
    library_exp: float = 0.67  # -> re-listens, the share of the user's most played tracks
    library_zipf: float = 0.5  # how plays spread over a library's ranks (0: evenly)
    album_order: float = 0.6  # P(a same-artist next track is the following one)
    repeat_track: float = 0.015  # P(the same track again, back to back)
    session_loop: float = 0.3  # sessions chosen to loop (their opening plays replayed in order)
    loop_plays: float = 11.0  # median plays replayed by such a session -> in-session repeats
    missing_artist_mbid: float = 0.39  # share of played artists without MBID (least played)
    no_track_mbid_artists: float = 0.22  # share of those with MBID whose tracks have none
    mbid_noise: float = 2.0  # sd of the noise on log(plays) that picks them -> their plays
    missing_track_mbid: float = 0.05  # share of the other artists' tracks without MBID
    to_end: float = 0.78  # share of users who listen until the end of the data
    revisit: float = 0.4  # of those who stopped, share back for one session in the last month
    min_span: float = 0.5  # shortest history, as a share of the months -> plays per window
    recency: float = 0.3  # activity grows toward a user's last play: density ~ x^recency
    final_growth: float = 0.18  # monthly growth of listening in the last 6 months -> 1m plays
    burstiness: float = 1.2  # sd of the log of a user's monthly activity -> users per window
    short_breaks: float = 0.465  # P(a session follows the previous after a break) -> gaps
    break_hours: float = 0.5  # median length of such a break
    peak_hour_sd: float = 0.8  # hours: spread of session starts around a user's hour
    second_peak: float = 0.1  # share of listening days opened at a second hour -> gaps
    user_spread: float = 0.25  # sd (log scale) of users' habits around the above -> spread
    stray_tabs: int = -1  # lines with a tab inside a name; -1: 1 per 2M plays, >= 2
    bad_timestamps: int = -1  # plays dated outside 2005-2009; -1: 1 per 1M plays, >= 1
    common_titles: float = 0.2  # share of tracks titled from a shared pool -> track names
    untagged_tracks: float = 0.3  # share of tracks with no planted tags
    seed: int = 0

    def check(self) -> None:
        from lastfm.common import PipelineError

        cfgs.require_above(self, 1, "track_zipf")
        cfgs.require_above(self, 0, "library_scale")
        cfgs.require_at_least(self, 0, "library_exp", "library_zipf", "taste_months")
        cfgs.require_at_least(self, 2, "loop_plays")  # a loop replays two plays at least
        for name in (
            "own_taste",
            "explore",
            "same_artist",
            "album_order",
            "repeat_track",
            "session_loop",
            "missing_artist_mbid",
            "no_track_mbid_artists",
            "missing_track_mbid",
            "to_end",
        ):
            if not 0 <= getattr(self, name) <= 1:
                flag = "--" + name.replace("_", "-")
                raise PipelineError(f"{flag} {getattr(self, name)}: must be in [0, 1]")
        if self.users < 1 or self.plays < self.users or self.months < 1:
            raise PipelineError("--users, --plays and --months must be positive, plays >= users")


def _uuids(rng: np.random.Generator, n: int) -> np.ndarray:
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    out = []
    for row in raw:
        h = row.tobytes().hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return np.array(out, dtype=object)


def _names(
    rng: np.random.Generator, n: int, words: tuple[int, int], min_syllables: int = 1
) -> list[str]:
    counts = rng.integers(words[0], words[1] + 1, size=n)
    syl = rng.integers(0, len(SYLLABLES), size=(n, words[1], 3))
    nsyl = rng.integers(min_syllables, 4, size=(n, words[1]))
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


def _zipf_weights(n: int, a: float, rng: np.random.Generator | None = None) -> np.ndarray:
    """Zipf weights of ``n`` items, in rank order (shuffled when ``rng`` is given)."""
    w = 1.0 / np.arange(1, n + 1) ** a
    w /= w.sum()
    return rng.permutation(w) if rng is not None and n > 1 else w


def _least_played(
    plays: np.ndarray, share: float, noise: float, rng: np.random.Generator
) -> np.ndarray:
    """Mask of ``share`` of the items: the least played by log(plays) + noise."""
    n = int(round(share * len(plays)))
    mask = np.zeros(len(plays), dtype=bool)
    if n:
        score = np.log(plays) + rng.normal(0.0, noise, size=len(plays))
        mask[np.argpartition(score, n - 1)[:n]] = True
    return mask


class Catalogue:
    """Artists (in clusters, with Zipf popularity), their tracks and MBID gaps.

    Names and MBIDs are made only for what is played (``name_played``).
    """

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator):
        n_art = cfg.artists or max(60, cfg.plays // 25)
        self.cluster = rng.integers(0, cfg.clusters, size=n_art)
        self.pop = _zipf_weights(n_art, 1.0, rng)
        # Popular artists have more tracks: mean tracks ~ popularity^0.3.
        lam = self.pop**0.3
        lam = lam / lam.mean() * max(cfg.tracks_per_artist - 1, 0.0)
        n_tr = 1 + rng.poisson(lam)
        self.first = np.concatenate([[0], np.cumsum(n_tr)[:-1]])
        self.ntracks = n_tr
        self.track_artist = np.repeat(np.arange(n_art), n_tr)
        self.by_cluster = [np.flatnonzero(self.cluster == c) for c in range(cfg.clusters)]
        self.suffix: np.ndarray | None = None

    def assign_mbids(self, plays: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> None:
        """Which artists and tracks have MBIDs, given each track's play count.

        The least played artists have none (nor have their tracks); of the others,
        the least played have none for their tracks; other tracks miss one at random.
        """
        art_plays = np.bincount(self.track_artist, weights=plays, minlength=len(self.pop))
        played = np.flatnonzero(art_plays > 0)
        self.art_has_mbid = np.ones(len(self.pop), dtype=bool)
        self.art_has_mbid[
            played[_least_played(art_plays[played], cfg.missing_artist_mbid, cfg.mbid_noise, rng)]
        ] = False
        mbid_art = played[self.art_has_mbid[played]]
        no_tr = _least_played(art_plays[mbid_art], cfg.no_track_mbid_artists, cfg.mbid_noise, rng)
        art_tracks_mbid = self.art_has_mbid.copy()
        art_tracks_mbid[mbid_art[no_tr]] = False
        self.tr_has_mbid = art_tracks_mbid[self.track_artist] & (
            rng.random(len(self.track_artist)) >= cfg.missing_track_mbid
        )

    def name_played(self, played: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> None:
        """MBIDs, names and each played track's line tail (``suffix``)."""
        n_art, n_tracks = len(self.pop), len(self.track_artist)
        arts = np.unique(self.track_artist[played])
        self.art_mbid = np.full(n_art, "", dtype=object)
        self.art_name = np.full(n_art, "", dtype=object)
        has = arts[self.art_has_mbid[arts]]
        self.art_mbid[has] = _uuids(rng, len(has))
        self.art_name[arts] = _names(rng, len(arts), (1, 3), min_syllables=2)
        tracks = np.flatnonzero(played)
        self.tr_mbid = np.full(n_tracks, "", dtype=object)
        self.tr_name = np.full(n_tracks, "", dtype=object)
        has = tracks[self.tr_has_mbid[tracks]]
        self.tr_mbid[has] = _uuids(rng, len(has))
        names = np.array(_names(rng, len(tracks), (1, 4)), dtype=object)
        # Titles many artists share ("Intro", "Home"): a Zipf-weighted common pool.
        shared = rng.random(len(tracks)) < cfg.common_titles
        pool = np.array(_names(rng, COMMON_TITLES, (1, 2)), dtype=object)
        names[shared] = pool[
            rng.choice(COMMON_TITLES, size=int(shared.sum()), p=_zipf_weights(COMMON_TITLES, 0.8))
        ]
        names[rng.random(len(tracks)) < 2e-4] = ""  # a few tracks without a title
        self.tr_name[tracks] = names
        self.suffix = np.full(n_tracks, None, dtype=object)
        am, an, tm, tn = self.art_mbid, self.art_name, self.tr_mbid, self.tr_name
        ta = self.track_artist
        self.suffix[tracks] = [f"{am[ta[t]]}\t{an[ta[t]]}\t{tm[t]}\t{tn[t]}" for t in tracks]

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
    """Plays per user: log-normal, at least 60 (or all alike when too few), summing
    to ``cfg.plays`` exactly."""
    w = rng.lognormal(0.0, 1.1, size=cfg.users)
    floor = min(60, cfg.plays // cfg.users)
    n = np.maximum(floor, np.floor(w / w.sum() * cfg.plays)).astype(np.int64)
    diff = cfg.plays - int(n.sum())
    order = np.argsort(-n)  # the rounding error goes to (or comes from) the heaviest users
    i = 0
    while diff != 0:
        u = order[i % len(order)]
        step = 1 if diff > 0 else -1
        if n[u] + step >= floor:
            take = step * min(abs(diff), max(1, int(n[u]) // 10))
            if step < 0:
                take = -min(-take, int(n[u]) - floor)
            n[u] += take
            diff -= take
        i += 1
    return n


def _session_starts(
    cfg: SynthConfig, n_sess: int, busy: np.ndarray, hour_sd: float, rng: np.random.Generator
) -> np.ndarray:
    """Start times (s) of one user's sessions, ``busy[i]`` seconds long each.

    A session either follows the previous one after a short break (p=short_breaks;
    log-normal, median ``break_hours``) or opens a listening day: days drawn over
    the user's span (more toward its end, in months of random intensity), at the
    user's own hour of the day. A session starts at least 21 minutes after the
    previous one ends.
    """
    full = cfg.months * 30.4 * DAY
    # A heavy listener's history is long enough to hold its sessions comfortably.
    span = max(rng.uniform(cfg.min_span, 0.95), min(0.95, 3.0 * busy.sum() / full)) * full
    end = END_TS - (0 if rng.random() < cfg.to_end else rng.uniform(0.0, 0.5) * span)
    follows = rng.random(n_sess) < cfg.short_breaks
    follows[0] = False
    n_days = int((~follows).sum())
    # Listening days: distinct while there are enough, weighted by growth toward
    # the end and a random intensity per month.
    first_day = np.floor((end - span) / DAY)
    n_span = max(1, int(span // DAY))
    month = np.arange(n_span) // 30
    w = rng.lognormal(0.0, cfg.burstiness, month[-1] + 1)[month]
    w *= ((np.arange(n_span) + 0.5) / n_span) ** cfg.recency
    # Everyone listens more in the data's last six months: growth per month.
    months_left = np.minimum((END_TS - (first_day + np.arange(n_span)) * DAY) / (30.4 * DAY), 6)
    w *= (1.0 + cfg.final_growth) ** (6 - months_left)
    p = w / w.sum()
    pick = rng.choice(n_span, size=min(n_days, n_span), replace=False, p=p)
    if n_days > n_span:
        pick = np.concatenate([pick, rng.choice(n_span, size=n_days - n_span, p=p)])
    day = first_day + np.sort(pick)
    # The user's hours: a main peak and, for some sessions, a second one 6-12 h later.
    peak = rng.uniform(0, 24) + (rng.random(n_days) < cfg.second_peak) * rng.uniform(6, 12)
    hour = np.mod(peak + rng.normal(0.0, hour_sd, size=n_days), 24.0)
    opening = np.sort(day * DAY + hour * 3600)
    # A following session: the previous one's end plus a break, chained from its opener.
    need = busy + 1260.0
    brk = np.where(follows, rng.lognormal(np.log(cfg.break_hours * 3600), 1.0, n_sess), 0.0)
    step = np.concatenate([[0.0], busy[:-1]]) + brk
    chain = np.cumsum(np.where(follows, step, 0.0))
    opener = np.maximum.accumulate(np.where(follows, 0, np.arange(n_sess)))
    start = opening[np.cumsum(~follows) - 1] + chain - chain[opener]
    # No overlap: start'_i = max(start_i, start'_{i-1} + need_{i-1}), via a running max.
    before = np.concatenate([[0.0], np.cumsum(need)[:-1]])
    start = before + np.maximum.accumulate(start - before)
    last_end = start[-1] + busy[-1]
    if last_end > end:
        start -= last_end - end
    # Some users who stopped come back once in the data's last month.
    if end < END_TS - 30 * DAY and n_sess > 1 and rng.random() < cfg.revisit:
        start[-1] = END_TS - rng.uniform(0.1, 30.0) * DAY
    return start


def _library_picks(
    cfg: SynthConfig, cat: Catalogue, art: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each play's track offset within its artist (0: the artist's biggest hit), and
    per play where its artist's ranking starts in ``ranked``, its library's size, and
    ``ranked`` (each played artist's offsets in the user's order).

    A user who plays an artist ``n`` times keeps a library of
    ``library_scale * n ** library_exp`` of its tracks (at least one, at most all): the
    first of the user's own ranking of the artist's tracks, a Plackett-Luce draw by
    their popularity (Zipf ``track_zipf``, rotated for users with their own taste in
    that artist). Plays pick a rank in that library by a power law of exponent
    ``library_zipf`` (0: uniform), so a large history spreads over many tracks played
    a few times each, as real listeners' do, instead of piling onto the hits.
    """
    u_art, inv, n_ua = np.unique(art, return_inverse=True, return_counts=True)
    nt = cat.ntracks[u_art]
    lib = np.clip(np.rint(cfg.library_scale * n_ua**cfg.library_exp), 1, nt).astype(np.int64)
    own = rng.random(len(u_art)) < cfg.own_taste
    shift = np.where(own, rng.integers(0, 1 << 30, size=len(u_art)), 0)
    start = np.concatenate([[0], np.cumsum(nt)[:-1]])
    ranked = np.empty(int(nt.sum()), dtype=np.int64)  # each artist's tracks, the user's order
    for n in np.unique(nt).tolist():
        sel = np.flatnonzero(nt == n)
        log_w = -cfg.track_zipf * np.log(np.arange(1, n + 1))
        rotated = (np.arange(n)[None, :] - shift[sel, None]) % n
        keys = log_w[rotated] + rng.gumbel(size=(len(sel), n))
        ranked[start[sel, None] + np.arange(n)] = np.argsort(-keys, axis=1)
    size = lib[inv].astype(np.float64)
    u = rng.random(len(art))
    a = 1.0 - cfg.library_zipf  # inverse CDF of density ~ x^-library_zipf on [1, size + 1)
    if abs(a) < 1e-9:
        x = np.exp(u * np.log(size + 1))
    else:
        x = (1 + u * ((size + 1) ** a - 1)) ** (1 / a)
    rank = np.minimum(np.floor(x).astype(np.int64) - 1, lib[inv] - 1)
    return ranked[start[inv] + rank], start[inv], lib[inv], ranked


def _user_history(cfg: SynthConfig, cat: Catalogue, n_plays: int, rng: np.random.Generator):
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
        m = int(min(len(pool), max(5, np.sqrt(n_plays) * cfg.favourites)))
        p = cat.pop[pool] / cat.pop[pool].sum()
        chosen = rng.choice(pool, size=m, replace=False, p=p)
        favs.append(chosen)
        fav_w.append(_zipf_weights(m, cfg.favourite_zipf))  # drawn by popularity, in order
    # Sessions and their lengths (geometric).
    # This user's habits: the configured ones, varied across users by user_spread.
    sd = cfg.user_spread
    session_plays = max(1.5, cfg.session_plays * np.exp(rng.normal(0.0, sd) - sd * sd / 2))
    logit = np.log(cfg.same_artist / max(1e-9, 1 - cfg.same_artist))
    same_artist = 1 / (1 + np.exp(-(logit + rng.normal(0.0, 2 * sd))))
    play_seconds = cfg.play_seconds * np.exp(rng.normal(0.0, sd / 2))
    hour_sd = cfg.peak_hour_sd * np.exp(rng.normal(0.0, sd))
    n_sess = max(1, int(round(n_plays / session_plays)))
    p_len = rng.geometric(1.0 / session_plays, size=n_sess).astype(np.float64)
    lens = 1 + rng.multinomial(n_plays - n_sess, p_len / p_len.sum())
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    first = np.zeros(n_plays, dtype=bool)
    first[starts] = True
    sess_of_play = np.repeat(np.arange(n_sess), lens)
    # Timestamps: plays a track length apart; sessions at the user's hours.
    dur = rng.integers(int(0.55 * play_seconds), int(1.45 * play_seconds) + 1, size=n_plays)
    step = np.concatenate([[0], dur[:-1]]).astype(np.float64)
    step[first] = 0.0
    within = np.cumsum(step)
    within -= within[starts][sess_of_play]
    busy = within[np.r_[starts[1:] - 1, n_plays - 1]]
    sess_start = _session_starts(cfg, n_sess, busy, hour_sd, rng)
    ts = np.round(sess_start[sess_of_play] + within).astype(np.int64)
    # Artist runs: each play continues the artist with p=same_artist.
    new_run = (rng.random(n_plays) >= same_artist) | first
    run_id = np.cumsum(new_run) - 1
    n_runs = int(run_id[-1]) + 1
    sess_cluster = rng.choice(k, size=n_sess, p=cl_w)
    run_cl = sess_cluster[sess_of_play[np.flatnonzero(new_run)]]
    run_artist = np.empty(n_runs, dtype=np.int64)
    explore = rng.random(n_runs) < cfg.explore
    # Taste drifts: each favourite is played around its own month of the user's history
    # (a Gaussian bump of sd taste_months), the runs of each month drawn with its weights.
    month = (sess_start - sess_start[0]) // (30.4 * DAY)
    run_month = month[sess_of_play[np.flatnonzero(new_run)]]
    for ci in range(k):
        sel = np.flatnonzero(run_cl == ci)
        m = len(favs[ci])
        centre = rng.uniform(0.0, month[-1] + 1.0, m)
        for e in np.unique(run_month[sel]).tolist():
            here = sel[run_month[sel] == e]
            w = fav_w[ci]
            if cfg.taste_months > 0:  # in logs: far from every centre, the nearest leads
                lw = np.log(w) - 0.5 * ((e + 0.5 - centre) / cfg.taste_months) ** 2
                w = np.exp(lw - lw.max())
                w = w / w.sum()
            run_artist[here] = favs[ci][rng.choice(m, size=len(here), p=w)]
        ex = sel[explore[sel]]
        pool = cat.by_cluster[clusters[ci]]
        if len(ex) and len(pool):
            p = cat.pop[pool] / cat.pop[pool].sum()
            run_artist[ex] = rng.choice(pool, size=len(ex), p=p)
    art = run_artist[run_id]
    nt = cat.ntracks[art]
    # Track inside the artist: a pick from the user's own library of that artist;
    # or the next one (album order).
    offset, lib_start, lib_size, ranked = _library_picks(cfg, cat, art, rng)
    idx = np.arange(n_plays)
    seq = (rng.random(n_plays) < cfg.album_order) & ~new_run
    anchor = np.maximum.accumulate(np.where(seq, 0, idx))
    offset = (offset[anchor] + (idx - anchor)) % nt
    # No accidental back-to-back repeat (deliberate ones with p=repeat_track below): such a
    # play takes another track of the library (of the user's two first, if it holds one),
    # again until no play repeats the one before (a replacement can meet the next play).
    for _ in range(64):
        again = np.r_[False, (art[1:] == art[:-1]) & (offset[1:] == offset[:-1])] & ~first
        j = np.flatnonzero(again & (nt > 1))
        if not len(j):
            break
        span = np.maximum(lib_size[j], 2)
        r = rng.integers(0, 1 << 30, size=len(j))
        other = ranked[lib_start[j] + r % span]
        clash = other == offset[j]
        other[clash] = ranked[lib_start[j][clash] + (r[clash] + 1) % span[clash]]
        offset[j] = other
    tracks = cat.first[art] + offset
    repeat = (rng.random(n_plays) < cfg.repeat_track) & ~first
    tracks = tracks[np.maximum.accumulate(np.where(repeat, 0, idx))]
    # Sessions on repeat: the plays after a session's first ``period`` replay them in order
    # (a session no longer than its period plays through; none whose replay would put its
    # first track right after its last one, a back-to-back repeat).
    loops = rng.random(n_sess) < cfg.session_loop
    period = np.maximum(2, np.rint(rng.lognormal(np.log(cfg.loop_plays), 0.5, n_sess)))
    period = period.astype(np.int64)
    wrap = np.minimum(starts + period - 1, n_plays - 1)
    loops &= (period < lens) & (tracks[wrap] != tracks[starts])
    pos = idx - starts[sess_of_play]
    cycle = starts[sess_of_play] + pos % period[sess_of_play]
    tracks = tracks[np.where(loops[sess_of_play], cycle, idx)]
    return ts, tracks


def simulate(cfg: SynthConfig) -> tuple[Catalogue, list[tuple[np.ndarray, np.ndarray]]]:
    """The catalogue and each user's (timestamps, track ids), before any text."""
    rng = np.random.default_rng(cfg.seed)
    cat = Catalogue(cfg, rng)
    n_user_plays = _user_plays(cfg, rng)
    histories = [_user_history(cfg, cat, int(n), rng) for n in n_user_plays]
    all_tracks = np.concatenate([tracks for _, tracks in histories])
    counts = np.bincount(all_tracks, minlength=len(cat.track_artist))
    cat.assign_mbids(counts, cfg, rng)
    return cat, histories


def generate(out: Path, cfg: SynthConfig, archive: bool = False) -> dict:
    """Write the synthetic dataset under ``out``; return its summary.

    ``synth_meta.json`` is removed first and written last: a killed run leaves no
    summary beside a partial dataset (``bench/fidelity.py`` trusts data with one).
    """
    Path(out, "synth_meta.json").unlink(missing_ok=True)
    cat, histories = simulate(cfg)
    rng = np.random.default_rng([cfg.seed, 1])
    root = Path(out) / "lastfm-dataset-1K"
    root.mkdir(parents=True, exist_ok=True)
    played = np.zeros(len(cat.track_artist), dtype=bool)
    for _, tracks in histories:
        played[tracks] = True
    cat.name_played(played, cfg, rng)
    total = sum(len(t) for _, t in histories)
    n_stray = cfg.stray_tabs if cfg.stray_tabs >= 0 else max(2, total // 2_000_000)
    n_badts = cfg.bad_timestamps if cfg.bad_timestamps >= 0 else max(1, total // 1_000_000)
    special = rng.choice(total, size=n_stray + n_badts, replace=False)
    stray = set(special[:n_stray].tolist())
    badts = set(special[n_stray:].tolist())
    n_lines, n_same, offset = 0, 0, 0
    with open(root / TSV_NAME, "w", encoding="utf-8", newline="\n") as fh:
        for u, (ts, tracks) in enumerate(histories):
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
        "artists": len(cat.pop),
        "tracks": len(cat.track_artist),
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


def user_chunks(cfg: SynthConfig) -> Iterator[UserPlays]:
    """The generator's plays, one user at a time (chronological), with the MBIDs and
    names ``generate`` writes (the lfm1k file without its stray tabs and bad dates)."""
    cat, histories = simulate(cfg)
    played = np.zeros(len(cat.track_artist), dtype=bool)
    for _, tracks in histories:
        played[tracks] = True
    cat.name_played(played, cfg, np.random.default_rng([cfg.seed, 1]))
    for u, (ts, tracks) in enumerate(histories):
        artists = cat.track_artist[tracks]
        yield UserPlays(
            user=f"user_{u + 1:06d}",
            ts_s=ts,
            artist=artists,
            track=tracks,
            artist_mbid=cat.art_mbid[artists],
            track_mbid=cat.tr_mbid[tracks],
            artist_name=cat.art_name[artists],
            track_name=cat.tr_name[tracks],
        )


def stream_chunks(
    cfg: SynthConfig, max_user_plays: int = 1_000_000, tracks: int = 0
) -> Iterator[UserPlays]:
    """A simple generated log for benchmarks, one user at a time in bounded memory
    (``plays // 100_000`` users at least, none above ``max_user_plays``): Zipf-popular
    tracks (exponent 1.1) of a catalogue of ``tracks`` tracks (0: ``plays // 100``, 1K to
    2M; ten per artist); sessions of about ``cfg.session_plays`` plays 150-360 s apart, a day or
    so between sessions. Not calibrated; no MBIDs or names (the writers make
    pseudo-MBIDs from the ids)."""
    rng = np.random.default_rng([cfg.seed, 7])
    n_users = max(cfg.users, -(-cfg.plays // 100_000))
    w = rng.lognormal(0.0, 1.0, n_users)
    counts = np.clip(np.floor(w / w.sum() * cfg.plays), 1, max_user_plays).astype(np.int64)
    deficit = cfg.plays - int(counts.sum())
    while deficit != 0:  # spread the rounding (or clipping) over users with room
        room = (
            np.flatnonzero(counts < max_user_plays) if deficit > 0 else np.flatnonzero(counts > 1)
        )
        if not len(room):
            raise PipelineError("--plays too large for --users at 1M plays per user")
        step = max(1, abs(deficit) // len(room))
        for u in room[: abs(deficit)]:
            take = (
                min(step, max_user_plays - counts[u]) if deficit > 0 else -min(step, counts[u] - 1)
            )
            counts[u] += take
            deficit -= take
            if deficit == 0:
                break
    n_tracks = tracks or int(min(2_000_000, max(1_000, cfg.plays // 100)))
    if n_tracks < 10:
        raise PipelineError(f"--stream-tracks {n_tracks}: at least 10 tracks (one artist)")
    cdf = np.cumsum(1.0 / np.arange(1, n_tracks + 1) ** 1.1)
    cdf /= cdf[-1]
    by_rank = rng.permutation(n_tracks)
    for u, n in enumerate(counts.tolist()):
        n_sess = max(1, int(round(n / cfg.session_plays)))
        cuts = np.sort(rng.choice(np.arange(1, n), size=min(n_sess - 1, n - 1), replace=False))
        first = np.zeros(n, dtype=bool)
        first[np.concatenate([[0], cuts])] = True
        between = min(86_400.0, 4 * 365 * 86_400.0 / n_sess)  # a heavy user's years stay few
        gaps = np.where(first, rng.exponential(between, n) + 1_800, rng.integers(150, 360, n))
        gaps[0] = 0
        ts = np.cumsum(gaps).astype(np.int64)
        ts += END_TS - ts[-1] - int(rng.integers(0, 30 * DAY))
        tracks = by_rank[np.searchsorted(cdf, rng.random(n))].astype(np.int64)
        yield UserPlays(user=f"user_{u + 1:07d}", ts_s=ts, artist=tracks // 10, track=tracks)


def generate_layout(
    out: Path,
    cfg: SynthConfig,
    layout: str,
    malformed: bool = False,
    stream: bool = False,
    stream_tracks: int = 0,
) -> dict:
    """Write the generator's plays (``stream``: ``stream_chunks``', over ``stream_tracks``
    tracks) in ``layout`` under ``out``; ``synth_meta.json`` (written last) holds the
    layout's summary."""
    Path(out, "synth_meta.json").unlink(missing_ok=True)
    chunks = stream_chunks(cfg, tracks=stream_tracks) if stream else user_chunks(cfg)
    summary = write_layout(
        layout, chunks, Path(out), np.random.default_rng([cfg.seed, 2]), malformed
    )
    meta = {"config": asdict(cfg), "stream": stream, **summary}
    if stream:
        meta["stream_tracks"] = stream_tracks
    write_json(Path(out) / "synth_meta.json", meta)
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


def parse_cli(argv=None):
    """(out, generator config, parsed flags: archive, layout, stream, malformed)."""
    ap = cfgs.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="default <data>/synthetic")
    ap.add_argument("--archive", action="store_true", help="also pack lastfm-dataset-1K.tar.gz")
    ap.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="lfm1k",
        help="the published layout to write (default lfm1k: the Last.fm-1K archive)",
    )
    ap.add_argument(
        "--stream",
        action="store_true",
        help="a simple uncalibrated log written user by user in bounded memory (benchmarks)",
    )
    ap.add_argument(
        "--stream-tracks",
        type=int,
        default=0,
        help="--stream's catalogue size (default 0: plays // 100, 1K to 2M tracks)",
    )
    ap.add_argument(
        "--malformed",
        action="store_true",
        help="seed lines every reader must reject and one broken archive member",
    )
    cfgs.add_flags(ap, SynthConfig, "generator")
    args = ap.parse_args(argv)
    if args.archive and (args.layout != "lfm1k" or args.stream):
        ap.error("--archive packs the lfm1k layout only")
    if args.stream_tracks and not args.stream:
        ap.error("--stream-tracks sizes the --stream log's catalogue only")
    if args.stream_tracks < 0:
        ap.error("--stream-tracks must be at least 0")
    return args.out or Layout.at().synthetic(), cfgs.from_args(SynthConfig, args), args


def parse_args(argv=None) -> tuple[Path, SynthConfig, bool]:
    out, cfg, args = parse_cli(argv)
    return out, cfg, args.archive


def main(argv=None) -> None:
    out, cfg, args = parse_cli(argv)
    if args.layout != "lfm1k" or args.stream or args.malformed:
        mode = "a streamed simple log" if args.stream else "the generator's plays"
        log(f"writing {mode} ({cfg.users} users, ~{cfg.plays:,} plays) as {args.layout} into {out}")
        summary = generate_layout(
            out, cfg, args.layout, args.malformed, args.stream, args.stream_tracks
        )
        log(f"wrote {summary['plays']:,} plays of {summary['users']:,} users: {summary['files']}")
        return
    log(f"generating {cfg.users} users, ~{cfg.plays:,} plays into {out}")
    summary = generate(out, cfg, archive=args.archive)
    log(
        f"wrote {summary['lines']:,} lines, {summary['tracks_played']:,} tracks played; "
        f"next play by the same artist {summary['same_artist_next']:.0%}"
    )


if __name__ == "__main__":
    raise SystemExit(run_main(main))
