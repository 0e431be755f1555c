"""The audit report as JUnit XML, so CI systems show gates, validity checks and probes as test cases.

``write_junit(report, path)`` reads the report dict (layout in :mod:`bastion.audit.result`) and writes
one ``<testsuites>`` with one ``<testsuite name="bastion.audit">`` holding:

* a test case per gate (classname ``bastion.audit.gates``, name = the gate's expression): a
  ``<failure>`` when the gate did not pass, with the measured value in the message;
* a test case per validity check (``bastion.audit.checks``, name = the check id): 'fail' is a
  ``<failure>``, 'warn' passes with ``WARN: <explanation>`` in ``<system-out>``, 'skipped' is
  ``<skipped>``;
* a test case per probe (``bastion.audit.probes``, name = the probe name, time = its seconds):
  status 'error' is an ``<error>``, 'skipped' is ``<skipped>``; the risk and summary go to
  ``<system-out>`` (risk alone is not a failure: gates decide that).

The suite's counts (tests, failures, errors, skipped, time) are those of its test cases. The file is
written atomically (temporary file in the same directory, then ``os.replace``).
"""

from __future__ import annotations

import io
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from .store import write_atomic

__all__ = ["write_junit"]

# Characters XML 1.0 cannot carry (error messages may hold ANSI escapes or NUL bytes).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: Any) -> str:
    return _NOT_XML.sub("", "" if value is None else str(value))


def _seconds(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return max(float(value), 0.0)
    return 0.0


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "not measured" if value is None else str(value)


def _case(suite: ET.Element, classname: str, name: Any, seconds: float = 0.0) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=classname, name=_text(name), time=f"{seconds:.3f}")


def _gate_cases(suite: ET.Element, gates: list[Any]) -> None:
    for g in gates:
        if not isinstance(g, dict):
            continue
        case = _case(suite, "bastion.audit.gates", g.get("expression") or g.get("metric"))
        measured = f"{g.get('metric')} = {_fmt(g.get('value'))} (required {g.get('op')} {_fmt(g.get('threshold'))})"
        if g.get("passed") is True:
            ET.SubElement(case, "system-out").text = _text(measured)
        else:
            failure = ET.SubElement(case, "failure", message=_text(f"gate failed: {measured}"), type="gate")
            failure.text = _text(measured)


def _check_cases(suite: ET.Element, checks: list[Any]) -> None:
    for c in checks:
        if not isinstance(c, dict):
            continue
        case = _case(suite, "bastion.audit.checks", c.get("id"))
        status, explanation = c.get("status"), _text(c.get("explanation"))
        evidence = json.dumps(c.get("evidence") or {}, default=str, sort_keys=True)
        if status == "fail":
            ET.SubElement(case, "failure", message=explanation, type="check").text = _text(
                f"{c.get('title')}: {explanation}\nevidence: {evidence}"
            )
        elif status == "skipped":
            ET.SubElement(case, "skipped", message=explanation)
        elif status == "warn":
            ET.SubElement(case, "system-out").text = _text(f"WARN: {explanation}")
        else:
            ET.SubElement(case, "system-out").text = _text(f"{status}: {explanation}")


def _probe_cases(suite: ET.Element, probes: list[Any]) -> None:
    for p in probes:
        if not isinstance(p, dict):
            continue
        case = _case(suite, "bastion.audit.probes", p.get("probe"), _seconds(p.get("seconds")))
        status, reason = p.get("status") or "ok", _text(p.get("reason"))
        if status == "error":
            message = reason.splitlines()[0] if reason else "probe failed"
            ET.SubElement(case, "error", message=message, type="ProbeError").text = reason
        elif status == "skipped":
            ET.SubElement(case, "skipped", message=reason or "skipped")
        else:
            ET.SubElement(case, "system-out").text = _text(f"risk: {p.get('risk', 'n/a')}. {p.get('summary') or ''}")


def render_junit(report: dict[str, Any]) -> bytes:
    """The JUnit XML document (UTF-8 bytes) that :func:`write_junit` writes."""
    root = ET.Element("testsuites", name="bastion audit")
    suite = ET.SubElement(root, "testsuite", name="bastion.audit")
    if report.get("created"):
        suite.set("timestamp", _text(report.get("created")))
    props = ET.SubElement(suite, "properties")
    raw_settings, raw_verdict = report.get("settings"), report.get("verdict")
    settings: dict[str, Any] = raw_settings if isinstance(raw_settings, dict) else {}
    verdict: dict[str, Any] = raw_verdict if isinstance(raw_verdict, dict) else {}
    for key, value in (
        ("model", settings.get("model")),
        ("data", settings.get("data")),
        ("profile", settings.get("profile")),
        ("bastion_version", report.get("bastion_version")),
        *((f"verdict.{k}", v) for k, v in verdict.items()),
    ):
        if value is not None:
            ET.SubElement(props, "property", name=key, value=_text(value))

    def _listed(key: str) -> list[Any]:
        value = report.get(key)
        return value if isinstance(value, list) else []

    _gate_cases(suite, _listed("gates"))
    _check_cases(suite, _listed("checks"))
    _probe_cases(suite, _listed("probes"))

    cases = suite.findall("testcase")
    counts = {
        "tests": len(cases),
        "failures": sum(c.find("failure") is not None for c in cases),
        "errors": sum(c.find("error") is not None for c in cases),
        "skipped": sum(c.find("skipped") is not None for c in cases),
    }
    total = sum(float(c.get("time", "0")) for c in cases)
    for element in (suite, root):
        for k, v in counts.items():
            element.set(k, str(v))
        element.set("time", f"{total:.3f}")
    if not len(props):
        suite.remove(props)
    ET.indent(root)
    buf = io.BytesIO()
    ET.ElementTree(root).write(buf, encoding="utf-8", xml_declaration=True)
    return buf.getvalue() + b"\n"


def write_junit(report: dict[str, Any], path: str | Path) -> Path:
    """Write the audit ``report`` (the dict layout of :mod:`bastion.audit.result`) to ``path`` as JUnit XML
    and return the path."""
    path = Path(path)
    write_atomic(path, render_junit(report))
    return path
