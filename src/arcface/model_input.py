"""What a model expects of a face, and how its embeddings are compared: one typed object, :class:`ModelInput`.

Training writes it into the run's ``metadata.json`` (``"input"``), the export into the model card (``"input"``,
with the evaluation's threshold and flip rule), and :func:`read_model_input` alone reads it back, for every
entrance that embeds a face: evaluation, ``arcface embed/compare/search``, the gallery, the export's parity
check and the server. Folders written before the section existed are read from the keys they had then.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from arcface.artifacts import NORMALIZATION
from arcface.choices import ALIGN_METHODS
from arcface.contracts import EvaluationDir, ExportDir, ModelDir

INPUT_KEY = "input"


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """A square RGB crop of ``image_size`` pixels, the centred ``center_crop`` of the shorter side of the photo
    (after ``alignment``), normalized as ``(x - mean) * scale``; embeddings are compared at ``threshold``
    (None: never evaluated), which was chosen on embeddings summed with their mirror image's when ``flip_tta``."""

    image_size: int
    center_crop: float = 1.0
    alignment: str = "none"
    normalization: dict[str, Any] = dataclasses.field(default_factory=lambda: dict(NORMALIZATION))
    threshold: float | None = None
    flip_tta: bool = False

    def __post_init__(self) -> None:
        if self.alignment not in ALIGN_METHODS:
            raise ValueError(f"alignment {self.alignment!r} is unknown; a model records one of: "
                             f"{', '.join(ALIGN_METHODS)}")

    def to_dict(self) -> dict[str, Any]:
        """The ``"input"`` section of metadata.json and the model card."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInput:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_model_input(folder: str | os.PathLike, image_size: int | None = None,
                     center_crop: float | None = None) -> ModelInput:
    """The input of the model in ``folder`` (an export, a store version's ``assets.extra/``, a training run):
    its card's, else its metadata's, else the keys folders had before the section existed; ``image_size``
    (the model's own input shape) wins over what the folder records; ``center_crop`` (its training config's)
    stands in where the folder records none. The threshold is the card's evaluation's,
    else that of an evaluation written into the folder."""
    folder = os.fspath(folder)
    card = ExportDir.read_card(folder) if ExportDir.has_card(folder) else {}
    metadata = ModelDir.read_metadata(folder) if os.path.isdir(folder) else {}
    section = card.get(INPUT_KEY) or metadata.get(INPUT_KEY) or {}
    legacy = {"image_size": metadata.get("image_size") or image_size,
              "center_crop": metadata.get("center_crop", 1.0 if center_crop is None else center_crop),
              "alignment": (card.get("alignment") or metadata.get("alignment") or {}).get("method", "none"),
              "normalization": metadata.get("normalization", dict(NORMALIZATION))}
    model_input = ModelInput.from_dict({**legacy, **{k: v for k, v in section.items() if v is not None}})
    if model_input.image_size is None:
        raise ValueError(f"{folder} records no input size; pass the model's own (its input shape)")
    evaluation = ExportDir.card_evaluation(card)
    if evaluation is None and EvaluationDir.exists(folder):
        evaluation = EvaluationDir.read(folder)
    if evaluation is not None:
        model_input = dataclasses.replace(model_input, threshold=evaluation.threshold, flip_tta=evaluation.flip_tta)
    # The network's own input shape, where the caller has the network, is what it takes.
    return dataclasses.replace(model_input, image_size=int(image_size or model_input.image_size),
                               center_crop=float(model_input.center_crop))
