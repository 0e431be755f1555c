"""The HTTP framing of one encrypted prediction request: the client's public context and its ciphertexts in one body.

``POST /v1/predict-encrypted`` (``bastion serve --encrypted``) takes ``application/octet-stream``:

    b"BHQ1" | u64 big-endian context length | context bytes | payload bytes

The context is :meth:`HEClient.public_context() <bastion.defenses.encrypted.protocol.HEClient.public_context>`; the
payload is :meth:`HEClient.encrypt() <bastion.defenses.encrypted.protocol.HEClient.encrypt>`'s framing
(:func:`~bastion.defenses.encrypted.protocol.pack`). The reply body is the server's framed encrypted scores, for
:meth:`HEClient.decrypt() <bastion.defenses.encrypted.protocol.HEClient.decrypt>`. The context travels with every
request so that the server keeps no per-client state it would have to expire; it caches contexts by digest, so a
client that reuses one pays for reading it once.

:func:`decode_request` checks the framing in pure Python (lengths against the body's size) before any byte reaches
TenSEAL, whose parsers trust the lengths they read.
"""

from __future__ import annotations

import struct

from .protocol import HEError

__all__ = ["MEDIA_TYPE", "REQUEST_MAGIC", "decode_request", "encode_request"]

REQUEST_MAGIC = b"BHQ1"
MEDIA_TYPE = "application/octet-stream"
_HEADER = struct.Struct(">Q")


def encode_request(context: bytes, payload: bytes) -> bytes:
    """One request body: the public ``context`` and the framed ``payload`` (see the module docstring)."""
    if not context or not payload:
        raise HEError("an encrypted request needs a context and a payload: both were not given")
    return b"".join([REQUEST_MAGIC, _HEADER.pack(len(context)), bytes(context), bytes(payload)])


def decode_request(body: bytes) -> tuple[bytes, bytes]:
    """``(context, payload)`` of a request body; :class:`HEError` when the body is not this framing or its context
    length does not fit in it (the payload's own framing is checked by
    :func:`~bastion.defenses.encrypted.protocol.unpack`)."""
    head = len(REQUEST_MAGIC) + _HEADER.size
    if len(body) < head or bytes(body[: len(REQUEST_MAGIC)]) != REQUEST_MAGIC:
        raise HEError(
            "not a bastion encrypted request: the body must be BHQ1, the context length (u64) and the context, "
            "then the ciphertexts (use bastion.defenses.encrypted.http.EncryptedClient or encode_request)"
        )
    (size,) = _HEADER.unpack_from(body, len(REQUEST_MAGIC))
    if size < 1 or head + size >= len(body):
        raise HEError(
            f"the encrypted request announces a context of {size} bytes but carries {len(body) - head} bytes in all: "
            "it is truncated or its length is corrupt (a context and a payload are both needed)"
        )
    return bytes(body[head : head + size]), bytes(body[head + size :])
