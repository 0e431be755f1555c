"""The evasion attacks' parameter contract, checked on every registered attack (and the adaptive detector
PGD): keyword-only constructors whose parameters ``params()``/``repr`` show, and numbers declared with
``positive()`` refused in one place — a ``UsageError`` naming the parameter — and stored as int or float."""

from __future__ import annotations

import inspect
from dataclasses import fields

import pytest

from bastion.attacks import ATTACKS
from bastion.attacks.base import _POSITIVE, Attack, AttackBatch
from bastion.defenses.detection import DetectorAwarePGD
from bastion.errors import UsageError

CLASSES = {name: ATTACKS.get(name) for name in ATTACKS.names()} | {"detector-aware-pgd": DetectorAwarePGD}
NEEDS = {"tabular": {"eps": 0.1}}  # the one attack without a usable default budget


def _positive_fields(cls: type[Attack]) -> list[tuple[str, bool, bool]]:
    return [(f.name, *f.metadata[_POSITIVE]) for f in fields(cls) if _POSITIVE in f.metadata]


def test_every_attack_declares_some_positive_parameter():
    counts = {name: len(_positive_fields(cls)) for name, cls in CLASSES.items()}
    assert sum(counts.values()) >= 45, counts  # 52 when written; the shared bases declare theirs once
    assert counts["hopskipjump"] == 7 and counts["boundary"] == 7 and counts["pgd"] == 3


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_constructor_is_keyword_only_and_params_show_it(name):
    cls = CLASSES[name]
    sig = inspect.signature(cls)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in sig.parameters.values())
    atk = cls(**NEEDS.get(name, {}))
    shown = set(atk.params())
    assert shown == set(sig.parameters) - {"generator"}
    assert all(f"{k}=" in repr(atk) for k in shown)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_positive_parameters_are_checked_and_converted(name):
    cls, base = CLASSES[name], NEEDS.get(name, {})
    checked = _positive_fields(cls)
    for field_name, integer, allow_zero in checked:
        bad = -1 if allow_zero else 0
        with pytest.raises(UsageError, match=rf"^{field_name} must be an? (integer|number) >=? 0, got {bad}$"):
            cls(**base, **{field_name: bad})
        if integer:
            with pytest.raises(UsageError, match=rf"^{field_name} must be an integer"):
                cls(**base, **{field_name: 2.5})
    for field_name, integer, _ in checked:  # a whole float becomes an int, an int given for a float a float
        value = getattr(cls(**base, **{field_name: 300.0 if integer else 300}), field_name)
        assert value == 300 and type(value) is (int if integer else float), (field_name, value)


def test_attack_batch_rows_select_inputs_labels_and_targets():
    import torch

    x, y, t = torch.arange(12.0).view(4, 3), torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 0])
    b = AttackBatch(None, x, y, t, None, torch.Generator(), None)
    sub = b.rows(torch.tensor([2, 0]))
    assert torch.equal(sub.x, x[[2, 0]]) and torch.equal(sub.y, y[[2, 0]]) and torch.equal(sub.targets, t[[2, 0]])
    assert sub.generator is b.generator
    scores = torch.eye(4)[[3, 2]]  # predicts 3 for row 2 (target 3), 2 for row 0 (target 1)
    assert sub.is_adversarial(scores).tolist() == [True, False]
    untargeted = AttackBatch(None, x, y, None, None, torch.Generator(), None).rows(torch.tensor([1]))
    assert untargeted.targets is None and untargeted.is_adversarial(torch.eye(4)[[1]]).tolist() == [False]
