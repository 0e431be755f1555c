"""bastion audit: the runner, probes, validity checks, gates, resume and reproducibility, on real models.

The undefended mnist-cnn must pass every validity check and show a high evasion risk; the same CNN
behind a non-differentiable input quantisation (gradients exactly zero) must have its gradient
masking flagged while the black-box probe still breaks it.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from bastion.audit import PROBES, Check, Probe, Profile, parse_gate, register_probe, run_audit
from bastion.audit.gates import evaluate_gates
from bastion.audit.probe import wilson_interval
from bastion.audit.runner import STATE_DIR
from bastion.data import load_dataset
from bastion.errors import UsageError
from bastion.models import TorchClassifier
from bastion.models.zoo import load_zoo


def checks_of(report: dict) -> dict[str, str]:
    return {c["id"]: c["status"] for c in report["checks"]}


# -- the quick audit of the undefended CNN -----------------------------------------------------------------
# the first test to ask for the session's quick audit pays for it: ~10 min beside another heavy test (2 workers)
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_audit_of_the_undefended_cnn(quick_audit):
    report, out = quick_audit
    assert {p.name for p in out.iterdir()} >= {"report.json", "index.html", "junit.xml", STATE_DIR}
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report))
    assert report["schema"] == "bastion.audit/1" and report["settings"]["n"] == 200
    assert [p["probe"] for p in report["probes"]] == [
        "model",
        "whitebox",
        "minimum-norm",
        "blackbox",
        "noise",
        "patch",
        "certification",
        "detection",
        "membership",
        "inversion",
        "extraction",
    ]
    status = {p["probe"]: p["status"] for p in report["probes"]}
    assert status.pop("certification") == status.pop("detection") == "skipped"  # no smoothing, no detector here
    assert set(status.values()) == {"ok"}, [(p["probe"], p["reason"]) for p in report["probes"]]
    # every validity check passes on the undefended model (quick trains no reference model to compare with)
    checks = checks_of(report)
    assert checks.pop("references-match-target") == "skipped"
    assert set(checks.values()) == {"pass"}, checks
    assert len(report["checks"]) >= 10 and report["verdict"]["validity"] == "pass"
    m = report["metrics"]
    assert m["clean_accuracy"] > 0.95
    eps = report["settings"]["eps"]
    assert eps == [0.05, 0.1, 0.2, 0.3]
    curve = [m[f"robust_accuracy@eps={e:g}"] for e in eps]
    assert curve == sorted(curve, reverse=True) and curve[-1] <= 0.01 and 0.3 < curve[1] < 0.9
    # the worst case over all probes is no higher than any single attack's
    for e in eps:
        for k in ("fgsm", "pgd", "whitebox"):
            assert m[f"robust_accuracy@eps={e:g}"] <= m[f"robust_accuracy[{k}]@eps={e:g}"] + 1e-9
    assert m["robust_accuracy[square]@eps=0.3"] <= 0.05
    assert report["verdict"]["risk"] == "high"
    # per-sample results cover the audited inputs
    wb = next(p for p in report["probes"] if p["probe"] == "whitebox")
    assert all(len(v["robust"]) == 200 for v in wb["per_sample"].values())
    assert wb["examples"] and wb["plots"][0]["kind"] == "line"
    assert len(report["model"]["fingerprint"]) == 64 and len(report["data"]["fingerprint"]) == 64


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_audited_robust_accuracy_agrees_with_a_direct_attack(quick_audit, mnist_cnn, mnist):
    """The probe's PGD number is the library's PGD, run directly with the probe's recorded parameters."""
    report, _ = quick_audit
    wb = next(p for p in report["probes"] if p["probe"] == "whitebox")
    from bastion.attacks import PGD

    steps = wb["params"]["pgd_steps"]
    r = PGD(eps=0.1, steps=steps)(mnist_cnn, mnist.x_test[:200], mnist.y_test[:200])
    assert abs(r.robust_accuracy - report["metrics"]["robust_accuracy[pgd]@eps=0.1"]) <= 0.02


# -- masked gradients -----------------------------------------------------------------------------------
class _Quantise(nn.Module):
    """Input quantisation to 1/8 steps: piecewise constant, so its gradient is exactly zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 8) / 8


def test_masked_gradients_are_flagged_and_the_black_box_probe_still_breaks_the_model(tmp_path, mnist_cnn, mnist):
    masked = TorchClassifier(
        nn.Sequential(_Quantise(), mnist_cnn.module).eval(), n_classes=10, input_shape=(1, 28, 28), output="logits"
    )
    profile = Profile(
        "masking-test",
        "small budgets",
        100,
        {
            "model": {},
            "whitebox": {"pgd_steps": 10, "apgd_steps": 10, "apgd_t_targets": 1, "extra_restarts": 1},
            "blackbox": {"n_square": 100, "square_queries": 300, "n_hsj": 0},
        },
    )
    report = run_audit(masked, mnist, tmp_path / "masked", profile=profile, eps=[0.3], write=False)
    checks = checks_of(report)
    assert checks["gradients"] == "fail"
    assert checks["gradient-masking"] == "fail"
    assert checks["unbounded-attack"] == "fail"
    assert report["verdict"]["validity"] == "fail"
    m = report["metrics"]
    assert m["clean_accuracy"] > 0.9
    assert m["robust_accuracy[whitebox]@eps=0.3"] >= 0.4  # the gradient attacks are blind ...
    assert m["robust_accuracy[square]@eps=0.3"] <= 0.1  # ... the queries are not
    assert m["robust_accuracy@eps=0.3"] <= 0.1  # and the worst case reports the vulnerability


class _NoisyInput(nn.Module):
    """Gaussian input noise at inference time too: a randomised model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.05 * torch.randn_like(x)


def test_a_randomised_model_is_flagged_and_attacked_through_eot(tmp_path, digits_mlp, digits):
    noisy = TorchClassifier(
        nn.Sequential(_NoisyInput(), digits_mlp.module), n_classes=10, input_shape=(1, 8, 8), output="logits"
    )
    profile = Profile(
        "eot-test",
        "",
        60,
        {"model": {}, "whitebox": {"pgd_steps": 10, "apgd_steps": 10, "apgd_t_targets": 1, "eot_samples": 4}},
    )
    report = run_audit(noisy, digits, tmp_path / "noisy", profile=profile, eps=[0.1, 0.3], write=False)
    assert checks_of(report)["deterministic"] == "warn"
    wb = next(p for p in report["probes"] if p["probe"] == "whitebox")
    assert wb["params"]["eot"] is True and "EOT" in wb["summary"]
    assert report["metrics"]["robust_accuracy[pgd]@eps=0.3"] <= 0.1  # EOT-PGD still breaks it


# -- other model kinds ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_black_box_and_tabular_models_skip_what_does_not_apply(tmp_path):
    cancer = load_dataset("breast-cancer")
    report = run_audit(load_zoo("cancer-gbt"), cancer, tmp_path / "gbt", profile="quick", write=False)
    status = {p["probe"]: (p["status"], p["reason"]) for p in report["probes"]}
    assert status["whitebox"][0] == "skipped" and "black box" in status["whitebox"][1]
    assert status["patch"][0] == "skipped" and "not images" in status["patch"][1]
    assert status["blackbox"][0] == "ok"
    assert checks_of(report)["gradient-masking"] == "skipped"
    assert report["metrics"]["robust_accuracy@eps=0.3"] <= 0.2  # the trees fall to Square


# -- gates ------------------------------------------------------------------------------------------------
def test_gates_parse_and_compare_like_the_closed_form():
    metrics = {"clean_accuracy": 0.97, "robust_accuracy@eps=0.1": 0.62, "robust_accuracy[square]@eps=0.3": 0.0}
    gates = [
        parse_gate("robust_accuracy@eps=0.10>=0.5", [0.1, 0.3]),
        parse_gate("clean_accuracy > 0.98"),
        parse_gate("robust_accuracy[square]@eps=0.3<=0"),
        parse_gate("patch_success[untargeted]<0.5"),
    ]
    res = evaluate_gates(gates, metrics)
    assert [r["passed"] for r in res] == [True, False, True, False]
    assert res[0]["value"] == 0.62 and res[3]["value"] is None and "not measured" in res[3]["message"]
    for bad, needle in [
        ("robust_accuracy@eps=0.1=>0.5", "cannot parse"),
        ("accuracy>=0.5", "unknown metric"),
        ("robust_accuracy@eps=0.2>=0.5", "not audited"),
        ("", "cannot parse"),
    ]:
        with pytest.raises(UsageError, match=needle):
            parse_gate(bad, [0.1, 0.3])


def test_wilson_interval_matches_the_closed_form():
    lo, hi = wilson_interval(90, 100)
    assert math.isclose(lo, 0.8256, abs_tol=1e-4) and math.isclose(hi, 0.9448, abs_tol=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and math.isclose(wilson_interval(10, 10)[1], 1.0)


# -- resume, refusal, reproducibility ---------------------------------------------------------------------
SMALL = Profile(
    "small",
    "test budgets",
    60,
    {
        "model": {},
        "whitebox": {"pgd_steps": 10, "apgd_steps": 10, "apgd_t_targets": 2, "extra_restarts": 1},
        "noise": {"n": 60, "queries": 20},
    },
)


def test_an_interrupted_audit_resumes_and_refuses_other_settings(tmp_path, digits_mlp, digits):
    out = tmp_path / "run"

    def stop_after_whitebox(res, resumed):
        if res.probe == "whitebox":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_audit(digits_mlp, digits, out, profile=SMALL, on_probe=stop_after_whitebox)
    assert not (out / "report.json").exists() and not (out / "index.html").exists()
    assert sorted(p.name for p in (out / STATE_DIR).glob("probe-*.json")) == ["probe-model.json", "probe-whitebox.json"]
    seen = []
    report = run_audit(
        digits_mlp, digits, out, profile=SMALL, on_probe=lambda r, resumed: seen.append((r.probe, resumed))
    )
    assert seen == [("model", True), ("whitebox", True), ("noise", False)]
    assert report["resumed"] and (out / "report.json").exists()
    with pytest.raises(UsageError, match=r"other settings.*seed"):
        run_audit(digits_mlp, digits, out, profile=SMALL, seed=1)
    assert (out / "report.json").exists()  # a refused run leaves the finished report alone


def test_the_same_seed_gives_the_same_numbers(tmp_path, digits_mlp, digits):
    a = run_audit(digits_mlp, digits, tmp_path / "a", profile=SMALL, write=False)
    b = run_audit(digits_mlp, digits, tmp_path / "b", profile=SMALL, write=False)
    c = run_audit(digits_mlp, digits, tmp_path / "c", profile=SMALL, seed=7, write=False)
    assert a["metrics"] == b["metrics"]
    assert [p["per_sample"] for p in a["probes"]] == [p["per_sample"] for p in b["probes"]]
    assert a["metrics"] != c["metrics"]


def test_output_directory_rules(tmp_path, digits_mlp, digits):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        run_audit(digits_mlp, digits, f, profile=SMALL)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds no bastion audit"):
        run_audit(digits_mlp, digits, other, profile=SMALL)
    assert (other / "notes.txt").read_text() == "mine"


def test_bad_arguments_are_usage_errors_before_anything_runs(tmp_path, digits_mlp, digits, mnist):
    for kwargs, needle in [
        ({"profile": "nope"}, "unknown profile"),
        ({"norm": "l1"}, "linf and l2"),
        ({"eps": [0.1, -1]}, "eps"),
        ({"probes": ["whitebox", "fuzz"]}, "unknown probe"),
        ({"gates": ["robust_accuracy@eps=0.7>=0.1"]}, "not audited"),
        ({"n": 0}, "n must be >= 1"),
    ]:
        with pytest.raises(UsageError, match=needle):
            run_audit(digits_mlp, digits, tmp_path / "x", **kwargs)
    with pytest.raises(UsageError, match="shape"):
        run_audit(digits_mlp, mnist, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# -- extensibility: a new probe plugs in without touching the runner ------------------------------------------
def test_a_registered_probe_runs_in_a_custom_profile(tmp_path, digits_mlp, digits):
    @register_probe
    class MarginProbe(Probe):
        name = "test-margin"
        title = "Logit margin"
        threat = "test"
        defaults: ClassVar[dict[str, Any]] = {"quantile": 0.5}

        def run(self, ctx):
            z = ctx.model.logits(ctx.x)
            top2 = z.topk(2, dim=1).values
            q = float((top2[:, 0] - top2[:, 1]).quantile(self.params["quantile"]))
            return self.result(
                ctx,
                risk="low",
                summary=f"median margin {q:.2f}",
                metrics={"margin": q},
                checks=[
                    Check(
                        "margin-positive",
                        "Margins are positive",
                        "pass" if q > 0 else "fail",
                        "the median logit margin",
                    )
                ],
            )

    try:
        prof = Profile("custom", "one probe", 50, {"model": {}, "test-margin": {"quantile": 0.5}})
        report = run_audit(digits_mlp, digits, tmp_path / "custom", profile=prof)
        assert [p["probe"] for p in report["probes"]] == ["model", "test-margin"]
        assert report["metrics"]["margin"] > 0 and checks_of(report)["margin-positive"] == "pass"
        assert 'id="probe-test-margin"' in (tmp_path / "custom" / "index.html").read_text()
    finally:
        PROBES.unregister("test-margin")


def test_a_probe_that_raises_is_recorded_and_the_audit_goes_on(tmp_path, digits_mlp, digits):
    @register_probe
    class Broken(Probe):
        name = "test-broken"
        title = "Broken"
        threat = "test"

        def run(self, ctx):
            raise RuntimeError("boom")

    try:
        prof = Profile("broken", "", 20, {"test-broken": {}, "model": {}})
        report = run_audit(digits_mlp, digits, tmp_path / "b", profile=prof)
        assert [(p["probe"], p["status"]) for p in report["probes"]] == [("test-broken", "error"), ("model", "ok")]
        assert "boom" in report["probes"][0]["reason"]
        junit = (tmp_path / "b" / "junit.xml").read_text()
        assert "<error" in junit and "boom" in junit
    finally:
        PROBES.unregister("test-broken")


def test_a_probe_declares_its_identity_as_class_keywords():
    @register_probe
    class KeywordProbe(Probe, name="test-keywords", title="Keywords", threat="test / keywords"):
        defaults: ClassVar[dict[str, Any]] = {"k": 1}

    class Attributes(Probe):  # the attribute form, as third-party probes write it
        name = "test-attributes"
        title = "Attributes"

    class Both(Attributes, title="Keyword wins"):
        pass

    try:
        assert PROBES.get("test-keywords") is KeywordProbe
        assert (KeywordProbe.name, KeywordProbe.title, KeywordProbe.threat) == (
            "test-keywords",
            "Keywords",
            "test / keywords",
        )
        assert (Attributes.name, Attributes.title, Attributes.threat) == ("test-attributes", "Attributes", "")
        assert (Both.name, Both.title) == ("test-attributes", "Keyword wins")
        assert (Probe.name, Probe.title, Probe.threat) == ("probe", "probe", "")
        assert KeywordProbe(k=2).params == {"k": 2}
    finally:
        PROBES.unregister("test-keywords")


# -- a resumed report's time --------------------------------------------------------------------------------
def test_a_resumed_report_counts_the_seconds_of_the_probes_run_before(tmp_path, digits_mlp, digits):
    out = tmp_path / "run"
    first = run_audit(digits_mlp, digits, out, profile=SMALL)
    again = run_audit(digits_mlp, digits, out, profile=SMALL)  # every probe finished: all resumed
    assert again["resumed"] and [p["seconds"] for p in again["probes"]] == [p["seconds"] for p in first["probes"]]
    probe_seconds = sum(p["seconds"] for p in first["probes"])
    assert probe_seconds > 0 and again["seconds_this_run"] < probe_seconds
    assert again["seconds"] == pytest.approx(probe_seconds + again["seconds_this_run"], abs=2e-3)
    header = (out / "index.html").read_text().split("</header>")[0]
    assert f"{again['seconds']:.3g} s · resumed: " in header and "in this run" in header


# -- the patch probe: indices, the real area, an optimiser failure is a validity warning ----------------------
PATCH_ONLY = Profile("patch-only", "the patch probe", 200, {"patch": {"steps": 300, "fit_images": 2000}})


def test_the_patch_probe_states_its_real_area_and_the_gallery_indices(tmp_path, mnist_cnn, mnist):
    report = run_audit(mnist_cnn, mnist, tmp_path / "p", profile=PATCH_ONLY)
    probe = report["probes"][0]
    assert probe["params"]["patch_side"] == 8 and probe["params"]["patch_area"] == pytest.approx(64 / 784)
    assert "8x8 patch (8.2% of the image; at most 10% asked" in probe["summary"]
    assert checks_of(report) == {"patch-beats-random": "pass"}
    m = probe["metrics"]
    assert m["patch_success[untargeted]"] > m["patch_success[random,untargeted]"] + 0.05
    assert probe["examples"]
    for ex in probe["examples"]:  # each example is the audited input its index names, which the model got right
        i = ex["index"]
        assert i >= 0 and torch.equal(torch.tensor(ex["clean"]), mnist.x_test[i])
        assert ex["label"] == int(mnist.y_test[i]) == ex["pred_clean"] != ex["pred_adv"]
        assert ex["eps"] == pytest.approx(64 / 784)
    page = (tmp_path / "p" / "index.html").read_text()
    assert "#-1" not in page and f"clean input #{probe['examples'][0]['index']}," in page
    assert "covering 8.2% of the image" in page


def test_a_patch_worse_than_a_random_one_is_a_validity_warning(tmp_path, mnist_cnn, mnist, monkeypatch):
    """Positive control: a 'trained' patch that is flat mid-grey (an optimiser that went nowhere) fools 2.1% of
    the images where a random patch fools 3.6%; the risk reads low, so the check must say it means nothing."""
    import bastion.audit.probes.patch as patch_probe

    monkeypatch.setattr(patch_probe, "fit", lambda model, x, y, target, **kw: torch.full((1, 8, 8), 0.5))
    report = run_audit(mnist_cnn, mnist, tmp_path / "grey", profile=PATCH_ONLY, write=False)
    m = report["probes"][0]["metrics"]
    assert m["patch_success[untargeted]"] < m["patch_success[random,untargeted]"]
    assert report["probes"][0]["risk"] == "low"
    assert checks_of(report) == {"patch-beats-random": "warn"} and report["verdict"]["validity"] == "warn"


def test_the_patch_check_reads_every_patch_with_numbers_on_both_sides():
    from bastion.audit.probes.patch import patch_beats_random

    ok = {"patch_success[untargeted]": 0.2, "patch_success[random,untargeted]": 0.2}
    assert patch_beats_random(ok, [None]).status == "pass"  # as good as random: not an optimiser failure
    worse = {**ok, "patch_success[target=3]": 0.01, "patch_success[random,target=3]": 0.02}
    c = patch_beats_random(worse, [None, 3])
    assert c.status == "warn" and "target=3: 1.0% < random 2.0%" in c.explanation and "untargeted" not in c.explanation
    assert c.evidence["target=3"] == {"trained": 0.01, "random": 0.02}
    nan = {"patch_success[untargeted]": math.nan, "patch_success[random,untargeted]": 0.1}
    assert patch_beats_random(nan, [None]).status == "pass"  # nothing measured (no image of another class)


# -- the detector split, in the library ----------------------------------------------------------------------
def test_fit_detector_fits_and_calibrates_on_disjoint_training_inputs(digits_mlp, digits, monkeypatch):
    from bastion.audit import fit_detector
    from bastion.defenses.detection import MahalanobisDetector

    seen: dict[str, torch.Tensor] = {}
    det = MahalanobisDetector()
    fit, calibrate = det.fit, det.calibrate
    monkeypatch.setattr(det, "fit", lambda model, x, y: (seen.update(fit=x), fit(model, x, y))[1])
    monkeypatch.setattr(det, "calibrate", lambda x, fpr: (seen.update(cal=x), calibrate(x, fpr=fpr))[1])
    assert fit_detector(digits_mlp, digits, det, fpr=0.1) is det
    k = digits.x_train.shape[0] // 4  # 1,437 training images: a quarter held out for the threshold
    assert torch.equal(seen["cal"], digits.x_train[:k]) and torch.equal(seen["fit"], digits.x_train[k:])
    flagged = (det.score(digits.x_train[:k]) > det.threshold_).float().mean()
    assert 0.1 - 2 / k <= float(flagged) <= 0.1 + 2 / k and det.fpr_ == 0.1  # the (1 - fpr) quantile of its scores
    small = load_dataset("digits")
    small.x_train, small.y_train = small.x_train[:70], small.y_train[:70]
    for kwargs, needle in [
        ({"data": small}, "too small"),
        ({"detector": "nope"}, "unknown detector 'nope'"),
        ({"fpr": 1.0}, "fpr must lie in"),
    ]:
        with pytest.raises(UsageError, match=needle):
            fit_detector(digits_mlp, kwargs.pop("data", digits), **kwargs)
