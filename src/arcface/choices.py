"""Every set of choices a config field, a flag or a step accepts, each defined once.

Standard library only: the ``arcface`` command builds its parser from these without loading numpy, and the
config validates against them.
"""

from __future__ import annotations

# --- training (arcface.config.TrainConfig) ---------------------------------------------------------------
BACKBONES = ("ResNet50", "ResNet100", "VGG16", "ResNet18", "ResNet34", "MobileFaceNet", "TinyFaceNet",
             # insightface's padding (arcface.models.backbones.INSIGHTFACE_IRESNETS): `arcface import` builds these
             "IResNet18", "IResNet34", "IResNet50", "IResNet100")
OPTIMIZERS = ("SGD", "Adam")
MARGINS = ("arcface", "cosface", "sphereface", "combined", "softmax")
MARGIN_GRADIENTS = ("exact", "straight_through")
SCHEDULES = ("cosine", "step", "poly", "constant")
#: The rows of identities an --init_from source does not know (arcface.warm_start).
HEAD_INITS = ("mean_embedding", "random")
#: Keras precision policies (arcface.precision); ``auto`` picks one for the devices.
PRECISION_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
PRECISIONS = (*PRECISION_POLICIES, "auto")

# --- faces -----------------------------------------------------------------------------------------------
#: How a photo becomes the model's crop: detected and warped onto the 5-point template, or read whole.
ALIGN_METHODS = ("mtcnn", "none")
#: At an entrance that embeds photos: ``auto`` follows what the model records (its card or metadata).
ALIGN_CHOICES = ("auto", *ALIGN_METHODS)
#: A photo in which no usable face is found: reported and left out, an error, or used whole.
NO_FACE_CHOICES = ("skip", "fail", "whole")

# --- evaluation, export, embeddings, gallery -------------------------------------------------------------
#: A pairs file naming an image that is missing.
ON_MISSING = ("error", "skip")
EXPORT_FORMATS = ("saved_model", "keras", "tflite", "onnx")
QUANTIZE = ("none", "float16", "dynamic")
EMBEDDING_FORMATS = ("npy", "csv", "jsonl")
GALLERY_KINDS = ("exact", "hnsw", "ivf")
