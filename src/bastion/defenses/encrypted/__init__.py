"""Private inference with CKKS homomorphic encryption (the ``he`` extra: TenSEAL).

The client encrypts, the server evaluates the model on ciphertexts without a secret key, only the client reads
the answer. :func:`compile_model` turns an HE-friendly network (affine layers, polynomial activations) into an
:class:`HEProgram` and its multiplicative depth; :func:`choose_params` sizes CKKS for that depth at 128-bit
security; :class:`HEClient` / :class:`HEServer` are the two roles, with many samples per ciphertext
(:mod:`.protocol` documents the layout and the wire format).
"""

from .params import SECURITY_128, CKKSParams, choose_params
from .program import HEProgram, compile_model
from .protocol import HEClient, HEError, HEServer

__all__ = [
    "SECURITY_128",
    "CKKSParams",
    "HEClient",
    "HEError",
    "HEProgram",
    "HEServer",
    "choose_params",
    "compile_model",
]
