"""The one training loop and its plug-ins.

- :class:`Trainer` / :func:`fit` (:mod:`.loop`): batches, the per-batch step, optimizer and schedules, held-out
  monitoring, callbacks, checkpoint/resume, the JSON record, one ``torch.Generator``, one device.
- :data:`TRAINING_STEPS` (:mod:`.steps`): per-batch transforms by name — ``clean``, ``gaussian`` here;
  ``pgd-at``, ``trades``, ``fast-at`` from :mod:`bastion.defenses.training`.
- :func:`save_trained` (:mod:`.record`): a trained model as safetensors plus its JSON record.

Users of the loop: :mod:`bastion.models.training` (``bastion train`` and the zoo),
:func:`bastion.defenses.training.adversarial_train` and
:func:`bastion.defenses.certification.train_with_noise`.
"""

from __future__ import annotations

from .loop import Callback, HeldOut, Trainer, accuracy, fit, shuffled_batches, split_holdout
from .record import load_checkpoint, save_trained
from .steps import TRAINING_STEPS, Batch, CleanStep, GaussianNoise, TrainingStep, make_step

__all__ = [
    "TRAINING_STEPS",
    "Batch",
    "Callback",
    "CleanStep",
    "GaussianNoise",
    "HeldOut",
    "Trainer",
    "TrainingStep",
    "accuracy",
    "fit",
    "load_checkpoint",
    "make_step",
    "save_trained",
    "shuffled_batches",
    "split_holdout",
]

# the adversarial steps (defined with the defence, in bastion.defenses.training.steps) register here, so that
# TRAINING_STEPS lists every built-in name whichever module is imported first
from ..defenses.training import steps as _adversarial_steps  # noqa: F401
