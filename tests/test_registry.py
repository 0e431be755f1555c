"""The one registry helper: duplicates refused, lookups canonical, unknown names answered with the choices."""

from __future__ import annotations

import doctest

import pytest

import bastion
from bastion import registry
from bastion.errors import UsageError
from bastion.registry import Registry


def test_doctests():
    assert doctest.testmod(registry).failed == 0


def test_register_lookup_and_list():
    r: Registry[int] = Registry("thing")
    assert r.register("One", 1) == 1
    r.register("two", 2)
    assert r.get(" ONE ") == 1 and r["two"] == 2 and "one" in r and "three" not in r and 3 not in r
    assert r.names() == ["one", "two"] and len(r) == 2 and dict(r) == {"one": 1, "two": 2}


def test_duplicates_are_refused_unless_replaced():
    r: Registry[str] = Registry("thing")
    r.register("a", "first")
    with pytest.raises(UsageError, match=r"a thing named 'a' is already registered.*replace=True"):
        r.register("A", "second")
    assert r.get("a") == "first"
    r.register("a", "second", replace=True)
    assert r.get("a") == "second"
    r.register("a", "second")  # registering the same object again is not a conflict


def test_unknown_names_suggest_and_list():
    r: Registry[int] = Registry("attack")
    for name in ("pgd", "fgsm", "square"):
        r.register(name, 0)
    with pytest.raises(
        UsageError,
        match=r"unknown attack 'pdg' \(did you mean 'pgd'\?\): choose one of fgsm, pgd, "
        r"square",
    ):
        r.get("pdg")
    with pytest.raises(UsageError) as exc:
        r.get("zzz")
    assert "did you mean" not in str(exc.value)
    with pytest.raises(UsageError, match="must not be empty"):
        r.register("  ", 1)
    assert r.unregister("fgsm") == 0 and "fgsm" not in r


def test_every_registry_of_bastion_is_one():
    from bastion.attacks import ATTACKS
    from bastion.audit import PROBES
    from bastion.defenses.detection import DETECTORS
    from bastion.models import ARCHITECTURES

    for reg in (ATTACKS, PROBES, DETECTORS, ARCHITECTURES):
        assert isinstance(reg, Registry)
    with pytest.raises(UsageError, match="did you mean 'pgd'"):
        bastion.get_attack("pdg")
    with pytest.raises(UsageError, match="already registered"):
        bastion.attacks.register("pgd")(type("Other", (bastion.Attack,), {}))
    assert ATTACKS["pgd"] is bastion.attacks.PGD  # the refused class did not replace it
    with pytest.raises(UsageError, match="already registered"):
        bastion.models.register_architecture("mnist-cnn", lambda: None, input_shape=(1,), n_classes=2)
