"""ArcFace face recognition: margin heads, face backbones, data checks, training, evaluation and export.

This package is the whole ML library; the Kubeflow components, ``pipeline.py`` and the ``arcface`` command
are thin adapters over it. It never imports kfp.
"""

__version__ = "0.1.0"
