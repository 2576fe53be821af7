"""What a kept play is, for both engines: the columns each layout must fill, and the
month windows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lastfm.common import PipelineError

# Besides the user, the time and the track id, what a kept play must have, per layout
# (``encode``'s names). Last.fm-1K: both MBIDs and both names (the study's dropna).
REQUIRED = {
    "lfm1k": ["artist_id", "artist_name", "track_name"],
    "lfm1b": ["artist_id"],
    "lfm2b": [],
    "mlhd": [],
    "mlhdplus": [],
    "yambda": [],
    "table": [],
}

# Plausible play dates [from, to) by layout, unless --valid-from / --valid-to say otherwise.
# Last.fm's scrobbles start in 2005; Last.fm-1K's crawl ended on 2009-05-05. The other
# Last.fm-derived logs: only dates before Last.fm or after 2020 (LFM-2b's last year, the
# latest of them) are excluded; set --valid-to to a dataset's own collection end. Yambda's
# timestamps are relative (not dates) and a generic table's are unknown: nothing excluded.
PLAUSIBLE = {
    "lfm1k": ("2005-02-01", "2009-05-06"),
    "lfm1b": ("2005-02-01", "2021-01-01"),
    "lfm2b": ("2005-02-01", "2021-01-01"),
    "mlhd": ("2005-02-01", "2021-01-01"),
    "mlhdplus": ("2005-02-01", "2021-01-01"),
    "yambda": ("1970-01-01", "2200-01-01"),
    "table": ("1970-01-01", "2200-01-01"),
}


def month_windows(
    ts_s: np.ndarray, in_range: np.ndarray, months: list[int], anchor: str
) -> dict[str, tuple[int, int]]:
    """[start, end) seconds of each window, anchored at the last (or first) play."""
    valid = ts_s[in_range]
    if len(valid) == 0:
        raise PipelineError(
            "no play falls inside the plausible time range; check --valid-from/--valid-to"
        )
    out = {}
    for m in months:
        if anchor == "end":
            end = int(valid.max()) + 1
            start = int((pd.Timestamp(end, unit="s") - pd.DateOffset(months=m)).timestamp())
        else:
            start = int(valid.min())
            end = int((pd.Timestamp(start, unit="s") + pd.DateOffset(months=m)).timestamp())
        out[f"{m}m"] = (start, end)
    return out
