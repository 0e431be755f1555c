"""The encrypted-inference protocol: the client holds the secret key, the server evaluates on ciphertexts.

**Layout (slot-batched).** The client flattens its ``n`` inputs to (n, d) and cuts them into chunks of at most
``N/2`` samples (``N`` the ring degree). A chunk is ``d`` CKKS vectors: vector ``k`` holds feature ``k`` of every
sample of the chunk, one sample per slot. An affine map is then, for each output unit ``j``, the sum over the
non-zero weights ``W[j, k]`` of ``vector_k * W[j, k]`` plus ``b[j]``: ciphertext-by-scalar products and additions,
no rotation and so no Galois keys; a squaring is one ciphertext product per unit (relinearisation keys). Every slot
is an independent sample, so the cost of a chunk is the same for 1 sample as for ``N/2``: the cost per sample falls
linearly with the batch until the chunk is full. The affine maps are sparse (CSR): the zeros of an unrolled convolution cost nothing.

**Roles.** :class:`HEClient` makes the CKKS context from the server's :meth:`HEServer.spec` (the parameters chosen
from the model's depth), keeps the secret key, and sends :meth:`HEClient.public_context` (public and
relinearisation keys, no secret key) with its ciphertexts. :class:`HEServer` refuses a context that carries a
secret key or has other parameters, evaluates the compiled program and returns ciphertexts only the client can
decrypt.

**Wire format** (:func:`pack` / :func:`unpack`): ``b"BHE1"``, then big-endian ``u32`` sample count and ``u32`` chunk
count, then per chunk ``u32`` samples and ``u32`` vectors, then per vector ``u64`` length and its TenSEAL bytes. The
reply uses the same framing with ``n_outputs`` vectors per chunk. Framing is checked in pure Python before any
byte reaches TenSEAL; TenSEAL's own parser can crash the process on crafted bytes, which is why the service
evaluates in a separate process (:mod:`.isolation`).
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...errors import UsageError, require
from .params import CKKSParams
from .program import Affine, HEProgram, Square

__all__ = ["HEClient", "HEError", "HEServer", "pack", "unpack"]

MAGIC = b"BHE1"


class HEError(UsageError):
    """An encrypted request the server cannot evaluate: malformed framing, a context with a secret key or other
    parameters, ciphertexts that do not belong to the context. The service answers 4xx with the message."""


def pack(n: int, chunks: list[tuple[int, list[bytes]]]) -> bytes:
    """Frame ``chunks`` (samples, serialised vectors) of ``n`` samples in all (see the module docstring)."""
    parts = [MAGIC, struct.pack(">II", n, len(chunks))]
    for size, vectors in chunks:
        parts.append(struct.pack(">II", size, len(vectors)))
        for blob in vectors:
            parts += [struct.pack(">Q", len(blob)), blob]
    return b"".join(parts)


def unpack(
    data: bytes, *, vectors: int | None = None, max_chunk: int | None = None
) -> tuple[int, list[tuple[int, list[bytes]]]]:
    """The (n, chunks) framed in ``data``; :class:`HEError` on anything malformed, including a chunk count that
    does not add up, ``vectors`` per chunk when given, or more than ``max_chunk`` samples in a chunk."""
    view, pos = memoryview(data), 0

    def take(size: int) -> memoryview:
        nonlocal pos
        if size < 0 or pos + size > len(view):
            raise HEError("the encrypted payload is truncated or its lengths are corrupt")
        pos += size
        return view[pos - size : pos]

    if bytes(take(4)) != MAGIC:
        raise HEError("not a bastion encrypted payload (it must start with BHE1; use bastion's HEClient)")
    n, n_chunks = struct.unpack(">II", take(8))
    chunks: list[tuple[int, list[bytes]]] = []
    for _ in range(n_chunks):
        size, count = struct.unpack(">II", take(8))
        if vectors is not None and count != vectors:
            raise HEError(f"a chunk holds {count} ciphertexts; this model takes {vectors} (one per input feature)")
        if size < 1 or (max_chunk is not None and size > max_chunk):
            raise HEError(f"a chunk holds {size} samples; it must hold 1 to {max_chunk} (one per slot)")
        blobs = [bytes(take(struct.unpack(">Q", take(8))[0])) for _ in range(count)]
        chunks.append((size, blobs))
    if pos != len(view) or sum(s for s, _ in chunks) != n or n < 1:
        raise HEError("the encrypted payload's sample counts do not add up (or it has trailing bytes)")
    return n, chunks


class HEClient:
    """The party with the data and the secret key, for a server described by ``spec`` (:meth:`HEServer.spec`)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        ts = require("tenseal", "he")
        self.spec = dict(spec)
        self.params = CKKSParams.from_dict(spec["params"])
        self.input_dim, self.n_outputs = int(spec["input_dim"]), int(spec["n_outputs"])
        p = self.params
        self.context = ts.context(
            ts.SCHEME_TYPE.CKKS, p.poly_modulus_degree, coeff_mod_bit_sizes=list(p.coeff_mod_bit_sizes)
        )
        self.context.global_scale = 2.0**p.scale_bits
        self._ts = ts

    def public_context(self) -> bytes:
        """The context without its secret key (public and relinearisation keys): what the server gets."""
        return self.context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=True
        )

    def encrypt(self, x: np.ndarray) -> bytes:
        """``x`` (n, *input_shape) or (n, input_dim) encrypted feature by feature, ``N/2`` samples per chunk."""
        rows = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if rows.shape[1] != self.input_dim or len(rows) == 0:
            raise UsageError(f"inputs must be (n, {self.input_dim}) values (n >= 1), got shape {list(np.shape(x))}")
        if not np.isfinite(rows).all():
            raise UsageError("inputs contain NaN or infinite values: CKKS encrypts finite numbers only")
        chunks = []
        for start in range(0, len(rows), self.params.slots):
            block = rows[start : start + self.params.slots]
            chunks.append(
                (len(block), [self._ts.ckks_vector(self.context, col.tolist()).serialize() for col in block.T])
            )
        return pack(len(rows), chunks)

    def decrypt(self, reply: bytes) -> np.ndarray:
        """The (n, n_outputs) scores in a server's reply. The reply is parsed by TenSEAL in this process: the
        client trusts the server it chose not to send crafted bytes (the server cannot read the data either way)."""
        _, chunks = unpack(reply, vectors=self.n_outputs, max_chunk=self.params.slots)
        out = []
        for size, blobs in chunks:
            cols = [self._ts.ckks_vector_from(self.context, b).decrypt()[:size] for b in blobs]
            out.append(np.asarray(cols, dtype=np.float64).T)
        return np.concatenate(out)


class HEServer:
    """Evaluates ``program`` on a client's ciphertexts; never holds a secret key."""

    def __init__(self, program: HEProgram, *, model: str = "") -> None:
        self._ts = require("tenseal", "he")
        self.program, self.model = program, model
        self.params = program.params
        self._contexts: OrderedDict[str, Any] = OrderedDict()

    def spec(self) -> dict[str, Any]:
        """What a client needs: CKKS parameters, input and output sizes, depth, layout."""
        return {
            "model": self.model,
            "params": self.params.as_dict(),
            "security_bits": self.params.security_bits,
            "input_shape": list(self.program.input_shape),
            "input_dim": self.program.input_dim,
            "n_outputs": self.program.n_outputs,
            "depth": self.program.depth,
            "slots": self.params.slots,
            "layout": "slot-batched: per chunk of up to slots samples, ciphertext k holds feature k of every sample",
            "output": "logits",
        }

    def load_context(self, data: bytes) -> Any:
        """The client's public context (cached by digest); :class:`HEError` if it has a secret key or other
        parameters than :attr:`params`."""
        digest = hashlib.sha256(data).hexdigest()
        if digest in self._contexts:
            self._contexts.move_to_end(digest)
            return self._contexts[digest]
        try:
            ctx = self._ts.context_from(data)
        except (RuntimeError, ValueError, TypeError):  # what TenSEAL raises on bytes it cannot parse
            raise HEError("the context could not be read: send HEClient.public_context() bytes") from None
        if not _is_ckks(ctx):
            raise HEError("the context is not a CKKS context: build the client from this server's spec")
        if ctx.has_secret_key() or ctx.is_private():
            raise HEError("the context carries a secret key: send the public context only (HEClient.public_context())")
        parms = ctx.seal_context().data.key_context_data().parms()
        chain = _chain_bits(ctx)
        if parms.poly_modulus_degree() != self.params.poly_modulus_degree or chain != _expected_chain(
            self.params.coeff_mod_bit_sizes
        ):
            raise HEError(
                f"the context's CKKS parameters (N={parms.poly_modulus_degree()}, {chain[0]} bits in "
                f"{len(chain)} primes) are not "
                f"this model's (N={self.params.poly_modulus_degree}, {list(self.params.coeff_mod_bit_sizes)}): "
                "build the client from this server's spec"
            )
        if not ctx.has_relin_keys() and any(isinstance(s, Square) for s in self.program.steps):
            raise HEError("the context has no relinearisation keys, which this model's activations need")
        self._contexts[digest] = ctx
        while len(self._contexts) > 4:
            self._contexts.popitem(last=False)
        return ctx

    def evaluate(self, context: bytes, payload: bytes) -> bytes:
        """The encrypted scores of ``payload`` (framed ciphertexts) under the client's public ``context``."""
        ctx = self.load_context(context)
        n, chunks = unpack(payload, vectors=self.program.input_dim, max_chunk=self.params.slots)
        replies = []
        for size, blobs in chunks:
            try:
                vecs = [self._ts.ckks_vector_from(ctx, b) for b in blobs]
            except (RuntimeError, ValueError, TypeError):  # what TenSEAL raises on bytes it cannot parse
                raise HEError("a ciphertext does not belong to this context (or is corrupt)") from None
            # TenSEAL accepts a vector message without exactly one ciphertext, and computing on it crashes
            if any(len(v.ciphertext()) != 1 for v in vecs):
                raise HEError("a vector does not hold exactly one ciphertext (a corrupt or crafted payload)")
            if any(v.size() != size for v in vecs):
                raise HEError(f"a chunk announces {size} samples but its ciphertexts hold another number")
            try:
                out = self.run(ctx, vecs)
            except (RuntimeError, ValueError, TypeError) as exc:  # scale out of bounds, mismatched levels, ...
                raise HEError(
                    f"the ciphertexts could not be evaluated ({exc}): they are not fresh ciphertexts of this context"
                ) from None
            replies.append((size, [v.serialize() for v in out]))
        return pack(n, replies)

    def run(self, ctx: Any, vecs: list[Any]) -> list[Any]:
        """The program on one chunk's vectors (one per feature, every sample in the slots)."""
        for step in self.program.steps:
            if isinstance(step, Affine):
                w = step.weight  # CSR: row j's non-zeros are indptr[j]:indptr[j + 1] of indices / data
                vecs = [
                    self._unit(ctx, vecs, w.indices[lo:hi], w.data[lo:hi], float(b))
                    for lo, hi, b in zip(w.indptr[:-1], w.indptr[1:], step.bias, strict=True)
                ]
            elif isinstance(step, Square):
                vecs = [v.square() for v in vecs]
            else:
                vecs = [v + float(c) for v, c in zip(vecs, step.value, strict=True)]
        return vecs

    def _unit(self, ctx: Any, vecs: list[Any], columns: np.ndarray, weights: np.ndarray, bias: float) -> Any:
        """One output unit: ``sum_k vecs[columns[k]] * weights[k] + bias`` (the row's non-zeros only)."""
        acc = None
        for k, weight in zip(columns.tolist(), weights.tolist(), strict=True):
            term = vecs[k] * weight
            if acc is None:
                acc = term
            else:
                acc += term
        if acc is None:  # a unit with no input: its constant, encrypted under the client's public key
            return self._ts.ckks_vector(ctx, [bias] * vecs[0].size())
        return acc + bias


def _is_ckks(ctx: Any) -> bool:
    scheme = ctx.seal_context().data.key_context_data().parms().scheme()
    return "CKKS" in str(scheme).upper()


def _chain_bits(ctx: Any) -> list[int]:
    """The total modulus size (bits) at each level of ``ctx``'s chain, key level first (TenSEAL's binding of the
    primes themselves fails to convert): SEAL takes each prime just below its power of two, so these totals are the
    cumulative sums of the requested bit sizes."""
    level, totals = ctx.seal_context().data.key_context_data(), []
    while level is not None:
        totals.append(level.total_coeff_modulus_bit_count())
        level = level.next_context_data()
    return totals


def _expected_chain(bits: tuple[int, ...]) -> list[int]:
    """:func:`_chain_bits` for primes of ``bits``: all of them, then without the special prime, then dropping one
    middle prime per level down to the first."""
    totals = [sum(bits)]
    for k in range(len(bits) - 1, 0, -1):
        totals.append(sum(bits[:k]))
    return totals
