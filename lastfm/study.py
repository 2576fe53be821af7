"""The real dataset's published figures: the study's tables and the archive's README.

Only figures published with the data or the study live here; figures measured
on the real sample are computed from it where they are needed
(``bench/fidelity.py``), never copied.
"""

from __future__ import annotations

# The study's describe() tables: raw (read with pandas defaults, which lost 52,015
# of the 19,150,868 lines to quote processing), after dropping rows with a missing
# value ("clean"), and the month windows of the cleaned plays.
STUDY = {
    "raw": {
        "rows": 19_098_853,
        "user_id": 992,
        "timestamp": 17_454_730,
        "artist_id": 107_295,
        "artist_id_count": 18_498_005,
        "artist_name": 173_921,
        "track_id": 960_402,
        "track_id_count": 16_936_134,
        "track_name": 1_083_471,
    },
    "clean": {"rows": 16_936_134, "user_id": 992, "artist_id": 83_905, "track_id": 960_402},
    "6m": {"rows": 3_052_646, "user_id": 923, "track_id": 465_798},
    "3m": {"rows": 1_645_146, "user_id": 902, "track_id": 339_118},
    "2m": {"rows": 1_113_398, "user_id": 886, "track_id": 270_248},
    "1m": {"rows": 588_774, "user_id": 858, "track_id": 181_590, "artist_id": 24_978},
}

# The study's sessions: each user's timeline cut into fixed 20-minute clock windows,
# counted per month window before any filter; users with >= 6 sessions in 1m.
STUDY_SESSIONS = {"6m": 448_074, "3m": 325_614, "2m": 259_027, "1m": 173_327}
STUDY_1M = {"sessions": STUDY_SESSIONS["1m"], "users": 742, "plays_per_session": 3.4}

# The archive's README.txt ("Data Statistics").
README = {
    "lines": 19_150_868,
    "users": 992,
    "artists_with_mbid": 107_528,
    "artists_without_mbid": 69_420,
}
