"""bastion's Flower strategies on real Flower messages (no simulation): FLTrust and norm clipping give exactly the
direct numpy computation on the same updates, the adversary replaces only the malicious replies, with the attack
crafted from the benign ones, and Flower's Krum / median are Flower's, not rewritten."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# flwr is the optional `federated` extra (in `test`, so CI runs these); without it the module is skipped, not failed
flwr = pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg, FedMedian, Krum  # noqa: E402

from bastion.federated import FLSpec  # noqa: E402
from bastion.federated.aggregators import fltrust, norm_clip  # noqa: E402
from bastion.federated.attacks import ALIE  # noqa: E402
from bastion.federated.local import client_update, initial_module, train_local  # noqa: E402
from bastion.federated.strategies import AGGREGATORS, Adversary, build_strategy, flatten, unflatten  # noqa: E402

SPEC = FLSpec(arch="digits-mlp", data="digits", clients=5, malicious=0.2, rounds=1)


class _Grid:
    def get_node_ids(self) -> list[int]:
        return list(range(1, SPEC.clients + 1))


def _replies(spec: FLSpec, global_state: dict) -> list[Message]:
    out = []
    for pid in range(spec.clients):
        state, n, malicious = client_update(spec, pid, global_state, 1)
        content = RecordDict(
            {"arrays": ArrayRecord(state), "metrics": MetricRecord({"num-examples": n, "malicious": int(malicious)})}
        )
        out.append(Message(content=content, dst_node_id=pid + 1, message_type="train"))
    return out


@pytest.fixture(scope="module", autouse=True)
def _task_identity():
    """Flower stamps messages with the task's identity, which its runtimes set; set one as the simulation does."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture(scope="module")
def round_one(_task_identity) -> tuple[ArrayRecord, list[np.ndarray], list[float]]:
    module = initial_module(SPEC)
    g = ArrayRecord(module.state_dict())
    replies = _replies(SPEC, module.state_dict())
    updates = [flatten(m.content["arrays"]) - flatten(g) for m in replies]
    weights = [float(m.content["metrics"]["num-examples"]) for m in replies]
    return g, updates, weights


def _aggregate(strategy, g: ArrayRecord, spec: FLSpec = SPEC) -> np.ndarray:
    strategy.configure_train(1, g, ConfigRecord(), _Grid())
    arrays, _ = strategy.aggregate_train(1, _replies(spec, g.to_torch_state_dict()))
    return flatten(arrays) - flatten(g)


def test_fltrust_strategy_equals_the_numpy_computation(round_one) -> None:
    g, updates, _ = round_one
    spec = SPEC.replace(aggregator="fltrust")
    strategy = build_strategy(spec)
    server = initial_module(spec)
    server.load_state_dict(g.to_torch_state_dict())
    train_local(server, *strategy.root, spec.recipe, seed=spec.seed * 31 + 1)
    g0 = flatten(ArrayRecord(server.state_dict())) - flatten(g)
    expected, trust = fltrust(np.stack(updates), g0)
    np.testing.assert_allclose(_aggregate(strategy, g, spec), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(strategy.rounds_[0]["per_client"], trust, rtol=1e-6)


def test_norm_clip_strategy_equals_the_numpy_computation(round_one) -> None:
    g, updates, weights = round_one
    U = np.stack(updates)
    bound = float(np.median(np.linalg.norm(U, axis=1)))
    expected, _ = norm_clip(U, np.array(weights), bound=bound)
    got = _aggregate(build_strategy(SPEC.replace(aggregator="norm-clip")), g)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert np.linalg.norm(got) <= bound * (1 + 1e-5)


def test_the_adversary_replaces_only_malicious_replies_with_the_crafted_update(round_one) -> None:
    g, updates, _ = round_one
    spec = SPEC.replace(attack="alie", aggregator="fedavg")  # (FedMedian consumes the replies' arrays)
    strategy = build_strategy(spec)
    assert isinstance(strategy, Adversary) and type(strategy.inner) is FedAvg
    strategy.configure_train(1, g, ConfigRecord(), _Grid())
    replies = _replies(spec, g.to_torch_state_dict())
    benign = np.stack(updates[spec.n_malicious :])
    crafted = ALIE().craft(benign, spec.n_malicious, np.random.default_rng(0))  # ALIE draws nothing at random
    strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(flatten(replies[0].content["arrays"]) - flatten(g), crafted[0], rtol=1e-5, atol=1e-6)
    for m, u in zip(replies[1:], updates[1:], strict=True):  # the benign replies untouched
        np.testing.assert_array_equal(flatten(m.content["arrays"]) - flatten(g), u)


def test_flowers_own_rules_are_used_and_told_the_malicious_count() -> None:
    krum = AGGREGATORS.get("krum")(SPEC.replace(malicious=0.4))
    assert type(krum) is Krum and krum.num_malicious_nodes == 2
    assert type(build_strategy(SPEC.replace(aggregator="median"))) is FedMedian


def test_unflatten_inverts_flatten_with_keys_shapes_and_dtypes() -> None:
    rec = ArrayRecord({"w": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64)})
    back = unflatten(flatten(rec), rec)
    assert list(back.keys()) == ["w", "b"]
    for a, b in zip(rec.to_numpy_ndarrays(), back.to_numpy_ndarrays(), strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-7)
