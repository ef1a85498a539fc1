"""Reading LFW pairs files and drawing pairs from labelled images."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from arcface.evaluation.pairs import MissingImagesError, PairsError, generate_pairs, read_pairs

PEOPLE = {"Alice_A": 3, "Bob_B": 2, "Carol_C": 1}


@pytest.fixture
def lfw_root(tmp_path):
    """A tiny LFW-style tree: <root>/<name>/<name>_<i:04d>.jpg (contents do not matter to the parser)."""
    for name, count in PEOPLE.items():
        os.makedirs(tmp_path / name)
        for i in range(1, count + 1):
            (tmp_path / name / f"{name}_{i:04d}.jpg").write_bytes(b"jpg")
    return tmp_path


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


MATCHED = ["Alice_A\t1\t2", "Bob_B\t1\t2"]
MISMATCHED = ["Alice_A\t3\tCarol_C\t1", "Bob_B\t2\tCarol_C\t1"]


@pytest.mark.parametrize("newline_at_end", [True, False])
@pytest.mark.parametrize("separator", ["\t", " ", "  \t "])
def test_count_header_tabs_or_spaces_and_final_newline(lfw_root, separator, newline_at_end):
    lines = ["2"] + [line.replace("\t", separator) for line in MATCHED + MISMATCHED]
    text = "\n".join(lines) + ("\n" if newline_at_end else "")
    pairs = read_pairs(write(lfw_root / "pairs.txt", text), lfw_root)
    assert [p.same for p in pairs] == [True, True, False, False]
    assert pairs[0].path_a == os.path.join(str(lfw_root), "Alice_A", "Alice_A_0001.jpg")
    assert pairs[0].path_b == os.path.join(str(lfw_root), "Alice_A", "Alice_A_0002.jpg")
    assert pairs[2].path_b == os.path.join(str(lfw_root), "Carol_C", "Carol_C_0001.jpg")
    assert pairs.counts["genuine"] == 2 and pairs.counts["impostor"] == 2 and pairs.counts["skipped"] == 0
    assert pairs.folds is None  # a single-count header defines no folds


def test_folds_header_gives_each_pair_its_fold(lfw_root):
    text = "2\t1\n" + "\n".join([MATCHED[0], MISMATCHED[0], MATCHED[1], MISMATCHED[1]])
    pairs = read_pairs(write(lfw_root / "pairs.txt", text))  # root defaults to the file's folder
    assert list(pairs.folds) == [0, 0, 1, 1]
    assert os.path.isfile(pairs[0].path_a)


def test_no_header_and_blank_lines_are_fine(lfw_root):
    text = "\n".join(MATCHED + [""] + MISMATCHED) + "\n\n"
    assert len(read_pairs(write(lfw_root / "pairs.txt", text), lfw_root)) == 4


def test_header_count_mismatch_is_an_error(lfw_root):
    text = "3\n" + "\n".join(MATCHED + MISMATCHED)
    with pytest.raises(PairsError, match=r"pairs.txt:1: the header announces 3 matched \+ 3 mismatched pairs = 6, but the file holds 4"):
        read_pairs(write(lfw_root / "pairs.txt", text), lfw_root)


@pytest.mark.parametrize("bad", ["Alice_A\t1", "Alice_A\tx\t2", "Alice_A\t1\tBob_B\t2\t3", "Alice_A\t0\t1",
                                 "Alice_A\t1.5\t2"])
def test_malformed_line_names_line_number_and_line(lfw_root, bad):
    text = "\n".join(["2", MATCHED[0], bad, *MISMATCHED])
    with pytest.raises(PairsError) as info:
        read_pairs(write(lfw_root / "pairs.txt", text), lfw_root)
    message = str(info.value)
    assert "pairs.txt:3:" in message and repr(bad) in message and "'name i j'" in message
    assert isinstance(info.value, ValueError)


def test_missing_file_is_a_pairs_error(tmp_path):
    with pytest.raises(PairsError, match="does not exist"):
        read_pairs(tmp_path / "nope.txt")


def test_missing_images_error_lists_first_ten_and_count(lfw_root):
    missing = [f"Ghost_{k}\t1\t2" for k in range(12)]  # 24 missing images
    text = "\n".join(MATCHED + missing + MISMATCHED)
    with pytest.raises(MissingImagesError) as info:
        read_pairs(write(lfw_root / "pairs.txt", text), lfw_root)
    message = str(info.value)
    assert "24 of the" in message and "and 14 more" in message and "on_missing='skip'" in message
    assert message.count(".jpg\n") == 10  # ten listed paths, one a line


def test_missing_images_skip_counts(lfw_root, caplog):
    text = "\n".join(MATCHED + ["Ghost\t1\t2", "Alice_A\t1\tGhost\t3"] + MISMATCHED)
    pairs = read_pairs(write(lfw_root / "pairs.txt", text), lfw_root, on_missing="skip")
    assert len(pairs) == 4
    assert pairs.counts["skipped"] == 2 and pairs.counts["missing_images"] == 3
    assert "skipped 2 of 6 pairs" in caplog.text
    with pytest.raises(ValueError, match="on_missing='ignore' is unknown"):
        read_pairs(lfw_root / "pairs.txt", lfw_root, on_missing="ignore")


@pytest.mark.shared
def test_real_pairs_dev_train(lfw_dir):
    pairs = read_pairs(lfw_dir / "pairsDevTrain.txt", lfw_dir)
    assert pairs.counts["genuine"] == 1100 and pairs.counts["impostor"] == 1100
    assert all(p.same for p in pairs[:1100]) and not any(p.same for p in pairs[1100:])


# ---------------------------------------------------------------------------------------------------
# generate_pairs
# ---------------------------------------------------------------------------------------------------
def labelled(sizes: list[int]) -> tuple[list[str], list[str]]:
    identities = [f"id{k}" for k, n in enumerate(sizes) for _ in range(n)]
    paths = [f"/img/{name}/{i}.jpg" for i, name in enumerate(identities)]
    return identities, paths


def as_index_pairs(pairs, paths):
    index = {p: i for i, p in enumerate(paths)}
    return {(min(index[p.path_a], index[p.path_b]), max(index[p.path_a], index[p.path_b]), p.same) for p in pairs}


def test_generate_all_genuine_and_enough_impostors():
    identities, paths = labelled([4, 3, 1, 5, 2] * 10)  # 150 images
    pairs = generate_pairs(identities, paths, seed=1)
    genuine_expected = {(a, b) for a, b in itertools.combinations(range(len(paths)), 2)
                        if identities[a] == identities[b]}
    got = as_index_pairs(pairs, paths)
    assert {(a, b) for a, b, same in got if same} == genuine_expected
    impostors = [(a, b) for a, b, same in got if not same]
    assert all(identities[a] != identities[b] for a, b in impostors)
    # 200 genuine pairs, so at least 1000 impostors (min_impostor), all distinct.
    assert pairs.counts["genuine"] == 200 and pairs.counts["impostor"] == 1000 == len(impostors)
    assert pairs.counts["impostor_possible"] == (150**2 - sum(n * n for n in [4, 3, 1, 5, 2] * 10)) // 2


def test_generate_is_seeded():
    identities, paths = labelled([3] * 40)
    assert generate_pairs(identities, paths, seed=5) == generate_pairs(identities, paths, seed=5)
    assert generate_pairs(identities, paths, seed=5) != generate_pairs(identities, paths, seed=6)


def test_generate_caps_genuine_with_a_sample():
    identities, paths = labelled([300, 200])  # 44850 + 19900 genuine pairs
    pairs = generate_pairs(identities, paths, seed=0, max_genuine=5000, max_impostor=7000)
    got = as_index_pairs(pairs, paths)
    genuine = [(a, b) for a, b, same in got if same]
    assert len(genuine) == 5000 and all(identities[a] == identities[b] and a < b for a, b in genuine)
    assert pairs.counts["genuine_possible"] == 44850 + 19900
    assert pairs.counts["impostor"] == 5000  # as many as genuine (above min_impostor, below max_impostor)


def test_generate_impostors_by_rejection_sampling_when_large():
    identities, paths = labelled([2] * 1500)  # 3000 images: too many to list every pair
    pairs = generate_pairs(identities, paths, seed=0)
    got = as_index_pairs(pairs, paths)
    impostors = [(a, b) for a, b, same in got if not same]
    assert len(impostors) == 1500 == pairs.counts["impostor"]
    assert all(identities[a] != identities[b] for a, b in impostors)


def test_generate_small_data_uses_every_impostor_pair():
    identities, paths = labelled([2, 2, 1])
    pairs = generate_pairs(identities, paths)
    assert pairs.counts == {**pairs.counts, "genuine": 2, "impostor": 8, "impostor_possible": 8}


def test_triangle_decoding_is_exact_for_large_indices():
    from arcface.evaluation.pairs import _triangle_pair

    k = np.r_[np.arange(2000), np.array([10**12, 10**12 + 7, 2**40 - 1])]
    i, j = _triangle_pair(k)
    assert np.all((i >= 0) & (i < j)) and np.all(j * (j - 1) // 2 + i == k)


def test_generate_checks_lengths():
    with pytest.raises(ValueError, match="one identity per path"):
        generate_pairs(["a"], ["x", "y"])
