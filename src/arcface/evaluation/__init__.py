"""Evaluation: verification metrics (LFW protocol, ROC, EER, TAR@FAR), pairs, embedding and the report.

``metrics`` and ``pairs`` are pure NumPy and re-exported here. The step itself lives in the submodule and is
imported from it, ``from arcface.evaluation.evaluate import evaluate, embed_images``: it pulls in TensorFlow,
and a package attribute named like its submodule would make ``arcface.evaluation.evaluate`` mean two things.
"""

from arcface.evaluation.metrics import (
    KFoldResult,
    TarAtFar,
    auc,
    best_threshold,
    confusion_matrix,
    eer,
    lfw_kfold_accuracy,
    roc_curve,
    tar_at_far,
    top_k_accuracy,
)
from arcface.evaluation.pairs import (
    MissingImagesError,
    Pair,
    PairList,
    PairsError,
    generate_pairs,
    read_pairs,
)

__all__ = ["KFoldResult", "MissingImagesError", "Pair", "PairList", "PairsError", "TarAtFar",
           "auc", "best_threshold", "confusion_matrix", "eer", "generate_pairs",
           "lfw_kfold_accuracy", "read_pairs", "roc_curve", "tar_at_far", "top_k_accuracy"]

