"""The guard's configuration: one TOML file (``bastion serve --config guard.toml``), every key optional.

:class:`GuardConfig` and its sections are pydantic models (strict types, ``extra="forbid"``): a mistyped key
or a value out of range is refused with one line naming the key, e.g. ``guard.toml: [ood] fpr must be a number
strictly between 0 and 1, got 1.5`` or ``unknown key 'policy' in [confidence] (did you mean 'action'?)``. The
fields' descriptions are the documentation: :func:`render_config` writes every key, commented, with its
default (``docs/guard.toml`` is its output, ``bastion serve --print-config`` prints it).
"""

from __future__ import annotations

import difflib
import json
import textwrap
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

import annotated_types
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ..errors import UsageError

__all__ = [
    "BackdoorConfig",
    "ConfidenceConfig",
    "DriftConfig",
    "ExtractionConfig",
    "GuardConfig",
    "LimitsConfig",
    "OodConfig",
    "OutputConfig",
    "load_config",
    "render_config",
]

Action = Literal["answer", "flag", "abstain"]
ClientAction = Literal["flag", "throttle", "block"]
# the number kinds the keys take; the constraints are read back for the messages and the rendered file
Probability = Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)]  # strictly between 0 and 1
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]  # a finite number above 0
# names people reach for that are spelled differently here (the README once called `action` "policy")
_SYNONYMS = {"policy": "action", "mode": "action", "threshold": "fpr", "method": "test", "detectors": "detector"}


_BACKDOOR_DETECTORS = ("strip",)  # run-time backdoor detectors: the [backdoor] signal's, not [ood]'s


def _detector_names() -> list[str]:
    """The detectors ``[ood] detector`` may name: every registered one but the backdoor detectors."""
    from ..defenses.detection import DETECTORS

    return [n for n in DETECTORS.names() if n not in _BACKDOOR_DETECTORS]


def _known_detector(name: str) -> str:
    if name not in _detector_names():
        raise ValueError("unknown detector")
    return name


class _Section(BaseModel):
    """A table of ``guard.toml``; a bad value raises :class:`UsageError` naming ``[section] key``."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)
    section: ClassVar[str] = ""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise UsageError(_message(exc, type(self))) from None


class ConfidenceConfig(_Section):
    """Selective classification (Geifman & El-Yaniv 2017): abstain when the top softmax probability is below
    the lowest confidence whose answered set keeps the error rate at or below target_risk on held-out
    reference data (the curve is served at /v1/admin/risk-coverage)."""

    section: ClassVar[str] = "confidence"
    target_risk: Probability = Field(default=0.02, description="Error rate allowed among the answered inputs.")
    action: Action = Field(
        default="abstain",
        description="What a low-confidence input gets: answer (scored only), flag "
        "(answered, with the reason) or abstain (label null).",
    )


class OodConfig(_Section):
    """Out-of-distribution / adversarial inputs: a detector fitted on the reference data's training split,
    its threshold at the fpr quantile of held-out clean scores. Off (said at start-up and on /health) for a
    model that declares no features (ONNX, black-box)."""

    section: ClassVar[str] = "ood"
    detector: Annotated[str, AfterValidator(_known_detector)] = Field(
        default="activations",
        description="activations (per-layer activation statistics, one forward pass; flags 98% "
        "of PGD inputs at eps 0.3 on mnist-cnn), mahalanobis (penultimate features, Lee "
        "et al. 2018; blind to that PGD) or squeeze (feature squeezing, Xu et al. 2018).",
    )
    fpr: Probability = Field(
        default=0.05,
        description="Share of clean held-out reference inputs flagged (the threshold's quantile).",
    )
    action: Action = Field(default="flag", description="What a flagged input gets: answer, flag or abstain.")


class BackdoorConfig(_Section):
    """Backdoor-triggered inputs: STRIP (Gao et al. 2019) superimposes each input on n_perturb clean images of the
    reference data's training split and flags it when the model's predictions on those copies stay confident (low
    entropy: a trigger dominates them), at the fpr quantile of held-out clean inputs. Off by default: it costs
    n_perturb extra forward passes per input. Images only; works for black-box models too. A poisoner who knows
    the defence evades it (superimposed covers in the poison: 0.5% of its triggered inputs flagged)."""

    section: ClassVar[str] = "backdoor"
    enabled: bool = Field(default=False, description="Run STRIP on every input.")
    detector: Literal["strip"] = Field(
        default="strip", description="strip (superimposition and entropy, Gao et al. 2019)."
    )
    fpr: Probability = Field(
        default=0.01,
        description="Share of clean held-out reference inputs flagged (the paper presets 1%); the calibration needs "
        "at least 1/fpr held-out inputs.",
    )
    n_perturb: int = Field(
        default=32,
        ge=1,
        description="Clean images each input is superimposed on (the paper: 100). At 1% fpr on the BadNets "
        "mnist-cnn, 32 flag 92% of triggered inputs, 16 flag 90%, 8 flag 81% (benchmarks/strip_eval.py).",
    )
    action: Action = Field(default="flag", description="What a flagged input gets: answer, flag or abstain.")


class DriftConfig(_Section):
    """Input drift: each window of traffic is tested against the reference (MMD with a permutation p-value on
    features, or per-feature KS with a Benjamini-Hochberg correction); an alarm is an event and a metric."""

    section: ClassVar[str] = "drift"
    test: Literal["auto", "mmd", "ks"] = Field(
        default="auto",
        description="mmd (penultimate features), ks (raw inputs, tabular) or auto (mmd for images with features).",
    )
    window: int = Field(default=200, ge=10, description="Inputs per tested window.")
    alpha: Probability = Field(default=0.01, description="False-alarm rate per window.")
    permutations: int = Field(
        default=500, ge=19, description="Random splits for the MMD p-value (at least 1/alpha - 1)."
    )


class ExtractionConfig(_Section):
    """Model extraction, per API key: PRADA (Juuti et al. 2019, a Shapiro-Wilk test on the distances between a
    client's successive queries) and a query budget."""

    section: ClassVar[str] = "extraction"
    delta: Probability = Field(default=0.9, description="A client whose Shapiro-Wilk W falls below this is flagged.")
    budget: int = Field(default=0, ge=0, description="Queries allowed per key before it is throttled (0: no budget).")
    action: ClientAction = Field(
        default="block",
        description="What a flagged key gets: flag (answered, status flagged), "
        "throttle (limits.throttled_rate) or block (403).",
    )


OutputPolicyName = Literal["none", "round", "top-k", "label-only", "reverse-sigmoid", "prediction-poisoning"]
# the keys each policy reads ([output] policy itself aside); another policy's key set off its default is refused
OUTPUT_KEYS = {
    "none": (),
    "round": ("decimals",),
    "top-k": ("k", "renormalize"),
    "label-only": (),
    "reverse-sigmoid": ("beta", "gamma"),
    "prediction-poisoning": ("epsilon", "surrogate", "surrogate_layers"),
}


class OutputConfig(_Section):
    """What the answers reveal beyond the label, against model extraction (bastion.defenses.extraction): the
    probabilities are passed through the policy after inference, the label is kept, and each audit record names
    the policy. The confidence score shown is then the top returned probability."""

    section: ClassVar[str] = "output"
    policy: OutputPolicyName = Field(
        default="none",
        description="none (the probabilities as they are), round (to decimals), top-k (the k largest, the others "
        "zeroed), label-only (the label alone, no probabilities), reverse-sigmoid (Lee et al. 2019's deceptive "
        "perturbation) or prediction-poisoning (MAD-argmax, Orekondy et al. 2020: within epsilon in L1, turned "
        "against a surrogate thief's training gradient).",
    )
    decimals: int = Field(default=2, ge=0, le=6, description="round: decimals kept.")
    k: int = Field(default=1, ge=1, description="top-k: probabilities kept.")
    renormalize: bool = Field(default=True, description="top-k: rescale the kept probabilities to sum to 1.")
    beta: Positive = Field(default=1.0, description="reverse-sigmoid: magnitude.")
    gamma: Positive = Field(default=0.1, description="reverse-sigmoid: convergence.")
    epsilon: Positive = Field(default=0.5, le=2, description="prediction-poisoning: L1 budget of the change.")
    surrogate: str = Field(
        default="",
        description="prediction-poisoning: the torch model standing for the thief's (a --model spec, e.g. "
        "zoo:mnist-cnn or a weights file; not the served model itself, whose own gradient on its answers is 0); "
        "empty: the served network's architecture freshly initialised (the thief's model as its training starts).",
    )
    surrogate_layers: Literal["last", "all"] = Field(
        default="last",
        description="prediction-poisoning: the surrogate's parameters the gradient is taken on: last (its final "
        "linear layer, as the authors' code) or all (slower).",
    )

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        for key in sorted(self.model_fields_set - {"policy"}):  # the rendered file sets every key to its default
            if key not in OUTPUT_KEYS[self.policy] and getattr(self, key) != type(self).model_fields[key].default:
                users = [p for p, keys in OUTPUT_KEYS.items() if key in keys]
                raise UsageError(
                    f"[output] {key} applies to policy = {json.dumps(users[0])} only, but policy = "
                    f"{json.dumps(self.policy)}: remove it or change the policy"
                )


class LimitsConfig(_Section):
    """Request limits, per API key."""

    section: ClassVar[str] = "limits"
    max_batch: int = Field(default=64, ge=1, description="Inputs per request (more: 413).")
    max_body_bytes: int = Field(default=2_000_000, ge=1024, description="Bytes per request body (more: 413).")
    max_encrypted_body_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Bytes per POST /v1/predict-encrypted body (bastion serve --encrypted): the client's public "
        "CKKS context and its ciphertexts, which are far larger than plain inputs; more: 413. max_body_bytes "
        "applies to every other endpoint.",
    )
    rate: Positive = Field(
        default=200.0, description="Requests per second per key (token bucket; more: 429 with Retry-After)."
    )
    burst: int = Field(default=400, ge=1, description="Requests a key may send at once before the rate applies.")
    throttled_rate: Positive = Field(default=2.0, description="Requests per second of a throttled key (burst 1).")


class GuardConfig(_Section):
    """The whole file: one table per signal and the request limits."""

    confidence: ConfidenceConfig = Field(default_factory=ConfidenceConfig)
    ood: OodConfig = Field(default_factory=OodConfig)
    backdoor: BackdoorConfig = Field(default_factory=BackdoorConfig)
    drift: DriftConfig = Field(default_factory=DriftConfig)
    extraction: ExtractionConfig = Field(default_factory=ExtractionConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


SECTIONS: dict[str, type[_Section]] = {name: f.annotation for name, f in GuardConfig.model_fields.items()}  # type: ignore[misc]


def load_config(path: str | Path | None = None, **overrides: dict[str, Any]) -> GuardConfig:
    """Read ``path`` (TOML; None: the defaults) and apply ``overrides`` ({section: {key: value}}).

    Raises:
        UsageError: the file is missing or not TOML, or a section, key or value is not one of this module's
            (one line, prefixed with the file's path, naming ``[section] key``).
    """
    raw: dict[str, Any] = {}
    where = ""
    if path is not None:
        p = Path(path)
        where = f"{p}: "
        if not p.is_file():
            raise UsageError(f"{where}no such file")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{where}not valid TOML: {exc}") from None
    for section, values in overrides.items():
        if isinstance(raw.get(section), dict) and isinstance(values, dict):
            raw[section] = {**raw[section], **values}
        else:
            raw[section] = values
    try:
        return GuardConfig(**raw)
    except UsageError as exc:
        raise UsageError(f"{where}{exc}") from None


# -- messages ---------------------------------------------------------------------------------------------------
def _message(exc: ValidationError, model: type[_Section]) -> str:
    """One line for the first error: the key path as the file spells it, what is expected, what was given."""
    errors = exc.errors()
    err = errors[0]
    inner = err.get("ctx", {}).get("error")
    if isinstance(inner, UsageError):  # a section's own __init__ (pydantic calls it for nested tables) said it
        return str(inner)
    loc = [str(v) for v in err["loc"]]
    if model.section:  # a section validated on its own
        loc = [model.section, *loc]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if len(loc) == 1:
        name = loc[0]
        if err["type"] == "extra_forbidden":
            return f"unknown section [{name}]{_hint(name, list(SECTIONS))}: known are {', '.join(SECTIONS)}{more}"
        return f"[{name}] must be a table of keys, got {err.get('input')!r}{more}"
    section, key = loc[0], loc[1]
    fields = SECTIONS[section].model_fields
    if err["type"] == "extra_forbidden":
        known = sorted(fields)
        return f"unknown key {key!r} in [{section}]{_hint(key, known)}: known are {', '.join(known)}{more}"
    given = err.get("input")
    hint = _hint(given, _choices(section, key)) if isinstance(given, str) else ""
    return f"[{section}] {key} must be {_expected(section, key)}, got {given!r}{hint}{more}"


def _hint(name: str, known: list[str]) -> str:
    close = [_SYNONYMS[name]] if _SYNONYMS.get(name) in known else difflib.get_close_matches(name, known, 1, 0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _choices(section: str, key: str) -> list[str]:
    """The names ``[section] key`` may take; empty for a number."""
    if (section, key) == ("ood", "detector"):
        return _detector_names()
    annotation = SECTIONS[section].model_fields[key].annotation
    return [str(v) for v in get_args(annotation)] if get_origin(annotation) is Literal else []


def _expected(section: str, key: str) -> str:
    """What ``[section] key`` accepts, in words, from its annotation and constraints."""
    field = SECTIONS[section].model_fields[key]
    if field.annotation is bool:
        return "true or false"
    if _choices(section, key):
        return "one of " + ", ".join(_choices(section, key))
    if field.annotation is str:
        return "a string"
    gt = next((m.gt for m in field.metadata if isinstance(m, annotated_types.Gt)), None)
    ge = next((m.ge for m in field.metadata if isinstance(m, annotated_types.Ge)), None)
    lt = next((m.lt for m in field.metadata if isinstance(m, annotated_types.Lt)), None)
    le = next((m.le for m in field.metadata if isinstance(m, annotated_types.Le)), None)
    kind = "a whole number" if field.annotation is int else "a number"
    if gt is not None and lt is not None:
        return f"{kind} strictly between {gt:g} and {lt:g}"
    if le is not None:
        return f"{kind} {'> ' + format(gt, 'g') if gt is not None else '>= ' + format(ge, 'g')} and <= {le:g}"
    if ge is not None:
        return f"{kind} >= {ge:g}"
    return f"{kind} > {gt:g}" if gt is not None else kind


# -- the commented example --------------------------------------------------------------------------------------
def render_config(width: int = 100) -> str:
    """``guard.toml`` with every key set to its default and commented from the fields' descriptions (the text of
    ``docs/guard.toml`` and of ``bastion serve --print-config``)."""

    def comment(text: str) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width - 2, initial_indent="# ", subsequent_indent="# ")

    lines = comment(
        "bastion guard settings: bastion serve --config guard.toml. Every key is optional; the values "
        "below are the defaults. An unknown key or a value out of range stops bastion serve with a "
        "message naming it. Printed by bastion serve --print-config."
    )
    for section, cls in SECTIONS.items():
        lines += ["", f"[{section}]", *comment(cls.__doc__ or "")]
        for key, field in cls.model_fields.items():
            lines += comment(f"{field.description} {_expected(section, key)[0].upper()}{_expected(section, key)[1:]}.")
            lines.append(f"{key} = {_toml_value(field.default)}")
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)
