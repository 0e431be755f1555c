"""The audit runner: probes in order, state saved after each, one report at the end.

:func:`run_audit` validates everything it can before any probe runs (model, data, profile, norm,
eps, gates, output directory), then runs the profile's probes in order. After each probe its result
is saved under ``OUT/.audit-state/`` together with the audit's settings and the model and data
fingerprints; run again with the same settings, the audit resumes after the last finished probe
(with other settings it refuses, naming what differs). The three outputs — ``junit.xml``,
``index.html`` and ``report.json``, written last — appear only when the whole audit has finished,
each written to a temporary file first and renamed: an interrupted audit leaves no file that looks
like a finished report.

A probe that raises is recorded with status 'error' and its message (the audit goes on);
``KeyboardInterrupt`` stops the audit with the finished probes saved.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..data import Dataset
from ..errors import UsageError
from ..models.base import Classifier, validate_inputs
from ..models.torch import TorchClassifier
from ..models.wrapped import unwrap
from ..threat import canonical_norm
from . import probes as _probes  # noqa: F401  (registers the built-in probes)
from .gates import Gate, evaluate_gates, parse_gate
from .probe import PROBES, AuditContext, eps_key
from .profiles import Profile, default_eps, get_profile
from .result import RISK_ORDER, SCHEMA, STATUS_ORDER, ProbeResult, jsonable
from .store import write_atomic

__all__ = ["OUTPUTS", "STATE_DIR", "fingerprint_data", "fingerprint_model", "run_audit"]

STATE_DIR = ".audit-state"
OUTPUTS = ("junit.xml", "index.html", "report.json")

Progress = Callable[[str, float, str], None]


def _sha(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()


def fingerprint_model(model: Classifier, probe_x: torch.Tensor) -> str:
    """sha256 of a torch model's parameters and buffers (under any wrappers: smoothing, detection, EOT, whose
    configuration enters through their repr), or of any other model's scores on ``probe_x`` (those queries
    count: the audit never winds a model's query counter back)."""
    inner = unwrap(model)
    if isinstance(inner, TorchClassifier):
        parts: list[bytes | str] = [type(model).__name__, repr(model), type(inner.module).__name__]
        for k, v in inner.module.state_dict().items():
            parts += [k, v.detach().cpu().contiguous().numpy().tobytes()]
        return _sha(*parts)
    with torch.no_grad():
        s = model.logits(probe_x).double().cpu()
    return _sha(type(model).__name__, (s * 1e5).round().numpy().tobytes())


def fingerprint_data(x: torch.Tensor, y: torch.Tensor, x_train: torch.Tensor) -> str:
    return _sha(
        x.contiguous().numpy().tobytes(),
        y.contiguous().numpy().tobytes(),
        str(tuple(x_train.shape)),
        x_train.contiguous().numpy().tobytes(),
    )


def _kind(shape: tuple[int, ...]) -> str:
    return (
        "image"
        if len(shape) == 3 and shape[0] in (1, 3, 4) and min(shape[1:]) >= 4
        else "tabular"
        if len(shape) == 1
        else "other"
    )


def _eps_list(eps: Sequence[float] | None, norm: str, model: Classifier) -> list[float]:
    if eps is None or len(eps) == 0:
        return default_eps(norm, model.bounds, tuple(model.input_shape))
    out = []
    for e in eps:
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e) or e <= 0:
            raise UsageError(f"--eps: every eps must be a finite number > 0, got {e!r}")
        out.append(float(e))
    return sorted(set(out))


def _prepare_out(out: Path, settings_id: str, settings: dict[str, Any]) -> tuple[Path, dict[str, ProbeResult]]:
    """Check the output directory; return the state directory and the probes already finished there."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} exists and is not a directory")
    state = out / STATE_DIR
    done: dict[str, ProbeResult] = {}
    if out.is_dir() and any(out.iterdir()):
        meta = state / "settings.json"
        if not meta.is_file():
            raise UsageError(f"--out: {out} is not empty and holds no bastion audit: choose a new or empty directory")
        try:
            old = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise UsageError(f"--out: {out} holds a damaged audit state ({meta}): remove the directory") from None
        if old.get("id") != settings_id:
            prev = old.get("settings", {})
            diff = sorted(k for k in set(prev) | set(settings) if prev.get(k) != settings.get(k))
            raise UsageError(
                f"--out: {out} holds an audit with other settings (differs in: "
                f"{', '.join(diff) or 'fingerprints'}); "
                "resume it with the same command, or choose another --out"
            )
        for f in sorted(state.glob("probe-*.json")):
            try:
                r = ProbeResult.from_dict(json.loads(f.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError, TypeError, KeyError):
                continue  # a damaged probe file: that probe runs again
            done[r.probe] = r
    state.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:  # an earlier run's outputs go now and come back when this run finishes
        (out / name).unlink(missing_ok=True)
    write_atomic(state / "settings.json", json.dumps({"id": settings_id, "settings": settings}, indent=1))
    return state, done


def run_audit(
    model: Classifier,
    data: Dataset,
    out: str | os.PathLike[str],
    *,
    profile: str | Profile = "quick",
    norm: str = "linf",
    eps: Sequence[float] | None = None,
    n: int | None = None,
    seed: int = 0,
    probes: Sequence[str] | None = None,
    gates: Sequence[str | Gate] = (),
    model_spec: str | None = None,
    data_spec: str | None = None,
    progress: Progress | None = None,
    on_probe: Callable[[ProbeResult, bool], None] | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Audit ``model`` on ``data``'s test split and write the report to ``out``; return the report dict.

    Args:
        profile: 'quick', 'standard' or 'thorough' (see :mod:`bastion.audit.profiles`), or a :class:`Profile`
            (custom probes and budgets).
        norm, eps: the threat model ('linf' or 'l2'; eps values, default :func:`default_eps`).
        n: audited test inputs (default: the profile's). seed: every probe's randomness derives from it.
        probes: run only these probes (names from the profile), in the profile's order.
        gates: ``--fail-under`` expressions (or parsed :class:`Gate`), evaluated on the report's metrics.
        model_spec, data_spec: how the model and data were named (recorded in the report).
        progress: ``progress(probe, fraction, message)`` while probes run.
        on_probe: ``on_probe(result, resumed)`` after each probe (the CLI prints a line).
        write: write report.json, index.html and junit.xml (False: only the state and the returned dict).
    """
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    unregistered = [name for name in prof.probes if name not in PROBES]
    if unregistered:
        raise UsageError(f"profile {prof.name!r} names unregistered probe(s) {', '.join(unregistered)}")
    try:
        norm = canonical_norm(norm)
    except ValueError as exc:
        raise UsageError(f"--norm: {exc}") from None
    if norm not in ("linf", "l2"):
        raise UsageError(f"--norm: the audit supports linf and l2, not {norm}")
    if not isinstance(model, Classifier):
        raise UsageError(f"model must be a bastion Classifier, got {type(model).__name__}")
    eps_values = _eps_list(eps, norm, model)
    parsed = [g if isinstance(g, Gate) else parse_gate(g, eps_values) for g in gates]
    names = list(prof.probes)
    if probes:
        unknown = [p for p in probes if p not in prof.probes]
        if unknown:
            raise UsageError(f"--probes: unknown probe(s) {', '.join(unknown)}; choose from {', '.join(names)}")
        names = [p for p in names if p in probes]
    if tuple(data.input_shape) != tuple(model.input_shape):
        raise UsageError(
            f"--data: {data.name} has inputs of shape {tuple(data.input_shape)} but the model expects "
            f"{tuple(model.input_shape)}"
        )
    count = prof.n if n is None else int(n)
    if count < 0 or (n is not None and count == 0):
        raise UsageError(f"--n must be >= 1, got {n}")
    total = int(data.x_test.shape[0])
    if total == 0:
        raise UsageError(f"--data: {data.name} has no test inputs to audit")
    count = total if count == 0 else min(count, total)
    x, y = data.x_test[:count].contiguous(), data.y_test[:count].contiguous()
    validate_inputs(model, x, y, name="--data test inputs")
    instances = {name: PROBES[name](**prof.probes[name]) for name in names}

    settings = {
        "model": model_spec or repr(model),
        "data": data_spec or data.name,
        "profile": prof.name,
        "norm": norm,
        "eps": eps_values,
        "seed": int(seed),
        "n": count,
        "probes": names,
    }
    model_fp, data_fp = fingerprint_model(model, x[:16]), fingerprint_data(x, y, data.x_train)
    settings_id = _sha(json.dumps(settings, sort_keys=True), model_fp, data_fp, __version__)
    out_dir = Path(out)
    state, done = _prepare_out(
        out_dir, settings_id, {**settings, "model_fingerprint": model_fp, "data_fingerprint": data_fp}
    )

    ctx = AuditContext(
        model=model,
        data=data,
        x=x,
        y=y,
        norm=norm,
        eps=eps_values,
        seed=int(seed),
        kind=_kind(tuple(model.input_shape)),
        progress=progress,
    )
    start = time.perf_counter()
    resumed_any = False
    results: list[ProbeResult] = []
    for name, probe in instances.items():
        if name in done:
            res, resumed = done[name], True
            resumed_any = True
        else:
            resumed = False
            t0 = time.perf_counter()
            reason = probe.skip_reason(ctx)
            if reason is not None:
                res = probe.result(ctx, status="skipped", reason=reason, summary=f"skipped: {reason}")
            else:
                try:
                    with torch.random.fork_rng(devices=[]):
                        torch.manual_seed(ctx.seed_for(name))
                        res = probe.run(ctx)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as exc:  # recorded, not fatal: the other probes still run
                    msg = f"{type(exc).__name__}: {exc}" if not isinstance(exc, UsageError) else str(exc)
                    res = probe.result(ctx, status="error", reason=msg, summary=f"error: {msg}")
            res.seconds = round(time.perf_counter() - t0, 3)
            write_atomic(state / f"probe-{name}.json", json.dumps(res.to_dict()))
        ctx.results[name] = res
        results.append(res)
        if on_probe is not None:
            on_probe(res, resumed)

    report = _assemble(
        ctx,
        results,
        settings,
        parsed,
        model,
        data,
        model_fp,
        data_fp,
        seconds=time.perf_counter() - start,
        resumed=resumed_any,
    )
    if write:
        from .html import write_html
        from .junit import write_junit

        write_junit(report, out_dir / "junit.xml")
        write_html(report, out_dir / "index.html")
        write_atomic(out_dir / "report.json", json.dumps(report, indent=1))
    return report


def _worst_case(ctx: AuditContext, results: dict[str, ProbeResult]) -> dict[str, float]:
    """robust_accuracy@eps: the per-input worst case over the evasion probes (an input is robust only if
    no probe broke it at that eps), over the inputs at least one of them attacked (white-box probes
    attack all audited inputs, Square the first ``n_square``)."""
    out = {}
    n = ctx.x.shape[0]
    for eps in ctx.eps:
        key = eps_key(eps)
        robust = torch.ones(n, dtype=torch.bool)
        covered = torch.zeros(n, dtype=torch.bool)
        for probe, field in (("whitebox", f"whitebox@{key}"), ("blackbox", f"square@{key}")):
            r = results.get(probe)
            if r is None or r.status != "ok" or field not in r.per_sample:
                continue
            vals = torch.tensor(r.per_sample[field]["robust"], dtype=torch.bool)
            robust[: vals.numel()] &= vals
            covered[: vals.numel()] = True
        if bool(covered.any()):
            out[f"robust_accuracy@{key}"] = float(robust[covered].float().mean())
    return out


def _assemble(
    ctx: AuditContext,
    results: list[ProbeResult],
    settings: dict[str, Any],
    gates: list[Gate],
    model: Classifier,
    data: Dataset,
    model_fp: str,
    data_fp: str,
    *,
    seconds: float,
    resumed: bool,
) -> dict[str, Any]:
    by_name = {r.probe: r for r in results}
    metrics: dict[str, Any] = {}
    for r in results:
        if r.status == "ok":
            metrics.update(r.metrics)
    metrics.update(_worst_case(ctx, by_name))
    checks = [c for r in results for c in r.checks]
    gate_results = evaluate_gates(gates, metrics)
    risks = [r.risk for r in results if r.status == "ok"]
    statuses = [c.status for c in checks]
    verdict = {
        "risk": max(risks, key=lambda k: RISK_ORDER[k]) if risks else "n/a",
        "validity": max([s for s in statuses if s != "skipped"] or ["pass"], key=lambda k: STATUS_ORDER[k]),
        "gates": "none" if not gate_results else "pass" if all(g["passed"] for g in gate_results) else "fail",
    }
    return jsonable(
        {
            "schema": SCHEMA,
            "bastion_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "resumed": resumed,
            "settings": settings,
            "model": {
                "spec": settings["model"],
                "fingerprint": model_fp,
                "kind": type(model).__name__,
                "white_box": bool(model.white_box),
                "output": model.output,
                "input_shape": list(model.input_shape),
                "n_classes": model.n_classes,
                "bounds": list(model.bounds),
            },
            "data": {
                "spec": settings["data"],
                "fingerprint": data_fp,
                "n_test": int(data.x_test.shape[0]),
                "input_shape": list(data.input_shape),
                "n_classes": data.n_classes,
                "kind": ctx.kind,
            },
            "environment": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "platform": platform.platform(),
                "threads": torch.get_num_threads(),
            },
            "probes": [r.to_dict() for r in results],
            "checks": [c.to_dict() for c in checks],
            "metrics": metrics,
            "gates": gate_results,
            "verdict": verdict,
        }
    )


def clear_state(out: str | os.PathLike[str]) -> None:
    """Remove an audit's saved state (the report files stay)."""
    shutil.rmtree(Path(out) / STATE_DIR, ignore_errors=True)
