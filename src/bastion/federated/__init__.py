"""Federated learning under attack, on Flower (the ``federated`` extra: ``flwr[simulation]``).

- :class:`FLSpec` (:mod:`.spec`): one run — architecture, data, clients, malicious share, attack, aggregator,
  rounds, IID or Dirichlet(alpha) split, seed, the clients' local recipe.
- :mod:`.partition`: IID and Dirichlet splits. :mod:`.local`: a client's training and the data attacks
  (label flipping, model replacement). :mod:`.attacks`: update attacks (sign flipping, Gaussian, ALIE, IPM,
  min-max, min-sum). :mod:`.aggregators`: FLTrust and norm clipping as pure functions.
- :mod:`.strategies`, :mod:`.app`, :mod:`.simulate` need Flower: the aggregators as Flower strategies (Flower's
  own where it has them), the Client/ServerApp, and the simulation and matrix runners.
"""

from __future__ import annotations

from .partition import dirichlet_partition, iid_partition, partition
from .spec import FL_RECIPES, FLSpec, LocalRecipe

__all__ = ["FL_RECIPES", "FLSpec", "LocalRecipe", "dirichlet_partition", "iid_partition", "partition"]
