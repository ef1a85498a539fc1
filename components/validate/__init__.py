"""The validate step: check the config and every image, write the manifest."""

from components.validate.component import validate_data

__all__ = ["validate_data"]
