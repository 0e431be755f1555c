"""The guard's signals on real attacks, end to end over HTTP: PGD inputs are flagged by the detector, inputs with a
BadNets trigger are flagged by STRIP in front of the backdoored model, a Jacobian-augmentation extraction client
is flagged and then blocked while 20 benign clients are not, and traffic that turns to rotated digits raises a
drift alarm (an event, a metric) after clean windows raised none."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import torch

from bastion.attacks import PGD
from bastion.errors import UsageError
from bastion.serve.config import load_config
from bastion.serve.keys import create_key
from bastion.serve.policy import Reading, decide
from bastion.serve.server import build_app
from bastion.serve.store import Store
from serve_helpers import running, wait_drift_windows

UNSEEN = slice(500, 1000)  # the guard calibrates on the first half of the test split; traffic uses the second


def _service(tmp_path, model, data, **overrides):
    store = Store(f"sqlite:///{tmp_path / 'g.db'}")
    cfg = load_config(None, **overrides)
    app, _ = build_app(model=model, reference=data, config=cfg, store=store, spool=str(tmp_path / "spool.jsonl"))
    return app, store


def _client(url: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_pgd_inputs_are_flagged_by_the_activation_detector(tmp_path, mnist_cnn, mnist):
    app, store = _service(
        tmp_path,
        mnist_cnn,
        mnist,
        ood={"detector": "activations", "fpr": 0.05, "action": "flag"},
        limits={"rate": 1e6, "burst": 10**6},
    )
    key, _ = create_key(store, "client")
    x, y = mnist.x_test[UNSEEN][:200], mnist.y_test[UNSEEN][:200]
    adv = PGD(eps=0.3, steps=40)(mnist_cnn, x, y).x_adv
    with running(app) as url, _client(url, key) as c:

        def flagged(batch: torch.Tensor) -> float:
            res = [
                r
                for i in range(0, len(batch), 16)
                for r in c.post("/v1/predict", json={"inputs": batch[i : i + 16].tolist()}).json()["results"]
            ]
            return float(np.mean(["ood" in r["reasons"] for r in res]))

        clean_rate, adv_rate = flagged(x), flagged(adv)
    assert clean_rate <= 0.12, clean_rate  # calibrated at 5% on other clean images
    assert adv_rate >= 0.9, adv_rate  # measured 1.00 (non-adaptive PGD; see docs/benchmarks.md for adaptive)


def test_triggered_inputs_are_flagged_by_strip_in_front_of_a_backdoored_model(tmp_path, badnets_mnist, mnist):
    poisoned, model = badnets_mnist
    app, store = _service(
        tmp_path,
        model,
        mnist,
        backdoor={"enabled": True, "action": "flag"},  # the defaults: 32 copies, 1% fpr
        limits={"rate": 1e6, "burst": 10**6},
    )
    key, _ = create_key(store, "client")
    x_t, _, _ = poisoned.triggered_test()
    source = torch.nonzero(mnist.y_test != 0).flatten()  # the test image each triggered input was made from
    x_t, clean = x_t[source >= UNSEEN.start][:64], mnist.x_test[UNSEEN][:96]
    with running(app) as url, _client(url, key) as c:
        health = c.get("/health").json()

        def answers(batch: torch.Tensor) -> list[dict]:
            return [
                r
                for i in range(0, len(batch), 16)
                for r in c.post("/v1/predict", json={"inputs": batch[i : i + 16].tolist()}).json()["results"]
            ]

        res_t, res_c = answers(x_t), answers(clean)
    assert health["backdoor_signal"] is True, health
    assert health["signals"]["backdoor"] == "on: STRIP with n_perturb=32, flag above the clean 0.01-fpr threshold"
    assert all("backdoor" in r["scores"] for r in res_t + res_c)
    triggered_rate = float(np.mean(["backdoor" in r["reasons"] for r in res_t]))
    clean_rate = float(np.mean(["backdoor" in r["reasons"] for r in res_c]))
    assert triggered_rate >= 0.85, triggered_rate  # measured 0.92
    assert clean_rate <= 0.06, clean_rate  # calibrated at 1% on the other half of the test split; measured 0.03
    flagged = [r for r in res_t if "backdoor" in r["reasons"]]
    assert all(r["action"] in ("flag", "abstain") for r in flagged)  # abstain only where confidence is low too


def test_each_signal_applies_its_own_action():
    quiet = Reading("confidence", 0.99, None, "abstain")
    flag, answer = Reading("ood", 9.0, "ood", "flag"), Reading("backdoor", -0.01, "backdoor", "answer")
    r = decide(3, [0.1, 0.9], [quiet, flag, answer])
    assert r == {
        "label": 3,
        "probabilities": [0.1, 0.9],
        "abstain": False,
        "reasons": ["ood"],  # a signal whose action is answer reports its score only
        "scores": {"confidence": 0.99, "ood": 9.0, "backdoor": -0.01},
        "action": "flag",
    }
    r = decide(3, [0.1, 0.9], [quiet, Reading("backdoor", -0.01, "backdoor", "abstain")])
    assert r["label"] is None and r["abstain"] and r["reasons"] == ["backdoor"] and r["action"] == "abstain"
    assert decide(3, [0.1, 0.9], [quiet])["action"] == "answer"


def test_backdoor_settings_are_checked():
    from bastion.data import load_dataset
    from bastion.models.zoo import load_zoo
    from bastion.serve.guard import Guard

    assert load_config(None).backdoor.enabled is False
    on = load_config(None, backdoor={"enabled": True})
    with pytest.raises(UsageError, match=r"^\[backdoor\] STRIP superimposes images \(N, C, H, W\)"):
        Guard(load_zoo("cancer-mlp"), load_dataset("breast-cancer"), on)  # a tabular model: refused at start-up
    with pytest.raises(UsageError, match=r"\[backdoor\] enabled must be true or false, got 'yes'"):
        load_config(None, backdoor={"enabled": "yes"})
    with pytest.raises(UsageError, match=r"\[backdoor\] detector must be one of strip, got 'activations'"):
        load_config(None, backdoor={"detector": "activations"})
    with pytest.raises(UsageError, match=r"\[backdoor\] n_perturb must be a whole number >= 1, got 0"):
        load_config(None, backdoor={"n_perturb": 0})
    with pytest.raises(UsageError, match=r"\[ood\] detector must be one of activations, mahalanobis, squeeze, got"):
        load_config(None, ood={"detector": "strip"})  # STRIP is the [backdoor] signal's


def test_extraction_client_is_flagged_then_blocked_and_benign_clients_are_not(tmp_path, mnist_cnn, mnist):
    from torch import nn

    from test_serve_extraction import BATCH, LAMBDA  # the attacker of the monitor's own tests

    app, store = _service(
        tmp_path,
        mnist_cnn,
        mnist,
        extraction={"action": "block"},
        limits={"rate": 1e6, "burst": 10**6, "max_batch": 32},
    )
    attacker, _ = create_key(store, "client", "attacker")
    benign = [create_key(store, "client", f"benign-{i}")[0] for i in range(20)]
    rng = np.random.default_rng(1)
    unseen = mnist.x_test[UNSEEN]
    with running(app) as url:
        for i, key in enumerate(benign):  # each replays 150 distinct unseen test images in requests of 1-8
            order = rng.permutation(len(unseen))[:150]
            with _client(url, key) as c:
                k = 0
                while k < len(order):
                    n = int(rng.integers(1, 9))
                    r = c.post("/v1/predict", json={"inputs": unseen[order[k : k + n]].tolist()})
                    assert r.status_code == 200 and r.json()["client"]["status"] == "ok", (i, r.text[:200])
                    k += n
        # Papernot et al.'s Jacobian augmentation, with the service as its oracle
        y = mnist.y_test.numpy()
        seeds = np.concatenate([rng.choice(np.flatnonzero(y[500:] == c), 5, replace=False) for c in range(10)])
        s = unseen[torch.from_numpy(seeds)]
        torch.manual_seed(0)
        sub = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
        sent, blocked_at = 0, None
        with _client(url, attacker) as c:

            def oracle(xs: torch.Tensor) -> torch.Tensor | None:
                nonlocal sent, blocked_at
                labels = []
                for k in range(0, len(xs), BATCH):
                    r = c.post("/v1/predict", json={"inputs": xs[k : k + BATCH].tolist()})
                    if r.status_code == 403:
                        blocked_at = sent
                        return None
                    assert r.status_code == 200, r.text[:200]
                    sent += len(xs[k : k + BATCH])
                    labels += [
                        res["label"] if res["label"] is not None else int(np.argmax(res["probabilities"]))
                        for res in r.json()["results"]
                    ]
                return torch.tensor(labels)

            labels = oracle(s)
            while blocked_at is None and sent < 2000:
                opt = torch.optim.Adam(sub.parameters(), lr=1e-3)
                for _ in range(10):
                    for j in torch.randperm(len(s)).split(64):
                        opt.zero_grad()
                        nn.functional.cross_entropy(sub(s[j]), labels[j]).backward()
                        opt.step()
                xs = s.clone().requires_grad_(True)
                sub(xs).gather(1, labels[:, None]).sum().backward()
                new = (s + LAMBDA * xs.grad.sign()).clamp(0, 1).detach()
                got = oracle(new)
                if got is not None:
                    s, labels = torch.cat([s, new]), torch.cat([labels, got])
        admin, _ = create_key(store, "admin")
        with _client(url, admin) as c:
            clients = {row["client"]: row for row in c.get("/v1/admin/clients").json()["clients"]}
            events = c.get("/v1/admin/events", params={"kind": "extraction"}).json()["events"]
    ids = {k.split("_")[1]: k for k in benign}
    assert not any(clients[i]["flagged"] for i in ids), [clients[i]["w"] for i in ids]
    bad = clients[attacker.split("_")[1]]
    print(
        f"attacker flagged at {bad['flagged_at']}, blocked after {blocked_at} answered queries; benign W "
        f"{min(clients[i]['w'] for i in ids):.3f}-{max(clients[i]['w'] for i in ids):.3f}"
    )
    assert bad["flagged"] and bad["flagged_at"] < 2000 and blocked_at is not None and blocked_at < 2000, (bad, sent)
    assert len(events) == 1 and events[0]["detail"]["key_id"] == attacker.split("_")[1]


def _rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    t = torch.tensor(np.deg2rad(degrees), dtype=torch.float32)
    theta = torch.stack(
        [torch.stack([t.cos(), -t.sin(), torch.zeros(())]), torch.stack([t.sin(), t.cos(), torch.zeros(())])]
    ).expand(len(x), 2, 3)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, align_corners=False).clamp(0, 1)


def test_drift_is_raised_within_two_windows_and_not_on_clean_traffic(tmp_path, mnist_cnn, mnist):
    app, store = _service(
        tmp_path,
        mnist_cnn,
        mnist,
        drift={"window": 100, "alpha": 0.01, "permutations": 500},
        extraction={"action": "flag"},
        limits={"rate": 1e6, "burst": 10**6},
    )
    key, _ = create_key(store, "client")
    admin, _ = create_key(store, "admin")
    g = torch.Generator().manual_seed(0)
    clean = mnist.x_test[torch.randperm(1000, generator=g)]  # shuffled: the stored order is grouped by class
    rotated = _rotate(mnist.x_test[torch.randperm(1000, generator=g)[:200]], 40)
    with running(app) as url, _client(url, key) as c, _client(url, admin) as a:
        for i in range(0, 1000, 20):
            assert c.post("/v1/predict", json={"inputs": clean[i : i + 20].tolist()}).status_code == 200
        quiet = wait_drift_windows(a, 10)
        for i in range(0, 200, 20):
            assert c.post("/v1/predict", json={"inputs": rotated[i : i + 20].tolist()}).status_code == 200
        windows = wait_drift_windows(a, 12)
        events = a.get("/v1/admin/events", params={"kind": "drift"}).json()["events"]
        metrics = a.get("/metrics").text
    assert len(quiet) == 10 and not any(w["drift"] for w in quiet), [w["p_value"] for w in quiet]
    shifted = windows[10:12]
    assert len(shifted) == 2 and any(w["drift"] for w in shifted), [w["p_value"] for w in shifted]
    assert events and events[-1]["detail"]["window"] in (10, 11)
    assert "bastion_drift_alarms_total 0.0" not in metrics
