"""What the component definitions share: image tags, file names inside artifacts, and test fakes.

Only the component *definitions* import this module (at compile time). The component bodies run inside
the images, where only the ``arcface`` library is installed, so a body never imports ``components``.
"""

from __future__ import annotations

from arcface import images

#: The image of every step that imports TensorFlow (train, evaluate, export).
CPU_IMAGE = images.cpu_image()
#: The image of the steps that need no TensorFlow (validate, the quality gate): starts in seconds.
LIGHT_IMAGE = images.validate_image()
#: Training on a GPU node (``pipeline.py compile --gpu nvidia.com/gpu``) swaps the train step to this image.
GPU_IMAGE = images.gpu_image()

#: Files inside the folder-shaped artifacts (written by the library, read by the next step).
MANIFEST_FILE = "manifest.json"  # Dataset artifact of validate: also report.json, report.md
EVALUATION_FILE = "metrics.json"  # Metrics artifact of evaluate (a folder): also report.html
