"""What private inference costs and how exact it is: bastion's packed protocol against TenSEAL as users write it.

:func:`he_bench` runs the real protocol (:class:`~.protocol.HEClient` encrypts, :class:`~.protocol.HEServer`
evaluates with the public context only, the client decrypts) on a batch and measures agreement with the plaintext
model, the CKKS error, the time of each role and the bytes on the wire.

:func:`naive_tenseal` is the baseline: **one sample per ciphertext**, the way TenSEAL's tutorials evaluate a model.
A single affine map (logistic regression) is ``ts.ckks_vector(ctx, x_i).mm(W.T) + b`` under N = 8192, primes
[60, 40, 40, 60], scale 2**40, Galois keys (the rotations inside ``mm``). A network whose first layer is a
one-channel ``Conv2d`` followed by its activation (``mnist-he-cnn``) is evaluated as TenSEAL's "Encrypted
Convolution on MNIST" tutorial does — ``ts.im2col_encoding`` of one image, ``conv2d_im2col`` per output channel,
``CKKSVector.pack_vectors``, ``square_``, ``mm`` — under the tutorial's context: N = 8192, primes
[31, 26, 26, 26, 26, 26, 26, 31], scale 2**26, Galois keys. Other programs run as ``mm`` / ``square_`` steps on
one sample's vector under that context. The weights come from the compiled program, so a ``PolyAct`` is already
folded into its neighbours and the encrypted steps are exactly the tutorial's (one squaring per activation).

One deviation, for correctness: TenSEAL's ``mm`` expects its input replicated across the slots (as
``ckks_vector`` encrypts it), but ``vector + list`` encodes the list padded with zeros, so the tutorial's
``enc.mm(W1) + b1`` followed by another ``mm`` computes another function (in TenSEAL 0.3.18: errors of several
units on mnist-he-cnn's logits). A bias that feeds a later ``mm`` is therefore added as ``ts.ckks_vector(ctx, b)``
(replicated like any fresh vector; one public-key encryption per layer and sample, small next to ``mm``'s
rotations); the last layer's bias is the plain list, as in the tutorial.
The baseline's agreement and error are reported with its speed: a 2**26 scale is coarser than the one
:func:`~.params.choose_params` picks for the same depth.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from ...errors import UsageError, require
from ...metrics import accuracy, agreement
from ...models.he import PolyAct
from .program import AddConst, Affine, HEProgram, Square, compile_model
from .protocol import HEClient, HEServer

__all__ = ["LOGREG_CONTEXT", "TUTORIAL_CONTEXT", "NaiveResult", "he_bench", "he_summary", "naive_tenseal"]

LOGREG_CONTEXT = (8192, (60, 40, 40, 60), 40)
"""(N, prime bit sizes, scale bits) of TenSEAL's encrypted logistic-regression tutorial: depth 2."""
TUTORIAL_CONTEXT = (8192, (31, 26, 26, 26, 26, 26, 26, 31), 26)
"""(N, prime bit sizes, scale bits) of TenSEAL's "Encrypted Convolution on MNIST" tutorial: depth 6."""


@dataclass(frozen=True)
class NaiveResult:
    """The per-sample baseline on ``n`` samples: decrypted ``scores`` (n, n_outputs), total ``seconds`` (encrypt +
    evaluate + decrypt, keys excluded), the bytes of one sample's ciphertext, the context used, the method."""

    scores: np.ndarray
    seconds: float
    ciphertext_bytes: int
    context: tuple[int, tuple[int, ...], int]
    method: str

    @property
    def seconds_per_sample(self) -> float:
        return self.seconds / max(len(self.scores), 1)


@dataclass(frozen=True)
class _Conv:
    """The first layer as ``ts.im2col_encoding`` takes it: kernel rows/cols, stride, output channels and windows."""

    rows: int
    cols: int
    stride: int
    channels: int
    windows: int


def naive_tenseal(model: HEProgram | nn.Module, x: np.ndarray, *, program: HEProgram | None = None) -> NaiveResult:
    """Evaluate ``model`` (a compiled program, or an HE-friendly module compiled here unless ``program`` is given)
    on ``x`` (n, *input_shape) one sample per ciphertext, as TenSEAL's tutorials do (see the module docstring).

    Raises:
        UsageError: no sample, or a program deeper than the tutorial's context allows (6 levels).
    """
    ts = require("tenseal", "he")
    if len(x) < 1:
        raise UsageError("naive_tenseal needs at least one sample")
    if isinstance(model, HEProgram):
        program, conv = model, None
    else:
        shape = tuple(int(d) for d in np.shape(x)[1:])
        program = program or compile_model(model, shape)
        conv = _tutorial_conv(model, program.input_shape)
    steps = program.steps  # the convolution, when there is one, is steps[0]: one level like any affine map
    n_bits, bits, scale = LOGREG_CONTEXT if program.depth <= 2 and conv is None else TUTORIAL_CONTEXT
    if program.depth > len(bits) - 2:
        raise UsageError(
            f"the per-sample TenSEAL baseline runs programs of depth <= {len(bits) - 2} (the tutorial's context); "
            f"this one has depth {program.depth}"
        )
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, n_bits, coeff_mod_bit_sizes=list(bits))
    ctx.global_scale = 2.0**scale
    ctx.generate_galois_keys()
    rows = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    scores = []
    start = time.perf_counter()
    for row in rows:
        if conv is not None:
            enc, rest = _encrypted_conv(ts, ctx, row, program, conv), steps[1:]
        else:
            enc, rest = ts.ckks_vector(ctx, row.tolist()), steps
        for i, step in enumerate(rest):
            enc = _step(ts, ctx, enc, step, feeds_mm=any(isinstance(s, Affine) for s in rest[i + 1 :]))
        scores.append(enc.decrypt())
    seconds = time.perf_counter() - start
    blob_size = _input_bytes(ts, ctx, rows[0], program, conv)
    method = "im2col conv2d + pack_vectors + mm per sample" if conv else "ckks_vector.mm per sample"
    return NaiveResult(np.asarray(scores, dtype=np.float64), seconds, blob_size, (n_bits, bits, scale), method)


def _tutorial_conv(module: nn.Module, input_shape: tuple[int, ...]) -> _Conv | None:
    """The first layer's geometry when ``module`` starts as the tutorial's network does (a one-channel ``Conv2d``
    without padding, dilation or groups, then a ``PolyAct``), else ``None``."""
    leaves = [m for m in module.modules() if not list(m.children())][:2]
    if len(leaves) < 2 or not isinstance(leaves[0], nn.Conv2d) or not isinstance(leaves[1], PolyAct):
        return None
    c = leaves[0]
    plain = c.padding in (0, (0, 0)) and tuple(c.dilation) == (1, 1) and c.groups == 1
    if len(input_shape) != 3 or input_shape[0] != 1 or c.in_channels != 1 or not plain or c.stride[0] != c.stride[1]:
        return None
    (kr, kc), s = c.kernel_size, int(c.stride[0])
    windows = ((input_shape[1] - kr) // s + 1) * ((input_shape[2] - kc) // s + 1)
    return _Conv(int(kr), int(kc), s, int(c.out_channels), windows)


def _encrypted_conv(ts: Any, ctx: Any, row: np.ndarray, program: HEProgram, conv: _Conv) -> Any:
    """The tutorial's convolution of one image: im2col encoding, ``conv2d_im2col`` per channel plus its bias,
    ``pack_vectors`` (channel-major, as torch flattens). Kernels and biases are read from the program's first
    affine map (the convolution with the activation's scale folded in): channel ``k``'s first window."""
    first = program.steps[0]
    if not isinstance(first, Affine):
        raise UsageError("the program does not start with the convolution's affine map")
    _, h, w = program.input_shape
    image = row.reshape(h, w)
    enc, windows = ts.im2col_encoding(ctx, image.tolist(), conv.rows, conv.cols, conv.stride)
    channels = []
    for k in range(conv.channels):
        unit = k * conv.windows
        kernel = first.weight[unit].toarray().reshape(h, w)[: conv.rows, : conv.cols]
        channels.append(enc.conv2d_im2col(kernel.tolist(), windows) + float(first.bias[unit]))
    return ts.CKKSVector.pack_vectors(channels)


def _input_bytes(ts: Any, ctx: Any, row: np.ndarray, program: HEProgram, conv: _Conv | None) -> int:
    """Bytes of one sample's encrypted input (one ciphertext, serialised): what the baseline sends per sample."""
    if conv is None:
        return len(ts.ckks_vector(ctx, row.tolist()).serialize())
    _, h, w = program.input_shape
    enc, _ = ts.im2col_encoding(ctx, row.reshape(h, w).tolist(), conv.rows, conv.cols, conv.stride)
    return len(enc.serialize())


def _step(ts: Any, ctx: Any, enc: Any, step: Any, *, feeds_mm: bool) -> Any:
    """One program step on one sample's vector; a bias that ``feeds_mm`` is added replicated (module docstring)."""
    if isinstance(step, Affine):
        out = enc.mm(step.weight.T.toarray().tolist())
        return out + (ts.ckks_vector(ctx, step.bias.tolist()) if feeds_mm else step.bias.tolist())
    if isinstance(step, Square):
        enc.square_()
        return enc
    if isinstance(step, AddConst):
        return enc + step.value.tolist()
    raise UsageError(f"unknown program step {type(step).__name__}")


def he_summary(program: HEProgram) -> dict[str, Any]:
    """What encrypted inference of ``program`` needs, JSON-ready: depth, CKKS parameters, security bits, slots
    (samples per ciphertext), plaintext multiplications per chunk, input shape, outputs and compiled layers."""
    params = program.params
    return {
        **program.describe(),
        "params": params.as_dict(),
        "security_bits": params.security_bits,
        "slots": params.slots,
    }


def he_bench(
    program: HEProgram,
    x: np.ndarray,
    y: np.ndarray | None = None,
    plain_pred: np.ndarray | None = None,
    *,
    naive_n: int = 20,
    module: nn.Module | None = None,
) -> dict[str, Any]:
    """Encrypted inference of ``program`` on ``x`` (n, *input_shape) through the real protocol, against the
    plaintext model and the per-sample TenSEAL baseline on the first ``naive_n`` samples (0: skip it).

    ``plain_pred`` (n,) are the plaintext model's predictions (default: the program's in float64); ``y`` (n,) the
    labels, for accuracies; ``module``, the compiled module, lets the baseline use the tutorial's convolution.
    Returns a JSON-ready dict: agreement, max_abs_error, seconds (per sample, per batch, per role), bytes, params,
    depth, accuracies and the baseline's seconds per sample, agreement and the ratio naive / packed.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 1 or naive_n < 0:
        raise UsageError(f"he_bench needs n >= 1 samples and naive_n >= 0, got n={n}, naive_n={naive_n}")
    reference = program.plain(x)
    plain_pred = reference.argmax(1) if plain_pred is None else np.asarray(plain_pred)
    scores, timing = _packed(program, x)
    pred = scores.argmax(1)
    out: dict[str, Any] = {
        "n": n,
        "agreement": agreement(pred, plain_pred),
        "max_abs_error": float(np.abs(scores - reference).max()),
        **timing,
        "params": program.params.as_dict(),
        "security_bits": program.params.security_bits,
        "slots": program.params.slots,
        "depth": program.depth,
        "plaintext_multiplications": program.plaintext_multiplications,
    }
    if y is not None:
        labels = np.asarray(y)
        out["plain_accuracy"] = accuracy(plain_pred, labels)
        out["encrypted_accuracy"] = accuracy(pred, labels)
    if naive_n:
        out.update(_naive_summary(module if module is not None else program, program, x[:naive_n], plain_pred))
        out["speedup"] = out["naive_seconds_per_sample"] / out["seconds_per_sample"]
    return out


def _packed(program: HEProgram, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Decrypted scores of ``x`` through HEClient / HEServer and the seconds and bytes of each step."""
    server = HEServer(program)
    start = time.perf_counter()
    client = HEClient(server.spec())
    context = client.public_context()
    setup = time.perf_counter() - start
    t0 = time.perf_counter()
    payload = client.encrypt(x)
    t1 = time.perf_counter()
    reply = server.evaluate(context, payload)
    t2 = time.perf_counter()
    scores = client.decrypt(reply)
    t3 = time.perf_counter()
    n, batch = len(x), t3 - t0
    timing = {
        "setup_seconds": setup,
        "encrypt_seconds": t1 - t0,
        "evaluate_seconds": t2 - t1,
        "decrypt_seconds": t3 - t2,
        "seconds_per_batch": batch,
        "seconds_per_sample": batch / n,
        "chunks": math.ceil(n / program.params.slots),
        "context_bytes": len(context),
        "payload_bytes": len(payload),
        "request_bytes": len(payload) + len(context),
        "request_bytes_per_sample": (len(payload) + len(context)) / n,
        "reply_bytes": len(reply),
    }
    return scores, timing


def _naive_summary(
    model: HEProgram | nn.Module, program: HEProgram, x: np.ndarray, plain_pred: np.ndarray
) -> dict[str, Any]:
    res = naive_tenseal(model, x, program=program)
    n_bits, bits, scale = res.context
    return {
        "naive_n": len(x),
        "naive_method": res.method,
        "naive_seconds_per_sample": res.seconds_per_sample,
        "naive_agreement": agreement(res.scores.argmax(1), plain_pred[: len(x)]),
        "naive_max_abs_error": float(np.abs(res.scores - program.plain(x)).max()),
        "naive_ciphertext_bytes": res.ciphertext_bytes,
        "naive_params": {"poly_modulus_degree": n_bits, "coeff_mod_bit_sizes": list(bits), "scale_bits": scale},
    }
