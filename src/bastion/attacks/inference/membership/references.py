"""Reference (shadow) models: the target's recipe trained on random halves of a population, with in/out bookkeeping.

Membership inference by likelihood ratio (LiRA, Carlini et al. 2022; RMIA, Zarifzadeh et al. 2024) and shadow
models (Shokri et al. 2017) compare the target's behaviour on a record with that of models trained *with* and
*without* it. :func:`train_references` trains ``k`` models with a :class:`Recipe`, model ``j`` on a random half of
the population (``keep[j, i]``: record ``i`` was in model ``j``'s training set), and keeps what every attack here
needs of them: their scores on every population record (``logits``, (k, N, n_classes)).

The halves come from the seed alone (model ``j``'s half from a generator seeded with ``hash(seed, j)``), so the
same seed gives the same bookkeeping. Each finished model is written to the cache at once
(``$BASTION_HOME/references/<key>/``: its scores and keep mask as ``.npz`` and, for a registered architecture,
its weights as ``.safetensors``), so a second run reuses them and a run stopped half way loses no finished model.
The key hashes the population, the recipe and the seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ....data.dataset import Dataset
from ....errors import UsageError
from ....models.base import Classifier
from ....models.torch import TorchClassifier

__all__ = ["Recipe", "ReferenceModels", "half_mask", "scores_of", "train_references"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Recipe:
    """How the target was trained, so reference models can be trained the same way.

    Either ``arch`` (a registered architecture, trained by the one trainer with ``config``, default the zoo's
    recipe for it) or ``function`` (``"module:function"``: called as ``function(dataset, seed)``, it returns a
    trained ``nn.Module`` or :class:`~bastion.models.Classifier`).
    """

    arch: str | None = None
    config: Any = None  # a bastion.models.training.TrainConfig; None: TRAIN_CONFIGS[arch]
    function: str | None = None

    def __post_init__(self) -> None:
        if (self.arch is None) == (self.function is None):
            raise UsageError("a training recipe needs exactly one of arch (a registered architecture) or function")
        if self.arch is not None:
            from ....models.architectures import ARCHITECTURES

            ARCHITECTURES.get(self.arch)

    def resolved_config(self) -> Any:
        from ....models.training import TRAIN_CONFIGS, TrainConfig

        return self.config if self.config is not None else TRAIN_CONFIGS.get(str(self.arch), TrainConfig())

    def key(self) -> str:
        """What identifies the recipe in a cache key."""
        if self.arch is not None:
            return json.dumps({"arch": self.arch, "config": dataclasses.asdict(self.resolved_config())}, sort_keys=True)
        return json.dumps({"function": self.function})

    def train(self, data: Dataset, seed: int) -> Classifier:
        """A model trained on ``data``'s training split with this recipe and ``seed``, frozen, in eval mode."""
        if self.arch is not None:
            from ....models.training import frozen_classifier, train_architecture

            config = dataclasses.replace(self.resolved_config(), seed=int(seed))
            module, _ = train_architecture(self.arch, data, config)
            return frozen_classifier(module, self.arch)
        from ....models.loading import resolve_function

        fn = resolve_function(str(self.function), "training function")
        try:
            obj = fn(data, int(seed))
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError(f"training function {self.function!r} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(obj, nn.Module):
            obj.eval()
            return TorchClassifier(obj, bounds=data.bounds, n_classes=data.n_classes, input_shape=data.input_shape)
        if isinstance(obj, Classifier):
            return obj
        raise UsageError(
            f"training function {self.function!r} returned {type(obj).__name__}: it must return a trained "
            "torch.nn.Module or a bastion Classifier"
        )


@torch.no_grad()
def scores_of(model: Classifier, x: Tensor, batch_size: int = 1000) -> Tensor:
    """The model's scores (N, n_classes) on ``x`` in eval mode, batched, float32 on the CPU."""
    with model.attack_mode():
        out = [model.logits(x[i : i + batch_size]).float().cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else x.new_zeros(0, model.n_classes)


def half_mask(n: int, seed: int, j: int) -> Tensor:
    """(n,) bool with exactly ``n // 2`` True: reference model ``j``'s half of the population."""
    digest = hashlib.sha256(f"bastion-reference:{seed}:{j}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % (2**63))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[: n // 2]] = True
    return mask


@dataclass
class ReferenceModels:
    """``k`` reference models' scores on a population and which records each was trained on.

    Attributes:
        keep: (k, N) bool, ``keep[j, i]``: record ``i`` was in model ``j``'s training set.
        labels: (N,) the population's labels.
        logits: (k, N, n_classes) float32, model ``j``'s scores on record ``i``. output: what the scores are.
        seconds: training time of each model (0 for one read from the cache). cached: read from the cache.
        seed: what the halves were drawn from. recipe: how the models were trained. cache_dir: where they live.
    """

    keep: Tensor
    labels: Tensor
    logits: Tensor
    output: str
    seconds: list[float]
    cached: list[bool]
    seed: int
    recipe: Recipe | None = None
    cache_dir: Path | None = None
    models: list[Classifier] = field(default_factory=list, repr=False)

    @property
    def k(self) -> int:
        return int(self.keep.shape[0])

    @property
    def n(self) -> int:
        return int(self.keep.shape[1])


def _cache_dir(x: Tensor, y: Tensor, recipe: Recipe, seed: int, root: Path | None) -> Path:
    from ....models.zoo import bastion_home

    h = hashlib.sha256()
    h.update(x.detach().cpu().contiguous().float().numpy().tobytes())
    h.update(y.detach().cpu().contiguous().numpy().tobytes())
    h.update(recipe.key().encode())
    h.update(str(int(seed)).encode())
    return (root if root is not None else bastion_home() / "references") / h.hexdigest()[:24]


def _load_cached(path: Path, n: int) -> tuple[Tensor, Tensor, str] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            keep, logits = torch.from_numpy(f["keep"].astype(bool)), torch.from_numpy(f["logits"].astype(np.float32))
            output = str(f["output"])
    except (OSError, ValueError, KeyError):
        return None  # a missing or partial file: train that model again
    return (keep, logits, output) if keep.shape == (n,) and logits.shape[0] == n else None


def _save(path: Path, keep: Tensor, logits: Tensor, model: Classifier, arch: str | None) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, keep=keep.numpy(), logits=logits.numpy(), output=np.array(model.output))
    os.replace(tmp, path)  # atomic: a run stopped here leaves either the whole file or none
    if arch is not None and isinstance(model, TorchClassifier):
        from ....models.saving import save_model

        save_model(model, path.with_suffix(".safetensors"), arch=arch)


def train_references(
    population: Dataset,
    recipe: Recipe,
    k: int,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    keep_models: bool = False,
    progress: Progress | None = None,
    executor: Any = None,
) -> ReferenceModels:
    """Train (or read from the cache) ``k`` reference models, each on a random half of ``population.x_train``.

    Only the population's training split is used (records ``0..N-1``); its test split is ignored. Returns their
    scores on every population record and the keep mask. ``keep_models=True`` also keeps the trained models
    (in memory; models read from the cache are rebuilt from their weights when the recipe is an architecture).
    ``progress(done, k)`` after each model. ``executor`` (a :class:`bastion.scale.Executor`; default: this
    process) trains the models that are not cached, one task per model: model ``j``'s half and seed come from
    (seed, j) alone, so the models are the same wherever they train; each is cached as soon as it arrives.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UsageError(f"the number of reference models must be a whole number >= 1, got {k!r}")
    x, y = population.x_train, population.y_train
    n = int(x.shape[0])
    if n < 4:
        raise UsageError(f"a population of {n} records is too small to split in halves for reference models")
    folder = _cache_dir(x, y, recipe, seed, Path(cache_dir) if cache_dir is not None else None)
    keeps = [half_mask(n, seed, j) for j in range(k)]
    found: dict[int, tuple[Tensor, str, Classifier | None]] = {}
    for j in range(k):
        hit = _load_cached(folder / f"ref-{j}.npz", n) if use_cache else None
        if hit is not None and bool(torch.equal(hit[0], keeps[j])):  # else another population's file: train again
            found[j] = (hit[1], hit[2], _rebuild(folder / f"ref-{j}.npz", recipe) if keep_models else None)
    cached = [j in found for j in range(k)]
    if progress is not None and found:
        progress(len(found), k)
    missing = [j for j in range(k) if j not in found]
    sink = _CacheSink(folder, keeps, recipe.arch)
    trained = _trainer(executor).map(
        _train_one,
        missing,
        shared=(population, recipe, int(seed)),
        label="reference-models",
        store=sink,
        keys=[str(j) for j in missing],
        progress=None if progress is None else (lambda done, _total: progress(len(found) + done, k)),
    )
    for j, (z, output, model, _seconds) in zip(missing, trained):
        found[j] = (z, output, model)
    seconds = [0.0 if cached[j] else trained[missing.index(j)][3] for j in range(k)]
    outputs = {found[j][1] for j in range(k)}
    if len(outputs) != 1:
        raise UsageError("the reference models answer both logits and probabilities: the recipe must be consistent")
    models = [m for j in range(k) if (m := found[j][2]) is not None] if keep_models else []
    return ReferenceModels(
        keep=torch.stack(keeps),
        labels=y.clone(),
        logits=torch.stack([found[j][0] for j in range(k)]),
        output=outputs.pop(),
        seconds=seconds,
        cached=cached,
        seed=seed,
        recipe=recipe,
        cache_dir=folder,
        models=models,
    )


def _trainer(executor: Any) -> Any:
    if executor is not None:
        return executor
    from ....scale.executor import SerialExecutor

    return SerialExecutor()


TRAIN_THREADS = 1
"""Torch threads a reference model trains on, wherever it trains. Training is bitwise reproducible only at a fixed
thread count (a weight gradient's sum over the batch is split between threads), so every reference model trains on
one: the same models in this process and on any Ray worker. (mnist-cnn on a 2-core machine: 7.6 s at 1 thread,
4.6 s at 2; K models on K workers make it up.)"""


def _train_one(shared: tuple[Dataset, Recipe, int], j: int) -> tuple[Tensor, str, Classifier, float]:
    """Reference model ``j``: its half of the population, trained with seed (seed, j) on :data:`TRAIN_THREADS`
    threads; its scores on every record."""
    population, recipe, seed = shared
    x, y = population.x_train, population.y_train
    keep = half_mask(int(x.shape[0]), seed, j)
    start = time.perf_counter()
    half = Dataset(population.name, x[keep], y[keep], x[:0], y[:0], population.bounds, population.n_classes)
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        model = recipe.train(half, seed=_model_seed(seed, j))
    finally:
        torch.set_num_threads(threads)
    return scores_of(model, x), str(model.output), model, time.perf_counter() - start


class _CacheSink:
    """The executor's store for reference models: nothing to read back (the cache was read before), each model
    written to the reference cache as soon as it arrives."""

    def __init__(self, folder: Path, keeps: list[Tensor], arch: str | None) -> None:
        self.folder, self.keeps, self.arch = folder, keeps, arch

    def get(self, key: str) -> None:
        return None

    def put(self, key: str, value: tuple[Tensor, str, Classifier, float]) -> None:
        j = int(key)
        self.folder.mkdir(parents=True, exist_ok=True)
        _save(self.folder / f"ref-{j}.npz", self.keeps[j], value[0], value[2], self.arch)


def _model_seed(seed: int, j: int) -> int:
    digest = hashlib.sha256(f"bastion-reference-init:{seed}:{j}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _rebuild(path: Path, recipe: Recipe) -> Classifier | None:
    weights = path.with_suffix(".safetensors")
    if recipe.arch is None or not weights.exists():
        return None
    from ....models.loading import load_model

    return load_model(weights, arch=recipe.arch)
