import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.threat import ThreatModel, perturbation_norm, project, project_l1_ball


def _l1_reference(v: np.ndarray, eps: float) -> np.ndarray:
    """Slow reference: bisection on the soft-threshold theta so that sum(max(|v|-theta,0)) = eps."""
    if np.abs(v).sum() <= eps:
        return v
    lo, hi = 0.0, float(np.abs(v).max())
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.clip(np.abs(v) - mid, 0, None).sum() > eps:
            lo = mid
        else:
            hi = mid
    return np.sign(v) * np.clip(np.abs(v) - hi, 0, None)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 40), st.floats(0.01, 5.0), st.integers(0, 2**31 - 1))
def test_l1_projection_matches_bisection_reference(d, eps, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(3, d, generator=g, dtype=torch.float64) * 2
    out = project_l1_ball(v, eps)
    for row, ref in zip(out.numpy(), v.numpy()):
        np.testing.assert_allclose(row, _l1_reference(ref, eps), atol=1e-7)


@settings(max_examples=2000, deadline=None)
@given(
    norm=st.sampled_from(["linf", "l2", "l1"]),
    eps=st.floats(1e-4, 10.0),
    lo=st.floats(-3, 0.5),
    width=st.floats(0.1, 4.0),
    scale=st.floats(0.0, 20.0),
    d=st.integers(1, 800),
    seed=st.integers(0, 2**31 - 1),
)
def test_projection_lands_in_ball_and_box(norm, eps, lo, width, scale, d, seed):
    g = torch.Generator().manual_seed(seed)
    hi = lo + width
    x = lo + torch.rand(4, d, generator=g) * width
    x_adv = x + torch.randn(4, d, generator=g) * scale
    out = project(x, x_adv, norm, eps, (lo, hi))
    assert bool((out >= lo).all()) and bool((out <= hi).all())
    assert float(perturbation_norm(out - x, norm).max()) <= eps + 1e-6


def test_projection_is_identity_inside():
    x = torch.full((2, 10), 0.5)
    x_adv = x + 0.01
    assert torch.equal(project(x, x_adv, "linf", 0.1, (0.0, 1.0)), x_adv)


@pytest.mark.parametrize("bad", [dict(norm="l3"), dict(eps=-1.0), dict(eps=float("nan")), dict(bounds=(1.0, 0.0))])
def test_threat_model_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        ThreatModel(**bad)


def test_threat_model_is_frozen_and_canonical():
    t = ThreatModel("Linf", 0.3)
    assert t.norm == "linf"
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.eps = 0.5  # type: ignore[misc]
