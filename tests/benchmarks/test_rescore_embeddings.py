"""Embeddings made by another trainer (the reference's, reference_probe_torch.py) scored on a quality split's
pairs as the evaluation step scores our models, so that both can be compared pair for pair."""

from __future__ import annotations

import json

import numpy as np
import pytest

BENCHMARK = "bench_quality"


@pytest.fixture
def split(tmp_path):
    """A bench_quality workdir's pairs.txt over 40 LFW-named identities with 1 to 8 images each."""
    root, work = tmp_path / "faces", tmp_path / "work"
    for i in range(40):
        name = f"Person_{i:02d}"
        (root / name).mkdir(parents=True)
        for k in range(1, 2 + i % 8):
            (root / name / f"{name}_{k:04d}.jpg").write_bytes(b"")
    work.mkdir()
    return root, work


def _pair_lines(work):
    for line in (work / "pairs.txt").read_text().split("\n"):
        if line:
            fields = line.split("\t")
            yield (fields[0], int(fields[1]), fields[0], int(fields[2])) if len(fields) == 3 else \
                (fields[0], int(fields[1]), fields[2], int(fields[3]))


def test_embeddings_are_scored_on_the_splits_pairs(bench, split):
    root, work = split
    _, _, test = bench.split_identities(root, "lfw", seed=3)
    bench.write_pairs(work / "pairs.txt", test, seed=3, max_genuine=200)
    rng = np.random.default_rng(0)
    direction = {n: rng.normal(size=64) for n in test}
    paths, embeddings, spoiled = [], [], set()
    for n, files in test.items():
        for k, f in enumerate(files):
            # Every identity's second image points elsewhere: the genuine pairs holding it score near 0.
            e = rng.normal(size=64) if k == 1 else direction[n] + 0.1 * rng.normal(size=64)
            spoiled |= {(n, int(f.stem[-4:]))} if k == 1 else set()
            paths.append(str(root / n / f.name))
            embeddings.append(e / np.linalg.norm(e))
    np.savez(work / "emb.npz", paths=np.array(paths), embeddings=np.array(embeddings, np.float32))

    figures = bench.score_embeddings(str(work / "emb.npz"), work, "other", root)

    # Independently: the cosines from the pairs file, the AUC by counting, the errors by construction.
    index = {p: i for i, p in enumerate(paths)}
    e = np.array(embeddings)
    lines = list(_pair_lines(work))
    cosine = np.array([e[index[str(root / a / f"{a}_{i:04d}.jpg")]] @ e[index[str(root / b / f"{b}_{j:04d}.jpg")]]
                       for a, i, b, j in lines])
    same = np.array([a == b for a, _, b, _ in lines])
    auc = np.mean([(g > i) + 0.5 * (g == i) for g in cosine[same] for i in cosine[~same]])
    assert figures["auc"] == pytest.approx(auc, abs=1e-9)
    errors = sum(a == b and ((a, i) in spoiled or (b, j) in spoiled) for a, i, b, j in lines)
    assert 0 < errors < len(lines) / 4
    assert figures["lfw_10fold_accuracy"] == pytest.approx(1 - errors / len(lines), abs=0.02)
    # The record --paired reads, against embeddings without the spoiled images (every pair right): the clean
    # model is ahead in every fold that holds a spoiled pair, never behind, by the errors built in above.
    assert json.loads((work / "eval" / "other" / "metrics.json").read_text())["verification"]["fold_accuracies"]
    clean = [direction[n] + 0.1 * rng.normal(size=64) for n, files in test.items() for _ in files]
    np.savez(work / "clean.npz", paths=np.array(paths),
             embeddings=np.array([c / np.linalg.norm(c) for c in clean], np.float32))
    assert bench.score_embeddings(str(work / "clean.npz"), work, "clean", root)["lfw_10fold_accuracy"] == 1.0
    paired = bench.paired_folds(work, "clean", "other")
    assert paired["folds_second_better"] == 0 and paired["folds_first_better"] >= 5
    assert paired["mean_difference"] == pytest.approx(errors / len(lines), abs=0.02)
    assert paired["auc_difference"] == pytest.approx(1.0 - auc, abs=1e-9)


def test_embeddings_missing_an_image_of_the_pairs_say_which(bench, split):
    root, work = split
    _, _, test = bench.split_identities(root, "lfw", seed=3)
    bench.write_pairs(work / "pairs.txt", test, seed=3, max_genuine=200)
    paths = sorted(str(root / n / f.name) for n, files in test.items() for f in files)
    np.savez(work / "emb.npz", paths=np.array(paths[1:]), embeddings=np.ones((len(paths) - 1, 8), np.float32))
    with pytest.raises(SystemExit, match=rf"lacks the embeddings of \d+ images .*{paths[0]}"):
        bench.score_embeddings(str(work / "emb.npz"), work, "other", root)
