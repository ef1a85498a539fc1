"""The train step: ArcFace training on the validated manifest."""

from components.train.component import train_model

__all__ = ["train_model"]
