"""--init_from (the original --use_param_folder): where a run starts, and how the head keeps what it knew.

The rows are checked against references built here: the source's rows picked by name with plain indexing, and
the new identities' mean embeddings computed by running the source's own saved embedding model (loaded by
Keras, not through the trainer) over their training images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import numpy as np
import pytest

from arcface.config import ConfigError, TrainConfig, from_dict, load_yaml
from arcface.warm_start import Head, StartError, head_rows, mean_embeddings, resolve
from tests.train.conftest import tiny_config


# ---------------------------------------------------------------------------------------------------------
# The pieces, on numbers made here
# ---------------------------------------------------------------------------------------------------------
def test_rows_follow_the_class_names_not_the_positions():
    rng = np.random.default_rng(0)
    source = Head(("ann", "bob", "cid"), rng.normal(size=(3, 4)).astype(np.float32))
    fresh = rng.normal(size=(3, 4)).astype(np.float32)
    rows, counts = head_rows(["cid", "ann", "dee"], source, fresh)
    np.testing.assert_array_equal(rows, np.stack([source.centers[2], source.centers[0], fresh[2]]))
    assert counts == {"kept": 2, "new": 1, "dropped": 1}
    np.testing.assert_array_equal(head_rows(["x", "y", "z"], None, fresh)[0], fresh)  # no source head: all new


def test_mean_embeddings_are_the_unit_mean_of_unit_features():
    features = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0], [5.0, 5.0]])
    batches = [(features[:2], np.array([0, 0])), (features[2:], np.array([1, 1]))]
    means = mean_embeddings(lambda x, training: x, batches, n_classes=3)
    np.testing.assert_allclose(means[0], [2 ** -0.5, 2 ** -0.5], rtol=1e-6)  # (1,0)+(0,1), normalized
    np.testing.assert_allclose(means[1], [2 ** -0.5, 2 ** -0.5], rtol=1e-6)
    np.testing.assert_array_equal(means[2], [0.0, 0.0])  # no image: a zero row, replaced by the caller


def test_head_file_round_trip(tmp_path):
    head = Head(("a", "b"), np.arange(6, dtype=np.float32).reshape(2, 3))
    head.save(tmp_path / "head.npz")
    again = Head.load(tmp_path / "head.npz")
    assert again.class_names == ("a", "b")
    np.testing.assert_array_equal(again.centers, head.centers)


# ---------------------------------------------------------------------------------------------------------
# The flag: one field, two spellings
# ---------------------------------------------------------------------------------------------------------
def test_use_param_folder_is_another_spelling_of_init_from(tmp_path):
    from arcface.cli import build_parser
    from arcface.config import from_args

    for flag in ("--use_param_folder", "--init_from"):
        args = build_parser().parse_args(["train", f"{flag}=/models/run1", "--n_classes", "4"])
        assert from_args(args).init_from == "/models/run1"
    (tmp_path / "c.yaml").write_text("use_param_folder: /models/run2\n")
    assert load_yaml(tmp_path / "c.yaml").init_from == "/models/run2"
    assert from_dict({"use_param_folder": "a", "init_from": "a"}).init_from == "a"
    with pytest.raises(ConfigError, match="'use_param_folder' is another spelling of 'init_from'"):
        from_dict({"use_param_folder": "a", "init_from": "b"})
    assert TrainConfig().init_from == ""


# ---------------------------------------------------------------------------------------------------------
# Resolving what --init_from names, and its errors
# ---------------------------------------------------------------------------------------------------------
def test_nothing_given_is_from_scratch():
    assert resolve("") is None and resolve("  ") is None


def test_champion_needs_a_store_with_a_current_version(tmp_path):
    with pytest.raises(StartError, match="needs --model_store"):
        resolve("champion")
    with pytest.raises(StartError, match=r"has no current version yet; train the first one from scratch"):
        resolve("champion", model_store=str(tmp_path / "store"))


def test_a_missing_path_and_a_file_that_is_no_model_are_named(tmp_path):
    with pytest.raises(StartError, match=f"{tmp_path / 'nowhere'} does not exist"):
        resolve(str(tmp_path / "nowhere"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(StartError, match=r"notes.txt is neither a .keras model, .h5 weights nor an insightface .onnx"):
        resolve(str(tmp_path / "notes.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StartError, match=r"empty holds no model"):
        resolve(str(tmp_path / "empty"))


def sha256_tree(folder) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------------
# A run started from another: a source on ORL s1-s4, a team of s2-s5 (s1 gone, s5 new)
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source_run(tiny_manifest, tmp_path_factory):
    from arcface.train import train

    folder = tmp_path_factory.mktemp("source") / "run"
    train(tiny_config(folder, epochs=2), tiny_manifest, verbose=0)
    return folder


def test_a_run_keeps_the_rows_it_knows_by_name_and_starts_new_ones_from_their_mean_embedding(
        source_run, team_manifest, tmp_path):
    import keras

    from arcface.artifacts import load_keras
    from arcface.train import Trainer
    from arcface.warm_start import head_rows_of

    before = sha256_tree(source_run)
    source = Head.load(source_run / "head.npz")
    assert source.class_names == ("s1", "s2", "s3", "s4") and source.centers.shape == (4, 32)
    trainer = Trainer(tiny_config(tmp_path / "team", init_from=str(source_run)), team_manifest, verbose=0)
    names = list(trainer.class_names)
    assert sorted(names) == ["s2", "s3", "s4", "s5"]
    message = trainer.restore_or_start()
    assert "3 kept, 1 new (mean embedding), 1 dropped" in message

    # The backbone: the source's saved embedding model, loaded by Keras, gives the same embeddings.
    embedding_file = source_run / "embedding_model.keras"
    reference = load_keras(embedding_file)
    images = np.stack([np.asarray(keras.utils.img_to_array(keras.utils.load_img(p, target_size=(48, 48))))
                       for p in team_manifest.absolute_paths("train")[:6]]) / 127.5 - 1
    np.testing.assert_allclose(np.asarray(trainer.embedding_model(images, training=False)),
                               np.asarray(reference(images, training=False)), atol=1e-5)

    rows = head_rows_of(trainer.head)
    for name in ("s2", "s3", "s4"):  # by name, though every index moved
        np.testing.assert_array_equal(rows[names.index(name)], source.centers[source.class_names.index(name)])
    # s5: the direction of the mean of its training images' unit embeddings, by the source's own model.
    from arcface.data import make_dataset

    s5 = [img for img, label in make_dataset(team_manifest, "train", image_size=48, batch_size=64, training=False)
          .unbatch().as_numpy_iterator() if team_manifest.class_names[label] == "s5"]
    assert len(s5) == 7
    mean = np.asarray(reference(np.stack(s5), training=False)).mean(axis=0)
    row = rows[names.index("s5")]
    assert float(row @ mean / np.linalg.norm(row) / np.linalg.norm(mean)) > 0.9999
    kept_length = np.median(np.linalg.norm(rows[[names.index(n) for n in ("s2", "s3", "s4")]], axis=1))
    assert np.linalg.norm(row) == pytest.approx(kept_length, rel=1e-5)
    assert sha256_tree(source_run) == before  # the source is only read


def test_random_rows_for_new_identities_on_request(source_run, team_manifest, tmp_path):
    from arcface.train import Trainer
    from arcface.warm_start import head_rows_of

    built = Trainer(tiny_config(tmp_path / "scratch"), team_manifest, verbose=0)
    trainer = Trainer(tiny_config(tmp_path / "team", init_from=str(source_run), head_init="random"),
                      team_manifest, verbose=0)
    assert "1 new (random)" in trainer.restore_or_start()
    s5 = list(trainer.class_names).index("s5")
    np.testing.assert_array_equal(head_rows_of(trainer.head)[s5], head_rows_of(built.head)[s5])  # as built


def test_the_run_and_its_export_record_what_they_started_from(source_run, team_manifest, tmp_path):
    from arcface.artifacts import file_sha256
    from arcface.export import export as export_model
    from arcface.train import train

    result = train(tiny_config(tmp_path / "team", init_from=str(source_run), epochs=1), team_manifest, verbose=0)
    started = json.loads((tmp_path / "team" / "metadata.json").read_text())["started_from"]
    source_file = source_run / "embedding_model.keras"
    assert started == {"init_from": str(source_run), "path": str(source_file), "sha256": file_sha256(source_file)}
    assert result.epochs_completed == 1
    card = export_model(tmp_path / "team", tmp_path / "export", formats=["keras"])
    assert card["source"]["started_from"] == started
    assert "started from: `" + str(source_file) in (tmp_path / "export" / "model_card.md").read_text()
    head = Head.load(tmp_path / "export" / "head.npz")  # the export carries the rows, for the next run
    assert sorted(head.class_names) == ["s2", "s3", "s4", "s5"]


def test_a_store_version_and_the_champion_start_a_run_and_are_named(source_run, team_manifest, tmp_path):
    from arcface.export import export as export_model
    from arcface.mlops.store import ModelStore
    from arcface.train import Trainer

    export_model(source_run, tmp_path / "export", formats=["keras"])
    store = ModelStore(tmp_path / "store", "faces")
    version = store.add_version(tmp_path / "export", run_id="week-1")
    for given in (str(store.version_dir(version)), "champion"):
        start = resolve(given, model_store=str(tmp_path / "store"), model_name="faces")
        assert (start.store, start.store_version, start.class_names) == (store.folder, 1, ("s1", "s2", "s3", "s4"))
        trainer = Trainer(tiny_config(tmp_path / given.replace("/", "_"), init_from=given), team_manifest,
                          verbose=0, starting_point=start)
        assert f"starting from version 1 of {store.folder}" in trainer.restore_or_start()
        assert trainer.metadata()["started_from"]["version"] == 1


def test_another_backbone_size_or_embedding_is_named_on_both_sides(source_run, team_manifest, tmp_path):
    from arcface.train import Trainer

    for change, expected in ((dict(embedding_size=16), r"embedding_size=32.*--embedding_size=16"),
                             (dict(image_size=64), r"image_size=48.*--image_size=64"),
                             (dict(backbone="MobileFaceNet"), r"backbone='TinyFaceNet'.*--backbone='MobileFaceNet'")):
        trainer = Trainer(tiny_config(tmp_path / str(change), init_from=str(source_run), **change), team_manifest,
                          verbose=0)
        with pytest.raises(StartError, match=expected):
            trainer.restore_or_start()


def test_a_source_without_class_names_warns_and_starts_a_fresh_head(source_run, team_manifest, tmp_path, caplog):
    from arcface.train import Trainer

    bare = tmp_path / "bare.keras"
    shutil.copy2(source_run / "embedding_model.keras", bare)
    trainer = Trainer(tiny_config(tmp_path / "team", init_from=str(bare)), team_manifest, verbose=0)
    with caplog.at_level(logging.WARNING):
        assert "0 kept, 4 new (mean embedding), 0 dropped" in trainer.restore_or_start()
    assert "holds no class names" in caplog.text and str(bare) in caplog.text


def test_the_pipeline_starts_from_the_champion_unless_told_otherwise(source_run, team_manifest, tmp_path):
    """The train step's rule (components/train): an empty init_from with warm_start on means the champion, when
    the store has one. Before the first step the run's embedding of a face is the champion's, as the champion's
    own exported model.keras (loaded by Keras from the store) computes it."""
    import keras

    from arcface.artifacts import load_keras
    from arcface.export import export as export_model
    from arcface.mlops.store import ModelStore
    from arcface.train import Trainer
    from arcface.warm_start import pipeline_init_from

    store_root = str(tmp_path / "store")
    assert pipeline_init_from("", store_root, "faces", True) == ""  # an empty store: from scratch
    export_model(source_run, tmp_path / "export", formats=["keras"])
    store = ModelStore(store_root, "faces")
    store.add_version(tmp_path / "export", run_id="week-1")
    assert pipeline_init_from("", store_root, "faces", True) == "champion"
    assert pipeline_init_from("", store_root, "faces", False) == ""
    assert pipeline_init_from("/elsewhere", store_root, "faces", True) == "/elsewhere"
    assert pipeline_init_from("", "", "faces", True) == ""

    face = keras.utils.img_to_array(keras.utils.load_img(team_manifest.absolute_paths("train")[0],
                                                         target_size=(48, 48)))[None] / 127.5 - 1
    champion = np.asarray(load_keras(store.extra_dir(1) + "/model.keras")(face, training=False))
    for warm, expected in ((True, 0.0), (False, None)):
        given = pipeline_init_from("", store_root, "faces", warm)
        trainer = Trainer(tiny_config(tmp_path / f"week2-{warm}", init_from=given), team_manifest, verbose=0,
                          starting_point=resolve(given, model_store=store_root, model_name="faces"))
        trainer.restore_or_start()
        embedding = np.asarray(trainer.embedding_model(face, training=False))
        if expected is None:
            assert np.abs(embedding - champion).max() > 1e-2  # from scratch: another network
        else:
            np.testing.assert_allclose(embedding, champion, atol=1e-5)
