"""The align step: find each face, warp it onto the ArcFace 5-point template, write the aligned manifest."""

from components.align.component import align_faces

__all__ = ["align_faces"]
