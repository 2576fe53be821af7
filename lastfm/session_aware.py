"""Session-aware baselines: the session-based ones given each listener's earlier sessions.

In music the listener's own history is the strongest signal. Latifi, Mauro & Jannach
(Information Sciences 2021, "Session-aware recommendation: a surprising quest for the state
of the art") extended the session-based neighbourhood and rule methods with three
mechanisms and found the extended methods beat the neural session-aware models, Last.fm
among their data; session-rec implements them (``algorithms/baselines/usr.py``,
``algorithms/knn/uvstan.py``, ``algorithms/extensions/reminder.py``). As defined there:

- extend (``extend`` = E > 0, V-SKNN and VSTAN): a prefix of n < E plays gets the
  listener's last E - n earlier plays put in front of it, oldest first; the method then
  sees the extended prefix (its position weights run over the whole of it);
- boost (``boost`` = b > 0): SR's rule a -> b scores x (1 + b) when the listener's own
  training sessions hold it (within SR's ``steps``); a V-SKNN / VSTAN neighbour session of
  the same listener has its similarity x (1 + b) before the ``k`` nearest are kept;
- remind (``remind`` = w > 0, session-rec's "hybrid" reminders with interaction recency):
  score(i) = base(i) / max base + w IRec(i) / max IRec, IRec(i) = t / (t - t_i) for each
  track i of the listener's earlier plays, t the prefix's last play, t_i the listener's
  last play of i (t and t_i in seconds; t - t_i at least 1).

One protocol choice differs from session-rec, whose listener history is the training
split only (fitted once, offline): here a listener's history is every play of theirs in
a session that started before the current one - training, validation and earlier test
sessions, never the current session or a later one (``ListenerHistory``). This is what a
deployed recommender sees, and it keeps validation and test events alike. SR's boost
reads rules of the training split only, as SR's rules themselves.

The methods are named as session-rec names them: SR_BR, V-SKNN_EBR, VSTAN_EBR; each is
tuned on validation over ``SESSION_AWARE_GRIDS`` (which include 0 for every mechanism:
the session-based method itself) with its base fixed at the base's own validation choice.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lastfm.baselines import (
    VSKNN,
    VSTAN,
    Baseline,
    SequentialRules,
    _grid,
    _in_sorted,
)
from lastfm.common import PipelineError
from lastfm.data import Events, last_known_items, recent

HISTORY_COLUMNS = ["user_idx", "session_id", "position", "item_idx", "ts_s"]


class ListenerHistory:
    """Every known play (item > 0) of some splits, by listener, then session, then position:
    what each listener played in the sessions before a given one."""

    def __init__(self, frames: list[pd.DataFrame]):
        missing = [c for f in frames for c in HISTORY_COLUMNS if c not in f]
        if missing:
            raise PipelineError(
                f"session-aware baselines need the columns {HISTORY_COLUMNS}; "
                f"missing {sorted(set(missing))}"
            )
        cols = {c: np.concatenate([f[c].to_numpy() for f in frames]) for c in HISTORY_COLUMNS}
        known = cols["item_idx"] > 0
        cols = {c: v[known] for c, v in cols.items()}
        order = np.lexsort((cols["position"], cols["session_id"], cols["user_idx"]))
        self.user = cols["user_idx"].astype(np.int64)[order]
        self.session = cols["session_id"].astype(np.int64)[order]
        self.item = cols["item_idx"].astype(np.int64)[order]
        self.ts = cols["ts_s"].astype(np.int64)[order]
        self._span = int(self.session.max(initial=0)) + 1
        if int(self.user.max(initial=0)) + 1 > np.iinfo(np.int64).max // (self._span + 1):
            raise PipelineError("session-aware history: too many listeners x sessions for int64")
        self._key = self.user * (self._span + 1) + self.session  # sorted: (user, session)

    def bounds(self, users, sessions) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) per query: the listener's plays in sessions before ``sessions`` are
        ``[lo, hi)`` of the arrays (none when ``lo == hi``)."""
        users = np.asarray(users, np.int64)
        # a session past every stored one: all the listener's plays (its key, span, is
        # above theirs and below the next listener's first)
        sessions = np.minimum(np.asarray(sessions, np.int64), self._span)
        lo = np.searchsorted(self.user, users, side="left")
        hi = np.searchsorted(self._key, users * (self._span + 1) + sessions, side="left")
        return lo, np.maximum(hi, lo)

    def tails(self, users, sessions, n: np.ndarray) -> list[np.ndarray]:
        """For each query, the listener's last ``n`` plays (items, oldest first) before the
        session (fewer when the history is shorter)."""
        lo, hi = self.bounds(users, sessions)
        start = np.maximum(lo, hi - np.maximum(n, 0))
        return [self.item[a:b] for a, b in zip(start, hi)]

    def recency(self, users, sessions, times, n_items: int) -> sp.csr_matrix:
        """(B, V+1) IRec / max IRec per row (``remind`` in the module docstring): for each
        track of the listener's earlier plays, (t - T) / (t - t_i) with T the listener's
        last earlier play: 1 for the most recent track, falling with its age."""
        users = np.asarray(users, np.int64)
        sessions = np.asarray(sessions, np.int64)
        t = np.asarray(times, np.float64)
        lo, hi = self.bounds(users, sessions)
        pair = users * (self._span + int(sessions.max(initial=0)) + 1) + sessions
        uniq, first, inv = np.unique(pair, return_index=True, return_inverse=True)
        per: list[tuple[np.ndarray, np.ndarray]] = []
        for k in first:  # each (listener, session) once: its tracks and their last plays
            a, b = lo[k], hi[k]
            items, ts = self.item[a:b][::-1], self.ts[a:b][::-1]  # newest first
            u, idx = np.unique(items, return_index=True)  # the first seen = the last play
            per.append((u, ts[idx].astype(np.float64)))
        sizes = np.array([len(per[j][0]) for j in inv], np.int64)
        rows = np.repeat(np.arange(len(users)), sizes)
        if not len(rows):
            return sp.csr_matrix((len(users), n_items + 1))
        cols = np.concatenate([per[j][0] for j in inv])
        last = np.concatenate([per[j][1] for j in inv])
        newest = np.array([p[1].max(initial=-np.inf) for p in per])[inv]
        age = np.maximum(t[rows] - last, 1.0)
        vals = np.maximum(t[rows] - newest[rows], 1.0) / age
        return sp.csr_matrix((vals, (rows, cols)), shape=(len(users), n_items + 1))


def with_history(prefixes, lengths, users, sessions, history: ListenerHistory, n: int, width: int):
    """Right-padded prefixes (B, ``width``) that continue back into each listener's earlier
    sessions: up to ``n`` of the listener's last plays before the session (oldest first),
    then the session's own most recent plays, all within ``width`` (a session prefix that
    fills it gets none); with their lengths. A network with ``--history N`` reads these."""
    own = recent(np.asarray(prefixes), np.asarray(lengths), width)
    lengths = np.minimum(np.asarray(lengths, np.int64), width)
    lo, hi = history.bounds(users, sessions)
    k = np.minimum(np.clip(width - lengths, 0, n), hi - lo)
    out = np.zeros((len(own), width), np.int32)
    rows = np.arange(len(own))
    for j in range(width):
        ok = j < k
        out[ok, j] = history.item[hi[ok] - k[ok] + j]
        inside = j < lengths
        out[rows[inside], k[inside] + j] = own[inside, j]
    return out, (k + lengths).astype(np.int32)


def extend_events(events: Events, history: ListenerHistory, n: int, width: int) -> Events:
    """``events`` whose prefixes continue into the listener's earlier sessions
    (``with_history``), cut to ``width``: what a network with ``--history N`` trains on."""
    if events.users is None:
        raise PipelineError("--history needs each event's listener (the splits' user_idx)")
    p, lengths = with_history(
        events.prefixes, events.lengths, events.users, events.sessions, history, n, width
    )
    return Events(
        p, lengths, events.targets, events.sessions, events.positions, events.times, events.users
    )


def history_ranker(ranker, history: ListenerHistory, n: int, width: int):
    """A network's ranker given prefixes continued into the listener's earlier sessions
    (``with_history``), as it was trained; it needs each event's listener and session."""

    def rank(prefixes, lengths, targets, times=None, users=None, sessions=None):
        if users is None or sessions is None:
            raise PipelineError("a network with --history needs each event's listener")
        p, n_len = with_history(prefixes, lengths, users, sessions, history, n, width)
        return ranker(p, n_len, targets, times)

    rank.needs_context = True
    return rank


def _row_max_normalised(m: sp.csr_matrix) -> sp.csr_matrix:
    """Each row divided by its largest entry (rows without a positive entry unchanged)."""
    m = sp.csr_matrix(m, dtype=np.float64)
    top = np.asarray(m.max(axis=1).todense()).ravel()
    scale = np.where(top > 0, 1.0 / np.where(top > 0, top, 1.0), 1.0)
    return sp.csr_matrix(sp.diags(scale) @ m)


def rule_owners(train: pd.DataFrame, steps: int, n_items: int) -> np.ndarray:
    """Sorted keys (listener, a, b) of every rule a -> b (b within ``steps`` plays after a
    in one training session) that the listener's own sessions hold (SR's boost)."""
    sid = train["session_id"].to_numpy()
    items = train["item_idx"].to_numpy().astype(np.int64)
    users = train["user_idx"].to_numpy().astype(np.int64)
    n = n_items + 1
    if int(users.max(initial=0)) + 1 > np.iinfo(np.int64).max // (n * n):
        raise PipelineError("SR's boost: too many listeners x tracks^2 for its int64 keys")
    keys = []
    for d in range(1, steps + 1):  # each distance's keys made unique before they are joined
        same = sid[d:] == sid[:-d]
        keys.append(np.unique((users[d:][same] * n + items[:-d][same]) * n + items[d:][same]))
    return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)


class SessionAware(Baseline):
    """A fitted session-based baseline (SR, V-SKNN or VSTAN) with extend, boost and remind
    (the module docstring). Scores need each prefix's listener and session
    (``needs_context``) and its last play's time."""

    needs_times = True
    needs_context = True
    SUFFIX = {"SR": "_BR", "V-SKNN": "_EBR", "VSTAN": "_EBR"}

    def __init__(
        self,
        base: Baseline,
        history: ListenerHistory,
        extend: int = 0,
        boost: float = 0.0,
        remind: float = 0.0,
        owners: np.ndarray | None = None,
    ):
        if base.name not in self.SUFFIX:
            raise PipelineError(f"no session-aware form of {base.name}: {sorted(self.SUFFIX)}")
        if extend and not isinstance(base, VSKNN | VSTAN):
            raise PipelineError(f"extend applies to V-SKNN and VSTAN, not {base.name}")
        self.name = base.name + self.SUFFIX[base.name]
        self.base, self.history, self.n_items = base, history, base.n_items
        self.extend, self.boost, self.remind = int(extend), float(boost), float(remind)
        self.owners = owners
        if self.boost and isinstance(base, SequentialRules) and owners is None:
            raise PipelineError("SR's boost needs the training rules' owners (rule_owners)")
        self.params = {
            "base": base.params,
            **({"extend": self.extend} if self.name.endswith("_EBR") else {}),
            "boost": self.boost,
            "remind": self.remind,
        }

    def _extended(self, prefixes, lengths, users, sessions):
        """Prefixes shorter than ``extend`` with the listener's last earlier plays in front."""
        need = np.maximum(self.extend - lengths, 0)
        if not need.any():
            return prefixes, lengths
        tails = self.history.tails(users, sessions, need)
        add = np.array([len(x) for x in tails], np.int64)
        width = max(prefixes.shape[1], int((lengths + add).max()))
        out = np.zeros((len(prefixes), width), prefixes.dtype)
        for r in range(len(prefixes)):
            k, n = add[r], lengths[r]
            out[r, :k] = tails[r]
            out[r, k : k + n] = prefixes[r, :n]
        return out, (lengths + add).astype(lengths.dtype)

    def _base_scores(self, prefixes, lengths, times, users):
        base = self.base
        if isinstance(base, SequentialRules):
            s = base.sparse_scores(prefixes, lengths, times).tocoo()
            if self.boost and len(s.data):
                n = self.n_items + 1
                last = last_known_items(prefixes, lengths).astype(np.int64)
                key = (np.asarray(users, np.int64)[s.row] * n + last[s.row]) * n + s.col
                own = _in_sorted(self.owners, key)
                s = sp.coo_matrix(
                    (s.data * np.where(own, 1.0 + self.boost, 1.0), (s.row, s.col)),
                    shape=s.shape,
                )
            return s.tocsr()
        return base.sparse_scores(prefixes, lengths, times, users=users, boost=self.boost)

    def sparse_scores(self, prefixes, lengths, times=None, users=None, sessions=None):
        if users is None or sessions is None or times is None:
            raise PipelineError(f"{self.name} needs each event's listener, session and time")
        prefixes, lengths = np.asarray(prefixes), np.asarray(lengths)
        if self.extend:
            prefixes, lengths = self._extended(prefixes, lengths, users, sessions)
        out = _row_max_normalised(self._base_scores(prefixes, lengths, times, users))
        if self.remind:
            rem = self.history.recency(users, sessions, times, self.n_items)
            out = out + self.remind * rem
        return sp.csr_matrix(out)


class NetworkReminders:
    """A trained network's scores with the same reminders (session-rec's reminders wrap any
    base): softmax(logits) / its max + ``remind`` x IRec / max IRec. ``logits(prefixes,
    lengths)`` gives the network's (B, V+1) scores as a numpy array. Not a network trained
    with the listener's history: the network alone, its scores combined afterwards with a
    weight chosen on validation, as the hybrid's are."""

    needs_times = True
    needs_context = True

    def __init__(self, logits, history: ListenerHistory, n_items: int, remind: float):
        self.logits, self.history, self.n_items = logits, history, n_items
        self.remind = float(remind)
        self.params = {"remind": self.remind}

    def score(self, prefixes, lengths, times=None, users=None, sessions=None) -> np.ndarray:
        z = np.asarray(self.logits(prefixes, lengths), np.float64)
        out = np.exp(z - z[:, 1:].max(axis=1, keepdims=True))  # softmax / its max
        if self.remind:
            rem = self.history.recency(users, sessions, times, self.n_items).tocoo()
            out[rem.row, rem.col] += self.remind * rem.data  # each (row, track) once
        return out

    @property
    def scorer(self):
        return self.score

    def __repr__(self) -> str:
        return f"reminders(remind={self.remind})"


# Validation budgets of the session-aware forms (every point with its base at the base's
# own choice; 0 everywhere is the session-based method): SR_BR 21, V-SKNN_EBR 28,
# VSTAN_EBR 28. Reminder weights are dense below 1: a listener's earlier tracks are many,
# and a weight near 1 lets them outscore the base's best tracks.
REMINDS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5)
SESSION_AWARE_GRIDS = {
    "SR": _grid(boost=[0.0, 0.5, 2.0], remind=list(REMINDS)),
    "V-SKNN": _grid(extend=[0, 5], boost=[0.0, 1.0], remind=list(REMINDS)),
    "VSTAN": _grid(extend=[0, 5], boost=[0.0, 1.0], remind=list(REMINDS)),
}


# The reminder weights tried for a network (``NetworkReminders``), as for the baselines.
NETWORK_REMINDS = REMINDS


def session_aware_forms(
    chosen: list[tuple[Baseline, dict]], train: pd.DataFrame, history: ListenerHistory
):
    """For each tuned base of ``chosen`` with a session-aware form, a function of the
    grid's parameters giving that form (SR's rule owners computed once)."""
    forms = {}
    for base, _ in chosen:
        if base.name not in SESSION_AWARE_GRIDS:
            continue
        owners = None
        if isinstance(base, SequentialRules):
            owners = rule_owners(train, base.steps, base.n_items)

        def make(params, base=base, owners=owners):
            return SessionAware(base, history, owners=owners, **params)

        forms[base.name] = make
    return forms
