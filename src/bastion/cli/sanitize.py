"""``bastion sanitize``: find the poisoned records of a training set with a model trained on it, and write the
rest. The work is the library's (:mod:`bastion.defenses.sanitization`: spectral signatures, activation
clustering)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from .common import Data, LoadOptions, Model, check_output_file, emit, json_help, load_model_and_data, refuse
from .groups import expand_groups

JSON_KEYS = ("method", "n_inputs", "n_removed", "removed_rate", "out", "seconds")
"""Always in ``--json``; when the data records which records were poisoned (a ``bastion poison`` .npz), also
``precision``, ``recall``, ``f1`` and ``removed_clean_rate``."""

Method = Annotated[
    str,
    typer.Option(
        ..., "--method", help="spectral (Tran et al. 2018) or clustering (activation clustering, Chen et al. 2018)."
    ),
]
Out = Annotated[
    str, typer.Option(..., "--out", "-o", help="The kept records as a .npz dataset (loadable with --data).")
]
ExpectedRate = Annotated[
    float | None,
    typer.Option(
        "--expected-rate",
        help="spectral: the share of a poisoned class you expect poisoned; it removes 1.5x that share of every class.",
    ),
]
Reclassify = Annotated[
    str | None,
    typer.Option(
        "--reclassify",
        help="clustering: exclusionary reclassification — retrain this registered architecture (its zoo recipe) "
        "without each flagged class's suspicious cluster and keep the clusters that come back as their own label "
        "(one training per flagged class).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help=json_help(JSON_KEYS))]


@expand_groups
def sanitize(
    model: Model,
    data: Data,
    method: Method,
    out: Out,
    expected_rate: ExpectedRate = None,
    reclassify: Reclassify = None,
    load: LoadOptions = LoadOptions(),
    as_json: AsJson = False,
) -> None:
    """Score every training record for poisoning with the model's internal features, remove the suspicious ones
    and write the rest (--out, .npz; retrain on it with `bastion train --data OUT`).

    The model must be the one trained on --data (a white-box torch model with the features capability)."""
    from ..defenses.sanitization import get_sanitizer

    check_output_file(out, "--out", suffix=".npz", what="the kept records are")
    kwargs: dict[str, Any] = {} if expected_rate is None else {"expected_rate": expected_rate}
    if reclassify is not None:
        from ..defenses.sanitization.clustering import recipe_trainer
        from ..models.architectures import ARCHITECTURES

        if method != "clustering":
            refuse(f"--reclassify is a step of --method clustering, not {method!r}")
        if reclassify not in ARCHITECTURES:
            refuse(f"--reclassify: unknown architecture {reclassify!r}; choose one of {', '.join(ARCHITECTURES)}")
        kwargs["reclassify"] = recipe_trainer(reclassify)
    sanitizer = get_sanitizer(method, **kwargs)
    clf, ds = load_model_and_data(model, data, load, quiet=as_json)
    result = sanitizer.sanitize(clf, ds)
    _write(result, ds, out)
    report = {
        "method": result.method,
        "n_inputs": int(ds.x_train.shape[0]),
        "n_removed": int(result.removed.numel()),
        "removed_rate": int(result.removed.numel()) / max(1, int(ds.x_train.shape[0])),
        "out": out,
        "seconds": result.seconds,
        **_against_truth(data, result),
    }
    emit(report, as_json, _print, default=None, finite_values=True)


def _print(report: dict[str, Any]) -> None:
    typer.echo(
        f"{report['method']}: removed {report['n_removed']} of {report['n_inputs']} training records "
        f"({report['removed_rate']:.2%}) in {report['seconds']:.1f} s; wrote {report['out']}"
    )
    if "recall" in report:
        typer.echo(
            f"  against the recorded poison: recall {report['recall']:.3f}, precision {report['precision']:.3f}, "
            f"clean records removed {report['removed_clean_rate']:.2%}"
        )


def _write(result: Any, ds: Any, out: str) -> None:
    import numpy as np

    kept = result.data
    with open(out, "wb") as f:
        np.savez_compressed(
            f,
            x=kept.x_train.numpy(),
            y=kept.y_train.numpy(),
            x_test=ds.x_test.numpy(),
            y_test=ds.y_test.numpy(),
            bounds=np.asarray(ds.bounds, dtype=np.float64),
        )


def _against_truth(data: str, result: Any) -> dict[str, float]:
    """Detection quality when ``data`` is a ``bastion poison`` file that records its poisoned records."""
    from ..attacks.poisoning import read_poison_mask
    from ..metrics import detection_scores

    truth = read_poison_mask(data)
    if truth is None or truth.numel() != result.scores.numel():
        return {}
    removed = truth.new_zeros(truth.shape)
    removed[result.removed] = True
    return {k: v for k, v in detection_scores(removed, truth).items() if k != "n_removed"}
