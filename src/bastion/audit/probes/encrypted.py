"""Private inference: can this model be served on encrypted inputs (CKKS), at what cost and with what error?

A defence readiness probe, not an attack. It compiles the model for CKKS
(:func:`bastion.defenses.encrypted.compile_model`: affine layers and polynomial activations; a ReLU or a max pooling
is named in the skip reason with the ``--he-friendly`` alternative), sizes the parameters from its multiplicative
depth at 128-bit security, then runs the real protocol — :class:`~bastion.defenses.encrypted.HEClient` encrypts
``n`` audited inputs (many per ciphertext), :class:`~bastion.defenses.encrypted.HEServer` evaluates them with the
public context only, the client decrypts — and compares with the plaintext model.

Metrics: ``he_agreement`` (argmax of the decrypted scores vs the plaintext model's prediction), ``he_accuracy``
and ``he_plain_accuracy`` on those inputs, ``he_max_abs_error`` (decrypted scores vs the compiled program in
float64: the CKKS noise), ``he_seconds_per_sample`` (encrypt + evaluate + decrypt over the batch), ``he_depth``,
``he_poly_modulus_degree``, ``he_security_bits``, ``he_request_bytes_per_sample``.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any, ClassVar

import numpy as np
import torch

from ...errors import UsageError
from ...metrics import accuracy as accuracy_of
from ...metrics import agreement as agreement_of
from ...models.torch import TorchClassifier
from ..probe import AuditContext, Probe, register_probe
from ..result import Check, ProbeResult

__all__ = ["EncryptedProbe"]


@register_probe
class EncryptedProbe(
    Probe, name="encrypted", title="Private inference on encrypted inputs (CKKS)", threat="defence / private inference"
):
    """CKKS inference on ``n`` audited inputs through the real client/server protocol, against the plaintext model.

    Applies with TenSEAL installed to a torch model that compiles for CKKS (the skip reason names what does not).

    Checks: ``encrypted-agrees`` passes when the argmax agreement is at least ``min_agreement`` and warns
    otherwise; ``security-128`` passes when the coefficient modulus is within the HE standard's 128-bit bound
    for the ring degree (always, by construction: the check shows the numbers) and fails otherwise.

    Risk is ``n/a``: the probe measures a defence's availability and cost.

    Parameters:
        n: audited inputs encrypted and evaluated (the first ``n``; a whole number >= 1).
        min_agreement: the agreement ``encrypted-agrees`` requires, in (0, 1].
    """

    defaults: ClassVar[dict[str, Any]] = {"n": 200, "min_agreement": 0.995}
    _program: Any = None  # the compiled program, set by skip_reason

    def check_params(self, p: dict[str, Any]) -> None:
        n, agree = p["n"], p["min_agreement"]
        if n < 1:
            raise UsageError(f"probe 'encrypted': n must be a whole number >= 1, got {n!r}")
        if not 0 < agree <= 1:
            raise UsageError(f"probe 'encrypted': min_agreement must lie in (0, 1], got {agree!r}")

    def skip_reason(self, ctx: AuditContext) -> str | None:
        if importlib.util.find_spec("tenseal") is None:
            return "needs the he extra (TenSEAL): pip install 'bastion[he]'"
        if not isinstance(ctx.model, TorchClassifier):
            return f"the model is a {type(ctx.model).__name__}, not a torch network that can be compiled for CKKS"
        from ...defenses.encrypted import compile_model

        try:
            self._program = compile_model(ctx.model.module, ctx.model.input_shape, arch=ctx.model.arch)
            self._program.params  # noqa: B018 - a model too deep for CKKS is refused here
        except UsageError as exc:
            return str(exc)
        return None

    def run(self, ctx: AuditContext) -> ProbeResult:
        from ...defenses.encrypted import HEClient, HEServer

        program, model = self._program, ctx.model
        if program is None or not isinstance(model, TorchClassifier):
            raise UsageError(f"probe 'encrypted' does not apply: {self.skip_reason(ctx)}")
        n = min(self.params["n"], int(ctx.x.shape[0]))
        x, y = ctx.x[:n], ctx.y[:n].numpy()
        ctx.report(self.name, 0.0, f"depth {program.depth}: encrypting {n} inputs")
        server = HEServer(program, model=model.arch or "")
        client = HEClient(server.spec())
        t0 = time.perf_counter()
        payload, context = client.encrypt(x.numpy()), client.public_context()
        ctx.report(self.name, 0.3, f"evaluating {n} encrypted inputs")
        scores = client.decrypt(server.evaluate(context, payload))
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            plain_pred = model.predict(x).numpy()
        enc_pred = scores.argmax(1)
        agreement = agreement_of(enc_pred, plain_pred)
        error = float(np.abs(scores - program.plain(x.numpy())).max())
        params = server.params
        metrics: dict[str, float | None] = {
            "he_agreement": agreement,
            "he_accuracy": accuracy_of(enc_pred, y),
            "he_plain_accuracy": accuracy_of(plain_pred, y),
            "he_max_abs_error": error,
            "he_seconds_per_sample": seconds / n,
            "he_depth": float(program.depth),
            "he_poly_modulus_degree": float(params.poly_modulus_degree),
            "he_security_bits": float(params.security_bits),
            "he_request_bytes_per_sample": (len(payload) + len(context)) / n,
        }
        return self.result(
            ctx,
            risk="n/a",
            summary=f"encrypted inference agrees with the model on {agreement:.1%} of {n} inputs "
            f"(max score error {error:.2g}) at {seconds / n * 1000:.1f} ms per input, N={params.poly_modulus_degree}, "
            f"depth {program.depth}, 128-bit security",
            metrics=metrics,
            checks=[self._agrees(agreement, n), _security(params)],
            artifacts={"program": program.describe(), "params": params.as_dict()},
        )

    def _agrees(self, agreement: float, n: int) -> Check:
        bound = self.params["min_agreement"]
        ok = agreement >= bound
        return Check(
            "encrypted-agrees",
            "Encrypted predictions agree with the plaintext model",
            "pass" if ok else "warn",
            f"argmax agreement {agreement:.4f} on {n} inputs (bound {bound}); "
            + ("" if ok else "the CKKS error changes predictions: scores are too close or the scale too small"),
            {"agreement": agreement, "n": n, "bound": bound},
        )


def _security(params: Any) -> Check:
    from ...defenses.encrypted import SECURITY_128

    limit = SECURITY_128[params.poly_modulus_degree]
    return Check(
        "security-128",
        "CKKS parameters at 128-bit security",
        "pass" if params.total_bits <= limit else "fail",
        f"{params.total_bits} bits of coefficient modulus at N={params.poly_modulus_degree}; the HE security "
        f"standard allows {limit} for 128-bit classical security",
        params.as_dict(),
    )
