"""A federated client's side, in plain torch: its share of the data, its local training on bastion's one
:class:`~bastion.training.Trainer`, the data attacks, and the global model's evaluation.

Data attacks run where the data is, in the malicious client:

- **label flipping** (Biggio et al. 2012; Fang et al. 2020's setting): the client trains on ``y -> C - 1 - y``;
- **model replacement** (Bagdasaryan et al. 2020, "How To Backdoor Federated Learning"): the client adds
  to its records stamped copies of a share ``fraction`` of them, relabelled ``target`` (the paper's poisoned
  batches: backdoored inputs mixed with the clean ones, so the main task is kept), stamped with a BadNets
  trigger (Gu et al. 2017, the patch of :mod:`bastion.attacks.poisoning.triggers`); trains with its own
  recipe, as in the paper a smaller learning rate and more epochs than the benign clients (default lr / 5 and
  5 x the epochs); and submits ``G + boost * (L - G)``: with ``boost = clients / malicious`` the malicious
  clients together replace the FedAvg average with their backdoored model. The replacement is made once the
  global model has nearly converged (when the benign updates nearly cancel): from round ``start`` (default:
  the second half of the run, ``rounds // 2 + 1``) on; before it the malicious clients train honestly.
  Measured on mnist-cnn from the round-5 FedAvg model (20 IID clients, 88.2 %): one malicious client's model
  is 90.0 % accurate with 99.0 % ASR, and FedAvg replaced by it 90.1 % / 93.3 % after one round. With the
  benign recipe (lr 0.05) and half the records relabelled in place, the same client diverges (accuracy 10 %,
  every input sent to the target: sabotage, not a backdoor). The trigger sits top-left by default:
  mnist-cnn's second max-pool drops the last row and column of its 11x11 map, so input rows and columns 26-27
  never reach the output (zero gradient) and a bottom-right patch (rows 24-26) is seen only at the edge of
  the receptive field — the same stealthy recipe reaches 17.9 % ASR there.

Update attacks (sign flipping, Gaussian, ALIE, IPM, min-max, min-sum) act on the submitted updates and
live in :mod:`bastion.federated.attacks`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..attacks.poisoning.triggers import Trigger
from ..data import Dataset, load_dataset
from ..errors import UsageError
from ..models.architectures import build_architecture
from ..training import Trainer, accuracy
from .partition import partition
from .spec import FLSpec, LocalRecipe

__all__ = [
    "BACKDOOR_DEFAULTS",
    "backdoor_asr",
    "backdoor_trigger",
    "check_attack_params",
    "client_data",
    "client_update",
    "evaluate_global",
    "initial_module",
    "train_local",
]

BACKDOOR_DEFAULTS: dict[str, Any] = {
    "target": 0,
    "fraction": 0.5,
    "boost": None,
    "size": 3,
    "location": "top-left",
    "start": None,
    "lr": None,
    "epochs": None,
}


@functools.lru_cache(maxsize=4)
def _dataset(name: str) -> Dataset:
    return load_dataset(name)


@functools.lru_cache(maxsize=16)
def _parts(name: str, clients: int, alpha: float | None, seed: int) -> tuple[np.ndarray, ...]:
    return tuple(partition(_dataset(name).y_train.numpy(), clients, alpha, seed))


def client_data(spec: FLSpec, pid: int) -> tuple[Tensor, Tensor]:
    """Client ``pid``'s records (x, y): its part of the training split (the same in every process)."""
    if not 0 <= pid < spec.clients:
        raise UsageError(f"partition-id {pid} is outside the federation's {spec.clients} clients")
    d = _dataset(spec.data)
    idx = torch.from_numpy(_parts(spec.data, spec.clients, spec.alpha, spec.seed)[pid])
    return d.x_train[idx], d.y_train[idx]


def initial_module(spec: FLSpec) -> nn.Module:
    """The global model of round 0: the architecture, initialised from the run's seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        module, arch = build_architecture(spec.arch)
    d = _dataset(spec.data)
    if tuple(d.input_shape) != arch.input_shape or d.n_classes > arch.n_classes:
        raise UsageError(
            f"architecture {spec.arch!r} takes {arch.input_shape} inputs and {arch.n_classes} classes; "
            f"dataset {spec.data!r} has {d.input_shape} and {d.n_classes}"
        )
    return module


def train_local(module: nn.Module, x: Tensor, y: Tensor, recipe: LocalRecipe, seed: int) -> nn.Module:
    """``recipe.epochs`` of SGD with momentum on (x, y), in place, shuffled by a generator seeded with ``seed``."""
    lr, momentum = recipe.lr, recipe.momentum
    Trainer(
        module,
        epochs=recipe.epochs,
        batch_size=recipe.batch_size,
        optimizer=lambda ps: torch.optim.SGD(ps, lr=lr, momentum=momentum),
        seed=seed,
    ).fit(x, y)
    return module


def backdoor_trigger(spec: FLSpec) -> Trigger:
    """The BadNets patch of a backdoor run (``size`` x ``size`` pixels at ``location``, default top-left)."""
    d = _dataset(spec.data)
    size = int(spec.attack_params.get("size", BACKDOOR_DEFAULTS["size"]))
    location = spec.attack_params.get("location", BACKDOOR_DEFAULTS["location"])
    return Trigger.patch(d.input_shape, size=size, location=location, bounds=d.bounds)


def _backdoor_params(spec: FLSpec) -> dict[str, Any]:
    params = {**BACKDOOR_DEFAULTS, **spec.attack_params}
    unknown = sorted(set(params) - set(BACKDOOR_DEFAULTS))
    if unknown:
        raise UsageError(f"unknown backdoor options {unknown}: choose from {sorted(BACKDOOR_DEFAULTS)}")
    if params["boost"] is None:
        params["boost"] = spec.clients / max(spec.n_malicious, 1)
    if params["start"] is None:
        params["start"] = spec.rounds // 2 + 1
    if params["lr"] is None:
        params["lr"] = spec.recipe.lr / 5
    if params["epochs"] is None:
        params["epochs"] = spec.recipe.epochs * 5
    return params


def _attacker_recipe(spec: FLSpec) -> LocalRecipe:
    """The model-replacement client's own training: the benign recipe with the attack's ``lr`` and ``epochs``."""
    p = _backdoor_params(spec)
    return dataclasses.replace(spec.recipe, lr=float(p["lr"]), epochs=int(p["epochs"]))


def check_attack_params(spec: FLSpec) -> None:
    """Refuse options a data attack does not take (before a simulation starts); update attacks check their own."""
    if spec.attack == "backdoor":
        p = _backdoor_params(spec)
        if not isinstance(p["start"], int) or isinstance(p["start"], bool) or not 1 <= p["start"] <= spec.rounds:
            raise UsageError(f"backdoor: start must be a round in 1..{spec.rounds}, got {p['start']!r}")
        if not 0 < float(p["fraction"]) <= 1 or float(p["boost"]) <= 0 or float(p["lr"]) <= 0:
            raise UsageError(
                f"backdoor: fraction must be in (0, 1], boost and lr > 0, got {p['fraction']}, {p['boost']} "
                f"and {p['lr']}"
            )
        if not isinstance(p["epochs"], int) or isinstance(p["epochs"], bool) or p["epochs"] < 1:
            raise UsageError(f"backdoor: epochs must be a whole number >= 1, got {p['epochs']!r}")
        backdoor_trigger(spec)
    elif spec.attack == "label-flip" and spec.attack_params:
        raise UsageError(f"label-flip takes no options, got {sorted(spec.attack_params)}")


def _poisoned(spec: FLSpec, x: Tensor, y: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    if spec.attack == "label-flip":
        return x, (_dataset(spec.data).n_classes - 1 - y)
    p = _backdoor_params(spec)
    n = max(1, round(float(p["fraction"]) * x.shape[0]))
    pick = torch.randperm(x.shape[0], generator=gen)[:n]
    stamped = backdoor_trigger(spec).apply(x[pick])
    return torch.cat([x, stamped]), torch.cat([y, torch.full((n,), int(p["target"]), dtype=y.dtype)])


def client_update(
    spec: FLSpec, pid: int, global_state: Mapping[str, Tensor], server_round: int
) -> tuple[dict[str, Tensor], int, bool]:
    """One client's round: load the global weights, train (poisoned if it runs a data attack), return
    (weights to submit, number of records, malicious?)."""
    torch.set_num_threads(1)
    x, y = client_data(spec, pid)
    n_records = int(x.shape[0])
    malicious = pid < spec.n_malicious
    seed = (spec.seed * 1_000_003 + server_round) * 10_007 + pid
    if spec.attack == "backdoor" and server_round < int(_backdoor_params(spec)["start"]):
        malicious_now = False  # the replacement waits for a nearly converged global model
    else:
        malicious_now = malicious and spec.attack in ("label-flip", "backdoor")
    recipe = spec.recipe
    if malicious_now:
        x, y = _poisoned(spec, x, y, torch.Generator().manual_seed(seed))
        recipe = _attacker_recipe(spec) if spec.attack == "backdoor" else recipe
    module = initial_module(spec)
    module.load_state_dict(global_state)
    train_local(module, x, y, recipe, seed)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    if malicious_now and spec.attack == "backdoor":
        boost = float(_backdoor_params(spec)["boost"])
        state = {k: global_state[k] + boost * (v - global_state[k]) for k, v in state.items()}
    return state, n_records, malicious


def backdoor_asr(spec: FLSpec, module: nn.Module) -> float:
    """Share of the test inputs not of the target class that the trigger sends to the target class."""
    d = _dataset(spec.data)
    target = int(_backdoor_params(spec)["target"])
    keep = d.y_test != target
    x = backdoor_trigger(spec).apply(d.x_test[keep])
    return accuracy(module, x, torch.full((x.shape[0],), target, dtype=torch.int64))


def evaluate_global(spec: FLSpec, module: nn.Module) -> dict[str, float]:
    """The global model's test accuracy (and backdoor attack success rate in a backdoor run)."""
    d = _dataset(spec.data)
    out = {"accuracy": accuracy(module, d.x_test, d.y_test)}
    if spec.attack == "backdoor":
        out["backdoor_asr"] = backdoor_asr(spec, module)
    return out
