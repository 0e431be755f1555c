"""Probe parameters are typed by their defaults in ``Probe.__init__`` and checked further by ``check_params``."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import pytest

from bastion.audit import PROBES, PROFILES, Probe
from bastion.audit.probes.extraction import ExtractionProbe
from bastion.audit.probes.privacy import PrivacyProbe
from bastion.audit.probes.whitebox import WhiteBoxProbe
from bastion.errors import UsageError


def test_an_int_parameter_takes_whole_numbers_only():
    with pytest.raises(UsageError, match=r"^probe 'whitebox': pgd_steps must be a whole number, got 2\.5$"):
        WhiteBoxProbe(pgd_steps=2.5)
    p = WhiteBoxProbe(pgd_steps=40.0).params  # TOML / JSON may give a whole number as a float
    assert p["pgd_steps"] == 40 and type(p["pgd_steps"]) is int
    assert repr(WhiteBoxProbe(pgd_steps=40.0)) == repr(WhiteBoxProbe(pgd_steps=40))
    for bad in (True, "40", None, math.inf, math.nan, [40]):
        with pytest.raises(UsageError, match=r"^probe 'whitebox': pgd_steps must be a whole number, got "):
            WhiteBoxProbe(pgd_steps=bad)


def test_a_float_parameter_takes_finite_numbers_stored_as_float():
    p = WhiteBoxProbe(tolerance=1).params
    assert p["tolerance"] == 1.0 and type(p["tolerance"]) is float
    with pytest.raises(UsageError, match=r"^probe 'whitebox': tolerance must be a number, got 'x'$"):
        WhiteBoxProbe(tolerance="x")
    for bad in (math.nan, math.inf, -math.inf, 10**400):
        with pytest.raises(UsageError, match=r"^probe 'whitebox': tolerance must be a finite number, got "):
            WhiteBoxProbe(tolerance=bad)
    with pytest.raises(UsageError, match=r"^probe 'whitebox': tolerance must be a number, got False$"):
        WhiteBoxProbe(tolerance=False)


def test_a_bool_parameter_takes_true_or_false_only():
    assert WhiteBoxProbe(ensemble=False).params["ensemble"] is False
    for bad in (1, 0, "true", None):
        with pytest.raises(UsageError, match=r"^probe 'whitebox': ensemble must be true or false, got "):
            WhiteBoxProbe(ensemble=bad)


def test_other_parameters_are_left_to_the_probe():
    classes = (1, 2)  # default None: not typed by the base
    assert WhiteBoxProbe().params == WhiteBoxProbe.defaults
    assert PROBES["backdoor"](classes=classes).params["classes"] is classes


class _Picky(Probe, name="picky-test", title="picky", threat="test"):
    defaults: ClassVar[dict[str, Any]] = {"k": 3, "rate": 0.5, "names": ["a", "b", "a"]}
    seen: ClassVar[list[dict[str, Any]]] = []

    def check_params(self, p: dict[str, Any]) -> None:
        self.seen.append(dict(p))
        if p["k"] > 5:
            raise UsageError(f"probe 'picky-test': k must be <= 5, got {p['k']!r}")
        p["names"] = list(dict.fromkeys(p["names"]))


def test_check_params_runs_at_construction_on_typed_parameters():
    _Picky.seen.clear()
    with pytest.raises(UsageError, match="k must be <= 5, got 6"):
        _Picky(k=6.0)
    assert _Picky.seen[-1]["k"] == 6 and type(_Picky.seen[-1]["k"]) is int  # typed before the hook
    probe = _Picky(rate=1)
    assert type(_Picky.seen[-1]["rate"]) is float
    assert probe.params == {"k": 3, "rate": 1.0, "names": ["a", "b"]}  # the hook may normalise in place
    assert _Picky.defaults["names"] == ["a", "b", "a"]
    with pytest.raises(UsageError, match="unknown parameters"):
        _Picky(j=1)  # refused before the hook
    assert Probe().params == {}  # the base hook checks nothing


def test_converted_probes_still_check_through_the_hook():
    with pytest.raises(UsageError, match=r"probe 'extraction': budgets must be a list of whole numbers >= 1"):
        ExtractionProbe(budgets=[0])
    with pytest.raises(UsageError, match=r"probe 'extraction': epochs must be a whole number >= 1 or None"):
        ExtractionProbe(epochs=0)
    with pytest.raises(UsageError, match=r"^probe 'privacy': canaries must be a whole number >= 2, got 1$"):
        PrivacyProbe(canaries=1)
    with pytest.raises(UsageError, match=r"^probe 'privacy': runs must be a whole number, got 1\.5$"):
        PrivacyProbe(runs=1.5)  # the type by the base, the range by the hook
    with pytest.raises(UsageError, match=r"probe 'privacy': confidence must lie in \(0, 1\)"):
        PrivacyProbe(confidence=1)
    with pytest.raises(UsageError, match=r"probe 'encrypted': min_agreement must lie in \(0, 1\]"):
        PROBES["encrypted"](min_agreement=0)
    with pytest.raises(UsageError, match=r"probe 'encrypted': n must be a whole number >= 1, got 0"):
        PROBES["encrypted"](n=0.0)
    with pytest.raises(UsageError, match="poisoning"):
        PROBES["poisoning"](attacks={})
    with pytest.raises(UsageError):
        PROBES["membership"](attacks=["no-such-attack"])
    assert PROBES["encrypted"]()._program is None


def test_the_built_in_profiles_construct_unchanged():
    for profile in PROFILES.values():
        for name, overrides in profile.probes.items():
            params = PROBES[name](**overrides).params
            expected = {**PROBES[name].defaults, **overrides}
            assert params == expected, (profile.name, name)
            assert [type(v) for v in params.values()] == [type(v) for v in expected.values()], (profile.name, name)
