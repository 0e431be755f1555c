"""The public surface changes only on purpose: this test pins it."""

import torch

import bastion


def test_public_api_is_pinned():
    assert sorted(bastion.__all__) == sorted(
        [
            "__version__",
            "attacks",
            "audit",
            "data",
            "defenses",
            "metrics",
            "models",
            "registry",
            "Attack",
            "AttackResult",
            "get_attack",
            "Dataset",
            "load_dataset",
            "Classifier",
            "TorchClassifier",
            "load_model",
            "save_model",
            "ThreatModel",
            "BastionError",
            "MissingExtraError",
            "UnsafeModelError",
            "UsageError",
        ]
    )
    for name in bastion.__all__:
        assert hasattr(bastion, name)


def test_audit_surface_is_pinned():
    assert sorted(bastion.audit.__all__) == sorted(
        [
            "run_audit",
            "PROBES",
            "Probe",
            "AuditContext",
            "register_probe",
            "PROFILES",
            "Profile",
            "get_profile",
            "default_eps",
            "fit_detector",
            "Gate",
            "parse_gate",
            "SCHEMA",
            "ProbeResult",
            "Check",
            "Plot",
            "Series",
            "Example",
        ]
    )
    assert list(bastion.audit.PROFILES) == ["quick", "standard", "thorough"]
    assert list(bastion.audit.PROFILES["standard"].probes) == [
        "model",
        "whitebox",
        "minimum-norm",
        "blackbox",
        "noise",
        "patch",
        "certification",
        "detection",
        "poisoning",
        "backdoor",
        "membership",
        "privacy",
        "inversion",
        "extraction",
        "encrypted",
    ]
    assert set(bastion.audit.PROBES) >= set(bastion.audit.PROFILES["standard"].probes)


def test_registered_attack_names():
    assert sorted(bastion.attacks.ATTACKS) == sorted(
        [
            "fgsm",
            "pgd",
            "mifgsm",
            "apgd-ce",
            "apgd-dlr",
            "apgd-t",
            "cw",
            "deepfool",
            "ensemble",
            "square",
            "simba",
            "noise",
            "hopskipjump",
            "boundary",
            "transfer",
            "tabular",
            "patch",
        ]
    )


def test_readme_example_runs_as_written(mnist_cnn):
    model = bastion.load_model("zoo:mnist-cnn")
    data = bastion.load_dataset("mnist5k")
    attack = bastion.attacks.PGD(eps=0.3, norm="linf", steps=40, step_size=0.01)
    result = attack(model, data.x_test[:100], data.y_test[:100])
    assert result.x_adv.shape == (100, 1, 28, 28)
    assert result.success.dtype == torch.bool
    assert float(result.success.float().mean()) >= 0.99 and result.queries > 100
    mine = bastion.models.TorchClassifier(model.module, bounds=(0.0, 1.0), n_classes=10)
    assert mine.predict(data.x_test[:10]).shape == (10,)
    assert isinstance(mine, bastion.Classifier)


def test_missing_extra_names_the_extra():
    from bastion.errors import MissingExtraError, require

    try:
        require("surely_not_installed_pkg", "service")
    except MissingExtraError as exc:
        assert "bastion[service]" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected MissingExtraError")
