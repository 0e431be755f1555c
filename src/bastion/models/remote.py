"""Black-box adapter for a model behind an HTTP endpoint.

Protocol: ``POST url`` with JSON ``{"inputs": [x_1, x_2, ...]}`` (each input a nested list of
shape ``input_shape``), up to ``batch_size`` inputs per request. The server answers with one of

- ``{"probabilities": [[...], ...]}`` or ``{"logits": [[...], ...]}`` — one row per input;
- ``{"labels": [k_1, ...]}`` — label-only: scores become one-hot rows and ``label_only`` is True;
- ``{"results": [{"probabilities": [...], "label": k}, ...]}`` — one object per input (bastion's
  guard service); each object carries ``probabilities``, ``logits`` or only ``label``.

Every input sent counts as one query (``n_queries``); ``n_requests`` counts HTTP requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import UsageError
from .base import BaseClassifier, Closing, Output

__all__ = ["RemoteClassifier"]


def _server_message(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return " ".join(response.text.split())[:200] or "(empty body)"
    if isinstance(body, Mapping):
        for key in ("detail", "error", "message"):
            if key in body:
                return str(body[key])[:200]
    return str(body)[:200]


class RemoteClassifier(BaseClassifier, Closing):
    """Query a classifier served over HTTP (see the module docstring for the JSON protocol).

    Args:
        url: the endpoint receiving the POST.
        input_shape: shape of one input (the server cannot be asked).
        n_classes: number of classes.
        bounds: valid input range.
        headers: extra HTTP headers.
        api_key: sent as ``Authorization: Bearer <api_key>``; never shown in ``repr``.
        batch_size: inputs per request.
        timeout: seconds per request.
        output: how to read a response with plain ``scores`` rows; a response's key
            ``probabilities`` / ``logits`` / ``labels`` overrides it.
    """

    white_box = False

    def __init__(
        self,
        url: str,
        *,
        input_shape: tuple[int, ...],
        n_classes: int,
        bounds: tuple[float, float] = (0.0, 1.0),
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        batch_size: int = 64,
        timeout: float = 30,
        output: Output = "probabilities",
    ) -> None:
        if not str(url).startswith(("http://", "https://")):
            raise UsageError(f"url must start with http:// or https://, got {url!r}")
        if int(batch_size) < 1:
            raise UsageError(f"batch_size must be at least 1, got {batch_size}")
        if not float(timeout) > 0:
            raise UsageError(f"timeout must be positive, got {timeout}")
        super().__init__(n_classes=n_classes, input_shape=input_shape, bounds=bounds, output=output)
        self.url = str(url)
        self.batch_size = int(batch_size)
        self.timeout = float(timeout)
        self.label_only = False
        self.n_requests = 0
        hdrs = dict(headers or {})
        if api_key:
            hdrs["Authorization"] = f"Bearer {api_key}"
        self._headers = hdrs
        self._client: Any = None

    def _post(self, rows: list[Any]) -> Any:
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, headers=self._headers)
        self.n_requests += 1
        try:
            response = self._client.post(self.url, json={"inputs": rows})
        except httpx.TimeoutException:
            raise UsageError(
                f"the model server at {self.url} did not answer within {self.timeout:g}s: "
                "raise timeout= or lower batch_size="
            ) from None
        except httpx.HTTPError as exc:
            raise UsageError(
                f"cannot reach the model server at {self.url}: {exc or type(exc).__name__} — "
                "check the URL and that the server is running"
            ) from None
        if not response.is_success:
            raise UsageError(
                f"the model server at {self.url} answered HTTP {response.status_code}: {_server_message(response)}"
            )
        try:
            return response.json()
        except ValueError:
            raise UsageError(
                f"the model server at {self.url} did not answer with JSON: {_server_message(response)}"
            ) from None

    def _rows(self, body: Any, n: int) -> Tensor:
        bad = f"malformed response from {self.url}"
        if not isinstance(body, Mapping):
            raise UsageError(f"{bad}: expected a JSON object, got {type(body).__name__}")
        if "results" in body:
            items = body["results"]
            if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
                raise UsageError(f"{bad}: 'results' must be a list of objects")
            key = next((k for k in ("probabilities", "logits") if items and all(k in i for i in items)), None)
            if key is not None:
                return self._scores_from(key, [i[key] for i in items], n)
            if all("label" in i for i in items):
                return self._scores_from("labels", [i["label"] for i in items], n)
            raise UsageError(f"{bad}: each result needs 'probabilities', 'logits' or 'label'")
        for key in ("probabilities", "logits", "labels", "scores"):
            if key in body:
                return self._scores_from(key, body[key], n)
        raise UsageError(
            f"{bad}: expected a key 'probabilities', 'logits', 'labels' or 'results', got {sorted(map(str, body))[:10]}"
        )

    def _scores_from(self, key: str, values: Any, n: int) -> Tensor:
        bad = f"malformed response from {self.url}"
        if not isinstance(values, list) or len(values) != n:
            got = len(values) if isinstance(values, list) else type(values).__name__
            raise UsageError(f"{bad}: sent {n} inputs but '{key}' holds {got} entries")
        if key == "labels":
            if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < self.n_classes for v in values):
                raise UsageError(f"{bad}: labels must be integers in [0, {self.n_classes - 1}], got {values[:5]}...")
            self.label_only, self.output = True, "probabilities"
            return torch.nn.functional.one_hot(torch.tensor(values, dtype=torch.long), self.n_classes).float()
        try:
            out = torch.tensor(values, dtype=torch.float32)
        except (TypeError, ValueError):
            raise UsageError(f"{bad}: '{key}' must be a list of numeric rows") from None
        if out.shape != (n, self.n_classes):
            raise UsageError(
                f"{bad}: '{key}' has shape {tuple(out.shape)}, expected ({n}, {self.n_classes}) — check n_classes"
            )
        if not bool(torch.isfinite(out).all()):
            raise UsageError(f"{bad}: '{key}' contains NaN or infinite values")
        if key != "scores":
            self.output = "probabilities" if key == "probabilities" else "logits"
        return out

    def _scores(self, x: Tensor) -> Tensor:
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise UsageError(
                f"x has shape {tuple(x.shape)} but the remote model expects "
                f"(N, {', '.join(map(str, self.input_shape))})"
            )
        flat = x.detach().cpu().float()
        outs = [
            self._rows(self._post(flat[i : i + self.batch_size].tolist()), min(self.batch_size, x.shape[0] - i))
            for i in range(0, x.shape[0], self.batch_size)
        ]
        if not outs:
            return torch.empty(0, self.n_classes, device=x.device)
        return torch.cat(outs).to(x.device)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __repr__(self) -> str:
        return (
            f"RemoteClassifier({self.url!r}, n_classes={self.n_classes}, input_shape={self.input_shape}, "
            f"bounds={self.bounds}, batch_size={self.batch_size}, timeout={self.timeout:g}, "
            f"output={self.output!r}, label_only={self.label_only})"
        )
