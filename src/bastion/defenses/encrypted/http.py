"""A Python client of ``bastion serve --encrypted``: encrypt here, evaluate there, decrypt here.

:class:`EncryptedClient` reads the server's spec (``GET /v1/encrypted/spec``: the CKKS parameters chosen from the
model's depth), makes its own CKKS keys with :class:`~.protocol.HEClient` and, for each batch, posts the public
context and the ciphertexts (:func:`~.wire.encode_request`) to ``POST /v1/predict-encrypted`` and decrypts the
encrypted scores it gets back. The secret key never leaves this process: the server sees ciphertexts and the public
and relinearisation keys only, and answers with ciphertexts only this client can read.

Each request carries at most ``batch_size`` samples (default: one ciphertext's worth, the spec's ``slots``): the cost
of a request is the same for one sample as for a full ciphertext, and its size is about ``input_dim`` ciphertexts
plus the context, which the server's ``limits.max_encrypted_body_bytes`` bounds (64 MiB by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ...errors import UsageError
from ...models.base import Closing
from .protocol import HEClient, HEError
from .wire import MEDIA_TYPE, encode_request

__all__ = ["EncryptedClient"]

SPEC_PATH = "/v1/encrypted/spec"
PREDICT_PATH = "/v1/predict-encrypted"


class EncryptedClient(Closing):
    """Private inference against the bastion service at ``url`` (its base URL, e.g. ``http://127.0.0.1:8000``).

    Args:
        url: where ``bastion serve --encrypted`` listens.
        api_key: a client (or admin) key, sent as ``Authorization: Bearer``; never shown in ``repr``.
        timeout: seconds per HTTP request (an encrypted evaluation takes far longer than a plain one).
        batch_size: samples per request; default the spec's ``slots`` (one ciphertext per input feature).

    Raises:
        UsageError: a malformed ``url`` or ``timeout``, a server that cannot be reached, refuses the key or does
            not serve encrypted inference (the message says which).
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 300.0, batch_size: int | None = None) -> None:
        import httpx

        if not str(url).startswith(("http://", "https://")):
            raise UsageError(f"url must start with http:// or https://, got {url!r}")
        if not float(timeout) > 0:
            raise UsageError(f"timeout must be positive, got {timeout}")
        self.url, self.timeout = str(url).rstrip("/"), float(timeout)
        self.n_requests = self.n_queries = 0
        self.last_request_ids: list[str] = []  # the X-Request-Id of each request of the last predict()
        self._http = httpx.Client(
            base_url=self.url, timeout=self.timeout, headers={"Authorization": f"Bearer {api_key}"}
        )
        try:
            self.spec = self._spec()
            self.he = HEClient(self.spec)
        except BaseException:
            self.close()
            raise
        slots = self.he.params.slots
        self.batch_size = slots if batch_size is None else int(batch_size)
        if not 1 <= self.batch_size <= slots:
            self.close()
            raise UsageError(f"batch_size must be in [1, {slots}] (the samples one ciphertext holds), got {batch_size}")
        self._context = self.he.public_context()

    def predict(self, x: Any) -> np.ndarray:
        """The model's scores (logits) on ``x`` (n, *input_shape) or (n, input_dim), as (n, n_outputs) float64,
        computed by the server on ciphertexts."""
        rows = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(np.float64)
        rows = rows.reshape(len(rows), -1) if rows.ndim else rows
        if rows.ndim != 2 or len(rows) == 0 or rows.shape[1] != self.he.input_dim:
            raise UsageError(
                f"x must be (n, {', '.join(map(str, self.spec['input_shape']))}) inputs with n >= 1, got shape "
                f"{list(np.shape(x))}"
            )
        scores, ids = [], []
        for start in range(0, len(rows), self.batch_size):
            part = rows[start : start + self.batch_size]
            response = self._request(
                "POST", PREDICT_PATH, content=encode_request(self._context, self.he.encrypt(part)), media=MEDIA_TYPE
            )
            scores.append(self._decrypt(response.content, len(part)))
            ids.append(response.headers.get("X-Request-Id", ""))
            self.n_queries += len(part)
        self.last_request_ids = ids
        return np.concatenate(scores)

    def predict_labels(self, x: Any) -> np.ndarray:
        """The predicted class of each row of ``x`` (the argmax of :meth:`predict`)."""
        return self.predict(x).argmax(axis=1)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __repr__(self) -> str:
        params = self.he.params
        return (
            f"EncryptedClient({self.url!r}, model={self.spec.get('model', '')!r}, "
            f"N={params.poly_modulus_degree}, depth={self.spec.get('depth')}, batch_size={self.batch_size}, "
            f"timeout={self.timeout:g})"
        )

    # -- HTTP ------------------------------------------------------------------------------------------------
    def _spec(self) -> dict[str, Any]:
        response = self._request("GET", SPEC_PATH)
        try:
            spec = response.json()
        except ValueError:
            spec = None
        if not isinstance(spec, Mapping) or not {"params", "input_dim", "n_outputs"} <= set(spec):
            raise UsageError(f"{self.url}{SPEC_PATH} did not answer an encrypted-inference spec: {_message(response)}")
        return dict(spec)

    def _request(self, method: str, path: str, *, content: bytes | None = None, media: str | None = None) -> Any:
        import httpx

        headers = {"Content-Type": media} if media else None
        self.n_requests += 1
        try:
            response = self._http.request(method, path, content=content, headers=headers)
        except httpx.TimeoutException:
            raise UsageError(
                f"the server at {self.url} did not answer {path} within {self.timeout:g}s: raise timeout= or lower "
                "batch_size="
            ) from None
        except httpx.HTTPError as exc:
            raise UsageError(
                f"cannot reach the server at {self.url}: {exc or type(exc).__name__} — check the URL and that "
                "bastion serve --encrypted is running"
            ) from None
        if response.status_code == 404 and path == SPEC_PATH:
            raise UsageError(f"the server at {self.url} does not serve encrypted inference: start it with --encrypted")
        if not response.is_success:
            hint = (
                " (lower batch_size= or raise [limits] max_encrypted_body_bytes)" if response.status_code == 413 else ""
            )
            raise UsageError(
                f"the server at {self.url} answered {path} with HTTP {response.status_code}: {_message(response)}{hint}"
            )
        return response

    def _decrypt(self, reply: bytes, n: int) -> np.ndarray:
        try:
            scores = self.he.decrypt(reply)
        except HEError as exc:
            raise UsageError(
                f"the server at {self.url} answered something that is not encrypted scores: {exc}"
            ) from None
        if scores.shape != (n, self.he.n_outputs):
            raise UsageError(f"the server at {self.url} answered {scores.shape[0]} rows of scores for {n} samples sent")
        return scores


def _message(response: Any) -> str:
    """The server's one-line reason (its JSON ``detail``), else the start of its body."""
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200] or "(empty body)"
    if isinstance(body, Mapping) and "detail" in body:
        return str(body["detail"])[:300]
    return str(body)[:200]
