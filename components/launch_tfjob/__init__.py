"""The multi-worker train step: a TFJob of the Kubeflow Training Operator, launched and followed."""

from components.launch_tfjob.component import launch_tfjob

__all__ = ["launch_tfjob"]
