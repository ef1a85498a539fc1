"""Verification pairs: read LFW's pairs files, or draw pairs from a labelled image list.

LFW format (``pairs.txt``, ``pairsDevTrain.txt``, ``pairsDevTest.txt``)::

    10	300               header: number of folds and pairs per kind per fold (or one number: the count)
    Abel_Pacheco	1	4       matched: name, image i, image j   -> <root>/<name>/<name>_<i:04d>.jpg
    Abdel_Madi_Shabneh	1	Dean_Barker	1   mismatched: name1, i, name2, j

Fields may be separated by tabs or spaces; blank lines and a missing final newline are fine.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np

from arcface.choices import ON_MISSING

log = logging.getLogger(__name__)

__all__ = ["MissingImagesError", "Pair", "PairList", "PairsError", "generate_pairs", "lfw_image_path",
           "read_pairs"]

MAX_LISTED = 10


class PairsError(ValueError):
    """A pairs file cannot be read; the message names the file, the line and what is expected."""


class MissingImagesError(PairsError):
    """Images named by a pairs file are not on disk."""


@dataclasses.dataclass(frozen=True)
class Pair:
    path_a: str
    path_b: str
    same: bool
    fold: int | None = None  # the LFW set the pair belongs to, when the file's header defines folds


class PairList(list):
    """A ``list[Pair]`` that also says how it was made: ``counts`` (genuine, impostor, skipped, ...)."""

    def __init__(self, pairs=(), counts: dict | None = None, missing: Sequence[str] = ()):
        super().__init__(pairs)
        self.counts: dict = dict(counts or {})
        self.missing: list[str] = list(missing)

    @property
    def is_same(self) -> np.ndarray:
        return np.array([p.same for p in self], dtype=bool)

    @property
    def folds(self) -> np.ndarray | None:
        """Fold index per pair when every pair has one (LFW's 'folds count' header), else None."""
        if not self or any(p.fold is None for p in self):
            return None
        return np.array([p.fold for p in self], dtype=np.int64)


def lfw_image_path(root: str | os.PathLike, name: str, index: int) -> str:
    return os.path.join(str(root), name, f"{name}_{index:04d}.jpg")


# ---------------------------------------------------------------------------------------------------
# Reading LFW pairs files
# ---------------------------------------------------------------------------------------------------
def _image_index(token: str) -> int:
    value = int(token)  # ValueError for "x" or "1.5"; the caller turns it into a PairsError
    if value < 1:
        raise ValueError(f"image numbers start at 1, got {value}")
    return value


def _parse_header(tokens: list[str]) -> tuple[int, int] | None:
    """(folds, pairs per kind per fold) for a header line, None when the line is a pair, not a header."""
    if len(tokens) in (1, 2) and all(t.isdigit() for t in tokens):
        numbers = [int(t) for t in tokens]
        return (1, numbers[0]) if len(numbers) == 1 else (numbers[0], numbers[1])
    return None


def read_pairs(path: str | os.PathLike, root: str | os.PathLike | None = None, *,
               on_missing: str = "error") -> PairList:
    """Parse an LFW pairs file into :class:`Pair` objects with image paths under ``root``.

    Args:
        path: the pairs file.
        root: the folder holding ``<name>/<name>_<i:04d>.jpg`` (default: the pairs file's folder).
        on_missing: ``"error"`` raises :class:`MissingImagesError` listing missing images; ``"skip"``
            drops the pairs that name one and records how many in ``counts["skipped"]``.

    The header (``count`` or ``folds count``) is optional; when present, the number of pair lines must
    match it. With a ``folds count`` header (LFW's pairs.txt) every pair gets its fold index.
    """
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing={on_missing!r} is unknown; use one of {', '.join(ON_MISSING)}")
    path = str(path)
    root = os.path.dirname(os.path.abspath(path)) if root is None else str(root)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise PairsError(f"pairs file {path} does not exist; pass the path of an LFW pairs.txt") from None

    header, pairs = _parse_lines(path, lines, root)
    folds = _folds(path, header, len(pairs))
    if not pairs:
        raise PairsError(f"{path} holds no pairs; expected lines 'name i j' or 'name1 i name2 j'")
    return _keep_present(path, root, pairs, folds, on_missing)


def _parse_lines(path: str, lines: list[str], root: str) -> tuple[tuple[int, int, int] | None, list[tuple]]:
    """The header (its line number, folds, pairs per kind per fold) if any, and the pairs as (a, b, same)."""
    header, pairs = None, []
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        if header is None and not pairs and (parsed := _parse_header(tokens)) is not None:
            header = (number, *parsed)
            continue
        try:
            pairs.append(_parse_pair(tokens, root))
        except ValueError as e:
            raise PairsError(f"{path}:{number}: cannot parse {line!r} ({e}); expected 'name i j' for a matched "
                             "pair or 'name1 i name2 j' for a mismatched one, separated by tabs or spaces, "
                             "with image numbers >= 1") from None
    return header, pairs


def _parse_pair(tokens: list[str], root: str) -> tuple[str, str, bool]:
    if len(tokens) == 3:
        name, i, j = tokens[0], _image_index(tokens[1]), _image_index(tokens[2])
        return lfw_image_path(root, name, i), lfw_image_path(root, name, j), True
    if len(tokens) == 4:
        a, i, b, j = tokens[0], _image_index(tokens[1]), tokens[2], _image_index(tokens[3])
        return lfw_image_path(root, a, i), lfw_image_path(root, b, j), False
    raise ValueError(f"{len(tokens)} fields")


def _folds(path: str, header: tuple[int, int, int] | None, n_pairs: int) -> list[int | None]:
    """Each pair's fold (None without a 'folds count' header); the header's count must match the pairs'."""
    folds: list[int | None] = [None] * n_pairs
    if header is not None:
        line_number, n_folds, per_fold = header
        expected = 2 * n_folds * per_fold
        if n_pairs != expected:
            announced = f"{n_folds} folds x " if n_folds > 1 else ""
            raise PairsError(f"{path}:{line_number}: the header announces {announced}{per_fold} matched + "
                             f"{per_fold} mismatched pairs = {expected}, but the file holds {n_pairs} pair "
                             "lines; correct the header or restore the missing lines")
        if n_folds > 1:
            folds = [index // (2 * per_fold) for index in range(n_pairs)]
    return folds


def _keep_present(path: str, root: str, pairs: list[tuple], folds: list[int | None], on_missing: str) -> PairList:
    """The pairs whose images are on disk; a missing one is an error, or its pairs are skipped (on_missing)."""
    unique = sorted({p for a, b, _ in pairs for p in (a, b)})
    missing = [p for p in unique if not os.path.isfile(p)]
    if missing and on_missing == "error":
        listed = "\n  ".join(missing[:MAX_LISTED])
        more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise MissingImagesError(
            f"{len(missing)} of the {len(unique)} images named by {path} are missing under {root}:\n  {listed}"
            f"{more}\nPoint the pairs root at the folder holding <name>/<name>_<i:04d>.jpg, or pass "
            "on_missing='skip' to drop the pairs that need them.")
    gone = set(missing)
    kept = [Pair(a, b, same, fold) for (a, b, same), fold in zip(pairs, folds, strict=True)
            if a not in gone and b not in gone]
    skipped = len(pairs) - len(kept)
    if skipped:
        log.warning("skipped %d of %d pairs in %s: %d images missing under %s (first: %s)", skipped, len(pairs),
                    path, len(missing), root, missing[0])
    genuine = sum(p.same for p in kept)
    counts = {"genuine": genuine, "impostor": len(kept) - genuine, "skipped": skipped,
              "missing_images": len(missing), "pairs_in_file": len(pairs)}
    return PairList(kept, counts, missing)


# ---------------------------------------------------------------------------------------------------
# Generating pairs from labelled images
# ---------------------------------------------------------------------------------------------------
def _triangle_pair(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Invert k = j*(j-1)/2 + i (0 <= i < j): the k-th unordered pair of items 0, 1, 2, ..."""
    j = np.floor((1 + np.sqrt(1 + 8 * k.astype(np.float64))) / 2).astype(np.int64)
    # Correct float rounding of the square root for large k.
    j -= (j * (j - 1) // 2) > k
    j += ((j + 1) * j // 2) <= k
    return k - j * (j - 1) // 2, j


def _genuine(groups: list[np.ndarray], max_genuine: int, rng: np.random.Generator) -> np.ndarray:
    """(m, 2) image indices of same-identity pairs: all of them, or a seeded sample of ``max_genuine``."""
    sizes = np.array([g.size * (g.size - 1) // 2 for g in groups], dtype=np.int64)
    total = int(sizes.sum())
    if total == 0:
        return np.zeros((0, 2), dtype=np.int64)
    # A sample of flat pair numbers, without ever listing every pair (an identity of 1000 images has 500k).
    flat = (np.arange(total, dtype=np.int64) if total <= max_genuine
            else np.sort(rng.choice(total, size=max_genuine, replace=False)))
    offsets = np.r_[0, np.cumsum(sizes)]
    group = np.searchsorted(offsets, flat, side="right") - 1
    i, j = _triangle_pair(flat - offsets[group])
    members = np.concatenate(groups)
    starts = np.r_[0, np.cumsum([g.size for g in groups])][group]
    return np.stack([members[starts + i], members[starts + j]], axis=1)


def _impostor(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 2) distinct pairs of images of different identities, drawn uniformly (seeded)."""
    n = labels.size
    if count == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if n * (n - 1) // 2 <= 4_000_000:  # small enough to list every pair and sample exactly
        a, b = np.triu_indices(n, k=1)
        different = labels[a] != labels[b]
        a, b = a[different], b[different]
        pick = np.sort(rng.choice(a.size, size=count, replace=False))
        return np.stack([a[pick], b[pick]], axis=1)
    # Rejection sampling: with this many images, same-identity draws and repeats are rare.
    found = np.zeros((0, 2), dtype=np.int64)
    while len(found) < count:
        draw = rng.integers(0, n, size=(2 * (count - len(found)) + 16, 2))
        draw = np.sort(draw, axis=1)
        draw = draw[labels[draw[:, 0]] != labels[draw[:, 1]]]
        merged = np.concatenate([found, draw])
        _, first = np.unique(merged, axis=0, return_index=True)
        found = merged[np.sort(first)]  # keep draw order so that the result depends on the seed only
    return found[:count]


def generate_pairs(identities: Sequence[str], paths: Sequence[str], seed: int = 42, *,
                   max_genuine: int = 50_000, max_impostor: int = 100_000, min_impostor: int = 1_000) -> PairList:
    """Genuine and impostor pairs from a labelled image list (e.g. a manifest's validation split).

    Every same-identity pair is used, or a seeded sample of ``max_genuine`` when there are more. Impostor
    pairs are a seeded sample: as many as the genuine pairs but at least ``min_impostor`` (1000, so that TAR
    at FAR=1e-3 is measurable when the data has that many), at most ``max_impostor`` and at most all there
    are. ``counts`` records how many of each were possible and used.
    """
    if len(identities) != len(paths):
        raise ValueError(f"identities ({len(identities)}) and paths ({len(paths)}) must name the same images, "
                         "one identity per path")
    names, labels = np.unique(np.asarray(identities, dtype=object).astype(str), return_inverse=True)
    labels = labels.reshape(-1)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == k) for k in range(names.size)]
    sizes = np.array([g.size for g in groups], dtype=np.int64)
    genuine_possible = int(np.sum(sizes * (sizes - 1) // 2))
    impostor_possible = int((sizes.sum() ** 2 - np.sum(sizes**2)) // 2)
    genuine = _genuine(groups, max_genuine, rng)
    wanted = min(max(len(genuine), min_impostor), max_impostor, impostor_possible)
    impostor = _impostor(labels, wanted, rng)
    pairs = [Pair(paths[a], paths[b], True) for a, b in genuine]
    pairs += [Pair(paths[a], paths[b], False) for a, b in impostor]
    counts = {"genuine": len(genuine), "impostor": len(impostor), "skipped": 0,
              "genuine_possible": genuine_possible, "impostor_possible": impostor_possible,
              "identities": int(names.size), "images": len(paths),
              "identities_with_genuine_pairs": int(np.sum(sizes >= 2))}
    if len(impostor) and len(impostor) * 1e-3 < 1:
        log.info("only %d impostor pairs can be drawn (%d images); TAR at FAR=1e-3 will not be measurable",
                 len(impostor), len(paths))
    log.info("generated %d genuine (of %d possible) and %d impostor (of %d possible) pairs from %d identities",
             len(genuine), genuine_possible, len(impostor), impostor_possible, names.size)
    return PairList(pairs, counts)
