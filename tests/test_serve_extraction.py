"""Per-client model-extraction detection (PRADA) on the real mnist-cnn, with real attack and benign traffic.

Attacker: Papernot et al. (2017) Jacobian-based dataset augmentation — 5 mnist5k test images per class as
seeds, a small MLP substitute trained on the target's labels, each round x' = clip(x + 0.1 * sign(grad_x
substitute_logit[oracle label])), every query sent through the monitor in requests of 25. Benign: 20 clients
each replaying 150 test images (their own random subset and order) in requests of 1-8. The monitor's default
delta (0.9) was calibrated on training images (see the module docstring), not on these. Measured here (2
CPU cores): the attacker is flagged at 110 queries, its first test (W 0.66-0.73 over the next checks; the
substitute reaches ~0.66 test accuracy after 1,600 queries); benign final W 0.964-0.993, minimum over each
stream 0.934-0.992; the whole file ~15 s on an idle machine.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from bastion.errors import UsageError
from bastion.serve.extraction import ExtractionMonitor

LAMBDA = 0.1
SEEDS_PER_CLASS = 5
BATCH = 25


def _jacobian_augmentation(model, monitor: ExtractionMonitor, seeds: torch.Tensor, max_queries: int = 1600):
    """Papernot et al.'s substitute training loop; every oracle query goes through ``monitor`` as "attacker"."""
    torch.manual_seed(0)
    sub = nn.Sequential(nn.Flatten(), nn.Linear(seeds[0].numel(), 128), nn.ReLU(), nn.Linear(128, 10))
    trace = []

    def oracle(xs: torch.Tensor) -> torch.Tensor:
        out = []
        for k in range(0, len(xs), BATCH):
            xb = xs[k : k + BATCH]
            yb = model.predict(xb)
            st = monitor.observe("attacker", xb, yb)
            trace.append((st["queries"], st["w"]))
            out.append(yb)
        return torch.cat(out)

    s = seeds.clone()
    labels = oracle(s)
    while len(s) < max_queries:
        opt = torch.optim.Adam(sub.parameters(), lr=1e-3)
        for _ in range(10):
            perm = torch.randperm(len(s))
            for k in range(0, len(s), 64):
                j = perm[k : k + 64]
                opt.zero_grad()
                nn.functional.cross_entropy(sub(s[j]), labels[j]).backward()
                opt.step()
        xs = s.clone().requires_grad_(True)
        sub(xs).gather(1, labels[:, None]).sum().backward()
        new = (s + LAMBDA * xs.grad.sign()).clamp(0.0, 1.0).detach()
        s, labels = torch.cat([s, new]), torch.cat([labels, oracle(new)])
    return sub, trace


@pytest.fixture(scope="module")
def test_labels(mnist_cnn, mnist):
    return mnist_cnn.predict(mnist.x_test)


def test_jacobian_augmentation_attacker_is_flagged_before_2000_queries(mnist_cnn, mnist):
    rng = np.random.default_rng(0)
    y = mnist.y_test.numpy()
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), SEEDS_PER_CLASS, replace=False) for c in range(10)])
    monitor = ExtractionMonitor()
    sub, trace = _jacobian_augmentation(mnist_cnn, monitor, mnist.x_test[torch.from_numpy(idx)])
    st = monitor.status("attacker")
    rest = torch.from_numpy(np.setdiff1d(np.arange(len(y)), idx))
    with torch.no_grad():
        acc = (sub(mnist.x_test[rest]).argmax(1) == mnist.y_test[rest]).float().mean().item()
    print(
        f"attacker: flagged_at {st['flagged_at']} of {st['queries']} queries; substitute accuracy {acc:.2f}; "
        f"W trace {[(q, round(w, 3)) for q, w in trace if w is not None][:6]} ... final W {st['w']:.3f}"
    )
    assert st["queries"] >= 1600  # the whole attack ran
    assert acc > 0.4  # a real extraction: the substitute learned the target (chance 0.1)
    assert st["flagged"] and st["flagged_at"] is not None
    assert monitor.min_distances <= st["flagged_at"] < 2000
    assert monitor.clients() == [st]


def test_benign_clients_replaying_test_images_are_not_flagged(mnist, test_labels):
    rng = np.random.default_rng(1)
    monitor = ExtractionMonitor()
    finals, minima = [], []
    for k in range(20):
        order = torch.from_numpy(rng.permutation(len(mnist.x_test))[:150])
        ws, i = [], 0
        while i < len(order):
            sel = order[i : i + int(rng.integers(1, 9))]
            i += len(sel)
            st = monitor.observe(f"benign-{k}", mnist.x_test[sel], test_labels[sel])
            if st["w"] is not None:
                ws.append(st["w"])
        assert st["queries"] == 150 and st["distances"] >= monitor.min_distances and ws  # W was computed
        finals.append(st["w"])
        minima.append(min(ws))
    print(
        f"benign final W: {min(finals):.3f}-{max(finals):.3f}, minimum over each stream: "
        f"{min(minima):.3f}-{max(minima):.3f}"
    )
    statuses = monitor.clients()
    assert len(statuses) == 20
    assert not any(s["flagged"] or s["flagged_at"] is not None or s["over_budget"] for s in statuses)
    assert min(minima) >= monitor.delta


def test_budget_flag_and_reset():
    g = torch.Generator().manual_seed(0)
    monitor = ExtractionMonitor(budget=5)
    assert monitor.status("nobody") == {
        "client": "nobody",
        "queries": 0,
        "distances": 0,
        "w": None,
        "flagged": False,
        "flagged_at": None,
        "over_budget": False,
    }
    x = torch.rand(6, 1, 4, 4, generator=g)
    st = monitor.observe("a", x[:5], torch.zeros(5, dtype=torch.long))
    assert st["queries"] == 5 and st["distances"] == 4 and not st["over_budget"]
    st = monitor.observe("a", x[5:], torch.zeros(1, dtype=torch.long))
    assert st["queries"] == 6 and st["over_budget"]
    monitor.observe("b", x[:1], torch.ones(1, dtype=torch.long))
    assert [s["client"] for s in monitor.clients()] == ["a", "b"]
    monitor.reset("a")
    assert monitor.status("a")["queries"] == 0 and not monitor.status("a")["over_budget"]
    assert monitor.status("b")["queries"] == 1
    monitor.reset()
    assert monitor.clients() == []


def test_flag_is_sticky_until_reset():
    """Near-duplicate bursts flag a client; natural-looking traffic afterwards raises W but keeps the flag."""
    g = torch.Generator().manual_seed(0)
    monitor = ExtractionMonitor(delta=0.8, min_distances=30, max_distances=40, check_every=5)
    base = torch.randn(10, 16, generator=g)
    bursts = torch.cat([base, (base[:, None] + 1e-3 * torch.randn(10, 5, 16, generator=g)).reshape(50, 16)])
    ws = [monitor.observe("c", bursts[k : k + 5], torch.zeros(5, dtype=torch.long))["w"] for k in range(0, 60, 5)]
    st = monitor.status("c")
    assert st["flagged"] and min(w for w in ws if w is not None) < 0.8
    flagged_at = st["flagged_at"]
    st = monitor.observe("c", 10 * torch.randn(200, 16, generator=g), torch.zeros(200, dtype=torch.long))
    print("W after the bursts left the window:", st["w"])
    assert st["w"] > 0.8 and st["flagged"] and st["flagged_at"] == flagged_at
    monitor.reset("c")
    assert not monitor.status("c")["flagged"] and monitor.status("c")["flagged_at"] is None


def _reference(stream, labels, *, delta, min_distances, max_distances, max_growing, check_every):
    """Algorithm 1, literally: one query at a time, Python lists, float64 (plus the module's FIFO cap and window).

    Returns D and, for each query count, (W, flagged, flagged_at) after that query.
    """
    growing: dict[int, list[np.ndarray]] = {}
    gdists: dict[int, list[float]] = {}
    thresholds: dict[int, float] = {}
    dists: list[float] = []
    w, flagged, flagged_at, after = None, False, None, []
    for q, (x, c) in enumerate(zip(stream, labels), start=1):
        if not growing.get(c):
            growing[c], gdists[c], thresholds[c] = [x], [0.0], 0.0
        else:
            d_min = min(math.sqrt(float(np.sum((x - y) ** 2))) for y in growing[c])
            dists.append(d_min)
            if d_min > thresholds[c]:
                growing[c].append(x)
                if len(growing[c]) > max_growing:
                    growing[c].pop(0)
                gdists[c].append(d_min)
                thresholds[c] = max(thresholds[c], float(np.mean(gdists[c]) - np.std(gdists[c])))
        if q % check_every == 0 and len(dists) >= min_distances:
            window = np.asarray(dists[-max_distances:])
            kept = window[np.abs(window - window.mean()) <= 3 * window.std()]
            w = float(stats.shapiro(kept).statistic)
            if w < delta and not flagged:
                flagged, flagged_at = True, q
        after.append((w, flagged, flagged_at))
    sizes = {c: len(v) for c, v in growing.items()}
    return np.asarray(dists), after, sizes, thresholds


@pytest.mark.parametrize("cap", [{}, {"max_growing": 6, "max_distances": 50}])
def test_growing_sets_match_a_literal_per_query_algorithm_1(cap):
    rng = np.random.default_rng(3)
    n, dim = 400, 8
    stream = rng.uniform(0, 1, size=(n, dim))
    for i in range(1, n):  # a third of the queries are small perturbations of an earlier one
        if rng.random() < 0.35:
            stream[i] = stream[rng.integers(0, i)] + rng.normal(0, 0.05, dim)
    stream = stream.astype(np.float32)
    labels = rng.integers(0, 3, size=n)
    params = {"delta": 0.95, "min_distances": 40, "max_distances": 5000, "max_growing": 2000, "check_every": 7}
    params |= cap
    ref_d, ref_after, ref_sizes, ref_thr = _reference(list(stream.astype(np.float64)), labels.tolist(), **params)

    monitor = ExtractionMonitor(**params)
    i, statuses = 0, []
    while i < n:  # requests of 1-17 queries, mixing classes: the batched path must equal the per-query one
        b = int(rng.integers(1, 18))
        xb = torch.from_numpy(stream[i : i + b]).reshape(-1, 2, 4)
        st = monitor.observe("r", xb, torch.from_numpy(labels[i : i + b]))
        i += b
        statuses.append(st)
        w, flagged, flagged_at = ref_after[st["queries"] - 1]
        assert st["flagged"] == flagged and st["flagged_at"] == flagged_at
        assert (st["w"] is None) == (w is None) and (w is None or abs(st["w"] - w) < 1e-5)

    state = monitor._clients["r"]
    assert state.n_distances == len(ref_d) == n - 3
    np.testing.assert_allclose(state.window(), ref_d[-params["max_distances"] :], rtol=0, atol=1e-5)
    for c, gs in state.sets.items():
        assert gs.size == ref_sizes[c]
        assert abs(gs.threshold - ref_thr[c]) < 1e-5
    # both branches of Algorithm 1 ran: some queries were kept out of their growing set, thresholds rose
    assert sum(gs.n for gs in state.sets.values()) < n and all(t > 0 for t in ref_thr.values())
    print("reference check:", {k: v for k, v in statuses[-1].items() if k != "client"})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"delta": 0.0},
        {"delta": 1.0},
        {"delta": 1.5},
        {"delta": True},
        {"delta": "0.9"},
        {"min_distances": 2},
        {"min_distances": 10, "max_distances": 5},
        {"max_growing": 0},
        {"budget": -1},
        {"check_every": 0},
        {"check_every": 2.5},
    ],
)
def test_bad_arguments_raise_usage_error(kwargs):
    with pytest.raises(UsageError):
        ExtractionMonitor(**kwargs)


def test_bad_inputs_raise_usage_error():
    monitor = ExtractionMonitor()
    x, y = torch.rand(4, 1, 3, 3), torch.zeros(4, dtype=torch.long)
    bad = [
        ("c", x, y[:3]),  # one label per input
        ("c", x, y[:, None]),
        ("c", x, y.float()),
        ("c", x[0, 0, 0], y[:3]),  # no batch dimension
        ("c", x.masked_fill(torch.eye(3, dtype=torch.bool), float("nan")), y),
        ("c", x.masked_fill(torch.eye(3, dtype=torch.bool), float("inf")), y),
        ("c", x.numpy(), y),
        ("", x, y),
    ]
    for client, xb, yb in bad:
        with pytest.raises(UsageError):
            monitor.observe(client, xb, yb)
    assert monitor.observe("c", x, y)["queries"] == 4
    with pytest.raises(UsageError, match="values"):  # the input size may not change for a client
        monitor.observe("c", torch.rand(2, 1, 4, 4), y[:2])
    assert monitor.status("c")["queries"] == 4
