"""The guard: model + signals + policies, calibrated on the operator's reference data.

Per input (one forward pass gives the logits and the penultimate features):

- **confidence** — selective classification (Geifman & El-Yaniv 2017): the maximum softmax probability
  is compared with a threshold chosen on held-out reference data as the lowest confidence whose
  answered set keeps the error rate at or below ``target_risk`` (empirical risk; the whole
  risk-coverage curve is kept and served at ``/v1/admin/risk-coverage``).
- **ood** — by default the activation-statistics detector
  (:class:`bastion.defenses.detection.ActivationDetector`, read in the same forward pass as the logits),
  thresholded at the ``fpr`` quantile of held-out clean reference scores; on the zoo mnist-cnn it flags 98% of
  PGD inputs at eps 0.3 where the Mahalanobis detector (``ood.detector = "mahalanobis"``, Lee et al. 2018)
  flags 2.5%. Any fitted, calibrated :class:`~bastion.defenses.detection.Detector` can replace it
  (``detector=``). A model without the features capability
  (:class:`~bastion.models.features.HasFeatures`: ONNX, remote, scikit-learn) has no OOD signal and drift
  runs on raw inputs: :meth:`Guard.signals` says so.
- **backdoor** (off unless ``[backdoor] enabled``: ``n_perturb`` extra forward passes per input) — STRIP
  (:class:`bastion.defenses.detection.STRIP`, Gao et al. 2019): low entropy of the predictions on the input
  superimposed on clean reference images marks a trigger; any model, scores only.

Per stream: **drift** (:class:`~bastion.serve.drift.DriftMonitor`: MMD on features for images, per-feature
KS for tabular inputs, over tumbling windows) and per client **extraction**
(:class:`~bastion.serve.extraction.ExtractionMonitor`, PRADA).

**Output policy** (``[output]``, :mod:`bastion.serve.output`): the probabilities answered go through it; the label
is the model's, the confidence shown the top returned probability, and each audit record names the policy.

Each signal's policy: ``answer`` (score only), ``flag`` (answer, with the reason), ``abstain`` (label
null). A client flagged as extracting is flagged, throttled or blocked (``extraction.action``):
:meth:`Guard.client_policy` decides it (:mod:`bastion.serve.policy`), the HTTP layer only applies it.

Inference is batched: concurrent requests are queued and one worker thread runs them together (up to
``max_batch_inputs`` inputs per forward pass), which is also where the stream monitors are updated, so
they need no locks.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError
from .calibration import fit_backdoor
from .config import GuardConfig
from .drift import DriftMonitor
from .extraction import ExtractionMonitor
from .output import output_policy
from .policy import ClientPolicy, Reading, client_policy, decide
from .risk import RiskCoverage, risk_coverage

__all__ = ["Guard", "RiskCoverage", "risk_coverage"]


@dataclass
class _Job:
    x: Tensor
    client: str
    future: Future[tuple[list[dict[str, Any]], dict[str, Any]]]


class Guard:
    """Model + detector + monitors + policies. ``start()`` runs the inference worker; ``submit`` queues one
    request's inputs and returns a future of ``(results, client_status)``. The drift test runs in a thread of
    its own (a permutation test takes a tenth of a second or more), off the requests' path; each completed
    window is passed to the callables in ``on_drift``.

    ``reference`` is a :class:`~bastion.data.Dataset` of clean data: the detector is fitted on its training
    split, the confidence and detector thresholds are calibrated on the first half of its test split
    (held out from training, so the measured risk is honest), and drift compares traffic with 2,000
    inputs of its training split. The second half of the test split is never used here.
    """

    def __init__(
        self,
        model: Any,
        reference: Any,
        config: GuardConfig | None = None,
        *,
        detector: Any = None,
        seed: int = 0,
        max_batch_inputs: int = 256,
    ) -> None:
        from ..models.base import validate_inputs
        from ..models.features import HasFeatures

        self.model = model
        self.config = config or GuardConfig()
        self.input_shape = tuple(model.input_shape)
        self.bounds = tuple(float(b) for b in model.bounds)
        self.n_classes = int(model.n_classes)
        self.max_batch_inputs = int(max_batch_inputs)
        validate_inputs(model, reference.x_train[:2], reference.y_train[:2], name="the reference data")
        # fit on the training split (what the model learnt from); calibrate thresholds on the first half of the
        # held-out split (confidence on training data would be over-optimistic); the second half stays unseen
        n_cal = int(reference.x_test.shape[0]) // 2
        if n_cal < 20 or reference.x_train.shape[0] < 2 * self.n_classes:
            raise UsageError(
                f"the reference data is too small to fit the detector and calibrate thresholds: give at "
                f"least {2 * self.n_classes} training and 40 held-out inputs"
            )
        x_cal, y_cal = reference.x_test[:n_cal], reference.y_test[:n_cal]
        self.white_box = isinstance(model, HasFeatures)  # features to read: the OOD signal and feature drift
        t0 = time.perf_counter()
        self.detector = self._fit_detector(detector, reference, x_cal)
        self.backdoor = fit_backdoor(self.config.backdoor, model, reference, x_cal, seed)
        logits, _, _ = self.forward(x_cal)
        conf, pred = torch.softmax(logits.double(), dim=1).max(dim=1)
        self.risk_coverage = risk_coverage(conf, pred == y_cal, self.config.confidence.target_risk)
        self.drift, n_drift = self._drift_monitor(reference.x_train, seed)
        self.drift_test = self.drift.test
        ext = self.config.extraction
        self.extraction = ExtractionMonitor(delta=ext.delta, budget=ext.budget or None)
        self._ext_lock = threading.Lock()  # the worker updates it while request handlers read it
        self.output_policy, self.output_description = output_policy(self.config.output, model, seed)
        self.calibration = {
            "reference": getattr(reference, "name", "?"),
            "fit_inputs": int(reference.x_train.shape[0]),
            "calibration_inputs": n_cal,
            "drift_reference_inputs": n_drift,
            "ood_threshold": getattr(self.detector, "threshold_", None),
            "backdoor_threshold": getattr(self.backdoor, "threshold_", None),
            "confidence_threshold": self.risk_coverage.threshold,
            "coverage": self.risk_coverage.chosen_coverage,
            "risk": self.risk_coverage.chosen_risk,
            "drift_test": self.drift_test,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        self.ood_scores: list[float] = []  # recent scores, for the dashboard's histogram
        self._q: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._drift_q: queue.Queue[Tensor | None] = queue.Queue(maxsize=10_000)
        self.drift_dropped = 0  # inputs left out of the drift windows because the drift thread fell behind
        self._drift_lock = threading.Lock()
        self._drift_thread: threading.Thread | None = None
        self.on_drift: list[Any] = []
        self._published: list[dict[str, Any]] = []  # windows whose listeners have run

    def _fit_detector(self, detector: Any, reference: Any, x_cal: Tensor) -> Any:
        """The OOD detector, fitted on the reference's training split and calibrated on ``x_cal``; None (the signal
        is off) for a model that declares no features."""
        if not self.white_box:
            return None
        from ..defenses.detection import get_detector

        det = detector if detector is not None else get_detector(self.config.ood.detector)
        self._feature_layer = self.model.penultimate_layer
        if not det.is_fitted:
            det.fit(self.model, reference.x_train, reference.y_train)
        det.calibrate(x_cal, fpr=self.config.ood.fpr)
        return det

    def _drift_monitor(self, x_ref: Tensor, seed: int) -> tuple[DriftMonitor, int]:
        """The drift monitor on 2,000 reference training inputs (penultimate features for mmd, raw rows for ks)."""
        test = self.config.drift.test
        if test == "auto":
            test = "mmd" if self.white_box and len(self.input_shape) > 1 else "ks"
        g = torch.Generator().manual_seed(seed)
        sub = x_ref[torch.randperm(int(x_ref.shape[0]), generator=g)[:2000]]
        ref_feats = self.forward(sub)[1] if test == "mmd" else sub.flatten(1)
        d = self.config.drift
        monitor = DriftMonitor(
            ref_feats, test=test, window=d.window, alpha=d.alpha, permutations=d.permutations, seed=seed
        )
        return monitor, int(sub.shape[0])

    # -- the model --------------------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Logits (N, C), features (N, d) and OOD scores (N,) (None without a detector), in batches."""
        outs_z, outs_f, outs_s = [], [], []
        for i in range(0, x.shape[0], 500):
            xb = x[i : i + 500]
            if self.detector is not None:
                z, f, s = self._forward_with_detector(xb)
                outs_s.append(s.float())
            else:
                z, f = self.model.logits(xb), xb.flatten(1)
            outs_z.append(z.float())
            outs_f.append(f.float())
        return torch.cat(outs_z), torch.cat(outs_f), (torch.cat(outs_s) if outs_s else None)

    def _forward_with_detector(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Logits, penultimate features and detector scores of one batch: one forward pass when the detector
        scores activations (the penultimate layer read alongside its own), else a second for the detector."""
        from ..defenses.detection import FeatureDetector

        if isinstance(self.detector, FeatureDetector):
            layers = list(self.detector.layers_)
            extra = self._feature_layer not in layers
            z, feats = self.model.logits_and_features(
                x, [*layers, self._feature_layer] if extra else layers, pool=self.detector.pool
            )
            f = feats[-1] if extra else feats[layers.index(self._feature_layer)]
            return z, f, self.detector.score_features(feats[: len(layers)])
        z, (f,) = self.model.logits_and_features(x, [self._feature_layer])
        return z, f, self.detector.score(x)

    # -- the worker -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bastion-guard", daemon=True)
            self._thread.start()
        if self._drift_thread is None:
            self._drift_thread = threading.Thread(target=self._run_drift, name="bastion-drift", daemon=True)
            self._drift_thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(30)
            self._thread = None
        if self._drift_thread is not None:
            self._drift_q.put(None)  # blocks while the queue is full: the thread is draining it
            self._drift_thread.join(60)
            self._drift_thread = None

    def client_status(self, client: str) -> dict[str, Any]:
        """The extraction monitor's status of one client (key id)."""
        with self._ext_lock:
            return self.extraction.status(client)

    def count_queries(self, client: str, n: int) -> dict[str, Any]:
        """Count ``n`` encrypted queries of ``client`` against its budget (the guard cannot read them); its status."""
        with self._ext_lock:
            return self.extraction.count(client, n, int(np.prod(self.input_shape)))

    def client_policy(self, client: str, status: dict[str, Any] | None = None) -> ClientPolicy:
        """How ``client`` is treated now (:func:`~bastion.serve.policy.client_policy`), from its extraction
        ``status`` (default: the monitor's current one)."""
        st = self.client_status(client) if status is None else status
        return client_policy(st, self.config.extraction, self.config.limits)

    def clients(self) -> list[dict[str, Any]]:
        """Every client's extraction status."""
        with self._ext_lock:
            return self.extraction.clients()

    def drift_history(self, last: int = 500) -> list[dict[str, Any]]:
        """The last completed drift windows (their events written, their metrics set), oldest first."""
        with self._drift_lock:
            return list(self._published[-last:])

    def drift_pending(self) -> int:
        """Feature batches waiting for the drift thread."""
        return self._drift_q.qsize()

    def _run_drift(self) -> None:
        import logging

        while True:
            feats = self._drift_q.get()
            if feats is None:
                return
            with self._drift_lock:
                windows = self.drift.observe(feats)
            for w in windows:
                for callback in self.on_drift:
                    try:
                        callback(w)
                    except Exception:  # a failing listener must not stop the monitor
                        logging.getLogger("bastion.serve").exception("drift listener failed")
                with self._drift_lock:
                    self._published.append(w)
                    del self._published[:-10_000]

    def submit(self, x: Tensor, client: str) -> Future[tuple[list[dict[str, Any]], dict[str, Any]]]:
        fut: Future[tuple[list[dict[str, Any]], dict[str, Any]]] = Future()
        self._q.put(_Job(x, client, fut))
        return fut

    def _run(self) -> None:
        while True:
            job = self._q.get()
            if job is None:
                return
            jobs = [job]
            size = job.x.shape[0]
            while size < self.max_batch_inputs:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                jobs.append(nxt)
                size += nxt.x.shape[0]
            try:
                self._process(jobs)
            except Exception as exc:  # noqa: BLE001 - fail these requests, keep serving
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(exc)

    def _process(self, jobs: list[_Job]) -> None:
        x = torch.cat([j.x for j in jobs])
        logits, feats, ood = self.forward(x)
        probs = torch.softmax(logits.double(), dim=1)
        conf, labels = probs.max(dim=1)
        returned = self.output_policy(probs, x)  # the label stays the model's: every policy keeps it on top
        shown = returned.max(dim=1).values
        send = self.output_policy.returns_probabilities
        with torch.no_grad():
            backdoor = self.backdoor.score(x).float() if self.backdoor is not None else None
        try:  # under overload the drift windows sample the traffic rather than queue without bound
            self._drift_q.put_nowait(feats if self.drift_test == "mmd" else x.flatten(1))
        except queue.Full:
            self.drift_dropped += int(x.shape[0])
        if ood is not None:
            self.ood_scores.extend(ood.tolist())
            del self.ood_scores[:-5000]
        start = 0
        for j in jobs:
            n = j.x.shape[0]
            sl = slice(start, start + n)
            start += n
            with self._ext_lock:
                status = self.extraction.observe(j.client, j.x, labels[sl])
            results = [
                decide(
                    int(labels[i]),
                    [round(v, 6) for v in returned[i].tolist()] if send else None,
                    self._readings(i, conf, shown, ood, backdoor),
                )
                for i in range(sl.start, sl.stop)
            ]
            j.future.set_result((results, status))

    def _readings(
        self, i: int, conf: Tensor, shown: Tensor, ood: Tensor | None, backdoor: Tensor | None
    ) -> list[Reading]:
        """Input ``i``'s readings: confidence (decided on the model's ``conf``, shown as the top returned probability
        ``shown``: the output policy's), then the OOD and backdoor scores where those signals are on."""
        cfg, c = self.config, float(conf[i])
        low = "low_confidence" if c < self.risk_coverage.threshold else None
        out = [Reading("confidence", round(float(shown[i]), 6), low, cfg.confidence.action)]
        for key, det, scores, action in (
            ("ood", self.detector, ood, cfg.ood.action),
            ("backdoor", self.backdoor, backdoor, cfg.backdoor.action),
        ):
            if scores is not None:
                s = float(scores[i])
                out.append(Reading(key, round(s, 4), key if s > det.threshold_ else None, action))
        return out

    # -- views ------------------------------------------------------------------------------------
    def signals(self) -> dict[str, str]:
        """Each signal, ``"on..."`` or ``"off: why"``, in words: what this guard sees and what it does not."""
        cfg = self.config
        if self.detector is None:
            ood = "off: the model declares no features (ONNX/black-box), so no detector can read them"
        else:
            ood = f"on: {type(self.detector).__name__}, {cfg.ood.action} above the clean {cfg.ood.fpr:g}-fpr threshold"
        on = "penultimate features" if self.drift_test == "mmd" and self.white_box else "raw inputs"
        budget = f", budget {cfg.extraction.budget} queries" if cfg.extraction.budget else ""
        bd = cfg.backdoor
        backdoor = (
            f"on: STRIP with n_perturb={bd.n_perturb}, {bd.action} above the clean {bd.fpr:g}-fpr threshold"
            if self.backdoor is not None
            else f"off: [backdoor] enabled = false (STRIP costs n_perturb={bd.n_perturb} forward passes per input)"
        )
        return {
            "confidence": f"on: {cfg.confidence.action} below the confidence threshold",
            "ood": ood,
            "backdoor": backdoor,
            "drift": f"{self.drift_test} on {on}",
            "extraction": f"on: PRADA per key, {cfg.extraction.action} when flagged{budget}",
            "output": "off: [output] policy = none"
            if cfg.output.policy == "none"
            else f"on: {self.output_description}, the label kept",
        }

    def describe(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "calibration": self.calibration,
            "signals": self.signals(),
            "input_shape": list(self.input_shape),
            "bounds": list(self.bounds),
            "n_classes": self.n_classes,
            "ood_signal": self.detector is not None,
            "detector": repr(self.detector) if self.detector is not None else None,
            "backdoor_signal": self.backdoor is not None,
            "backdoor_detector": repr(self.backdoor) if self.backdoor is not None else None,
        }

    def ood_histogram(self, bins: int = 30) -> dict[str, Any]:
        threshold = getattr(self.detector, "threshold_", None)
        if not self.ood_scores:
            return {"edges": [], "counts": [], "threshold": threshold}
        counts, edges = np.histogram(np.asarray(self.ood_scores), bins=bins)
        return {"edges": edges.tolist(), "counts": counts.tolist(), "threshold": threshold}
