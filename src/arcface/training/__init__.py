"""The parts of the trainer (:mod:`arcface.train`), each small enough to read on its own.

``step``: one training step (the loss, its gradients, the update); ``optimization``: the learning-rate schedule, the
optimizer and the weight decay; ``checkpoints``: what a checkpoint holds, where it lies and when a run may resume
from it; ``progress``: the budget, the meters and the logs of the epochs; ``distribute``: the strategy and the
workers of a distributed run.
"""


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to change."""
