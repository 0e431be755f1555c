"""Universal adversarial patch on mnist-cnn: EOT training, held-out success, area, PNG export.

Measured (1 thread): a targeted patch covering <= 10% of the image (8x8) under random placement
reaches only ~0.05-0.08 held-out success on this CNN — even a per-image optimised 8x8 patch at the
best (central) spot reaches at most ~0.75 for the easiest targets (3, 8) — so the >= 0.8 check is
made at area 0.5 (19x19, 46%: ~0.88 held-out, random patch ~0.08), and the 10% patch is checked to
beat a random patch of the same size by a margin (0.045 against 0.015-0.02 on 200 held-out images).
Costs are counted (forward and backward passes), never timed. Class 8 is avoided: a random 17x17 noise patch
alone makes ~60% of the images an 8.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bastion.attacks import get_attack
from bastion.attacks.evasion.patch import AdversarialPatch, apply, evaluate, fit, patch_side, save_png
from bastion.errors import UsageError

TARGET = 3


@pytest.fixture(scope="module")
def split(mnist):
    xt, yt = mnist.x_test[:300], mnist.y_test[:300]
    keep = yt != TARGET
    return mnist.x_train[:500], mnist.y_train[:500], xt[keep][:200], yt[keep][:200]


def test_patch_sizes_respect_the_area():
    assert patch_side((1, 28, 28), 0.1) == 8 and 8 * 8 / 784 <= 0.1
    assert patch_side((1, 28, 28), 0.5) == 19
    with pytest.raises(UsageError, match="area"):
        patch_side((1, 28, 28), 0.0)
    with pytest.raises(UsageError, match="image inputs"):
        patch_side((30,), 0.1)


@pytest.mark.slow
def test_targeted_patch_transfers_to_held_out_images(mnist_cnn, split, tmp_path):
    torch.set_num_threads(1)
    x_tr, y_tr, x_te, y_te = split
    g = torch.Generator().manual_seed(0)
    before = mnist_cnn.n_queries
    patch = fit(mnist_cnn, x_tr, y_tr, TARGET, area=0.5, steps=400, generator=g)
    # the cost, counted instead of timed: one forward pass of one batch of 64 patched images per step
    assert mnist_cnn.n_queries - before == 400 * 64
    assert patch.shape == (1, 19, 19)
    assert float(patch.min()) >= 0 and float(patch.max()) <= 1
    success = evaluate(mnist_cnn, x_te, y_te, patch, TARGET, generator=torch.Generator().manual_seed(1))
    random_patch = torch.rand(patch.shape, generator=torch.Generator().manual_seed(2))
    baseline = evaluate(mnist_cnn, x_te, y_te, random_patch, TARGET, generator=torch.Generator().manual_seed(1))
    assert success >= 0.8, success
    assert baseline < 0.2, baseline
    # only pixels under the pasted patch change
    x_adv = apply(x_te, patch, torch.Generator().manual_seed(3))
    changed = (x_adv != x_te).flatten(1).sum(dim=1)
    assert int(changed.max()) <= 19 * 19
    path = save_png(patch, tmp_path / "patch.png")
    img = Image.open(path)
    assert img.size == (19, 19) and img.mode == "L"
    back = torch.from_numpy(np.array(img)).float() / 255
    assert torch.allclose(back, patch[0], atol=1 / 255)


def test_ten_percent_patch_beats_a_random_patch(mnist_cnn, split):
    torch.set_num_threads(1)
    x_tr, y_tr, x_te, y_te = split
    patch = fit(mnist_cnn, x_tr, y_tr, TARGET, area=0.1, steps=200, generator=torch.Generator().manual_seed(0))
    assert patch.shape == (1, 8, 8)
    x_adv = apply(x_te, patch, torch.Generator().manual_seed(3))
    assert int((x_adv != x_te).flatten(1).sum(dim=1).max()) <= int(0.1 * 784)
    success = evaluate(mnist_cnn, x_te, y_te, patch, TARGET)
    baseline = evaluate(mnist_cnn, x_te, y_te, torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(2)), TARGET)
    # measured (torch 2.13, CPU): 0.045 against a random patch's 0.015-0.02 (9 against 3-4 of 200 images); a fit
    # that does not train (its random start returned) lands at 0.015 and fails the margin
    assert baseline <= 0.025 and success >= baseline + 0.02, (success, baseline)


def test_patch_attack_through_the_attack_interface(mnist_cnn, split):
    torch.set_num_threads(1)
    x_tr, y_tr, x_te, y_te = split
    atk = get_attack("patch", area=0.5, steps=80, fit_data=(x_tr, y_tr))
    assert isinstance(atk, AdversarialPatch) and atk.eps is None
    targets = torch.full_like(y_te[:50], TARGET)
    r = atk(mnist_cnn, x_te[:50], y_te[:50], targets)
    assert r.threat.eps is None and set(r.extra["patches"]) == {TARGET}
    assert r.success.float().mean() > 0.3
    assert r.gradients == 80 * 64  # one backward pass per step of one batch of 64 fit images
    with pytest.raises(UsageError, match="area"):
        AdversarialPatch(area=1.5)
