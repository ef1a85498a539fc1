"""The promote step: the exported model becomes the model store's next version and its champion."""

from components.promote.component import promote_model

__all__ = ["promote_model"]
