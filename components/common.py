"""What the component definitions share: the image tags.

Only the component *definitions* import this module (at compile time). The component bodies run inside
the images, where only the ``arcface`` library is installed, so a body never imports ``components``. The
files inside each artifact are defined by ``arcface.contracts``.
"""

from __future__ import annotations

from arcface import images

#: The image of every step that imports TensorFlow (train, evaluate, export).
CPU_IMAGE = images.cpu_image()
#: The image of the steps that need no TensorFlow (validate, the quality gate): starts in seconds.
LIGHT_IMAGE = images.validate_image()
#: Training on a GPU node (``pipeline.py compile --gpu nvidia.com/gpu``) swaps the train step to this image.
GPU_IMAGE = images.gpu_image()
