"""Activation clustering (Chen, Carvalho, Baracaldo, Ludwig, Edwards, Lee, Molloy & Srivastava 2018, "Detecting
Backdoor Attacks on Deep Neural Networks by Activation Clustering", AAAI SafeAI workshop 2019).

Threat model: a dirty-label backdoor. The model labels a poisoned record with the target class for a different
reason (the trigger) than a clean record of that class (its content), so in the last hidden layer the target
class's activations split into two groups; a clean class has no such split. Per class, as in the paper:

1. the activations of the last hidden layer (N_c, d) are reduced to 10 dimensions by ICA;
2. 2-means splits them;
3. the smaller cluster is poisoned when its **relative size** is below ``size_threshold`` and the split is real —
   its **silhouette score** above ``silhouette_threshold`` (the paper's two analyses; the thresholds are ART's and
   TrojanZoo's, 0.35 and 0.10; the 0.35 leaves room for the paper's largest setting, a third of the class
   poisoned);
4. optionally (``reclassify=``), the paper's exclusionary reclassification (Sec. 4.3): for each flagged class a
   model is trained without the class's suspicious cluster and asked to classify it. A natural sub-population of
   the class comes back as its label; a poison (another class's inputs carrying a trigger) goes to its source
   class. With ``l`` the cluster's records classified as their label and ``p`` the count of the most frequent other
   class, the cluster is kept as legitimate when ``l / max(p, 1) > reclassify_threshold`` (1: more of it comes
   back to its label than to any one other class). It costs one training per flagged class; it is what keeps
   the natural second mode of a clean class (a crossed 7, a closed 4) in the training set.

ICA here is computed through its closed-form equivalent for this use: FastICA's sources are an orthogonal rotation
of the whitened principal components (it whitens, then rotates; Hyvärinen & Oja 2000), and 2-means and the
silhouette depend only on Euclidean distances, which a rotation keeps — so clustering the top ``n_components``
principal components scaled to unit variance gives the clusters sklearn's ``FastICA`` + ``KMeans`` give (tested),
without FastICA's fixed-point iterations. ``reduce="pca"`` clusters the unwhitened components (ART's default).
2-means is Lloyd's algorithm with k-means++ seeding, ``n_init`` restarts run as one batch and the lowest-inertia
split kept. On the BadNets fixture's target class one k-means++ restart reaches the split that separates the poison
in 20 of 300 tries (6.7%; the other local minima cut through it): 10 restarts (scikit-learn's default; ART runs one)
miss it about half the time, 100 about once in a thousand. 100 batched restarts take about 0.2 s for a class of 600
on one (shared) CPU core.

Score (continuous, for ROC curves): the record's margin towards the smaller cluster, (|z - c_big| - |z - c_small|)
/ |c_big - c_small| in [-1, 1], positive exactly in the smaller cluster; in a class that is not flagged it is
lowered by 2, so every record of a flagged class ranks above every record of a clean one, and ``remove_`` is
``scores_ > 0``.

Shapes: activations (N, d) float64; labels (N,); reduced (N_c, k); scores (N,); removals (N,) bool.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Literal, Self

import torch
from torch import Tensor

from ...errors import UsageError
from ...models.base import Classifier
from ...models.features import Pool
from ...seeding import make_generator
from .base import Sanitizer, check_seed, finite_number, per_class, register_sanitizer

__all__ = ["ActivationClustering", "recipe_trainer", "reduce_components", "silhouette", "two_means"]

Reduce = Literal["ica", "pca"]


def reduce_components(features: Tensor, n_components: int, *, whiten: bool) -> Tensor:
    """The top ``n_components`` principal-component scores (n, k) of ``features`` (n, d), float64; with ``whiten``
    each scaled to unit variance (what FastICA's sources are, up to a rotation). k drops below ``n_components``
    when the centred features have lower rank."""
    f = features.to(torch.float64)
    centred = f - f.mean(dim=0)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    rank = int((s > s[:1].clamp_min(1e-300) * 1e-9).sum()) if s.numel() and float(s[0]) > 0 else 0
    k = min(n_components, rank)
    return u[:, :k] * math.sqrt(f.shape[0]) if whiten else u[:, :k] * s[:k]


def two_means(z: Tensor, *, n_init: int, generator: torch.Generator, max_iter: int = 300) -> tuple[Tensor, Tensor]:
    """2-means of the rows of ``z`` (n, k), n >= 2: the labels (n,) int64 and centres (2, k) of the lowest-inertia
    split over ``n_init`` k-means++-seeded Lloyd runs, computed together (each stops when its labels stop changing).
    """
    n = z.shape[0]
    sq = z.square().sum(1)  # (n,)

    def sq_dist(c: Tensor) -> Tensor:  # centres (I, k) -> squared distances (I, n)
        return (sq[None] - 2 * c @ z.T + c.square().sum(-1, keepdim=True)).clamp_min(0)

    c0 = z[torch.randint(n, (n_init,), generator=generator)]  # (I, k): the first seed, uniform
    d0 = sq_dist(c0)
    weights = torch.where(d0.sum(1, keepdim=True) > 0, d0, torch.ones_like(d0))
    c1 = z[torch.multinomial(weights, 1, generator=generator).squeeze(1)]  # the second, with probability ~ D^2
    second = sq_dist(c1) < d0  # (I, n): in cluster 1
    total = z.sum(0)
    active = torch.arange(n_init)  # the restarts whose labels still change
    for _ in range(max_iter):
        w1 = second[active].to(z.dtype)
        n1 = w1.sum(1, keepdim=True)
        s1 = w1 @ z
        a1 = torch.where(n1 > 0, s1 / n1.clamp_min(1), c1[active])
        a0 = torch.where(n - n1 > 0, (total - s1) / (n - n1).clamp_min(1), c0[active])
        c0[active], c1[active] = a0, a1
        # |z - c1|^2 < |z - c0|^2  <=>  2 z.(c0 - c1) < |c0|^2 - |c1|^2: one product per step
        new = 2 * (a0 - a1) @ z.T < (a0.square().sum(1) - a1.square().sum(1))[:, None]
        changed = (new != second[active]).any(1)
        second[active] = new
        active = active[changed]
        if active.numel() == 0:
            break
    best = int(torch.minimum(sq_dist(c0), sq_dist(c1)).sum(1).argmin())  # the lowest inertia
    return second[best].long(), torch.stack([c0[best], c1[best]])


def silhouette(z: Tensor, labels: Tensor) -> float:
    """Mean silhouette coefficient of a 2-cluster split (as ``sklearn.metrics.silhouette_score``; a record alone in
    its cluster scores 0); NaN when one cluster is empty."""
    d = torch.cdist(z, z)
    own = labels[:, None] == labels[None, :]
    sizes = torch.bincount(labels, minlength=2)[labels].to(z.dtype)
    if int(sizes.min()) == z.shape[0]:
        return math.nan
    a = (d * own).sum(1) / (sizes - 1).clamp_min(1)
    b = (d * ~own).sum(1) / (z.shape[0] - sizes)
    s = torch.where(sizes > 1, (b - a) / torch.maximum(a, b).clamp_min(1e-300), torch.zeros_like(a))
    return float(s.mean())


@register_sanitizer("clustering")
class ActivationClustering(Sanitizer):
    """Activation clustering: per class, 2-means of the reduced last-hidden-layer activations; the smaller cluster of
    a class whose split is small and well separated is removed.

    Args:
        n_components: dimensions the activations are reduced to (the paper's 10).
        reduce: ``"ica"`` (the paper's; computed as whitened PCA, see the module docstring) or ``"pca"``.
        size_threshold: the smaller cluster is suspicious below this share of its class, in (0, 0.5].
        silhouette_threshold: ...and only when the split's silhouette score is above this, in [-1, 1).
        n_init: 2-means restarts (k-means++ seeding), >= 1.
        seed: seeds the generator when ``generator`` is not given (``None``: a fresh random seed).
        generator: a ``torch.Generator`` to draw the restarts from.
        reclassify: ``train(x, y) -> Classifier``, a function that trains the model's recipe on the records given;
            when set, every flagged class goes through exclusionary reclassification (module docstring, step 4).
        reclassify_threshold: a flagged cluster is legitimate when ``l / max(p, 1)`` is above this (default 1).
        layer, pool, batch_size: see :class:`~.base.Sanitizer` (default layer: the penultimate, the paper's last
            hidden layer).

    Fitted: ``layer_``, ``scores_`` (N,), ``remove_`` (N,), ``cluster_sizes_`` ((C,) the smaller cluster's share of
    its class), ``silhouettes_`` (C,), ``flagged_`` ((C,) bool: the class's smaller cluster is removed),
    ``reclassified_`` (with ``reclassify``: per class checked, ``own``, ``other``, ``source``, ``ratio``,
    ``legitimate``), ``seconds_``; NaN / False for a class with fewer than 3 records.
    """

    def __init__(
        self,
        *,
        n_components: int = 10,
        reduce: Reduce = "ica",
        size_threshold: float = 0.35,
        silhouette_threshold: float = 0.10,
        n_init: int = 100,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        reclassify: Callable[[Tensor, Tensor], Classifier] | None = None,
        reclassify_threshold: float = 1.0,
        layer: str | None = None,
        pool: Pool = "flatten",
        batch_size: int = 500,
    ) -> None:
        super().__init__(layer=layer, pool=pool, batch_size=batch_size)
        if reclassify is not None and not callable(reclassify):
            raise UsageError(
                f"reclassify must be a function train(x, y) -> Classifier, got {type(reclassify).__name__}"
            )
        if not finite_number(reclassify_threshold) or reclassify_threshold <= 0:
            raise UsageError(f"reclassify_threshold must be a number > 0 (e.g. 1), got {reclassify_threshold!r}")
        for arg, value in (("n_components", n_components), ("n_init", n_init)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{arg} must be an integer >= 1, got {value!r}")
        if reduce not in ("ica", "pca"):
            raise UsageError(f"reduce must be 'ica' (the paper's) or 'pca', got {reduce!r}")
        if not finite_number(size_threshold) or not 0 < size_threshold <= 0.5:
            raise UsageError(f"size_threshold is a share of the class in (0, 0.5] (e.g. 0.35), got {size_threshold!r}")
        if not finite_number(silhouette_threshold) or not -1 <= silhouette_threshold < 1:
            raise UsageError(f"silhouette_threshold must lie in [-1, 1) (e.g. 0.10), got {silhouette_threshold!r}")
        check_seed(seed)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise UsageError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.n_components = n_components
        self.reduce: Reduce = reduce
        self.size_threshold = float(size_threshold)
        self.silhouette_threshold = float(silhouette_threshold)
        self.n_init = n_init
        self.seed = seed
        self.generator = generator
        self.reclassify = reclassify
        self.reclassify_threshold = float(reclassify_threshold)

    def fit(self, model: Classifier, x: Tensor, y: Tensor) -> Self:
        """As :meth:`Sanitizer.fit`, then exclusionary reclassification of the flagged classes when ``reclassify``
        is set (``seconds_`` includes the trainings)."""
        super().fit(model, x, y)
        if self.reclassify is not None:
            start = time.perf_counter()
            self._exclusionary_reclassification(x, y.detach().to("cpu", torch.long))
            self.seconds_ += time.perf_counter() - start
        return self

    def _exclusionary_reclassification(self, x: Tensor, y: Tensor) -> None:
        assert self.reclassify is not None
        self.reclassified_: dict[int, dict[str, Any]] = {}
        for c in torch.nonzero(self.flagged_).flatten().tolist():
            cluster = self.remove_ & (y == c)
            keep = torch.nonzero(~cluster).flatten()
            model = self.reclassify(x[keep.to(x.device)], y[keep].to(x.device))
            if not isinstance(model, Classifier):
                raise UsageError(f"reclassify must return a bastion Classifier, got {type(model).__name__}")
            rows = torch.nonzero(cluster).flatten()
            with torch.no_grad(), model.attack_mode():
                pred = torch.cat([model.predict(x[rows[i : i + self.batch_size].to(x.device)]).cpu()
                                  for i in range(0, rows.numel(), self.batch_size)])  # fmt: skip
            counts = torch.bincount(pred, minlength=self.flagged_.numel())
            own = int(counts[c])
            counts[c] = -1
            source = int(counts.argmax())
            other = int(counts[source])
            ratio = own / max(other, 1)
            legitimate = ratio > self.reclassify_threshold
            self.reclassified_[c] = {
                "own": own,
                "other": other,
                "source": source,
                "ratio": ratio,
                "legitimate": legitimate,
            }
            if legitimate:
                self.flagged_[c] = False
                idx = y == c
                self.scores_[idx] = self.scores_[idx] - 2.0
                self.remove_[idx] = False
        self.removed_per_class_ = [int(self.remove_[y == k].sum()) for k in range(self.flagged_.numel())]

    def _fit(self, features: Tensor, y: Tensor, n_classes: int) -> tuple[Tensor, Tensor]:
        g = make_generator(self.seed, self.generator)
        scores = torch.full((features.shape[0],), -2.0, dtype=torch.float64)
        sizes = torch.full((n_classes,), math.nan, dtype=torch.float64)
        sil = torch.full((n_classes,), math.nan, dtype=torch.float64)
        flagged = torch.zeros(n_classes, dtype=torch.bool)
        for c, idx in enumerate(per_class(y, n_classes)):
            z = (
                reduce_components(features[idx], self.n_components, whiten=self.reduce == "ica")
                if idx.numel()
                else None
            )
            if z is None or idx.numel() < 3 or z.shape[1] == 0:
                continue
            labels, centres = two_means(z, n_init=self.n_init, generator=g)
            counts = torch.bincount(labels, minlength=2)
            small = int(counts.argmin())
            sizes[c] = float(counts[small]) / idx.numel()
            sil[c] = silhouette(z, labels)
            flagged[c] = bool(sizes[c] < self.size_threshold and sil[c] > self.silhouette_threshold)
            d = torch.cdist(z, centres)
            margin = (d[:, 1 - small] - d[:, small]) / (centres[0] - centres[1]).norm().clamp_min(1e-300)
            scores[idx] = margin.clamp(-1.0, 1.0) - (0.0 if flagged[c] else 2.0)
        self.cluster_sizes_, self.silhouettes_, self.flagged_ = sizes, sil, flagged
        return scores, scores > 0

    def _details(self) -> dict[str, Any]:
        return {
            "cluster_sizes": self.cluster_sizes_.tolist(),
            "silhouettes": self.silhouettes_.tolist(),
            "flagged_classes": torch.nonzero(self.flagged_).flatten().tolist(),
            **(
                {"reclassified": {str(k): v for k, v in getattr(self, "reclassified_", {}).items()}}
                if self.reclassify
                else {}
            ),
        }


def recipe_trainer(arch: str, *, seed: int = 0) -> Callable[[Tensor, Tensor], Classifier]:
    """``train(x, y)`` for ``reclassify=``: the registered architecture ``arch`` trained on ``(x, y)`` with its zoo
    recipe (``bastion.models.training.TRAIN_CONFIGS``) and ``seed``, frozen."""
    from ...data.dataset import Dataset
    from ...models.architectures import build_architecture
    from ...models.training import train_recipe

    spec = build_architecture(arch)[1]

    def train(x: Tensor, y: Tensor) -> Classifier:
        data = Dataset(f"{arch}-reclassify", x, y, x, y, spec.bounds, spec.n_classes)  # test = train: a record only
        return train_recipe(data, arch, seed=seed)[0]

    train.__qualname__ = f"recipe_trainer({arch!r}, seed={seed})"
    return train
