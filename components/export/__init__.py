"""The export step: SavedModel, .keras, TFLite and ONNX with a model card."""

from components.export.component import export_model

__all__ = ["export_model"]
