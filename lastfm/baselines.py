"""Count-based session baselines as their papers define them, vectorised with scipy.sparse.

Each baseline is fitted on training sessions (a DataFrame with ``session_id``, ``item_idx``
and ``ts_s``, sorted by session then position; items 1..V) and scores a batch of
right-padded prefixes (B, L) against every item, returning (B, V+1) float32 scores (column
0 is padding). No baseline gets a hidden tie-break: tracks a method cannot tell apart tie,
and the evaluation's tie policy (``lastfm.metrics``) treats every method alike. Among
equally similar neighbour sessions (V-SKNN, VSTAN) the more recent is kept.

- POP: training popularity.
- S-POP: the item's count in the current prefix; equal counts ordered by training
  popularity (its definition: Hidasi et al., ICLR 2016).
- SR, sequential rules (Ludewig & Jannach, UMUAI 2018; Kamehkhosh et al. 2017): rule
  a -> b gets w(d) for each training occurrence of b d <= ``steps`` plays after a, with
  w(d) = 1/d (div), 1 - 0.1 d (linear), 1/d^2 (quadratic) or 1/log10(d + 1.7) (log);
  each item keeps its ``pruning`` strongest rules (0: all); the last item's rules score.
- AR, association rules (same papers): a <-> b counted once for every pair of positions
  of a training session holding them (any order, any distance); pruned as SR.
- Item-kNN (Hidasi et al. 2016, as session-rec's ``algorithms/knn/iknn.py`` computes it):
  sim(i, j) = sum_s n_s(i) [j in s] / ((supp_i + lambda)^alpha (supp_j + lambda)^(1 - alpha))
  for j != i, sim(i, i) = 0; n_s(i) the plays of i in training session s, supp_i = sum_s
  n_s(i) its training plays. Each play of i adds 1 for every distinct item of its session
  (a repeated j counts once per play of i, so the count is not symmetric). Only the ``k``
  most similar items of each item keep their similarity; the last item's row scores.
- SR, AR and Item-kNN read the prefix's last known track (``lastfm.data.last_known_items``):
  a kept unseen play (id 0, ``sessionize.py --unseen keep``) is stepped back over, as the
  networks do; a prefix with no known track scores nothing.
- V-SKNN (Ludewig & Jannach 2018): the prefix as a vector with position weights
  (1-based position p of L: div p/L, quadratic (p/L)^2, linear 1 - 0.1 (L - p), log
  1/log10(L - p + 1.7); a repeated item keeps its latest weight); candidate neighbours are
  the ``sample`` most recent training sessions (by their last play) sharing an item with
  the prefix; similarity = the weighted overlap (dot product) divided by the prefix's
  distinct items; the ``k`` most similar vote for each of their items with similarity x
  1/s, s the distance from the end of the prefix of the most recent prefix item the
  neighbour holds (1 = the last item).
- VSTAN (Ludewig, Latifi & Jannach, 2021, extending Garg et al.'s STAN, SIGIR 2019): the
  same candidates; position weights exp((p - L) / lambda_spw); cosine similarity (weighted
  overlap / (||w|| sqrt(|n|))) times exp(-(t - t_n) / lambda_snh) (t the prefix's last
  play, t_n the neighbour's, lambda_snh in days); the ``k`` most similar vote for each
  item j with similarity x exp(-|pos_n(j) - pos_n(*)| / lambda_inh) x exp((p* - L) /
  lambda_ipw) x (1 + idf(j) lambda_idf), pos_n(j) the last position of j in the
  neighbour, pos_n(*) that of the neighbour's last item shared with the prefix, p* the
  prefix position of the most recent shared item, idf(j) = log(sessions / plays of j).
  In both, a kept unseen play (id 0) holds its position (it counts in L and in the
  distances) but has no weight and is never shared with a neighbour.

Past memory (``SplitFiles``: a split held in part files, each with whole sessions): POP,
S-POP, SR, AR and Item-kNN are sums over sessions, so each part's count tables are
computed alone (on a Dask cluster when a client is given) and added up before the
pruning; V-SKNN and VSTAN read a per-track index of training sessions kept on disk and
memory-mapped (``TrainingSessions.save`` / ``open``). In memory as on disk, each track's
list of sessions holds only its ``INDEX_CAP`` most recent: exact for every ``sample`` <=
the cap, since a session among the ``sample`` most recent sharing a prefix track is among
that track's ``sample`` most recent (and bounded work per prefix track).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lastfm.common import PipelineError
from lastfm.data import last_known_items
from lastfm.metrics import SharedPlusSparse

PART_COLUMNS = ["session_id", "item_idx", "ts_s"]


@dataclass
class SplitFiles:
    """A training split held in Parquet part files, each with whole sessions
    (``lastfm.stream.split_files``), for fits that never hold the whole split: ``client``,
    a ``distributed.Client`` that computes the parts' count tables (else one part after
    another here); ``index_dir``, where V-SKNN's and VSTAN's session index is kept (built
    on first use, then memory-mapped)."""

    files: list[Path]
    index_dir: Path | None = None
    client: Any = field(default=None, repr=False)


def read_part(path: Path, columns: list[str]) -> pd.DataFrame:
    """Some columns of one part file."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns).to_pandas()


def _part_tables(path: Path, model: Baseline) -> dict:
    """One part's additive tables (training popularity and the model's counts)."""
    part = read_part(path, ["session_id", "item_idx"])
    pop = np.bincount(part["item_idx"].to_numpy(), minlength=model.n_items + 1)
    return {"pop": pop.astype(np.float64), **model._tables(part)}


def _add_tables(a: dict, b: dict) -> dict:
    return {k: a[k] + b[k] for k in a}


def sum_tables(model: Baseline, source: SplitFiles) -> dict:
    """``_part_tables`` of every part of ``source``, added up: on ``source.client``'s
    cluster (a tree of pairwise sums) or here, one part in memory at a time."""
    if not source.files:
        raise PipelineError("a training split without part files")
    if source.client is None:
        total = None
        for path in source.files:
            t = _part_tables(path, model)
            total = t if total is None else _add_tables(total, t)
        return total
    client = source.client
    futures = client.map(_part_tables, source.files, model=model, pure=False)
    while len(futures) > 1:
        pairs = [futures[i : i + 2] for i in range(0, len(futures), 2)]
        futures = [
            client.submit(_add_tables, *p, pure=False) if len(p) == 2 else p[0] for p in pairs
        ]
    return futures[0].result()


def _keep_top_k(m: sp.csr_matrix, k: int, ties_high: bool = False) -> sp.csr_matrix:
    """Keep the k largest entries of each row of a CSR matrix (ties: the lower column, or
    with ``ties_high`` the higher one)."""
    m = m.tocsr()
    m.sort_indices()
    counts = np.diff(m.indptr)
    if counts.max(initial=0) <= k:
        return m
    keep = np.ones(len(m.data), dtype=bool)
    for r in np.flatnonzero(counts > k):
        a, b = m.indptr[r], m.indptr[r + 1]
        cols = -m.indices[a:b] if ties_high else m.indices[a:b]
        order = np.lexsort((cols, -m.data[a:b]))
        keep[a + order[k:]] = False
    rows = np.repeat(np.arange(m.shape[0]), counts)[keep]
    return sp.csr_matrix((m.data[keep], (rows, m.indices[keep])), shape=m.shape)


def _in_sorted(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Membership of each ``query`` value in the sorted unique array ``keys``."""
    pos = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
    return (keys[pos] == query) if len(keys) else np.zeros(len(query), bool)


STEP_WEIGHTS = {  # weight of a rule d plays apart (SR), or of the s-th last item (V-SKNN)
    "div": lambda d: 1.0 / d,
    "linear": lambda d: np.maximum(1.0 - 0.1 * d, 0.0),
    "quadratic": lambda d: 1.0 / (d * d),
    "log": lambda d: 1.0 / np.log10(d + 1.7),
}
POSITION_WEIGHTS = {  # weight of 1-based position p of a prefix of length n (V-SKNN)
    "div": lambda p, n: p / n,
    "quadratic": lambda p, n: (p / n) ** 2,
    "linear": lambda p, n: np.maximum(1.0 - 0.1 * (n - p), 0.0),
    "log": lambda p, n: 1.0 / np.log10(n - p + 1.7),
}


class Baseline:
    name = "base"
    params: dict = {}
    needs_times = False  # score() takes the time of each prefix's last play

    def fit(
        self, train: pd.DataFrame | SplitFiles, n_items: int, like: Baseline | None = None
    ) -> Baseline:
        """Fit on ``train`` (the plays, or a split's part files); ``like``: a model of the
        same kind already fitted on the same data, whose parameter-free structures are
        reused (a grid's earlier point)."""
        self.n_items = n_items
        self._like = like if type(like) is type(self) and like.n_items == n_items else None
        if isinstance(train, SplitFiles):
            self._fit_files(train)
        else:
            pop = np.bincount(train["item_idx"].to_numpy(), minlength=n_items + 1)
            self.pop = pop.astype(np.float64)
            self.pop[0] = 0
            self._fit(train)
        self._like = None  # not kept: a grid would hold every earlier point
        return self

    def _fit(self, train: pd.DataFrame) -> None:
        self._from_tables(self._tables(train))

    def _tables(self, part: pd.DataFrame) -> dict:
        """The model's count tables of some whole sessions: they add up over parts."""
        return {}

    def _from_tables(self, tables: dict) -> None:
        """The fitted model from its summed count tables."""

    def _fit_files(self, source: SplitFiles) -> None:
        self._like = None  # not used here, and not to be shipped to the workers with self
        tables = sum_tables(self, source)
        self.pop = tables.pop("pop")
        self.pop[0] = 0
        self._from_tables(tables)

    def score(self, prefixes: np.ndarray, lengths: np.ndarray, times=None) -> np.ndarray:
        """Scores (B, V+1) of every track for each prefix."""
        sparse = self.sparse_scores(prefixes, lengths, times)
        if sparse is None:
            raise NotImplementedError
        return sparse.toarray()

    def sparse_scores(self, prefixes, lengths, times=None):
        """The same scores as a float32 CSR matrix whose absent entries are 0 (the methods
        that score few tracks per prefix), or as ``SharedPlusSparse`` (a vector all rows
        share plus a sparse part); None where the method has neither."""
        return None

    @property
    def scorer(self):
        """What the evaluator calls: the sparse scores where the method has them."""
        has_sparse = type(self).sparse_scores is not Baseline.sparse_scores
        return self.sparse_scores if has_sparse else self.score

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}({args})"


def _prune(table: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    return _keep_top_k(table, keep) if keep > 0 else table


class LastItemBaseline(Baseline):
    """Scores candidates by the row of ``self.table`` (V+1, V+1) of the prefix's last known
    track (row 0, empty, where the prefix has none)."""

    table: sp.csr_matrix

    def sparse_scores(self, prefixes, lengths, times=None):
        return self.table[last_known_items(prefixes, lengths)].astype(np.float32)


class Pop(Baseline):
    name = "POP"

    def score(self, prefixes, lengths, times=None):
        return np.broadcast_to(self.pop.astype(np.float32), (len(prefixes), len(self.pop)))

    def sparse_scores(self, prefixes, lengths, times=None):
        empty = sp.csr_matrix((len(prefixes), len(self.pop)), dtype=np.float32)
        return SharedPlusSparse(self.pop.astype(np.float32), empty)


class SessionPop(Baseline):
    name = "S-POP"

    def sparse_scores(self, prefixes, lengths, times=None):
        rows = np.repeat(np.arange(len(prefixes)), prefixes.shape[1])
        items = prefixes.ravel()
        real = items > 0
        counts = sp.csr_matrix(
            (np.ones(int(real.sum())), (rows[real], items[real])),
            shape=(len(prefixes), self.n_items + 1),
        )
        # The session's counts, then popularity below 1 (float64): its own tie-break.
        return SharedPlusSparse(self.pop / (self.pop.max() + 1), counts)


class SequentialRules(LastItemBaseline):
    name = "SR"

    def __init__(self, steps: int = 10, weighting: str = "div", pruning: int = 20):
        self.params = {"steps": steps, "weighting": weighting, "pruning": pruning}
        self.steps, self.weighting, self.pruning = steps, weighting, pruning

    def _tables(self, train):
        # counts of each rule at each distance d: integers, which add up exactly over parts
        sid = train["session_id"].to_numpy()
        items = train["item_idx"].to_numpy()
        n = self.n_items + 1
        tables = {}
        for d in range(1, self.steps + 1):
            same = sid[d:] == sid[:-d]
            ones = np.ones(int(same.sum()))
            pairs = (items[:-d][same], items[d:][same])
            tables[f"d{d}"] = sp.csr_matrix((ones, pairs), shape=(n, n))
        return tables

    def _from_tables(self, tables):
        # sum_d w(d) x count_d in one fixed order (float64), so that equal weights tie
        table = sp.csr_matrix((self.n_items + 1, self.n_items + 1))
        for d in range(1, self.steps + 1):
            table = table + tables[f"d{d}"] * float(STEP_WEIGHTS[self.weighting](d))
        table = table.tocsr().astype(np.float32)
        table.eliminate_zeros()
        self.table = _prune(table, self.pruning)


class AssociationRules(LastItemBaseline):
    name = "AR"

    def __init__(self, pruning: int = 20):
        self.params = {"pruning": pruning}
        self.pruning = pruning

    def _tables(self, train):
        codes, _ = pd.factorize(train["session_id"], sort=True)
        x = sp.csr_matrix(
            (np.ones(len(codes), np.float32), (codes, train["item_idx"].to_numpy())),
            shape=(codes.max() + 1 if len(codes) else 0, self.n_items + 1),
        )
        x.sum_duplicates()  # plays of each item in each session
        plays = np.asarray(x.sum(axis=0)).ravel()
        table = (x.T @ x).tocsr() - sp.diags(plays)  # pairs of distinct positions
        return {"pairs": table.tocsr()}

    def _from_tables(self, tables):
        table = tables["pairs"].tocsr()
        table.eliminate_zeros()
        self.table = _prune(table, self.pruning)


class ItemKNN(LastItemBaseline):
    name = "Item-kNN"

    def __init__(self, k: int = 100, lam: float = 20.0, alpha: float = 0.5):
        self.params = {"k": k, "lambda": lam, "alpha": alpha}
        self.k, self.lam, self.alpha = k, lam, alpha

    def _tables(self, train):
        codes, _ = pd.factorize(train["session_id"], sort=True)
        plays = sp.csr_matrix(
            (np.ones(len(codes)), (codes, train["item_idx"].to_numpy())),
            shape=(codes.max() + 1 if len(codes) else 0, self.n_items + 1),
        )
        plays.sum_duplicates()  # n_s(i): plays of each item in each session
        holds = plays.copy()
        holds.data[:] = 1.0  # [j in s]
        return {"co": (plays.T @ holds).tocsr()}  # co[i, j] = sum_s n_s(i) [j in s]

    def _from_tables(self, tables):
        co = tables["co"].tocsr()
        co.setdiag(0)
        co.eliminate_zeros()
        supp = self.pop + self.lam  # supp_i: training plays of i
        row, col = supp**self.alpha, supp ** (1.0 - self.alpha)
        row[row == 0], col[col == 0] = 1.0, 1.0  # an unplayed item (lambda 0): no pairs
        co = (sp.diags(1.0 / row) @ co @ sp.diags(1.0 / col)).tocsr()
        self.table = _keep_top_k(co, self.k).astype(np.float32)


class TrainingSessions:
    """Training sessions indexed by the time of their last play (index order = recency):
    binary session x item matrix, item lists, last positions, last times; ``binary_t``
    (track -> sessions) keeps each track's ``cap`` most recent sessions (0: all)."""

    ARRAYS = ("last_t", "list_s", "list_items", "list_pos", "keys", "sizes", "list_ptr", "idf")
    MATRICES = ("binary", "binary_t", "last_pos")

    def __init__(self, train: pd.DataFrame, n_items: int, cap: int = 0):
        sid = train["session_id"].to_numpy()
        start = np.r_[True, sid[1:] != sid[:-1]]
        raw = np.cumsum(start) - 1  # sessions in order of appearance
        n = int(raw[-1]) + 1 if len(raw) else 0
        ts = train["ts_s"].to_numpy() if "ts_s" in train else np.arange(len(sid))
        last_t = np.full(n, -np.inf)
        np.maximum.at(last_t, raw, ts.astype(np.float64))
        order = np.lexsort((np.arange(n), last_t))  # oldest first
        rank = np.empty(n, np.int64)
        rank[order] = np.arange(n)
        s = rank[raw]
        items = train["item_idx"].to_numpy().astype(np.int64)
        pos = np.arange(len(sid)) - np.flatnonzero(start)[raw] + 1  # 1-based position
        self.n, self.n_items, self.cap, self.last_t = n, n_items, cap, last_t[order]
        by = np.lexsort((pos, s))  # the plays of each session, in order
        self.list_s, self.list_items, self.list_pos = s[by], items[by], pos[by]
        self.binary = sp.csr_matrix(
            (np.ones(len(s), np.float32), (s, items)), shape=(n, n_items + 1)
        )
        self.binary.sum_duplicates()
        self.binary.data[:] = 1.0
        self.binary_t = _most_recent(self.binary.T.tocsr(), cap)
        # each session's distinct items with their last position (VSTAN's pos_n(j))
        key = self.list_s * (n_items + 1) + self.list_items
        by_key = np.lexsort((self.list_pos, key))
        k_sorted = key[by_key]
        last = by_key[np.r_[k_sorted[1:] != k_sorted[:-1], True]] if len(key) else by_key
        mx = sp.csr_matrix(
            (self.list_pos[last].astype(np.float64), (self.list_s[last], self.list_items[last])),
            shape=(n, n_items + 1),
        )
        mx.sort_indices()
        self.last_pos = mx
        self.keys = np.sort(key[last])  # (session, item) pairs, for membership tests
        self.sizes = np.diff(self.binary.indptr).astype(np.float64)  # distinct items
        self.list_ptr = np.r_[0, np.cumsum(np.bincount(self.list_s, minlength=n))]
        self.owner = None  # each session's listener (the session-aware boost), when known
        if "user_idx" in train:
            self.owner = np.zeros(n, np.int64)
            self.owner[s] = train["user_idx"].to_numpy()
        plays = np.bincount(items, minlength=n_items + 1).astype(np.float64)
        with np.errstate(divide="ignore"):
            self.idf = np.where(plays > 0, np.log(max(n, 1) / np.maximum(plays, 1)), 0.0)

    def save(self, folder: Path, fingerprint: str = "") -> None:
        """The index as .npy files in ``folder`` (written beside it, then renamed into
        place: an interrupted save leaves no folder that looks complete)."""
        folder = Path(folder)
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in self.ARRAYS:
            np.save(tmp / f"{name}.npy", getattr(self, name))
        for name in self.MATRICES:
            m = getattr(self, name)
            for part in ("data", "indices", "indptr"):
                np.save(tmp / f"{name}.{part}.npy", getattr(m, part))
        meta = {"n": self.n, "n_items": self.n_items, "cap": self.cap, "fingerprint": fingerprint}
        (tmp / "index.json").write_text(json.dumps(meta))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)

    @classmethod
    def open(cls, folder: Path) -> TrainingSessions:
        """A saved index, its arrays memory-mapped (read from disk as they are used)."""
        folder = Path(folder)
        meta = json.loads((folder / "index.json").read_text())
        self = cls.__new__(cls)
        self.n, self.n_items, self.cap = meta["n"], meta["n_items"], meta["cap"]
        self.owner = None  # the index on disk holds no listeners
        for name in self.ARRAYS:
            setattr(self, name, np.load(folder / f"{name}.npy", mmap_mode="r"))
        for name in self.MATRICES:
            parts = [
                np.load(folder / f"{name}.{p}.npy", mmap_mode="r")
                for p in ("data", "indices", "indptr")
            ]
            rows = self.n_items + 1 if name == "binary_t" else self.n
            cols = self.n if name == "binary_t" else self.n_items + 1
            m = sp.csr_matrix(tuple(parts), shape=(rows, cols), copy=False)
            m.has_sorted_indices = True
            setattr(self, name, m)
        return self

    @classmethod
    def from_files(cls, source: SplitFiles, n_items: int, cap: int) -> TrainingSessions:
        """The index of a split's part files, kept in ``source.index_dir`` (built once for
        these files and this cap, then memory-mapped)."""
        stats = [(str(p), os.path.getsize(p), os.path.getmtime(p)) for p in source.files]
        fingerprint = json.dumps([stats, n_items, cap])
        folder = None
        if source.index_dir is not None:
            folder = Path(source.index_dir) / f"sessions-cap{cap}"
            done = folder / "index.json"
            if done.exists() and json.loads(done.read_text()).get("fingerprint") == fingerprint:
                return cls.open(folder)
        # each part holds whole sessions: concatenated, every session stays contiguous
        parts = [read_part(p, PART_COLUMNS) for p in source.files]
        index = cls(pd.concat(parts, ignore_index=True), n_items, cap)
        del parts
        if folder is None:
            return index
        index.save(folder, fingerprint)
        return cls.open(folder)


def _most_recent(m: sp.csr_matrix, cap: int) -> sp.csr_matrix:
    """Each row's ``cap`` highest columns (the most recent sessions; 0: all)."""
    m.sort_indices()
    counts = np.diff(m.indptr)
    if not cap or counts.max(initial=0) <= cap:
        return m
    rank_in_row = np.arange(len(m.indices)) - np.repeat(m.indptr[:-1], counts)
    keep = rank_in_row >= np.repeat(counts - cap, counts)
    kept = np.r_[0, np.cumsum(np.minimum(counts, cap))]
    return sp.csr_matrix((m.data[keep], m.indices[keep], kept), shape=m.shape)


def _prefix_weights(prefixes, lengths, weight, n_items: int) -> sp.csr_matrix:
    """(B, V+1) weights of each prefix's items, a repeated item keeping its latest one."""
    b, L = prefixes.shape
    p = np.broadcast_to(np.arange(1, L + 1), (b, L))
    n = np.broadcast_to(lengths[:, None], (b, L))
    ok = (p <= n) & (prefixes > 0)  # a kept unseen play (0) holds a position, no weight
    rows, cols = np.nonzero(ok)
    items = prefixes[rows, cols].astype(np.int64)
    w = weight(p[ok].astype(np.float64), n[ok].astype(np.float64))
    key = rows * (n_items + 1) + items
    order = np.lexsort((p[ok], key))
    last = np.r_[key[order][1:] != key[order][:-1], True] if len(key) else np.zeros(0, bool)
    sel = order[last]
    return sp.csr_matrix((w[sel], (rows[sel], items[sel])), shape=(b, n_items + 1))


INDEX_CAP = 5000  # sessions per track in the on-disk index: the grids' largest ``sample``


class SessionKNN(Baseline):
    """The neighbourhood search V-SKNN and VSTAN share (see the module docstring)."""

    def index_cap(self) -> int:
        """Sessions kept per track: ``INDEX_CAP`` (or ``sample`` if larger; 0 = all when
        ``sample`` is 0), one index for every grid point, exact for each (module docstring)."""
        return max(INDEX_CAP, self.sample) if self.sample else 0

    def _fit(self, train):
        like, cap = self._like, self.index_cap()
        if like is not None and like.sessions.cap == cap:
            self.sessions = like.sessions
        else:
            self.sessions = TrainingSessions(train, self.n_items, cap)

    def _fit_files(self, source: SplitFiles) -> None:
        self.sessions = TrainingSessions.from_files(source, self.n_items, self.index_cap())
        self.pop = np.bincount(self.sessions.list_items, minlength=self.n_items + 1).astype(
            np.float64
        )
        self.pop[0] = 0

    def _query(self, prefixes, lengths, weight):
        return _prefix_weights(prefixes, lengths, weight, self.n_items)

    def _candidates(self, q: sp.csr_matrix, sample: int) -> sp.csr_matrix:
        """(B, S) weighted overlap with the ``sample`` most recent sessions sharing an item."""
        dots = (q @ self.sessions.binary_t).tocsr()  # (B, S), columns by recency
        dots.sort_indices()
        if sample:
            counts = np.diff(dots.indptr)
            rank_in_row = np.arange(len(dots.data)) - np.repeat(dots.indptr[:-1], counts)
            keep = rank_in_row >= np.repeat(counts - sample, counts)
            rows = np.repeat(np.arange(dots.shape[0]), counts)[keep]
            dots = sp.csr_matrix((dots.data[keep], (rows, dots.indices[keep])), shape=dots.shape)
        return dots

    def _boost_own(self, sims: sp.csr_matrix, users, boost: float) -> sp.csr_matrix:
        """``sims`` (B, S) with each neighbour session of the prefix's own listener
        (``users`` (B,)) x (1 + ``boost``): the session-aware boost (lastfm.session_aware)."""
        if not boost:
            return sims
        if users is None or self.sessions.owner is None:
            raise PipelineError(f"{self.name}: the boost needs the listeners of the sessions")
        c = sims.tocoo()
        own = self.sessions.owner[c.col] == np.asarray(users)[c.row]
        w = c.data * np.where(own, 1.0 + boost, 1.0)
        return sp.csr_matrix((w, (c.row, c.col)), shape=c.shape)

    def _shared_position(self, prefixes, lengths, rows, sess):
        """For neighbour pairs (row, session): the 1-based prefix position of the most
        recent prefix item the session holds (0 if none). Walks back from each prefix's
        last item and stops for a pair at its first hit."""
        best = np.zeros(len(rows), np.int64)
        base = sess * (self.n_items + 1)
        todo = np.arange(len(rows))
        last = lengths[rows] - 1
        for d in range(prefixes.shape[1]):
            idx = last[todo] - d
            ok = idx >= 0
            todo, idx = todo[ok], idx[ok]
            if not len(todo):
                break
            member = _in_sorted(self.sessions.keys, base[todo] + prefixes[rows[todo], idx])
            best[todo[member]] = idx[member] + 1
            todo = todo[~member]
        return best


class VSKNN(SessionKNN):
    name = "V-SKNN"

    def __init__(
        self, k: int = 100, sample: int = 1000, weighting: str = "div", score_weighting: str = "div"
    ):
        self.params = {
            "k": k,
            "sample": sample,
            "weighting": weighting,
            "score_weighting": score_weighting,
        }
        self.k, self.sample = k, sample
        self.weighting, self.score_weighting = weighting, score_weighting

    def sparse_scores(self, prefixes, lengths, times=None, users=None, boost=0.0):
        q = self._query(prefixes, lengths, POSITION_WEIGHTS[self.weighting])
        distinct = np.maximum(np.diff(q.indptr), 1).astype(np.float64)
        sims = self._candidates(q, self.sample)
        sims = sp.diags(1.0 / distinct) @ sims  # session-rec's normalisation (no effect on order)
        sims = self._boost_own(sims.tocsr(), users, boost)
        nb = _keep_top_k(sims.tocsr(), self.k, ties_high=True).tocoo()  # ties: more recent
        p = self._shared_position(prefixes, lengths, nb.row, nb.col)
        step = lengths[nb.row] - p + 1
        w = nb.data * STEP_WEIGHTS[self.score_weighting](step.astype(np.float64))
        votes = sp.csr_matrix((w, (nb.row, nb.col)), shape=nb.shape)
        return (votes @ self.sessions.binary).tocsr().astype(np.float32)


class VSTAN(SessionKNN):
    name = "VSTAN"
    needs_times = True

    def __init__(
        self,
        k: int = 100,
        sample: int = 5000,
        lambda_spw: float = 1.02,
        lambda_snh: float = 5.0,
        lambda_inh: float = 2.05,
        lambda_ipw: float = 1.02,
        lambda_idf: float = 5.0,
    ):
        self.params = {
            "k": k,
            "sample": sample,
            "lambda_spw": lambda_spw,
            "lambda_snh": lambda_snh,
            "lambda_inh": lambda_inh,
            "lambda_ipw": lambda_ipw,
            "lambda_idf": lambda_idf,
        }
        self.k, self.sample = k, sample
        self.spw, self.snh = lambda_spw, lambda_snh * 86_400.0
        self.inh, self.ipw, self.lidf = lambda_inh, lambda_ipw, lambda_idf

    def sparse_scores(self, prefixes, lengths, times=None, users=None, boost=0.0):
        s = self.sessions
        q = self._query(prefixes, lengths, lambda p, n: np.exp((p - n) / self.spw))
        norm = np.sqrt(np.asarray(q.multiply(q).sum(axis=1)).ravel())
        cand = self._candidates(q, self.sample).tocoo()
        sim = cand.data / (norm[cand.row] * np.sqrt(s.sizes[cand.col]))
        if times is not None:
            sim = sim * np.exp(
                -(np.asarray(times, np.float64)[cand.row] - s.last_t[cand.col]) / self.snh
            )
        sims = self._boost_own(
            sp.csr_matrix((sim, (cand.row, cand.col)), shape=cand.shape), users, boost
        )
        nb = _keep_top_k(sims, self.k, ties_high=True).tocoo()
        rows, sess, sim = nb.row, nb.col, nb.data
        p_star = self._shared_position(prefixes, lengths, rows, sess)
        ipw = np.exp((p_star - lengths[rows]) / self.ipw)
        # pos_n(*): the last position in each neighbour of an item the prefix holds
        starts, ends = s.list_ptr[sess], s.list_ptr[sess + 1]
        n_list = ends - starts
        pair = np.repeat(np.arange(len(rows)), n_list)
        idx = np.repeat(starts - np.r_[0, np.cumsum(n_list)[:-1]], n_list) + np.arange(n_list.sum())
        prefix_keys = np.unique(
            np.repeat(np.arange(len(prefixes)), prefixes.shape[1]) * (self.n_items + 1)
            + prefixes.ravel()
        )
        shared = _in_sorted(prefix_keys, rows[pair] * (self.n_items + 1) + s.list_items[idx])
        pos_star = np.zeros(len(rows))
        np.maximum.at(pos_star, pair[shared], s.list_pos[idx][shared].astype(np.float64))
        # every distinct item of every neighbour, with its last position there
        lp = s.last_pos
        a, b = lp.indptr[sess], lp.indptr[sess + 1]
        m = b - a
        pair = np.repeat(np.arange(len(rows)), m)
        idx = np.repeat(a - np.r_[0, np.cumsum(m)[:-1]], m) + np.arange(m.sum())
        items = lp.indices[idx]
        w = (
            sim[pair]
            * np.exp(-np.abs(lp.data[idx] - pos_star[pair]) / self.inh)
            * ipw[pair]
            * (1.0 + s.idf[items] * self.lidf)
        )
        out = sp.csr_matrix((w, (rows[pair], items)), shape=(len(prefixes), self.n_items + 1))
        return out.astype(np.float32)


@dataclass
class Grid:
    """A baseline and the parameter values tried on the validation split."""

    cls: type
    values: list[dict]


def _grid(**axes) -> list[dict]:
    out = [{}]
    for name, values in axes.items():
        out = [{**o, name: v} for o in out for v in values]
    return out


# Validation budgets (configurations tried), listed in the results: POP 1, S-POP 1, SR 12,
# AR 1, Item-kNN 12, V-SKNN 12, VSTAN 16.
GRIDS = [
    Grid(Pop, [{}]),
    Grid(SessionPop, [{}]),
    Grid(SequentialRules, _grid(steps=[1, 3, 5, 10], weighting=["div", "linear", "quadratic"])),
    Grid(AssociationRules, [{"pruning": 20}]),
    Grid(ItemKNN, _grid(k=[100, 200], lam=[0.0, 20.0, 50.0], alpha=[0.5, 0.75])),
    Grid(VSKNN, _grid(k=[100, 200, 500], sample=[1000, 5000], weighting=["div", "quadratic"])),
    Grid(
        VSTAN,
        _grid(
            k=[100, 500], lambda_spw=[1.02, 4.0], lambda_inh=[2.05, 8.0], lambda_snh=[5.0, 100.0]
        ),
    ),
]
