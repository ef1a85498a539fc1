"""Verification and identification metrics in pure NumPy (no scikit-learn at run time).

Conventions used everywhere in this module:

* ``scores`` are similarities: higher means "more likely the same person" (cosine of two embeddings).
* A pair is accepted as "same" when ``score >= threshold``.
* FAR (false accept rate) = accepted impostor pairs / impostor pairs; TAR (true accept rate) = accepted
  genuine pairs / genuine pairs. The ROC is FAR (x) against TAR (y).

Every curve is computed from one sort of the scores, O(n log n); nothing compares all thresholds with all
pairs.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["KFoldResult", "TarAtFar", "auc", "area_under_curve", "best_threshold", "confusion_matrix", "eer",
           "lfw_folds", "lfw_kfold_accuracy", "roc_curve", "subsample_roc", "tar_at_far", "top_k_accuracy"]


def _check_pairs(scores, is_same) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    is_same = np.asarray(is_same).reshape(-1)
    if scores.shape != is_same.shape:
        raise ValueError(f"scores ({scores.size}) and is_same ({is_same.size}) must have one entry per pair; "
                         "pass the similarity and the same/different label of the same pairs")
    if not np.all(np.isfinite(scores)):
        bad = int(np.sum(~np.isfinite(scores)))
        raise ValueError(f"{bad} of {scores.size} scores are NaN or infinite; the embedding model produced "
                         "non-finite outputs (check the model weights and the input normalization)")
    return scores, is_same.astype(bool)


def _require_both_classes(is_same: np.ndarray, what: str) -> None:
    n_genuine = int(is_same.sum())
    if n_genuine == 0 or n_genuine == is_same.size:
        raise ValueError(f"{what} needs both genuine and impostor pairs, got {n_genuine} genuine and "
                         f"{is_same.size - n_genuine} impostor; use a pairs set with both kinds")


# ---------------------------------------------------------------------------------------------------
# ROC, AUC, EER, TAR@FAR
# ---------------------------------------------------------------------------------------------------
def roc_curve(scores, is_same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds), one point per distinct score plus the (0, 0) point at threshold +inf.

    Thresholds are decreasing; point i accepts every pair with ``score >= thresholds[i]``. This is the
    curve of ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``.
    """
    scores, is_same = _check_pairs(scores, is_same)
    _require_both_classes(is_same, "a ROC curve")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_same = scores[order], is_same[order]
    # The last position of each run of equal scores: tied pairs are accepted or rejected together.
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    true_accepts = np.cumsum(sorted_same)[last_of_run]
    false_accepts = (last_of_run + 1) - true_accepts
    tar = np.r_[0.0, true_accepts / is_same.sum()]
    far = np.r_[0.0, false_accepts / (~is_same).sum()]
    thresholds = np.r_[np.inf, sorted_scores[last_of_run]]
    return far, tar, thresholds


def area_under_curve(x, y) -> float:
    """Trapezoidal area under a curve given by its points (x must be monotonic)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(abs(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)))


def auc(scores, is_same) -> float:
    """Area under the ROC curve: the probability that a genuine pair outscores an impostor (ties count half)."""
    far, tar, _ = roc_curve(scores, is_same)
    return area_under_curve(far, tar)


def eer(scores, is_same) -> tuple[float, float]:
    """(equal error rate, threshold): where FAR equals FRR = 1 - TAR on the ROC.

    The ROC is taken as piecewise linear between its points (as AUC does), so the EER is read off exactly
    where ``far + tar = 1`` crosses it; the threshold is that of the ROC point nearest the crossing (a
    threshold between two scores has no better meaning).
    """
    far, tar, thresholds = roc_curve(scores, is_same)
    gap = far + tar - 1.0  # strictly increasing along the curve, from -1 at (0, 0) to +1 at (1, 1)
    i = int(np.searchsorted(gap, 0.0, side="left"))  # first point with gap >= 0; i >= 1 since gap[0] = -1
    t = -gap[i - 1] / (gap[i] - gap[i - 1])  # in (0, 1]
    rate = far[i - 1] + t * (far[i] - far[i - 1])
    nearest = i if (t >= 0.5 or i - 1 == 0) else i - 1  # never report the +inf threshold
    return float(rate), float(thresholds[nearest])


@dataclasses.dataclass(frozen=True)
class TarAtFar:
    """TAR at a target FAR, or ``tar=None`` with the reason it cannot be measured on these pairs."""

    far_target: float
    tar: float | None
    threshold: float | None = None
    far: float | None = None  # the FAR actually achieved at the threshold (<= far_target)
    reason: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def tar_at_far(scores, is_same, far_target: float) -> TarAtFar:
    """The highest TAR of a threshold whose FAR does not exceed ``far_target`` (no interpolation).

    With N impostor pairs the smallest non-zero FAR is 1/N, so a target below it cannot be told apart from
    FAR = 0: the result is then ``tar=None`` with a reason, instead of a number that only looks precise.
    """
    if not 0 < far_target < 1:
        raise ValueError(f"far_target must be in (0, 1), got {far_target}")
    scores, is_same = _check_pairs(scores, is_same)
    n_impostor = int((~is_same).sum())
    # The tolerance keeps 1000 * 1e-3 == 1 measurable despite floating-point rounding.
    if n_impostor * far_target < 1 - 1e-9:
        needed = math.ceil(1 / far_target - 1e-9)
        return TarAtFar(far_target, None, reason=(
            f"not measurable: {n_impostor} impostor pairs, at least {needed} are needed to measure a FAR of "
            f"{far_target:g}; evaluate on more impostor pairs"))
    far, tar, thresholds = roc_curve(scores, is_same)
    i = int(np.searchsorted(far, far_target * (1 + 1e-9), side="right")) - 1  # last point with far <= target
    if i == 0:
        # Even the highest score is shared by more impostors than allowed: only "accept nothing" qualifies.
        return TarAtFar(far_target, 0.0, threshold=None, far=0.0, reason=(
            "the pairs tied at the highest score already hold more impostors than the target FAR allows; "
            "only a threshold above every score meets it, and it accepts nothing"))
    return TarAtFar(far_target, float(tar[i]), threshold=float(thresholds[i]), far=float(far[i]))


def subsample_roc(far, tar, thresholds, max_points: int = 200) -> dict[str, list[float]]:
    """At most ``max_points`` ROC points (always the first and last), JSON-safe.

    Points are spread evenly in log-FAR, where face verification is read, and not in index, which would
    spend nearly every point at high FAR. The +inf threshold of the (0, 0) point becomes a finite value just
    above the highest score (JSON and KFP's ``log_roc_curve`` cannot hold infinity).
    """
    far, tar, thresholds = (np.asarray(a, dtype=np.float64) for a in (far, tar, thresholds))
    n = far.size
    if n > max_points:
        positive = far[far > 0]
        lowest = positive.min() if positive.size else 1.0
        targets = np.r_[0.0, np.geomspace(lowest, 1.0, max_points * 2)]
        index = np.unique(np.r_[0, np.searchsorted(far, targets, side="right") - 1, n - 1])
        if index.size > max_points:
            keep = np.unique(np.round(np.linspace(0, index.size - 1, max_points)).astype(int))
            index = index[keep]
        far, tar, thresholds = far[index], tar[index], thresholds[index]
    thresholds = thresholds.copy()
    finite = thresholds[np.isfinite(thresholds)]
    top = float(finite.max()) if finite.size else 1.0
    thresholds[~np.isfinite(thresholds)] = top + max(1e-6, abs(top) * 1e-6)
    return {"fpr": far.tolist(), "tpr": tar.tolist(), "thresholds": thresholds.tolist()}


# ---------------------------------------------------------------------------------------------------
# Accuracy at a threshold, and the LFW 10-fold protocol
# ---------------------------------------------------------------------------------------------------
def _candidate_accuracies(scores: np.ndarray, is_same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(candidate thresholds, accuracy of each), candidates increasing.

    Candidates are the midpoints between consecutive distinct scores, plus one below all scores (accept
    everything) and one above (accept nothing), so a split that is all one class still has a best choice.
    """
    unique, inverse = np.unique(scores, return_inverse=True)
    genuine = np.bincount(inverse, weights=is_same, minlength=unique.size)
    impostor = np.bincount(inverse, weights=~is_same, minlength=unique.size)
    # Candidate k sits just below unique[k] (k = len(unique): above everything); it accepts unique[k:].
    genuine_below = np.r_[0.0, np.cumsum(genuine)]
    impostor_below = np.r_[0.0, np.cumsum(impostor)]
    correct = (genuine_below[-1] - genuine_below) + impostor_below
    candidates = np.r_[unique[0] - 1.0, (unique[1:] + unique[:-1]) / 2, unique[-1] + 1.0]
    return candidates, correct / scores.size


def best_threshold(scores, is_same) -> tuple[float, float]:
    """(threshold, accuracy): the candidate threshold with the best accuracy (the lowest one on ties)."""
    scores, is_same = _check_pairs(scores, is_same)
    if scores.size == 0:
        raise ValueError("best_threshold needs at least one pair")
    candidates, accuracy = _candidate_accuracies(scores, is_same)
    best = int(np.argmax(accuracy))
    return float(candidates[best]), float(accuracy[best])


def lfw_folds(is_same, n_folds: int = 10) -> np.ndarray:
    """Fold index of every pair as in LFW's pairs.txt: contiguous blocks, genuine and impostor pairs apart.

    LFW's ten sets each hold a contiguous block of matched pairs and one of mismatched pairs; blocks of the
    whole list would put only matched pairs in the first folds of pairsDevTrain.txt (1100 matched, then 1100
    mismatched). So the k-th fold takes the k-th contiguous block of the genuine pairs and the k-th of the
    impostor pairs, in the order given; with pairs.txt this is exactly the official split.
    """
    is_same = np.asarray(is_same).reshape(-1).astype(bool)
    folds = np.empty(is_same.size, dtype=np.int64)
    for kind in (True, False):
        where = np.flatnonzero(is_same == kind)
        for k, block in enumerate(np.array_split(where, n_folds)):
            folds[block] = k
    return folds


@dataclasses.dataclass(frozen=True)
class KFoldResult:
    mean: float
    std: float
    accuracies: list[float]
    thresholds: list[float]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def lfw_kfold_accuracy(scores, is_same, n_folds: int = 10, folds=None) -> KFoldResult:
    """The LFW protocol: for each fold, choose the threshold on the other folds, measure on this one.

    ``folds`` gives each pair's fold index (0 .. n_folds-1); by default :func:`lfw_folds`. The threshold is
    :func:`best_threshold` of the other folds' pairs. ``std`` is the population standard deviation of the
    fold accuracies (``np.std``), as in the LFW evaluation code of insightface.
    """
    scores, is_same = _check_pairs(scores, is_same)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    folds = lfw_folds(is_same, n_folds) if folds is None else np.asarray(folds).reshape(-1)
    if folds.shape != scores.shape:
        raise ValueError(f"folds ({folds.size}) must give one fold index per pair ({scores.size})")
    if folds.size and (folds.min() < 0 or folds.max() >= n_folds):
        raise ValueError(f"folds must hold fold indices in [0, {n_folds}), got {folds.min()}..{folds.max()}; "
                         "pass n_folds to match them")
    accuracies, thresholds = [], []
    for k in range(n_folds):
        test = folds == k
        if not test.any() or test.all():
            raise ValueError(f"fold {k} holds {int(test.sum())} of {scores.size} pairs; each of the {n_folds} "
                             f"folds needs some pairs and the other folds the rest (use at least {n_folds} "
                             "genuine and impostor pairs, or fewer folds)")
        threshold, _ = best_threshold(scores[~test], is_same[~test])
        thresholds.append(threshold)
        accuracies.append(float(np.mean((scores[test] >= threshold) == is_same[test])))
    return KFoldResult(float(np.mean(accuracies)), float(np.std(accuracies)), accuracies, thresholds)


# ---------------------------------------------------------------------------------------------------
# Closed-set identification
# ---------------------------------------------------------------------------------------------------
def top_k_accuracy(logits, labels, k: int = 1) -> float:
    """Fraction of rows whose true class is among the k highest logits.

    Ties count against the model: a row is correct when fewer than k *other* classes score at least as high
    as the true class, so a model that outputs constant logits scores 0, not 1.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    if logits.ndim != 2 or logits.shape[0] != labels.size:
        raise ValueError(f"logits must be (n, classes) with one row per label; got {logits.shape} for "
                         f"{labels.size} labels")
    if labels.size == 0:
        raise ValueError("top_k_accuracy needs at least one example")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be in [0, {logits.shape[1]}), got {labels.min()}..{labels.max()}")
    true = logits[np.arange(labels.size), labels]
    rivals = np.sum(logits >= true[:, None], axis=1) - 1  # other classes at least as high as the true one
    return float(np.mean(rivals < k))


def confusion_matrix(labels, preds, n: int) -> np.ndarray:
    """(n, n) int64 counts; row = true class, column = predicted class."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    preds = np.asarray(preds).reshape(-1).astype(np.int64)
    if labels.shape != preds.shape:
        raise ValueError(f"labels ({labels.size}) and preds ({preds.size}) must have the same length")
    for name, values in (("labels", labels), ("preds", preds)):
        if values.size and (values.min() < 0 or values.max() >= n):
            raise ValueError(f"{name} must be in [0, {n}), got {values.min()}..{values.max()}")
    return np.bincount(labels * n + preds, minlength=n * n).reshape(n, n)
