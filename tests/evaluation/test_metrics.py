"""The metrics against scikit-learn and against brute-force implementations written here."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from arcface.evaluation import metrics as M


def random_pairs(seed: int, n: int = 600, ties: bool = False, shift: float = 1.0):
    rng = np.random.default_rng(seed)
    is_same = rng.random(n) < 0.4
    scores = rng.normal(size=n) + shift * is_same
    if ties:  # few distinct values, so that many genuine and impostor pairs share a score
        scores = np.round(scores * 2) / 2
    return scores, is_same


CASES = [(seed, ties) for seed in range(6) for ties in (False, True)]


# ---------------------------------------------------------------------------------------------------
# ROC, AUC, EER, TAR@FAR
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("seed", "ties"), CASES)
def test_roc_curve_matches_sklearn(seed, ties):
    scores, is_same = random_pairs(seed, ties=ties)
    far, tar, thresholds = M.roc_curve(scores, is_same)
    fpr, tpr, thr = skm.roc_curve(is_same, scores, drop_intermediate=False)
    np.testing.assert_allclose(far, fpr)
    np.testing.assert_allclose(tar, tpr)
    np.testing.assert_array_equal(thresholds[1:], thr[1:])
    assert thresholds[0] == np.inf


@pytest.mark.parametrize(("seed", "ties"), CASES)
def test_auc_matches_sklearn(seed, ties):
    scores, is_same = random_pairs(seed, ties=ties)
    assert M.auc(scores, is_same) == pytest.approx(skm.roc_auc_score(is_same, scores), abs=1e-12)


@pytest.mark.parametrize(("seed", "ties"), CASES)
def test_eer_is_where_far_equals_frr_on_sklearn_roc(seed, ties):
    scores, is_same = random_pairs(seed, ties=ties)
    rate, threshold = M.eer(scores, is_same)
    fpr, tpr, _ = skm.roc_curve(is_same, scores, drop_intermediate=False)
    # far + tar - 1 rises strictly along the curve (every point moves right or up), so interpolating FAR at 0
    # is the crossing of FAR = FRR.
    assert rate == pytest.approx(np.interp(0.0, fpr + tpr - 1, fpr), abs=1e-12)
    # The threshold is a real score, and FAR and FRR there differ by at most one ROC step from the EER.
    assert threshold in set(scores.tolist())
    far_t = np.mean(scores[~is_same] >= threshold)
    frr_t = np.mean(scores[is_same] < threshold)
    step = max(np.max(np.diff(fpr)), np.max(np.diff(tpr)))
    assert abs(far_t - rate) <= step + 1e-12 and abs(frr_t - rate) <= step + 1e-12


def test_eer_of_separable_and_of_reversed_scores():
    is_same = np.array([True] * 5 + [False] * 5)
    scores = np.r_[np.linspace(0.6, 1, 5), np.linspace(-1, 0.4, 5)]
    assert M.eer(scores, is_same)[0] == 0.0
    assert M.eer(-scores, is_same)[0] == 1.0


@pytest.mark.parametrize(("seed", "ties"), CASES)
@pytest.mark.parametrize("target", [0.1, 0.01, 0.003])
def test_tar_at_far_matches_sklearn(seed, ties, target):
    scores, is_same = random_pairs(seed, n=2000, ties=ties)
    result = M.tar_at_far(scores, is_same, target)
    fpr, tpr, thr = skm.roc_curve(is_same, scores, drop_intermediate=False)
    ok = fpr <= target
    assert result.tar == pytest.approx(tpr[ok].max(), abs=1e-12)
    # The threshold really achieves it.
    if result.threshold is not None:
        assert np.mean(scores[~is_same] >= result.threshold) <= target
        assert np.mean(scores[is_same] >= result.threshold) == pytest.approx(result.tar)
        assert result.far == pytest.approx(np.mean(scores[~is_same] >= result.threshold))


def test_tar_at_far_is_none_with_too_few_impostors():
    scores, is_same = random_pairs(0, n=1000)
    n_impostor = int((~is_same).sum())
    assert n_impostor < 1000
    result = M.tar_at_far(scores, is_same, 1e-3)
    assert result.tar is None and result.threshold is None
    assert str(n_impostor) in result.reason and "1000" in result.reason
    assert M.tar_at_far(scores, is_same, 1e-2).tar is not None


def test_tar_at_far_exactly_enough_impostors_is_measurable():
    rng = np.random.default_rng(1)
    is_same = np.r_[np.ones(50, bool), np.zeros(1000, bool)]
    scores = rng.normal(size=is_same.size) + 2 * is_same
    assert M.tar_at_far(scores, is_same, 1e-3).tar is not None  # 1000 * 1e-3 == 1 false accept allowed


def test_tar_at_far_when_top_score_is_a_tied_impostor():
    scores = np.r_[np.ones(20), np.zeros(100)]
    is_same = np.r_[np.ones(10, bool), np.zeros(110, bool)]  # 10 impostors tied with the genuines at 1.0
    result = M.tar_at_far(scores, is_same, 0.05)
    assert result.tar == 0.0 and result.threshold is None and result.reason


def test_subsample_roc_is_json_safe_and_small():
    scores, is_same = random_pairs(3, n=5000)
    far, tar, thresholds = M.roc_curve(scores, is_same)
    roc = M.subsample_roc(far, tar, thresholds, max_points=200)
    assert 2 <= len(roc["fpr"]) <= 200 and len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"])
    assert all(np.isfinite(roc["thresholds"]))
    assert roc["fpr"][0] == 0 and roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    assert np.all(np.diff(roc["fpr"]) >= 0)


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="one entry per pair"):
        M.roc_curve([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="NaN"):
        M.auc([0.1, np.nan], [True, False])
    with pytest.raises(ValueError, match="both genuine and impostor"):
        M.eer([0.1, 0.2], [True, True])


# ---------------------------------------------------------------------------------------------------
# Threshold and LFW 10-fold accuracy against a brute force
# ---------------------------------------------------------------------------------------------------
def brute_best_threshold(scores, is_same):
    """Try every candidate by counting directly; keep the first (lowest) of the best."""
    unique = sorted(set(scores.tolist()))
    candidates = [unique[0] - 1.0] + [(a + b) / 2 for a, b in zip(unique[:-1], unique[1:], strict=True)] + [unique[-1] + 1.0]
    best, best_accuracy = None, -1.0
    for t in candidates:
        accuracy = sum((s >= t) == y for s, y in zip(scores, is_same, strict=True)) / len(scores)
        if accuracy > best_accuracy:
            best, best_accuracy = t, accuracy
    return best, best_accuracy


def brute_kfold(scores, is_same, n_folds=10):
    genuine = [i for i in range(len(scores)) if is_same[i]]
    impostor = [i for i in range(len(scores)) if not is_same[i]]

    def blocks(indices):  # contiguous, the first len % n_folds blocks one longer
        size, extra = divmod(len(indices), n_folds)
        out, start = [], 0
        for k in range(n_folds):
            end = start + size + (k < extra)
            out.append(indices[start:end])
            start = end
        return out

    folds = [g + i for g, i in zip(blocks(genuine), blocks(impostor), strict=True)]
    accuracies, thresholds = [], []
    for k in range(n_folds):
        test = set(folds[k])
        train = [i for i in range(len(scores)) if i not in test]
        t, _ = brute_best_threshold(scores[train], is_same[train])
        thresholds.append(t)
        accuracies.append(sum((scores[i] >= t) == is_same[i] for i in test) / len(test))
    return float(np.mean(accuracies)), float(np.std(accuracies)), accuracies, thresholds


@pytest.mark.parametrize(("seed", "ties"), CASES[:6])
def test_best_threshold_matches_brute_force(seed, ties):
    scores, is_same = random_pairs(seed, n=300, ties=ties)
    threshold, accuracy = M.best_threshold(scores, is_same)
    expected_threshold, expected_accuracy = brute_best_threshold(scores, is_same)
    assert accuracy == pytest.approx(expected_accuracy)
    assert threshold == pytest.approx(expected_threshold)


@pytest.mark.parametrize(("seed", "ties"), CASES[:6])
def test_lfw_kfold_matches_brute_force(seed, ties):
    scores, is_same = random_pairs(seed, n=251, ties=ties, shift=1.5)  # folds of unequal size
    result = M.lfw_kfold_accuracy(scores, is_same)
    mean, std, accuracies, thresholds = brute_kfold(scores, is_same)
    np.testing.assert_allclose(result.accuracies, accuracies)
    np.testing.assert_allclose(result.thresholds, thresholds)
    assert result.mean == pytest.approx(mean) and result.std == pytest.approx(std)


def test_lfw_folds_are_contiguous_per_kind_like_pairs_txt():
    # LFW pairs.txt: 10 sets of (300 matched, then 300 mismatched); the k-th set is fold k.
    is_same = np.tile(np.r_[np.ones(300, bool), np.zeros(300, bool)], 10)
    expected = np.repeat(np.arange(10), 600)
    np.testing.assert_array_equal(M.lfw_folds(is_same), expected)
    # pairsDevTrain.txt: 1100 matched then 1100 mismatched: every fold still gets 110 of each.
    dev = np.r_[np.ones(1100, bool), np.zeros(1100, bool)]
    folds = M.lfw_folds(dev)
    for k in range(10):
        assert dev[folds == k].sum() == 110 and (~dev[folds == k]).sum() == 110


def test_kfold_explicit_folds_and_errors():
    scores, is_same = random_pairs(2, n=200)
    folds = np.arange(200) % 5
    assert len(M.lfw_kfold_accuracy(scores, is_same, n_folds=5, folds=folds).accuracies) == 5
    with pytest.raises(ValueError, match="fold 5 holds 0"):
        M.lfw_kfold_accuracy(scores, is_same, n_folds=10, folds=folds)
    with pytest.raises(ValueError, match=r"fold indices in \[0, 3\)"):
        M.lfw_kfold_accuracy(scores, is_same, n_folds=3, folds=folds)


def test_perfect_and_random_embedders():
    """A perfect embedder scores 1.0; a random one about 0.5.

    Tolerance: with 6000 pairs (LFW's size) the accuracy of a random scorer is a mean of 0.5-ish coin flips,
    standard error sqrt(0.25 / 6000) ~ 0.0065; choosing the threshold on nine folds can fit the noise a
    little above 0.5. 0.5 +- 0.04 is about 6 standard errors wide: it fails only when something is wrong.
    """
    rng = np.random.default_rng(0)
    is_same = np.r_[np.ones(3000, bool), np.zeros(3000, bool)]
    a = rng.integers(0, 300, 6000)
    b = np.where(is_same, a, (a + rng.integers(1, 300, 6000)) % 300)
    # Perfect: the embedding is the one-hot of the identity; cosine 1 for genuine, 0 for impostor pairs.
    one_hot = np.eye(300)
    perfect = np.sum(one_hot[a] * one_hot[b], axis=1)
    result = M.lfw_kfold_accuracy(perfect, is_same)
    assert result.mean == 1.0 and result.std == 0.0
    assert M.auc(perfect, is_same) == 1.0 and M.eer(perfect, is_same)[0] == 0.0
    # Random: unit vectors that ignore the identity.
    random = rng.normal(size=(6000, 2, 64))
    random /= np.linalg.norm(random, axis=2, keepdims=True)
    scores = np.sum(random[:, 0] * random[:, 1], axis=1)
    assert abs(M.lfw_kfold_accuracy(scores, is_same).mean - 0.5) < 0.04
    assert abs(M.auc(scores, is_same) - 0.5) < 0.04
    assert abs(M.eer(scores, is_same)[0] - 0.5) < 0.04


# ---------------------------------------------------------------------------------------------------
# Closed-set
# ---------------------------------------------------------------------------------------------------
def test_top_k_accuracy_matches_sklearn():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 12))
    labels = rng.integers(0, 12, 500)
    for k in (1, 3, 5):
        expected = skm.top_k_accuracy_score(labels, logits, k=k, labels=np.arange(12))
        assert M.top_k_accuracy(logits, labels, k) == pytest.approx(expected)


def test_top_k_accuracy_ties_count_against():
    assert M.top_k_accuracy(np.zeros((4, 10)), [0, 1, 2, 3], k=5) == 0.0
    assert M.top_k_accuracy(np.eye(4), [0, 1, 2, 3], k=1) == 1.0


def test_confusion_matrix_matches_sklearn():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 7, 300), rng.integers(0, 7, 300)
    np.testing.assert_array_equal(M.confusion_matrix(labels, preds, 7),
                                  skm.confusion_matrix(labels, preds, labels=np.arange(7)))
    with pytest.raises(ValueError, match=r"preds must be in \[0, 7\)"):
        M.confusion_matrix([0], [7], 7)
