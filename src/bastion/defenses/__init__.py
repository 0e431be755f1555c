"""Defences: adversarial training (``training``), certified prediction by randomized smoothing
(``certification``) and adversarial-input detection (``detection``).

Every defence either trains a model (a new :class:`~bastion.models.Classifier`), or wraps one in a
Classifier (``SmoothedClassifier``, ``DetectingClassifier``) — so the audit attacks the defended model
end to end, adaptively.
"""

from __future__ import annotations
