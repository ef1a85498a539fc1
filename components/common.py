"""What the component definitions share: the image tags (``pipeline.py compile`` may pin them by digest).

Only the component *definitions* import this module (at compile time). The component bodies run inside
the images, where only the ``arcface`` library is installed, so a body never imports ``components``. The
files inside each artifact are defined by ``arcface.contracts``.
"""

from __future__ import annotations

from arcface.mlops import images

#: The repository of the tags below (``ARCFACE_IMAGE_REPOSITORY`` when this module was imported).
REPOSITORY = images.repository()
#: The image of every step that imports TensorFlow (train, evaluate, export).
CPU_IMAGE = images.cpu_image()
#: The image of the steps that need no TensorFlow (validate, the quality gate): starts in seconds.
LIGHT_IMAGE = images.validate_image()
#: Training on a GPU node (``pipeline.py compile --gpu nvidia.com/gpu``) swaps the train step to this image.
GPU_IMAGE = images.gpu_image()
#: Tag -> flavor, for naming the images of a compiled pipeline by digest (kfp_pipeline/dag.py).
FLAVOR_OF_TAG = {CPU_IMAGE: "cpu", LIGHT_IMAGE: "validate", GPU_IMAGE: "gpu"}
