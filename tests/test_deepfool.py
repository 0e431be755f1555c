"""DeepFool on real models: the MNIST zoo CNN, and a linear model where the answer is closed-form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks.evasion.deepfool import DeepFool
from bastion.attacks.evasion.pgd import PGD
from bastion.data import load_dataset
from bastion.errors import UsageError
from bastion.models.torch import TorchClassifier
from bastion.models.zoo import load_zoo

N = 60


@pytest.fixture(scope="module")
def mnist():
    model = load_zoo("mnist-cnn")
    d = load_dataset("mnist5k")
    return model, d.x_test[:N], d.y_test[:N]


@pytest.fixture(scope="module")
def l2_result(mnist):
    model, x, y = mnist
    return DeepFool(norm="l2")(model, x, y)


def test_l2_succeeds_with_plausible_norms(mnist, l2_result):
    _model, _x, _y = mnist
    r = l2_result
    assert r.success_rate >= 0.95
    assert 0.8 <= r.median_perturbation <= 2.5
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    assert r.gradients > 0 and r.queries > 0


def test_linf_succeeds_with_plausible_norms(mnist):
    model, x, y = mnist
    r = DeepFool(norm="linf")(model, x, y)
    assert r.success_rate >= 0.95
    assert 0.05 <= r.median_perturbation <= 0.3
    assert r.x_adv.min() >= 0 and r.x_adv.max() <= 1
    # a Linf attack's result has Linf norm far below its L2 norm on 784 pixels
    l2 = (r.x_adv - x).flatten(1).norm(dim=1)
    ok = r.success & r.clean_correct
    assert bool((l2[ok] >= r.norms[ok]).all())


def test_l2_is_smaller_than_pgd_minimal_eps(mnist, l2_result):
    """DeepFool's median L2 is below the smallest L2 budget at which PGD fools as many images."""
    model, x, y = mnist
    pgd_eps = None
    for eps in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0):
        if PGD(eps=eps, norm="l2", steps=20, seed=0)(model, x, y).success_rate >= 0.5:
            pgd_eps = eps
            break
    assert pgd_eps is not None
    assert l2_result.median_perturbation <= pgd_eps * 1.05


def _reference_deepfool(model, x, y, *, steps=50, overshoot=0.02, candidates=10):
    """Slow per-sample port of the authors' deepfool.py (one backward per class, numpy-free)."""
    out = []
    for xi, yi in zip(x, y):
        xi = xi[None]
        with torch.no_grad():
            order = model.logits(xi)[0].argsort(descending=True)
        classes = [int(yi), *[int(c) for c in order if int(c) != int(yi)][: candidates - 1]]
        r_tot = torch.zeros_like(xi)
        cur = xi.clone()
        for _ in range(steps):
            cur = cur.clone().requires_grad_(True)
            z = model.logits(cur)[0]
            if int(z.argmax()) != int(yi):
                break
            g0 = torch.autograd.grad(z[classes[0]], cur, retain_graph=True)[0]
            pert, w = float("inf"), None
            for c in classes[1:]:
                gk = torch.autograd.grad(z[c], cur, retain_graph=True)[0]
                wk = gk - g0
                pk = float((z[c] - z[classes[0]]).detach().abs()) / (float(wk.norm()) + 1e-8) + 1e-4
                if pk < pert:
                    pert, w = pk, wk
            r_tot = r_tot + pert * w / (w.norm() + 1e-8)
            cur = (xi + (1 + overshoot) * r_tot).clamp(0, 1).detach()
        out.append(cur.detach())
    return torch.cat(out)


def test_batched_equals_per_sample_reference(mnist, l2_result):
    model, x, y = mnist
    ref = _reference_deepfool(model, x[:15], y[:15])
    got = l2_result.x_adv[:15]
    ok = l2_result.clean_correct[:15]
    assert torch.allclose(got[ok], ref[ok], atol=1e-4)


@pytest.fixture(scope="module")
def linear_digits():
    """A linear softmax classifier (nn.Linear) trained on scikit-learn digits; wide bounds so the
    closed-form step is never clipped."""
    d = load_dataset("digits")
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    xt, yt = d.x_train, d.y_train
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(lin(xt), yt).backward()
        opt.step()
    for p in lin.parameters():
        p.requires_grad_(False)
    model = TorchClassifier(
        lin.eval(), bounds=(-50.0, 50.0), n_classes=10, input_shape=tuple(xt.shape[1:]), output="logits"
    )
    return model, lin[1], d.x_test[:80], d.y_test[:80]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_linear_model_closed_form(linear_digits, norm):
    """For an affine classifier the distance to the region of any other class is
    min_k |f_k| / ||W_k - W_y||_q; DeepFool reaches it in one step (times 1 + overshoot)."""
    model, lin, x, y = linear_digits
    overshoot = 0.02
    z = lin(x.flatten(1))
    keep = z.argmax(1) == y
    assert keep.float().mean() > 0.85
    x, y, z = x[keep], y[keep], z[keep]
    W = lin.weight
    dw = W[None, :, :] - W[y][:, None, :]  # (n, 10, 64)
    f = (z - z.gather(1, y[:, None])).abs()  # (n, 10)
    dual = dw.norm(p=2 if norm == "l2" else 1, dim=2)
    dist = (f / dual).masked_fill(nn.functional.one_hot(y, 10).bool(), float("inf")).amin(1)
    r = DeepFool(norm=norm, overshoot=overshoot)(model, x, y)
    assert bool(r.success.all())
    assert r.gradients == 9 * x.shape[0]  # exactly one linearisation step per sample
    expected = (1 + overshoot) * (dist + 1e-4)
    assert torch.allclose(r.norms, expected, rtol=1e-4, atol=1e-5)
    # and it is minimal: the same direction scaled to 99% of the boundary distance is not adversarial
    inner = x + (r.x_adv - x) * (0.99 * dist / r.norms).view(-1, 1, 1, 1)
    assert bool((model.predict(inner) == y).all())


def test_binary_linear_model_closed_form():
    """Two classes, logits (0, w.x + b): the distance is |w.x + b| / ||w||_2."""
    torch.manual_seed(1)
    w, b = torch.randn(20), torch.tensor(0.3)
    lin = nn.Linear(20, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros(20), w]))
        lin.bias.copy_(torch.stack([torch.tensor(0.0), b]))
        lin.requires_grad_(False)
    model = TorchClassifier(lin, bounds=(-100.0, 100.0), n_classes=2, input_shape=(20,), output="logits")
    x = torch.randn(32, 20)
    y = model.predict(x)
    r = DeepFool(norm="l2", overshoot=0.0)(model, x, y)
    assert bool(r.success.all())
    assert torch.allclose(r.norms, (x @ w + b).abs() / w.norm() + 1e-4, rtol=1e-4, atol=1e-6)


def test_invalid_arguments():
    for kwargs in ({"steps": 0}, {"steps": 2.5}, {"candidates": 1}, {"overshoot": -0.1}, {"norm": "l1"}):
        with pytest.raises(UsageError):
            DeepFool(**kwargs)


def test_targets_are_refused(mnist):
    model, x, y = mnist
    with pytest.raises(UsageError, match="untargeted"):
        DeepFool()(model, x[:4], y[:4], targets=(y[:4] + 1) % 10)


def test_eps_projects_and_repr(mnist):
    model, x, y = mnist
    r = DeepFool(eps=0.5)(model, x[:10], y[:10])
    assert float(r.norms.max()) <= 0.5 + 1e-5
    assert "overshoot=0.02" in repr(DeepFool())
