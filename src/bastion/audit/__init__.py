"""``bastion audit``: run probes against a model, one measured result per threat, and write a report a
team can read (index.html), a machine can read (report.json, schema ``bastion.audit/1``) and CI can
gate on (junit.xml, ``--fail-under``).

    report = bastion.audit.run_audit(model, data, "audit-out", profile="quick", gates=["clean_accuracy>=0.9"])

Probes are registered in :data:`PROBES` (``register_probe``); profiles in :data:`PROFILES`. To audit a model
behind an adversarial-input detector, :func:`fit_detector` fits and calibrates one on the training split (as
``bastion audit --detector`` does) and ``DetectingClassifier(model, detector)`` is the model to audit.
"""

from __future__ import annotations

from .defended import fit_detector
from .gates import Gate, parse_gate
from .probe import PROBES, AuditContext, Probe, register_probe
from .profiles import PROFILES, Profile, default_eps, get_profile
from .result import SCHEMA, Check, Example, Plot, ProbeResult, Series
from .runner import run_audit

__all__ = [
    "PROBES",
    "PROFILES",
    "SCHEMA",
    "AuditContext",
    "Check",
    "Example",
    "Gate",
    "Plot",
    "Probe",
    "ProbeResult",
    "Profile",
    "Series",
    "default_eps",
    "fit_detector",
    "get_profile",
    "parse_gate",
    "register_probe",
    "run_audit",
]
