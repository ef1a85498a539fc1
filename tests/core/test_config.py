"""The one config: original flag names and defaults, strict YAML, validation messages, flag precedence."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import yaml

from arcface import config as cfg
from arcface.config import ConfigError, TrainConfig

ORIGINAL_FLAGS = {"n_classes": 10, "train_data": "./", "validation_data": "./", "backbone": "ResNet50",
                  "optimizer": "SGD", "epochs": 100, "lr": 0.1, "enhance": 65, "penalty": 0.5, "decay": 1e-4,
                  "dropout": 0.5, "batch_size": 10, "save_path": "./params", "use_param_folder": ""}


def parse(argv):
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser)
    return cfg.from_args(parser.parse_args(argv))


def test_original_flags_keep_their_names_and_defaults():
    """Every original flag is still typed as it was (use_param_folder is now a spelling of init_from)."""
    defaults = TrainConfig().to_dict()
    spelled = cfg.aliases()
    assert spelled == {"use_param_folder": "init_from"}
    for name, value in ORIGINAL_FLAGS.items():
        assert defaults[spelled.get(name, name)] == value, name
    assert [spelled.get(n, n) for n in ORIGINAL_FLAGS] == [f.name for f in cfg.fields()][:14]
    typed = {"n_classes": "3", "epochs": "2", "lr": "0.5", "enhance": "30", "penalty": "0.3", "decay": "0.01",
             "dropout": "0.2", "batch_size": "4", "train_data": "t/", "validation_data": "v/", "backbone": "VGG16",
             "optimizer": "Adam", "save_path": "p/", "use_param_folder": "w/"}
    got = parse([f"--{k}={v}" for k, v in typed.items()]).to_dict()
    assert {k: str(got[spelled.get(k, k)]) for k in typed} == {
        **typed, "epochs": "2", "enhance": "30.0", "decay": "0.01", "dropout": "0.2", "batch_size": "4"}
    assert TrainConfig().image_size == 112 and TrainConfig().embedding_size == 512
    TrainConfig().validate()


def test_both_flag_spellings():
    a = parse(["--n_classes=5", "--lr=0.001", "--backbone=VGG16", "--augment=false"])
    b = parse(["--n_classes", "5", "--lr", "0.001", "--backbone", "VGG16", "--augment", "false"])
    assert a == b
    assert (a.n_classes, a.lr, a.backbone, a.augment) == (5, 0.001, "VGG16", False)
    assert parse(["--resume"]).resume is True


def test_flags_win_over_yaml_and_yaml_over_defaults(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"lr": 0.01, "epochs": 3, "backbone": "MobileFaceNet"}))
    c = parse(["--config", str(path), "--lr=0.5"])
    assert (c.lr, c.epochs, c.backbone, c.batch_size) == (0.5, 3, "MobileFaceNet", 10)


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lr: 0.1\npenalti: 0.3\n")
    with pytest.raises(ConfigError, match=r"'penalti' \(did you mean 'penalty'\?\)"):
        cfg.load_yaml(path)


@pytest.mark.parametrize(("changes", "message"), [
    ({"penalty": -1.0}, r"--penalty=-1.0 is out of range: .*\[0, pi/2\)"),
    ({"penalty": math.pi / 2}, r"--penalty=.* is out of range"),
    ({"enhance": 0.0}, r"--enhance=0.0 is out of range: the scale s must be > 0"),
    ({"batch_size": 0}, r"--batch_size=0 is out of range: must be >= 1"),
    ({"backbone": "ResNet51"}, r"--backbone='ResNet51' is unknown; choose one of: ResNet50, ResNet100, VGG16"),
    ({"optimizer": "RMSprop"}, r"--optimizer='RMSprop' is unknown; choose one of: SGD, Adam"),
    ({"dropout": 1.0}, r"--dropout=1.0 is out of range"),
    ({"margin": "cosface", "penalty": 1.5}, r"additive cosine margin must be in \[0, 1\)"),
    ({"sample_rate": 0.0}, r"--sample_rate=0.0 is out of range"),
    ({"precision": "bfloat16"}, r"--precision='bfloat16' is unknown; choose one of: float32, mixed_float16, "
                                r"mixed_bfloat16, auto"),
    ({"precision": "mixed_bfloat16", "mixed_precision": True},
     r"--mixed_precision means --precision=auto, which disagrees with --precision='mixed_bfloat16'"),
    ({"checkpoint_key": "../other-run"}, r"--checkpoint_key='../other-run' is out of range: a folder name"),
    ({"checkpoint_key": "a/b"}, r"--checkpoint_key='a/b' is out of range"),
])
def test_validation_names_flag_and_range(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig().replace(**changes).validate()


def test_wrong_types_are_reported():
    with pytest.raises(ConfigError, match="epochs: expected an integer, got 'ten'"):
        cfg.from_dict({"epochs": "ten"})
    with pytest.raises(ConfigError, match="augment: expected true or false"):
        cfg.from_dict({"augment": "maybe"})


def test_margin_variants_map_to_m1_m2_m3():
    assert TrainConfig().margins == (1.0, 0.5, 0.0)
    assert TrainConfig(margin="cosface", penalty=0.35).margins == (1.0, 0.0, 0.35)
    assert TrainConfig(margin="sphereface", penalty=1.5).margins == (1.5, 0.0, 0.0)
    assert TrainConfig(margin="combined", margin_m1=1.0, penalty=0.3, margin_m3=0.2).margins == (1.0, 0.3, 0.2)


def test_precision_defaults_to_float32_and_the_original_flag_means_auto():
    assert TrainConfig().precision == "float32" and TrainConfig().requested_precision == "float32"
    assert parse([]).requested_precision == "float32"
    assert parse(["--precision=mixed_bfloat16"]).requested_precision == "mixed_bfloat16"
    legacy = parse(["--mixed_precision"])
    assert (legacy.precision, legacy.requested_precision) == ("auto", "auto")
    # As the pipeline passes every field: the flag with the default precision is auto too.
    assert cfg.from_dict({"mixed_precision": True, "precision": "float32"}).validate().requested_precision == "auto"
    assert parse(["--mixed_precision", "--precision=auto"]).requested_precision == "auto"
    assert parse(["--mixed_precision=false", "--precision=mixed_float16"]).requested_precision == "mixed_float16"


@pytest.mark.parametrize("precision", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_both_precision_flags_that_disagree_are_an_error(precision):
    with pytest.raises(ConfigError, match=f"--mixed_precision means --precision=auto, but --precision='{precision}' "
                                          "was given too; drop --mixed_precision"):
        parse(["--mixed_precision", f"--precision={precision}"])


def test_a_precision_flag_wins_over_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"mixed_precision": True}))
    assert parse(["--config", str(path)]).requested_precision == "auto"
    assert parse(["--config", str(path), "--precision=float32"]).requested_precision == "float32"
    path.write_text(yaml.safe_dump({"precision": "mixed_float16"}))
    assert parse(["--config", str(path), "--mixed_precision"]).requested_precision == "auto"


def test_saved_config_round_trips(tmp_path):
    c = TrainConfig(n_classes=7, lr=0.02, backbone="ResNet18", augment=False)
    c.save(tmp_path / "config.yaml")
    assert cfg.load_yaml(tmp_path / "config.yaml") == c


PRESETS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_shipped_presets_load_strictly_and_validate(path):
    config = cfg.load_yaml(path).replace(n_classes=171).validate()  # the benchmark sets n_classes
    assert config.max_minutes > 0, "a preset is a recipe for a fixed wall-clock budget"


def test_presets_are_shipped():
    assert {p.name for p in PRESETS} >= {"lfw_cpu.yaml", "orl_cpu.yaml"}
