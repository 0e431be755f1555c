"""``bastion serve``: the guard service in front of a model."""

from __future__ import annotations

import json
from typing import Any

import typer

from .common import INPUT_SHAPE_HELP, N_CLASSES_HELP, load_model_option
from .common import log as _log
from .common import refuse as _fail
from .keys import DB_HELP as _DB_HELP

# no square brackets in help text: rich reads "[confidence]" as markup and prints nothing
CONFIG_HELP = (
    "Guard settings, a TOML file with the tables confidence, ood, backdoor, drift, extraction and limits; every key is "
    "optional (--print-config prints them all, commented, with their defaults)."
)


def serve(
    model: str | None = typer.Option(
        None, "--model", "-m", help="zoo:NAME, a model file, module:function (the served model); required to serve."
    ),
    reference: str | None = typer.Option(
        None,
        "--reference",
        "-r",
        help="Clean reference data the signals are calibrated on (its training split): a built-in name or a file. "
        "Default: the model's zoo dataset.",
    ),
    config: str | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    print_config: bool = typer.Option(
        False, "--print-config", help="Print the settings file (every key, commented, with its default) and exit."
    ),
    db: str | None = typer.Option(None, "--db", help=_DB_HELP),
    spool: str | None = typer.Option(
        None,
        "--spool",
        help="Local append-only file for audit records while the "
        "database is down (default: next to the SQLite file or in $BASTION_HOME).",
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port (1-65535), checked before the guard is calibrated."),
    arch: str | None = typer.Option(None, "--arch", help="Architecture name for a weights-only model file."),
    input_shape: str | None = typer.Option(None, "--input-shape", help=INPUT_SHAPE_HELP),
    n_classes: int | None = typer.Option(None, "--n-classes", help=N_CLASSES_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration split and the monitors."),
    encrypted: bool = typer.Option(
        False,
        "--encrypted",
        help="Also serve private inference on CKKS ciphertexts (GET /v1/encrypted/spec, POST /v1/predict-encrypted; "
        "needs the he extra and an HE-friendly model: affine layers and polynomial activations).",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the start-up record (calibration, signals, URL) as one JSON object on stdout."
    ),
) -> None:
    """Serve a model behind the guard: abstention, OOD and extraction signals, drift alerts, audit log.

    Needs an API key (bastion keys create --role client|admin --db SAME_URL). Endpoints: POST /v1/predict,
    GET /health, /metrics (admin), /dashboard (admin), /v1/admin/* (admin), /docs and /openapi.json; with
    --encrypted also GET /v1/encrypted/spec and POST /v1/predict-encrypted.
    """
    if print_config:
        from ..serve.config import render_config

        typer.echo(render_config(), nl=False)
        return
    if model is None:
        _fail("--model is needed: the model to serve (zoo:NAME, a model file, module:function)")
    uvicorn = _service_extra()
    from ..serve.config import load_config
    from ..serve.server import bind, build_app, encrypted_program
    from ..serve.store import Store

    # the quick checks first (settings, reference, port, database), then the slow work (model, calibration)
    cfg, ref = load_config(config), _reference(model, reference)
    if not 1 <= port <= 65535:
        _fail(f"--port must be in [1, 65535], got {port}")
    sock = bind(host, port)
    try:
        store = Store(db)
        clf = load_model_option(model, arch=arch, input_shape=input_shape, n_classes=n_classes, log=_log)
        program = encrypted_program(clf, arch) if encrypted else None  # refused before the slow calibration
        application, info = build_app(
            model=clf, reference=ref, config=cfg, store=store, spool=spool, seed=seed, encrypted=program
        )
    except BaseException:
        sock.close()
        raise
    info["url"] = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    _announce(info, host, as_json)
    server = uvicorn.Server(uvicorn.Config(application, host=host, port=port, log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])  # uvicorn re-raises the Ctrl-C it caught once it has shut down
    except KeyboardInterrupt:
        pass


def _service_extra() -> Any:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        _fail(f"bastion serve needs the service extra ({exc.name} is missing): pip install 'bastion[service]'")
    return uvicorn


def _reference(model: str, reference: str | None) -> str:
    """``--reference``, or a zoo model's dataset."""
    from ..errors import UsageError
    from ..serve.server import default_reference

    if reference is not None:
        return reference
    try:
        return default_reference(model)
    except UsageError:
        _fail("--reference is needed: the clean data the guard's thresholds are calibrated on")


def _announce(info: dict[str, Any], host: str, as_json: bool) -> None:
    """The start-up log on stderr: the calibration, which OOD detector runs (or why there is none), the other
    signals, and where the service listens; with ``as_json`` the same record on stdout."""
    signals = info["signals"]
    _log(f"guard calibrated on {info['reference']}: {json.dumps(info['calibration'])}")
    if info["ood_signal"]:
        _log(f"OOD detector {info['detector']}: {signals['ood']}")
    else:
        _log(f"warning: the OOD signal is {signals['ood']}; drift runs on raw inputs ({signals['drift']})")
    _log("signals: " + "; ".join(f"{name} {text}" for name, text in signals.items() if name != "ood"))
    if info.get("encrypted"):
        he = info["encrypted"]
        p = he["params"]
        _log(
            f"encrypted inference: CKKS N={p['poly_modulus_degree']}, primes {p['coeff_mod_bit_sizes']} bits, "
            f"{he['security_bits']}-bit security, depth {he['depth']}, {he['slots']} samples per ciphertext "
            "(POST /v1/predict-encrypted, evaluated in a child process)"
        )
    if host not in ("127.0.0.1", "localhost", "::1"):
        _log(f"warning: binding {host}: the service is reachable from other machines (keys are still required)")
    _log(f"serving on {info['url']} (docs at {info['url']}/docs)")
    if as_json:
        typer.echo(json.dumps(info, default=str))
