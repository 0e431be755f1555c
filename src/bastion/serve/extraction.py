"""Per-client model-extraction detection: PRADA (Juuti, Szyller, Marchal & Asokan 2019, "PRADA: Protecting
against DNN Model Stealing Attacks", IEEE EuroS&P), plus per-client query budgets.

PRADA's premise: queries from a benign client are natural samples, so the distance from a new query to the
closest earlier query of the same predicted class is roughly normally distributed; queries that an extraction
attack synthesises (small perturbations of earlier queries, as in Papernot et al.'s Jacobian-based dataset
augmentation) make those distances cluster and the distribution loses its normal shape. This follows the
paper's Algorithm 1, per client, query by query, with predicted class c = F(x) and L2 distances on the
flattened float32 input:

    if G_c is empty:   G_c <- {x};  D_Gc <- {0};  T_c <- 0
    else:              d_min <- min_{y in G_c} ||x - y||_2;   D <- D u {d_min}
                       if d_min > T_c:   G_c <- G_c u {x};  D_Gc <- D_Gc u {d_min}
                                         T_c <- max(T_c, mean(D_Gc) - std(D_Gc))
    if |D| >= min_distances:   D' <- {z in D : |z - mean(D)| <= 3 std(D)}
                               flag the client when W(D') < delta

W is the Shapiro-Wilk statistic (:func:`scipy.stats.shapiro`), std the population one (ddof=0). The
``{0}`` that seeds ``D_Gc``, the 3-sigma outlier trim before the test and the test every 10 queries are as
in the authors' reference implementation (``GrowingDistanceAgent``, Aalto Secure Systems Group); D pools
the distances of all classes; the paper tests once |D| > 100, this module once |D| >= ``min_distances``.
A flag is sticky until :meth:`ExtractionMonitor.reset`.

Bounded cost for a live service (the only departures from Algorithm 1, both inactive until their caps are
reached): each growing set keeps its ``max_growing`` most recent members (FIFO; the threshold statistics
mean/std(D_Gc) still cover every member ever added, by Welford's running moments), and W is computed on the
last ``max_distances`` distances, every ``check_every`` queries rather than after each one. Memory per
client is at most ``classes * max_growing * input_size * 4`` bytes plus ``8 * max_distances``; time per
query is one distance row against its class's growing set (one batched computation per class and request,
from explicit differences, in chunks) plus a Shapiro-Wilk test every ``check_every`` queries (~0.1 ms on
5,000 values). Batched processing gives the same D, growing sets and flags as a query-by-query replay.

Default ``delta`` = 0.9, chosen on a calibration separate from the tests (zoo ``mnist-cnn``, ``mnist5k``
*training* images; the tests use test images and other seeds). Since a flag is sticky, what matters for a
benign client is the minimum W over its stream: over 500 benign clients each replaying 120-300 random
training images in requests of 1-8, it was 0.934 at the lowest (1% quantile 0.952, median 0.983; longer
replays of 1,000-4,000 images stayed above 0.96). Of twenty Jacobian-augmentation attackers (Papernot et al.
2017, lambda 0.1, MLP substitute, 1-10 training-image seeds per class), 19 were flagged at 110-140 queries;
the one missed had a single seed per class, so nearly all its distances are between synthetic points and
look normal. 0.9 keeps a margin on the benign side (the paper, too, sets delta per model and data set).
Other models and data shift the benign W distribution: calibrate ``delta`` on the deployment's benign
traffic.

Limits: PRADA assumes the attacker synthesises queries from a few seeds. Attackers who query natural data
(Knockoff Nets, Orekondy et al. 2019; random natural images from another source) produce normally
distributed distances and are not detected, nor is an attacker who spreads queries over many client
identities (Sybils) or who adds noise to push the distances towards normality (at some cost in extraction
quality). Benign clients whose traffic is not i.i.d. natural data (bursts of near-duplicates, video
frames) can be flagged. Budgets bound what any client, detected or not, can learn.

Shapes: ``x`` (n, *input_shape) float; ``labels`` (n,) integer predicted classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError

__all__ = ["OUTLIER_SIGMAS", "ExtractionMonitor", "queries_until_flagged", "shapiro_w"]

OUTLIER_SIGMAS = 3.0
"""Distances farther than this many standard deviations from the mean of D are left out of the test."""


def shapiro_w(distances: np.ndarray) -> float:
    """PRADA's statistic: Shapiro-Wilk W of ``distances`` after the 3-sigma outlier trim.

    1.0 when fewer than 3 values remain or all are equal (a constant D, e.g. one image replayed, is not
    evidence of synthetic queries).
    """
    from scipy import stats

    d = np.asarray(distances, dtype=np.float64)
    if d.size:
        mu, sd = float(d.mean()), float(d.std())
        d = d[np.abs(d - mu) <= OUTLIER_SIGMAS * sd]
    if d.size < 3 or float(np.ptp(d)) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return 1.0
    return float(stats.shapiro(d).statistic)


class _GrowingSet:
    """G_c for one class: a FIFO ring buffer of flattened members, the threshold T_c and the moments of D_Gc."""

    __slots__ = ("buf", "cap", "head", "m2", "mean", "n", "size", "threshold")

    def __init__(self, dim: int, cap: int) -> None:
        self.cap = cap
        self.buf = torch.empty(min(cap, 16), dim, dtype=torch.float32)
        self.size = 0
        self.head = 0  # slot of the oldest member once the buffer is full
        self.threshold = 0.0
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add_distance(self, d: float) -> None:
        """Welford update of the moments of D_Gc."""
        self.n += 1
        delta = d - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (d - self.mean)

    def update_threshold(self) -> None:
        std = math.sqrt(max(self.m2 / self.n, 0.0))
        self.threshold = max(self.threshold, self.mean - std)

    def ordered(self) -> Tensor:
        """Members oldest first: (size, dim)."""
        if self.size < self.cap:
            return self.buf[: self.size]
        return torch.cat([self.buf[self.head :], self.buf[: self.head]])

    def push(self, x: Tensor) -> None:
        if self.size < self.cap:
            if self.size == self.buf.shape[0]:
                grown = torch.empty(min(self.cap, 2 * self.buf.shape[0]), self.buf.shape[1], dtype=torch.float32)
                grown[: self.size] = self.buf[: self.size]
                self.buf = grown
            self.buf[self.size] = x
            self.size += 1
        else:
            self.buf[self.head] = x
            self.head = (self.head + 1) % self.cap


class _Client:
    __slots__ = ("dim", "flagged", "flagged_at", "n_distances", "queries", "ring", "sets", "w")

    def __init__(self, max_distances: int, dim: int) -> None:
        self.queries = 0
        self.dim = dim
        self.sets: dict[int, _GrowingSet] = {}
        self.ring = np.zeros(max_distances, dtype=np.float64)
        self.n_distances = 0
        self.w: float | None = None
        self.flagged = False
        self.flagged_at: int | None = None

    def window(self) -> np.ndarray:
        """The last ``max_distances`` distances, oldest first."""
        cap = self.ring.shape[0]
        if self.n_distances <= cap:
            return self.ring[: self.n_distances]
        k = self.n_distances % cap
        return np.concatenate([self.ring[k:], self.ring[:k]])


_CHUNK = 1 << 22  # elements of the (rows, cols, dim) difference tensor built at once: 16 MiB of float32


def _dist(a: Tensor, b: Tensor) -> Tensor:
    """L2 distances (len(a), len(b)) from explicit differences (no |a|^2 + |b|^2 - 2ab cancellation), in chunks."""
    m, n, d = a.shape[0], b.shape[0], a.shape[1]
    out = torch.empty(m, n, dtype=torch.float32)
    if m == 0 or n == 0:
        return out
    cols = min(n, max(1, _CHUNK // d))
    rows = min(m, max(1, _CHUNK // (cols * d)))
    for i in range(0, m, rows):
        for j in range(0, n, cols):
            out[i : i + rows, j : j + cols] = (a[i : i + rows, None] - b[None, j : j + cols]).square_().sum(-1).sqrt_()
    return out


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class ExtractionMonitor:
    """PRADA state for every client (growing sets, thresholds, distances, W) and per-client query budgets.

    ``delta``: flag a client when W < delta. ``min_distances``: distances needed before the first test
    (the paper: 100). ``max_distances``: W is computed on this many most recent distances. ``max_growing``:
    members kept per class and client. ``budget``: queries a client may make before ``over_budget`` (None:
    no budget). ``check_every``: W is recomputed every this many queries. The monitor only reports; the
    service decides whether a flagged or over-budget client is throttled or blocked. Not thread-safe.
    """

    def __init__(
        self,
        *,
        delta: float = 0.9,
        min_distances: int = 100,
        max_distances: int = 5000,
        max_growing: int = 2000,
        budget: int | None = None,
        check_every: int = 10,
    ) -> None:
        if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0.0 < float(delta) < 1.0:
            raise UsageError(f"delta must be a number strictly between 0 and 1, got {delta!r}")
        self.delta = float(delta)
        self.min_distances = _check_int("min_distances (Shapiro-Wilk needs at least 3)", min_distances, 3)
        self.max_distances = _check_int("max_distances", max_distances, 3)
        if self.max_distances < self.min_distances:
            raise UsageError(f"max_distances ({max_distances}) must be >= min_distances ({min_distances})")
        self.max_growing = _check_int("max_growing", max_growing, 1)
        self.budget = None if budget is None else _check_int("budget", budget, 0)
        self.check_every = _check_int("check_every", check_every, 1)
        self._clients: dict[str, _Client] = {}

    def observe(self, client: str, x: Tensor, labels: Tensor) -> dict:
        """Record one request of ``client``: inputs ``x`` (n, *input_shape) and their predicted ``labels`` (n,).

        Returns the client's status after the request (see :meth:`status`).
        """
        if not isinstance(client, str) or not client:
            raise UsageError(f"client must be a non-empty string, got {client!r}")
        flat, labs = self._validate(x, labels)
        state = self._clients.get(client)
        if state is not None and state.dim != flat.shape[1]:
            raise UsageError(f"client {client!r} sent inputs of {flat.shape[1]} values, earlier ones had {state.dim}")
        if flat.shape[0] == 0:
            return self.status(client)
        if state is None:
            state = self._clients[client] = _Client(self.max_distances, flat.shape[1])

        n = flat.shape[0]
        dmins = np.full(n, np.nan)  # NaN: the query started a growing set, no distance
        for c in np.unique(labs).tolist():
            idx = np.flatnonzero(labs == c)
            dmins[idx] = self._grow(state, int(c), flat[torch.from_numpy(idx)])

        cap = self.max_distances
        for i in range(n):
            state.queries += 1
            if not np.isnan(dmins[i]):
                state.ring[state.n_distances % cap] = dmins[i]
                state.n_distances += 1
            if state.queries % self.check_every == 0 and state.n_distances >= self.min_distances:
                state.w = shapiro_w(state.window())
                if state.w < self.delta and not state.flagged:
                    state.flagged, state.flagged_at = True, state.queries
        return self.status(client)

    def count(self, client: str, n: int, dim: int) -> dict:
        """Record ``n`` queries of ``client`` whose inputs (``dim`` values each) the service cannot see — encrypted
        ones (``bastion serve --encrypted``): they count against the budget, but give PRADA no distance to test.

        Returns the client's status after the request (see :meth:`status`).
        """
        if not isinstance(client, str) or not client:
            raise UsageError(f"client must be a non-empty string, got {client!r}")
        n, dim = _check_int("n", n, 0), _check_int("dim", dim, 1)
        state = self._clients.get(client)
        if state is None:
            state = self._clients[client] = _Client(self.max_distances, dim)
        state.queries += n
        return self.status(client)

    def _grow(self, state: _Client, c: int, xc: Tensor) -> np.ndarray:
        """Algorithm 1 for the queries ``xc`` (m, d) of class ``c``, in order: their d_min (NaN for none)."""
        gs = state.sets.get(c)
        if gs is None:
            gs = state.sets[c] = _GrowingSet(xc.shape[1], self.max_growing)
        m = xc.shape[0]
        old = gs.ordered()
        n_old = old.shape[0]
        pre = _dist(xc, old).numpy().astype(np.float64)  # (m, n_old), columns oldest first
        intra = _dist(xc, xc).numpy().astype(np.float64)  # (m, m)
        out = np.full(m, np.nan)
        added: list[int] = []  # batch rows that joined G_c, in order
        evicted = 0  # members dropped from the front of [old..., added...] by the FIFO cap
        size = n_old
        for i in range(m):
            if size == 0:
                d = None
            else:
                best = math.inf
                if evicted < n_old:
                    best = float(pre[i, evicted:].min())
                alive = added[max(0, evicted - n_old) :]
                if alive:
                    best = min(best, float(intra[i, alive].min()))
                d = best
            if d is None:  # empty growing set: x starts it, D_Gc = {0}, T_c = 0
                gs.add_distance(0.0)
                added.append(i)
                size = 1
                continue
            out[i] = d
            if d > gs.threshold:
                added.append(i)
                if size == self.max_growing:
                    evicted += 1
                else:
                    size += 1
                gs.add_distance(d)
                gs.update_threshold()
        for i in added:
            gs.push(xc[i])
        return out

    @staticmethod
    def _validate(x: Tensor, labels: Tensor) -> tuple[Tensor, np.ndarray]:
        if not isinstance(x, Tensor) or not isinstance(labels, Tensor):
            raise UsageError(f"x and labels must be torch tensors, got {type(x).__name__} and {type(labels).__name__}")
        if x.dim() < 2:
            raise UsageError(f"x must be (n, *input_shape) with a batch dimension, got shape {tuple(x.shape)}")
        if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)):
            raise UsageError(f"x must hold real numbers, got dtype {x.dtype}")
        if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
            raise UsageError(
                f"labels must be (n,) with one label per input: x {tuple(x.shape)}, labels {tuple(labels.shape)}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise UsageError(f"labels must be integer class indices, got dtype {labels.dtype}")
        flat = x.detach().to("cpu", torch.float32).reshape(x.shape[0], -1)
        if flat.shape[1] == 0:
            raise UsageError(f"x has no values per input: shape {tuple(x.shape)}")
        if not bool(torch.isfinite(flat).all()):
            raise UsageError("x contains NaN or infinite values")
        return flat.contiguous(), labels.detach().cpu().numpy().astype(np.int64)

    def status(self, client: str) -> dict:
        """``client``'s status: queries, distances, last W, flag (and the query count when first flagged), budget."""
        s = self._clients.get(client)
        queries = 0 if s is None else s.queries
        return {
            "client": client,
            "queries": queries,
            "distances": 0 if s is None else s.n_distances,
            "w": None if s is None else s.w,
            "flagged": False if s is None else s.flagged,
            "flagged_at": None if s is None else s.flagged_at,
            "over_budget": self.budget is not None and queries > self.budget,
        }

    def clients(self) -> list[dict]:
        """Every client's status, by client name."""
        return [self.status(c) for c in sorted(self._clients)]

    def reset(self, client: str | None = None) -> None:
        """Forget ``client`` (its queries, growing sets, distances and flag), or every client when None."""
        if client is None:
            self._clients.clear()
        else:
            self._clients.pop(client, None)


def queries_until_flagged(
    monitor_config: Any,
    query_stream_x: Tensor,
    predict_fn: Callable[[Tensor], Tensor],
    *,
    batch_size: int = 64,
) -> int | None:
    """Replay ``query_stream_x`` (n, *input_shape), in order, as one client's queries through a fresh monitor and
    return the number of queries after which the client is first flagged (PRADA, not the budget), or None.

    ``monitor_config``: a ``guard.toml`` :class:`~bastion.serve.config.ExtractionConfig` (its ``delta``) or a
    mapping of :class:`ExtractionMonitor` keyword arguments. ``predict_fn`` maps a batch to its predicted labels
    (a Classifier's ``predict``, the defended model's if the thief is answered through an output policy). The
    requests are ``batch_size`` queries each; the count is the same for any batch size (the monitor's batched
    processing matches a query-by-query replay), a multiple of ``check_every`` (W is tested every 10 queries by
    default), and None when the stream ends unflagged.
    """
    from .config import ExtractionConfig

    if isinstance(monitor_config, ExtractionConfig):
        kwargs: dict[str, Any] = {"delta": monitor_config.delta}
    elif isinstance(monitor_config, Mapping):
        kwargs = {k: v for k, v in monitor_config.items() if k != "budget"}
    else:
        raise UsageError(
            f"monitor_config must be an ExtractionConfig or a mapping of ExtractionMonitor arguments, "
            f"got {type(monitor_config).__name__}"
        )
    step = _check_int("batch_size", batch_size, 1)
    monitor = ExtractionMonitor(**kwargs)
    for i in range(0, int(query_stream_x.shape[0]), step):
        xb = query_stream_x[i : i + step]
        labels = torch.as_tensor(predict_fn(xb)).reshape(-1).long()
        status = monitor.observe("replay", xb, labels)
        if status["flagged"]:
            return int(status["flagged_at"])
    return None
