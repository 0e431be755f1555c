"""Private inference with CKKS homomorphic encryption (the ``he`` extra: TenSEAL).

The client encrypts, the server evaluates the model on ciphertexts without a secret key, only the client reads
the answer. :func:`compile_model` turns an HE-friendly network (affine layers, polynomial activations) into an
:class:`HEProgram` and its multiplicative depth; :func:`choose_params` sizes CKKS for that depth at 128-bit
security; :class:`HEClient` / :class:`HEServer` are the two roles, with many samples per ciphertext
(:mod:`.protocol` documents the layout and the wire format); :class:`IsolatedHEServer` evaluates in a child
process (TenSEAL's parsers can crash on crafted bytes); :class:`EncryptedClient` talks to ``bastion serve
--encrypted`` (:mod:`.wire`: the HTTP body). docs/encrypted.md has the whole design and the measurements.
"""

from .http import EncryptedClient
from .isolation import IsolatedHEServer
from .params import SECURITY_128, CKKSParams, choose_params
from .program import HEProgram, compile_model
from .protocol import HEClient, HEError, HEServer
from .wire import decode_request, encode_request

__all__ = [
    "SECURITY_128",
    "CKKSParams",
    "EncryptedClient",
    "HEClient",
    "HEError",
    "HEProgram",
    "HEServer",
    "IsolatedHEServer",
    "choose_params",
    "compile_model",
    "decode_request",
    "encode_request",
]
