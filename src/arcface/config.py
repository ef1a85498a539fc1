"""The one typed configuration of a training run.

Every command-line flag, every YAML key and every pipeline parameter is derived from the fields of
:class:`TrainConfig`: the name, the type, the default and the help text are written here once. The
first fourteen fields are the original ``train.py`` flags with their original defaults (the fourteenth,
``init_from``, keeps its original spelling ``use_param_folder`` as an alias).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from arcface import atomic
from arcface.choices import (
    ALIGN_METHODS,
    BACKBONES,
    HEAD_INITS,
    MARGIN_GRADIENTS,
    MARGINS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
)

CHECKPOINT_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the flag and what it accepts."""


def _field(default: Any, help: str, **extra: Any) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, **extra})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # --- the original train.py flags, same names, same defaults -----------------------------------------
    n_classes: int = _field(10, "number of identities (class folders) to train on")
    train_data: str = _field("./", "training folder of <identity>/ subfolders, or a root holding train/")
    validation_data: str = _field("./", "validation folder of <identity>/ subfolders, or a root holding validation/")
    backbone: str = _field("ResNet50", "network that maps a face to its embedding", choices=BACKBONES)
    optimizer: str = _field("SGD", "SGD (momentum 0.9) or Adam", choices=OPTIMIZERS)
    epochs: int = _field(100, "passes over the training set")
    lr: float = _field(0.1, "peak learning rate (after warm-up)")
    enhance: float = _field(65.0, "scale s of the normalized logits")
    penalty: float = _field(0.5, "margin m: additive angular (arcface, radians), additive cosine (cosface), "
                                 "multiplicative angular (sphereface)")
    decay: float = _field(1e-4, "weight decay on every trainable kernel")
    dropout: float = _field(0.5, "dropout rate before the embedding layer")
    batch_size: int = _field(10, "global batch size (split across replicas)")
    save_path: str = _field("./params", "where checkpoints, logs, the config and the models are written")
    init_from: str = _field("", "start from a model: 'champion' (the current version of --model_store), a run's "
                                "save_path, an export folder, a store version, a .keras/.h5 file, or an "
                                "insightface .onnx; the head "
                                "keeps the rows of the identities it knows, by name (empty: from scratch)",
                            aliases=("use_param_folder",))
    # --- model ---------------------------------------------------------------------------------------
    image_size: int = _field(112, "side of the square face crop fed to the network, in pixels")
    embedding_size: int = _field(512, "dimension of the face embedding")
    margin: str = _field("arcface", "margin head", choices=MARGINS)
    margin_m1: float = _field(1.0, "combined margin only: multiplicative angular margin m1")
    margin_m3: float = _field(0.0, "combined margin only: additive cosine margin m3")
    easy_margin: bool = _field(False, "arcface: keep cos(theta) where theta > pi/2 instead of the fallback")
    margin_gradient: str = _field("exact", "exact: the margin's own gradient; straight_through: the margin's "
                                           "value with the plain cosine's gradient (insightface's "
                                           "CombinedMarginLoss)", choices=MARGIN_GRADIENTS)
    sample_rate: float = _field(1.0, "Partial-FC: fraction of class centres used per step (1.0 = full softmax)")
    pretrained: bool = _field(False, "VGG16 only: start from ImageNet weights (needs network access)")
    head_init: str = _field("mean_embedding", "with --init_from: the rows of identities the source does not know "
                                              "start from the mean embedding of their training images, or random",
                            choices=HEAD_INITS)
    # --- data ----------------------------------------------------------------------------------------
    align: str = _field("mtcnn", "face alignment before training and at every entrance: mtcnn (detect the face "
                                 "and warp it onto the ArcFace 5-point template; for photos) or none (the images "
                                 "are already face crops)", choices=ALIGN_METHODS)
    align_cache: str = _field("", "folder of earlier aligned crops (an align output or a cache folder, updated "
                                  "with the new crops): unchanged images are not aligned again (empty: `arcface "
                                  "train` keeps one in <checkpoint_dir>/align-cache, else in <save_path>/aligned, "
                                  "so a restart reuses its crops; the pipeline's align step keeps none)")
    center_crop: float = _field(1.0, "fraction of the image side kept around the centre before resizing")
    augment: bool = _field(True, "random flip and light colour/crop jitter on training images")
    jitter: bool = _field(True, "augment: also the crop/scale, brightness and contrast jitter; off: the flip only, "
                                "as insightface's reference trainer")
    min_images: int = _field(1, "identities with fewer training images are reported (and excluded)")
    strict: bool = _field(False, "fail on any data problem instead of excluding the files with a warning")
    cache: bool = _field(False, "cache decoded images in memory after the first epoch")
    # --- optimisation --------------------------------------------------------------------------------
    momentum: float = _field(0.9, "SGD momentum")
    schedule: str = _field("cosine", "learning-rate decay after warm-up", choices=SCHEDULES)
    warmup_epochs: float = _field(1.0, "linear warm-up length in epochs (0 to disable)")
    clipnorm: float = _field(0.0, "clip gradients to this global norm (0 disables)")
    backbone_clipnorm: float = _field(0.0, "clip the backbone's gradients (not the head's) to this norm, as the "
                                           "reference trainer does with 5 (0 disables)")
    label_smoothing: float = _field(0.0, "label smoothing of the softmax cross-entropy")
    backbone_lr_scale: float = _field(1.0, "SGD: the backbone's learning rate as a fraction of --lr (the head "
                                           "keeps --lr): below 1 when fine-tuning from --init_from, so the new "
                                           "head rows settle before the backbone moves far; 0 freezes it")
    # --- run control ---------------------------------------------------------------------------------
    seed: int = _field(42, "seed for initialization, shuffling, augmentation and pair sampling")
    max_minutes: float = _field(0.0, "wall-clock training budget in minutes; stop cleanly and save (0: none)")
    resume: bool = _field(True, "continue from the checkpoint in save_path when there is one")
    checkpoint_steps: int = _field(0, "also checkpoint every N steps (0: once per epoch)")
    precision: str = _field("float32", "compute precision (variables stay float32): float32; mixed_float16 (GPU, "
                                       "with loss scaling); mixed_bfloat16 (GPUs of compute capability >= 8.0, "
                                       "CPUs with AVX512-BF16/AMX); auto picks for the device (float32 where "
                                       "neither pays)", choices=PRECISIONS)
    mixed_precision: bool = _field(False, "the original flag, now the same as --precision=auto (mixed bfloat16 "
                                          "or float16 where the device computes it natively, else float32)")
    jit_compile: bool = _field(False, "compile the training step with XLA")
    steps_per_epoch: int = _field(0, "cap on steps per epoch (0: the whole training set)")
    checkpoint_dir: str = _field("", "folder for checkpoints that outlive save_path (e.g. a PVC): they go to "
                                     "<checkpoint_dir>/<checkpoint_key>/, so a retried run resumes from them "
                                     "(empty: <save_path>/checkpoints)")
    checkpoint_key: str = _field("", "this run's folder under checkpoint_dir: the same key resumes, another one "
                                     "starts fresh (empty: derived from the manifest hash and the training "
                                     "settings; the pipeline passes its run name)")
    sync_batchnorm: bool = _field(True, "with several replicas, batch-norm statistics over the global batch, so "
                                        "N devices or workers train what one device would (false: per replica, "
                                        "fewer all-reduces)")

    # ------------------------------------------------------------------------------------------------
    @property
    def margins(self) -> tuple[float, float, float]:
        """The (m1, m2, m3) of cos(m1*theta + m2) - m3 that the chosen margin variant means."""
        return {
            "arcface": (1.0, self.penalty, 0.0),
            "cosface": (1.0, 0.0, self.penalty),
            "sphereface": (self.penalty, 0.0, 0.0),
            "combined": (self.margin_m1, self.penalty, self.margin_m3),
            "softmax": (1.0, 0.0, 0.0),
        }[self.margin]

    @property
    def requested_precision(self) -> str:
        """--precision, or ``auto`` when only the original --mixed_precision flag asks for mixed precision."""
        return "auto" if self.mixed_precision and self.precision == "float32" else self.precision

    def validate(self) -> TrainConfig:
        """Check every value; raise :class:`ConfigError` naming the flag, the value and what is allowed."""
        problems = list(_problems(self))
        if problems:
            raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
        return self

    def replace(self, **changes: Any) -> TrainConfig:
        return from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write the config as YAML (or JSON when the path ends in .json) next to a model."""
        import yaml

        text = (json.dumps(self.to_dict(), indent=2) if str(path).endswith(".json")
                else yaml.safe_dump(self.to_dict(), sort_keys=False))
        atomic.write_text(path, text)


def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(TrainConfig)


def field_type(field: dataclasses.Field) -> type:
    """The plain Python type (int, float, str, bool) of a config field."""
    return typing.get_type_hints(TrainConfig)[field.name]


def coerce(name: str, value: Any, kind: type) -> Any:
    """``value`` (from a flag, a YAML file or a pipeline parameter) as ``kind``; a ConfigError names ``name``."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"1", "true", "yes", "on"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"0", "false", "no", "off"}:
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{name}: expected true or false, got {value!r}")
    if kind is str:
        if value is None:
            return ""
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return str(value)
    try:
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                # '3.0' and '1e6' name whole numbers too (KFP hands dict members over as such strings).
                number = float(value)
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return int(value)
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None


def from_dict(values: Mapping[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """Build a config from a mapping; an unknown key is an error that names it and the nearest known key."""
    known = {f.name: f for f in fields()}
    values = _canonical_names(values)
    unknown = [k for k in values if k not in known]
    if unknown:
        hints = []
        for key in unknown:
            near = difflib.get_close_matches(str(key), known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        raise ConfigError(f"unknown config key(s): {', '.join(hints)}; known keys: {', '.join(known)}")
    merged = (base or TrainConfig()).to_dict()
    for key, value in values.items():
        merged[key] = coerce(key, value, field_type(known[key]))
    return TrainConfig(**merged)


def aliases() -> dict[str, str]:
    """Other spellings of a field's name (the original tool's ``use_param_folder`` for ``init_from``)."""
    return {alias: f.name for f in fields() for alias in f.metadata.get("aliases", ())}


def _canonical_names(values: Mapping[str, Any]) -> dict[str, Any]:
    spelled = aliases()
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = spelled.get(key, key)
        if name in out and out[name] != value:
            alias = key if key != name else next(a for a, n in spelled.items() if n == name and a in values)
            raise ConfigError(f"{alias!r} is another spelling of {name!r}, and the two are given different values "
                              f"({values[alias]!r} and {values[name]!r}); give only one")
        out[name] = value
    return out


def load_yaml(path: str | os.PathLike, base: TrainConfig | None = None) -> TrainConfig:
    """Read a YAML file of config keys (strict: unknown keys are errors)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(data).__name__}")
    try:
        return from_dict(data, base)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _bad(c: TrainConfig, name: str, allowed: str) -> str:
    return f"--{name}={getattr(c, name)!r} is out of range: {allowed}"


def _problems(c: TrainConfig) -> Iterable[str]:
    # validate() lists the problems in this order; the groups below are cut so as to keep it.
    for f in fields():
        choices = f.metadata.get("choices")
        if choices and getattr(c, f.name) not in choices:
            yield f"--{f.name}={getattr(c, f.name)!r} is unknown; choose one of: {', '.join(choices)}"
    if c.n_classes < 2:
        yield _bad(c, "n_classes", "at least 2 identities are needed to learn to tell faces apart")
    if c.epochs < 1:
        yield _bad(c, "epochs", "must be >= 1")
    if not (math.isfinite(c.lr) and c.lr > 0):
        yield _bad(c, "lr", "must be a finite number > 0")
    yield from _margin_problems(c)
    if not (math.isfinite(c.decay) and c.decay >= 0):
        yield _bad(c, "decay", "weight decay must be >= 0")
    if not 0 <= c.dropout < 1:
        yield _bad(c, "dropout", "must be in [0, 1)")
    if c.batch_size < 1:
        yield _bad(c, "batch_size", "must be >= 1")
    if not c.save_path:
        yield _bad(c, "save_path", "needs a folder to write checkpoints and models to")
    if not 32 <= c.image_size <= 1024:
        yield _bad(c, "image_size", "must be in [32, 1024] pixels (the paper uses 112)")
    if c.backbone == "VGG16" and c.image_size < 32:
        yield _bad(c, "image_size", "VGG16 needs at least 32 pixels")
    if not 2 <= c.embedding_size <= 8192:
        yield _bad(c, "embedding_size", "must be in [2, 8192] (the paper uses 512)")
    if not 0 < c.sample_rate <= 1:
        yield _bad(c, "sample_rate", "must be in (0, 1]; 1.0 means the full softmax")
    if c.sample_rate < 1 and c.margin == "softmax":
        yield _bad(c, "sample_rate", "Partial-FC sampling needs a normalized margin head, not softmax")
    if c.pretrained and c.backbone != "VGG16":
        yield _bad(c, "pretrained", "ImageNet weights exist only for VGG16")
    if not 0.2 <= c.center_crop <= 1:
        yield _bad(c, "center_crop", "must be in [0.2, 1]")
    if c.min_images < 1:
        yield _bad(c, "min_images", "must be >= 1")
    yield from _optimizer_problems(c)
    yield from _run_problems(c)


def _margin_problems(c: TrainConfig) -> Iterable[str]:
    """The scale and the margins of the head, each in the range its margin allows."""
    if not (math.isfinite(c.enhance) and c.enhance > 0):
        yield _bad(c, "enhance", "the scale s must be > 0 (the paper uses 64)")
    if not math.isfinite(c.penalty):
        yield _bad(c, "penalty", "must be a finite number")
    elif c.margin in ("arcface", "combined") and not 0 <= c.penalty < math.pi / 2:
        yield _bad(c, "penalty", "the additive angular margin m must be in [0, pi/2) radians (the paper uses 0.5)")
    elif c.margin == "cosface" and not 0 <= c.penalty < 1:
        yield _bad(c, "penalty", "the additive cosine margin must be in [0, 1) (CosFace uses 0.35)")
    elif c.margin == "sphereface" and not 1 <= c.penalty <= 4:
        yield _bad(c, "penalty", "the multiplicative angular margin must be in [1, 4] (SphereFace2 uses 1.35-1.7)")
    if c.margin == "combined":
        if not 1 <= c.margin_m1 <= 4:
            yield _bad(c, "margin_m1", "must be in [1, 4]")
        if not 0 <= c.margin_m3 < 1:
            yield _bad(c, "margin_m3", "must be in [0, 1)")


def _optimizer_problems(c: TrainConfig) -> Iterable[str]:
    if not 0 <= c.momentum < 1:
        yield _bad(c, "momentum", "must be in [0, 1)")
    if c.warmup_epochs < 0:
        yield _bad(c, "warmup_epochs", "must be >= 0")
    if c.clipnorm < 0:
        yield _bad(c, "clipnorm", "must be >= 0 (0 disables clipping)")
    if c.backbone_clipnorm < 0:
        yield _bad(c, "backbone_clipnorm", "must be >= 0 (0 disables clipping)")
    if not 0 <= c.label_smoothing < 1:
        yield _bad(c, "label_smoothing", "must be in [0, 1)")
    if not (math.isfinite(c.backbone_lr_scale) and c.backbone_lr_scale >= 0):
        yield _bad(c, "backbone_lr_scale", "must be >= 0 (1: the backbone trains at --lr, 0: frozen)")
    elif c.backbone_lr_scale != 1 and c.optimizer != "SGD":
        yield _bad(c, "backbone_lr_scale", "works with --optimizer=SGD only (Adam's steps do not scale with the "
                                       "gradient); use SGD, or leave it at 1")


def _run_problems(c: TrainConfig) -> Iterable[str]:
    """How the run is driven: its budget, checkpoints and precision."""
    if c.max_minutes < 0:
        yield _bad(c, "max_minutes", "must be >= 0 (0 means no budget)")
    if c.checkpoint_steps < 0:
        yield _bad(c, "checkpoint_steps", "must be >= 0")
    if c.steps_per_epoch < 0:
        yield _bad(c, "steps_per_epoch", "must be >= 0")
    if c.mixed_precision and c.precision not in ("float32", "auto"):
        yield (f"--mixed_precision means --precision=auto, which disagrees with --precision={c.precision!r}; "
               "give only one of the two (--precision alone says exactly what to use)")
    if c.checkpoint_key and not CHECKPOINT_KEY.fullmatch(c.checkpoint_key):
        yield _bad(c, "checkpoint_key", "a folder name: letters, digits, '.', '_' and '-', not starting with '.'")


# ---------------------------------------------------------------------------------------------------
# Command line: the flags are generated from the fields, so a new field is a new flag.
# ---------------------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    """Add one ``--name`` option per config field (``--flag=value`` and ``--flag value`` both work).

    Defaults are left as ``None`` so that only the flags a user typed override a ``--config`` file.
    """
    parser.add_argument("--config", help="YAML file of config keys; flags given on the command line win")
    for f in fields():
        kind = field_type(f)
        help_text = f"{f.metadata['help']} (default: {f.default!r})"
        if f.metadata.get("choices"):
            help_text += f"; one of {', '.join(f.metadata['choices'])}"
        parser.add_argument(f"--{f.name}", *(f"--{a}" for a in f.metadata.get("aliases", ())), dest=f.name,
                            default=None, metavar=kind.__name__.upper(),
                            type=(lambda v, n=f.name, k=kind: coerce(n, v, k)),
                            nargs="?" if kind is bool else None, const=True if kind is bool else None,
                            help=help_text)


def from_args(args) -> TrainConfig:
    """Resolve defaults, then the ``--config`` YAML file, then the flags given; validate the result."""
    base = load_yaml(args.config) if getattr(args, "config", None) else TrainConfig()
    given = {f.name: getattr(args, f.name) for f in fields() if getattr(args, f.name, None) is not None}
    return from_dict(_one_precision(given), base).validate()


def _one_precision(given: dict[str, Any]) -> dict[str, Any]:
    """--precision and the original --mixed_precision (= --precision=auto) on one command line: both typed and
    disagreeing is an error; one typed alone wins over what a --config file says about the other."""
    if "precision" in given and "mixed_precision" in given:
        if given["mixed_precision"] and given["precision"] != "auto":
            raise ConfigError(f"--mixed_precision means --precision=auto, but --precision={given['precision']!r} "
                              "was given too; drop --mixed_precision (--precision alone says what to use)")
        return given
    if "precision" in given:
        return {**given, "mixed_precision": False}
    if given.get("mixed_precision"):
        return {**given, "precision": "auto"}
    return given
