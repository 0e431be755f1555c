"""Defences: adversarial training (``training``), certified prediction by randomized smoothing
(``certification``), adversarial-input detection (``detection``) and poisoned-data sanitisation and backdoor
scanning (``sanitization``).

Every defence either trains a model (a new :class:`~bastion.models.Classifier`), or wraps one in a
Classifier (``SmoothedClassifier``, ``DetectingClassifier``) — so the audit attacks the defended model
end to end, adaptively.
"""

from __future__ import annotations
