"""ArcFace face recognition: margin heads, face backbones, data checks, training, evaluation and export.

This package is the whole ML library; the Kubeflow components, ``pipeline.py`` and the ``arcface`` command
are thin adapters over it. It never imports kfp.

Layers, lowest first. A module imports at module level only from its own layer or a lower one, and the module
imports have no cycle (``tests/core/test_layers.py`` reads this table and checks both). ``p`` is the package
``p`` itself (its ``__init__``, which runs before any of its modules: it imports only what its lowest module
may); ``p.*`` is the package and every module in it that is not named elsewhere.

==========  ==========================================================================================
layer       modules
==========  ==========================================================================================
base        __init__, atomic, schema, choices, precision, config, data, data.manifest
contracts   contracts, artifacts, model_input, mlops, mlops.store
data        data.*, models.*
learning    train, training.*, warm_start, evaluation.*, export, embedding, models.insightface
operations  mlops.*
commands    cli, __main__
==========  ==========================================================================================

* base: standard library only (plus PyYAML, imported where a config is read or written): the files' atomic
  writes and schema versions, every set of choices (:mod:`arcface.choices`), the config, the manifest.
* contracts: what each step writes and how it is read back (:mod:`arcface.contracts`), the model folder, the
  model store; still standard library only, so the quality gate's light image runs them.
* data: the data checks, face alignment, the input pipeline, the networks.
* learning: training, evaluation, export, embedding (``models.insightface`` imports a model as training writes
  it, and reads faces as embedding does).
* operations: serving, the gallery, the quality gate, TFJobs, image tags, notifications.
* commands: the ``arcface`` command (standard library at module level: ``arcface images`` runs where numpy is
  not installed).

An import inside a function is there only to defer a third-party package that the module does not load at
module level: a heavy one (TensorFlow, Keras, onnx, onnxruntime, tf2onnx, faiss, kserve) in a module that
runs without it, an optional one (mtcnn, kubernetes, kubeflow, Pillow, PyYAML), or numpy in the standard
library-only command. Anything else (the standard library, a package the module already loads, a module of
this package that loads nothing more) is imported at the top.
"""

__version__ = "0.1.0"
