"""A victim behind an output policy, as a Classifier: extraction attacks run against the defended model locally,
with no HTTP in between (the guard service applies the same policy to its answers)."""

from __future__ import annotations

from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier
from ...models.wrapped import WrappedClassifier
from .output import OutputPolicy

__all__ = ["PolicyClassifier"]


class PolicyClassifier(WrappedClassifier):
    """``victim`` answering through ``policy``: :meth:`logits` returns the policy's output (N, K) on the victim's
    probabilities (``output`` is ``"probabilities"``). Under a label-only policy the rows are one-hot and
    ``label_only`` is True, as for a :class:`~bastion.models.remote.RemoteClassifier` reading a label-only
    endpoint. Queries are counted here (inputs sent to the defended model) and by the victim."""

    def __init__(self, victim: Classifier, policy: OutputPolicy) -> None:
        super().__init__(victim, output="probabilities")
        if not isinstance(policy, OutputPolicy):
            raise UsageError(
                f"policy must be an OutputPolicy (get_output_policy(name, ...)), got {type(policy).__name__}"
            )
        self.policy = policy

    @property
    def label_only(self) -> bool:  # type: ignore[override]
        return not self.policy.returns_probabilities

    def _scores(self, x: Tensor) -> Tensor:
        scores = self.wrapped.logits(x)
        probs = scores if self.wrapped.output == "probabilities" else scores.softmax(1)
        return self.policy(probs.detach(), x)

    def __repr__(self) -> str:
        return f"PolicyClassifier({self.wrapped!r}, {self.policy!r})"
