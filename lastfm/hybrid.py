"""A network + transition counts hybrid, with its weights chosen on validation.

Jannach & Ludewig (RecSys 2017) showed that a weighted hybrid of an RNN with a
neighbourhood method beats both. Here each of the last track's ``K`` most
frequent training successors j gets

    weight * log(1 + count(last -> j)) + pop_weight * log(1 + plays(j))

added to the network's score; every other track keeps the network's score.
The counts are sequential rules with one step (``baselines.SequentialRules``,
``steps=1``). ``fit`` chooses both weights on validation MRR@20 over a grid
that contains (0, 0), the network alone.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from lastfm.baselines import SequentialRules, SplitFiles
from lastfm.common import PipelineError, log, markdown_table, write_atomic
from lastfm.data import Events, last_real_position, recent
from lastfm.metrics import (
    NUMPY_OPS,
    TOPK,
    DenseScores,
    SparseScores,
    count_ranks,
    device_logits,
    metric_values,
)

TABLE = "transitions.npz"
# Doubling grids wide enough to hold the limits: the model alone (0, 0); the counts
# first, the model breaking ties (large weight, pop_weight 0); the counts, then
# popularity, then the model (weight >> pop_weight >> the model's score range),
# which is SR (steps 1) with the model ranking the tracks SR cannot score.
WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
POP_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def top_successors(counts: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` largest entries of a (V+1, V+1) count table: ids (V+1, k)
    int32 (ties by id, 0 in empty slots) and counts (V+1, k) float32."""
    t = counts.tocsr()
    src = np.repeat(np.arange(t.shape[0]), np.diff(t.indptr))
    dst, cnt = t.indices.astype(np.int64), t.data
    order = np.lexsort((dst, -cnt, src))  # by track, most frequent first
    src, dst, cnt = src[order], dst[order], cnt[order]
    first = np.r_[0, np.flatnonzero(src[1:] != src[:-1]) + 1] if len(src) else np.zeros(0, int)
    rank = np.arange(len(src)) - np.repeat(first, np.diff(np.r_[first, len(src)]))
    keep = rank < k
    ids = np.zeros((t.shape[0], k), np.int32)
    out = np.zeros((t.shape[0], k), np.float32)
    ids[src[keep], rank[keep]] = dst[keep]
    out[src[keep], rank[keep]] = cnt[keep]
    return ids, out


@dataclass
class Transitions:
    """The hybrid's tables and weights (see the module docstring)."""

    ids: np.ndarray  # (V+1, K) int32 successors, 0 = empty slot
    counts: np.ndarray  # (V+1, K) float32 training counts of (track -> successor)
    plays: np.ndarray  # (V+1,) training plays of each track
    weight: float = 0.0
    pop_weight: float = 0.0

    @classmethod
    def from_train(cls, train: pd.DataFrame, n_items: int, k: int) -> Transitions:
        rules = SequentialRules(steps=1, pruning=0).fit(train, n_items)
        ids, counts = top_successors(rules.table, k)
        return cls(ids, counts, rules.pop.astype(np.float32))

    @classmethod
    def from_files(cls, files: list, n_items: int, k: int) -> Transitions:
        """``from_train`` of a split held in several files (``train.py --stream``), one
        file in memory at a time: each file holds whole sessions (``stream.split_files``),
        so the pair counts add up (``baselines.SplitFiles``)."""
        return cls.from_train(SplitFiles(list(files)), n_items, k)

    def boost(
        self, x: np.ndarray, weight: float | None = None, pop_weight: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scatter indices (B*K, 2) and values (B*K,) for prefixes ``x`` (B, L)."""
        succ, log_counts, log_plays = self.successors(x)
        rows = np.repeat(np.arange(len(x)), succ.shape[1])
        idx = np.stack([rows, succ.ravel()], axis=1).astype(np.int32)
        return idx, self.boost_values(log_counts, log_plays, weight, pop_weight).ravel()

    def successors(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last track's successors (B, K) (0 = empty slot) in prefixes ``x`` (B, L),
        with log(1 + count) and log(1 + plays) of each (0 in empty slots)."""
        last = x[np.arange(len(x)), last_real_position(x > 0)]  # as the networks find it
        succ, cnt = self.ids[last], self.counts[last]  # (B, K)
        filled = succ > 0
        return succ, np.log1p(cnt) * filled, np.log1p(self.plays[succ]) * filled

    def boost_values(
        self, log_counts, log_plays, weight: float | None = None, pop_weight: float | None = None
    ) -> np.ndarray:
        """The added scores (B, K) float32 of ``successors``' terms under the weights
        (default: the chosen ones)."""
        w = self.weight if weight is None else weight
        v = self.pop_weight if pop_weight is None else pop_weight
        return (w * log_counts + v * log_plays).astype(np.float32)

    def active(self) -> bool:
        return bool(self.weight or self.pop_weight)

    def save(self, folder: Path) -> None:
        """``folder/transitions.npz``, written atomically."""

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a handle: numpy would append .npz to the name
                np.savez_compressed(fh, ids=self.ids, counts=self.counts, plays=self.plays)

        write_atomic(Path(folder) / TABLE, write)


def fit(model, transitions: Transitions, valid: Events, **grid) -> dict:
    """Choose ``transitions``' two weights for a Keras ``model`` on validation MRR@20
    (its scores stay on the device); ``grid``: ``fit_scores``' keyword arguments."""
    from keras import ops

    return fit_scores(
        lambda x, sl: device_logits(model, x),
        ops,
        model.input_len,
        model.n_items,
        transitions,
        valid,
        **grid,
    )


def numpy_ops():
    """The numpy stand-in for keras.ops (``metrics.NUMPY_OPS``), for numpy scores."""
    return NUMPY_OPS


def batch_candidates(base, targets: np.ndarray, succ: np.ndarray, ops, m: int = TOPK + 1):
    """What a batch's ranks at cutoffs <= ``m - 1`` under any boost of the columns
    ``succ`` (B, K) depend on, brought to the host as small arrays:
    the ``m`` best base scores and their columns (``metrics.topk``), the base scores of
    ``succ`` and of the targets, and how many columns tie with the m-th best score
    (``metrics.count_ranks``).

    Column 0 (padding) never counts; a NaN base score counts as -inf here, a NaN
    target misses (ranks last), as in ``rank_counts``.
    """
    raw = DenseScores(base, ops=ops)
    rows = DenseScores(ops.where(ops.isnan(base), -np.inf, base), ops=ops)
    top_ids, top_vals = rows.top(m)  # past the scored columns: id 0 at -inf, the m-th best
    m_th = top_vals[:, -1]
    return {
        "top_vals": np.asarray(ops.convert_to_numpy(top_vals)),
        "top_ids": np.asarray(ops.convert_to_numpy(top_ids)),
        "succ_vals": np.asarray(ops.convert_to_numpy(raw.scores_at(succ))),
        "target_vals": np.asarray(ops.convert_to_numpy(raw.scores_at(targets[:, None])))[:, 0],
        # the columns at the m-th best score: the kernel's ties at it, plus that one
        "m_th_ties": np.asarray(ops.convert_to_numpy(rows.counts_at(m_th)[1])) + 1,
        "n_items": rows.n_items,
    }


def sparse_batch_candidates(base, targets: np.ndarray, succ: np.ndarray, m: int = TOPK + 1):
    """``batch_candidates`` of non-negative CSR scores (absent = 0), without densifying:
    past a row's positive scores the m best continue at the absent score 0."""
    rows = SparseScores(base)
    top_ids, top_vals = rows.top(m)
    top_vals = np.where(top_ids > 0, top_vals, 0).astype(rows.vals.dtype)
    return {
        "top_vals": top_vals,
        "top_ids": top_ids,
        "succ_vals": rows.scores_at(succ),
        "target_vals": rows.scores_at(np.asarray(targets)[:, None])[:, 0],
        "m_th_ties": rows.counts_at(top_vals[:, -1])[1] + 1,
        "n_items": rows.n_items,
    }


def candidate_ranks(c: dict, targets: np.ndarray, succ: np.ndarray, add: np.ndarray) -> np.ndarray:
    """Average ranks (B,) of ``targets`` after adding ``add`` (B, K) to the columns ``succ``
    (B, K, distinct per row; 0 = empty slot), exact wherever the rank is below the number
    of best base scores in ``c`` (``batch_candidates``), ``inf`` elsewhere.

    Only the best base scores, the boosted columns and the target can score above the
    target or tie with it, unless the target falls below the m-th best base score (then
    m columns beat it) or ties with it (then the other columns at that score tie too):
    those columns, each once, and the rest at the m-th best score (one column weighted
    by their number) go through the ranking kernel (``metrics.count_ranks``).
    """
    t_add = ((succ == targets[:, None]) * add).sum(axis=1)
    s_t = c["target_vals"] + t_add.astype(np.float32)
    m_th = c["top_vals"][:, -1]
    # Each column once: a top column that is also a boosted one counts as boosted; the
    # target (its boosts summed) once, as a column of its own.
    in_succ = (c["top_ids"][:, :, None] == succ[:, None, :]) & (succ[:, None, :] > 0)
    keep = np.concatenate([(c["top_ids"] > 0) & ~in_succ.any(axis=2), succ > 0], axis=1)
    cols = np.concatenate([c["top_ids"], succ], axis=1)
    keep &= cols != targets[:, None]
    vals = np.concatenate([c["top_vals"], c["succ_vals"] + add.astype(np.float32)], axis=1)
    base = np.concatenate([c["top_vals"], c["succ_vals"]], axis=1)
    # the other columns at the m-th best score: one column, weighted by their number
    at_m = (keep & (base == m_th[:, None])).sum(axis=1) + (c["target_vals"] == m_th)
    higher, ties = count_ranks(
        np.concatenate([vals, m_th[:, None], s_t[:, None]], axis=1),
        s_t,
        c["n_items"],
        weights=np.concatenate(
            [keep, (c["m_th_ties"] - at_m)[:, None], np.ones((len(s_t), 1), bool)], axis=1
        ).astype(np.int64),
    )
    ranks = 1.0 + higher + ties / 2.0
    miss = (s_t < m_th) | np.isnan(c["target_vals"])
    return np.where(miss, np.inf, ranks)


def fit_scores(
    scores,
    ops,
    input_len: int,
    n_items: int,
    transitions: Transitions,
    valid: Events,
    weights=WEIGHTS,
    pop_weights=POP_WEIGHTS,
    batch_size: int = 512,
) -> dict:
    """Choose ``transitions``' two weights on validation MRR@20 for a scorer
    ``scores(x, batch_slice) -> (B, V+1)`` (``ops``: keras.ops or ``numpy_ops()``).

    Non-negative sparse scores (a CSR matrix) stay sparse. Ties go to the first grid
    point, so (0, 0), the scorer alone, unless a hybrid is better. Each validation
    batch is scored once for the whole grid, and its ranks under every grid point come
    from a few candidate columns (``candidate_ranks``: exact at the cutoffs the choice
    uses). Sets the chosen weights; returns what a ``config.json`` records.
    """
    grid = [(w, v) for w in weights for v in pop_weights]
    ranks = np.zeros((len(grid), len(valid)), np.float64)
    for start in range(0, len(valid), batch_size):
        sl = slice(start, start + batch_size)
        x = recent(valid.prefixes[sl], valid.lengths[sl], input_len)
        targets = valid.targets[sl]
        succ, log_counts, log_plays = transitions.successors(x)
        succ = succ.astype(np.int64)
        base, m = scores(x, sl), min(TOPK + 1, n_items)
        if sp.issparse(base):
            c = sparse_batch_candidates(base, targets, succ, m)
        else:
            c = batch_candidates(base, targets, succ, ops, m)
        for g, (w, v) in enumerate(grid):
            add = transitions.boost_values(log_counts, log_plays, w, v)
            ranks[g, sl] = candidate_ranks(c, targets, succ, add)
    rows = []
    for g, (w, v) in enumerate(grid):
        m = metric_values(ranks[g])
        rows.append(
            {
                "weight": w,
                "pop_weight": v,
                "valid_HR@20": round(float(m["HR@20"].mean()), 4),
                "valid_MRR@20": round(float(m["MRR@20"].mean()), 4),
            }
        )
    best = max(range(len(grid)), key=lambda g: (rows[g]["valid_MRR@20"], -g))
    chosen = rows[best]
    transitions.weight, transitions.pop_weight = chosen["weight"], chosen["pop_weight"]
    log(
        f"transitions: weight {chosen['weight']}, pop_weight {chosen['pop_weight']} chosen "
        f"(validation MRR@20 {chosen['valid_MRR@20']:.4f}; the model alone "
        f"{rows[0]['valid_MRR@20']:.4f})"
    )
    return {
        "k": int(transitions.ids.shape[1]),
        "weight": chosen["weight"],
        "pop_weight": chosen["pop_weight"],
        "valid_MRR@20": chosen["valid_MRR@20"],
        "tried": rows,
        "table": TABLE,
    }


def load(model_dir: Path, record: dict | None) -> Transitions | None:
    """The hybrid recorded in a model folder's config, or None when its chosen weights
    are both 0 (the network alone) or none was fitted."""
    if not record or not (record.get("weight") or record.get("pop_weight")):
        return None
    path = Path(model_dir) / record["table"]
    if not path.exists():
        raise PipelineError(
            f"{path} not found, but {model_dir}/config.json gives transition "
            f"weights: rerun train.py --transitions-only --out {model_dir}"
        )
    try:
        with np.load(path) as z:
            ids, counts, plays = z["ids"], z["counts"], z["plays"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise PipelineError(
            f"{path}: not a readable transitions table ({type(err).__name__}); "
            f"rerun train.py --transitions-only --out {model_dir}"
        ) from None
    if ids.ndim != 2 or ids.shape != counts.shape or ids.shape[1] != record.get("k"):
        raise PipelineError(
            f"{path}: holds {ids.shape[-1]} successors per track but {model_dir}/config.json "
            f"was chosen with {record.get('k')}; rerun train.py --transitions-only --out "
            f"{model_dir}"
        )
    return Transitions(ids, counts, plays, float(record["weight"]), float(record["pop_weight"]))


def markdown(record: dict | None) -> str:
    """The hybrid's choice as Markdown: the network alone and the ten best of the grid."""
    if not record:
        return ""
    best = sorted(record["tried"], key=lambda r: -r["valid_MRR@20"])[:10]
    return (
        f"\nModel + transition counts (each track's {record['k']} most frequent training "
        "successors get weight * log(1 + count) + pop_weight * log(1 + plays)); chosen on "
        f"validation: weight {record['weight']}, pop_weight {record['pop_weight']}. The "
        "model alone (0, 0) and the ten best of the grid:\n\n"
        + markdown_table(
            list(best[0].keys()), [list(r.values()) for r in [record["tried"][0]] + best]
        )
        + "\n"
    )
