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
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._version import __version__
from ..data import Dataset
from ..errors import UsageError
from ..models.base import Classifier, validate_inputs
from ..scale.executor import Executor, SerialExecutor, ShardStore
from ..threat import canonical_norm
from . import probes as _probes  # noqa: F401  (registers the built-in probes)
from .gates import Gate, evaluate_gates, parse_gate
from .probe import PROBES, AuditContext, Probe, eps_key
from .profiles import Profile, default_eps, get_profile
from .result import RISK_ORDER, SCHEMA, STATUS_ORDER, ProbeResult, jsonable
from .state import OUTPUTS, STATE_DIR, clear_state, fingerprint_data, fingerprint_model, open_state, sha
from .store import write_atomic

__all__ = ["OUTPUTS", "STATE_DIR", "clear_state", "fingerprint_data", "fingerprint_model", "run_audit"]

Progress = Callable[[str, float, str], None]
OnProbe = Callable[[ProbeResult, bool], None]


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
            raise UsageError(f"eps: every eps must be a finite number > 0, got {e!r}")
        out.append(float(e))
    return sorted(set(out))


@dataclass
class _Plan:
    """What an audit will do, checked before any probe runs."""

    profile: Profile
    norm: str
    eps: list[float]
    gates: list[Gate]
    names: list[str]
    x: Tensor
    y: Tensor


def _threat(model: Classifier, prof: Profile, norm: str, eps: Sequence[float] | None) -> tuple[str, list[float]]:
    unregistered = [name for name in prof.probes if name not in PROBES]
    if unregistered:
        raise UsageError(f"profile {prof.name!r} names unregistered probe(s) {', '.join(unregistered)}")
    try:
        norm = canonical_norm(norm)
    except ValueError as exc:
        raise UsageError(f"norm: {exc}") from None
    if norm not in ("linf", "l2"):
        raise UsageError(f"norm: the audit supports linf and l2, not {norm}")
    if not isinstance(model, Classifier):
        raise UsageError(f"model must be a bastion Classifier, got {type(model).__name__}")
    return norm, _eps_list(eps, norm, model)


def _audited_inputs(model: Classifier, data: Dataset, prof: Profile, n: int | None) -> tuple[Tensor, Tensor]:
    if tuple(data.input_shape) != tuple(model.input_shape):
        raise UsageError(
            f"data {data.name} has inputs of shape {tuple(data.input_shape)} but the model expects "
            f"{tuple(model.input_shape)}"
        )
    count = prof.n if n is None else int(n)
    if count < 0 or (n is not None and count == 0):
        raise UsageError(f"n must be >= 1, got {n}")
    total = int(data.x_test.shape[0])
    if total == 0:
        raise UsageError(f"data {data.name} has no test inputs to audit")
    count = total if count == 0 else min(count, total)
    x, y = data.x_test[:count].contiguous(), data.y_test[:count].contiguous()
    validate_inputs(model, x, y, name="the data's test inputs")
    return x, y


def _plan(
    model: Classifier,
    data: Dataset,
    profile: str | Profile,
    norm: str,
    eps: Sequence[float] | None,
    n: int | None,
    probes: Sequence[str] | None,
    gates: Sequence[str | Gate],
) -> _Plan:
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    norm, eps_values = _threat(model, prof, norm, eps)
    parsed = [g if isinstance(g, Gate) else parse_gate(g, eps_values) for g in gates]
    names = list(prof.probes)
    if probes:
        unknown = [p for p in probes if p not in prof.probes]
        if unknown:
            raise UsageError(f"probes: unknown probe(s) {', '.join(unknown)}; choose from {', '.join(names)}")
        names = [p for p in names if p in probes]
    x, y = _audited_inputs(model, data, prof, n)
    return _Plan(prof, norm, eps_values, parsed, names, x, y)


def _run_probe(name: str, probe: Probe, ctx: AuditContext) -> ProbeResult:
    """One probe: skipped with its reason, or run under its own seed; a probe that raises is recorded as an
    error (the others still run). ``KeyboardInterrupt`` stops the audit."""
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
    return res


def _run_probes(
    instances: dict[str, Probe],
    ctx: AuditContext,
    state: Path,
    done: dict[str, ProbeResult],
    on_probe: OnProbe | None,
) -> list[ProbeResult]:
    """The probes in order; each new result is saved before the next starts, finished ones are taken from
    ``done`` (a resumed audit)."""
    results: list[ProbeResult] = []
    for name, probe in instances.items():
        resumed = name in done
        shards = state / "shards" / name  # a probe's finished shards, kept until the probe's result is saved
        ctx.store = ShardStore(shards)
        res = done[name] if resumed else _run_probe(name, probe, ctx)
        if not resumed:
            write_atomic(state / f"probe-{name}.json", json.dumps(res.to_dict()))
        shutil.rmtree(shards, ignore_errors=True)
        ctx.results[name] = res
        results.append(res)
        if on_probe is not None:
            on_probe(res, resumed)
    return results


def _write_outputs(report: dict[str, Any], out_dir: Path) -> None:
    from .html import write_html
    from .junit import write_junit

    write_junit(report, out_dir / "junit.xml")
    write_html(report, out_dir / "index.html")
    write_atomic(out_dir / "report.json", json.dumps(report, indent=1))


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
    on_probe: OnProbe | None = None,
    write: bool = True,
    executor: Executor | None = None,
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
        executor: where the probes' shards run (:func:`bastion.scale.make_executor`; default: this process). The
            shards and their seeds do not depend on it, so neither do the numbers; the report's ``scale`` section
            records the backend, workers, shards and per-shard times. Finished shards are saved under the state
            directory until their probe finishes, so an interrupted probe resumes from its last shard.

    Raises:
        UsageError: before any probe runs, for anything the caller can fix (profile, norm, eps, gates, probes,
            data that does not fit the model, an output directory that cannot be written or holds another audit).
    """
    plan = _plan(model, data, profile, norm, eps, n, probes, gates)
    instances = {name: PROBES[name](**plan.profile.probes[name]) for name in plan.names}
    settings = {
        "model": model_spec or repr(model),
        "data": data_spec or data.name,
        "profile": plan.profile.name,
        "norm": plan.norm,
        "eps": plan.eps,
        "seed": int(seed),
        "n": int(plan.x.shape[0]),
        "probes": plan.names,
    }
    fps = fingerprint_model(model, plan.x[:16]), fingerprint_data(plan.x, plan.y, data.x_train)
    settings_id = sha(json.dumps(settings, sort_keys=True), *fps, __version__)
    out_dir = Path(out)
    state, done = open_state(
        out_dir, settings_id, {**settings, "model_fingerprint": fps[0], "data_fingerprint": fps[1]}
    )
    ctx = AuditContext(
        model=model,
        data=data,
        x=plan.x,
        y=plan.y,
        norm=plan.norm,
        eps=plan.eps,
        seed=int(seed),
        kind=_kind(tuple(model.input_shape)),
        progress=progress,
        executor=executor if executor is not None else SerialExecutor(),
    )
    scale = ctx.executor
    start = time.perf_counter()
    results = _run_probes(instances, ctx, state, done, on_probe)
    this_run = time.perf_counter() - start
    report = _assemble(ctx, results, settings, plan.gates, model, data, fps, this_run=this_run, done=done)
    report["scale"] = jsonable(scale.describe() if scale is not None else {})
    if write:
        _write_outputs(report, out_dir)
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


def _verdict(results: list[ProbeResult], gate_results: list[dict[str, Any]]) -> dict[str, str]:
    risks = [r.risk for r in results if r.status == "ok"]
    statuses = [c.status for r in results for c in r.checks]
    return {
        "risk": max(risks, key=lambda k: RISK_ORDER[k]) if risks else "n/a",
        "validity": max([s for s in statuses if s != "skipped"] or ["pass"], key=lambda k: STATUS_ORDER[k]),
        "gates": "none" if not gate_results else "pass" if all(g["passed"] for g in gate_results) else "fail",
    }


def _assemble(
    ctx: AuditContext,
    results: list[ProbeResult],
    settings: dict[str, Any],
    gates: list[Gate],
    model: Classifier,
    data: Dataset,
    fingerprints: tuple[str, str],
    *,
    this_run: float,
    done: dict[str, ProbeResult],
) -> dict[str, Any]:
    """The report dict (layout: :mod:`.result`). ``seconds`` is the whole audit's time: this run's plus, when
    it resumed, the recorded seconds of the probes finished before (``seconds_this_run`` is this run's alone)."""
    metrics: dict[str, Any] = {}
    for r in results:
        if r.status == "ok":
            metrics.update(r.metrics)
    metrics.update(_worst_case(ctx, {r.probe: r for r in results}))
    gate_results = evaluate_gates(gates, metrics)
    earlier = sum(r.seconds for r in results if r.probe in done)
    return jsonable(
        {
            "schema": SCHEMA,
            "bastion_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(this_run + earlier, 3),
            "seconds_this_run": round(this_run, 3),
            "resumed": any(r.probe in done for r in results),
            "settings": settings,
            "model": {
                "spec": settings["model"],
                "fingerprint": fingerprints[0],
                "kind": type(model).__name__,
                "white_box": bool(model.white_box),
                "output": model.output,
                "input_shape": list(model.input_shape),
                "n_classes": model.n_classes,
                "bounds": list(model.bounds),
            },
            "data": {
                "spec": settings["data"],
                "fingerprint": fingerprints[1],
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
            "checks": [c.to_dict() for r in results for c in r.checks],
            "metrics": metrics,
            "gates": gate_results,
            "verdict": _verdict(results, gate_results),
        }
    )
