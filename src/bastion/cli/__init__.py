"""The ``bastion`` command line: one Typer app.

Exit codes: 0 success, 1 a gate failed (audit), 2 a usage error (bad argument, file, name, data).
Every command has ``--json``; the library never prints, this package decides what is shown. One module per
command (``attack``, ``audit``, ``certify``, ``fl``, ``harden``, ``poison``, ``privacy``, ``sanitize``, ``scan``, ``steal``, ``train``, ``zoo``, ``serve``, ``keys``, ``he``); the library never imports
this package.
"""

from __future__ import annotations

import sys

import typer

from ..errors import BastionError, UsageError
from .attack import attack
from .audit import audit
from .certify import certify
from .common import flagged
from .fl import fl_matrix, fl_simulate
from .harden import harden
from .he import he_bench_cmd, he_convert, he_inspect
from .keys import keys_app
from .poison import poison
from .privacy import privacy
from .privacy_audit import privacy_audit
from .sanitize import sanitize
from .scan import scan
from .serve import serve
from .steal import steal
from .train import train
from .zoo import zoo


def _typer(name: str, help: str | None = None, *, no_args_is_help: bool = True) -> typer.Typer:
    return typer.Typer(
        name=name, help=help, no_args_is_help=no_args_is_help, add_completion=False, pretty_exceptions_enable=False
    )


app = _typer("bastion", "Security testing and hardening for machine-learning models: attack, audit, harden, protect.")

app.command()(attack)
app.command()(audit)
app.command()(certify)
app.command()(zoo)
app.command()(train)
app.command()(harden)
app.command()(poison)
# `bastion privacy` measures membership leakage itself; `bastion privacy audit` audits differential privacy
privacy_app = _typer("privacy", no_args_is_help=False)
privacy_app.callback(invoke_without_command=True)(privacy)
privacy_app.command("audit")(privacy_audit)
app.add_typer(privacy_app, name="privacy")
# `bastion fl`: federated learning under attack (Flower's simulation engine)
fl_app = _typer("fl", "Federated learning under attack, on Flower.")
fl_app.command("simulate")(fl_simulate)
fl_app.command("matrix")(fl_matrix)
app.add_typer(fl_app, name="fl")
# `bastion he`: private inference on CKKS-encrypted inputs (TenSEAL)
he_app = _typer("he", "Private inference on CKKS-encrypted inputs (the he extra: TenSEAL).")
he_app.command("bench")(he_bench_cmd)
he_app.command("inspect")(he_inspect)
he_app.command("convert")(he_convert)
app.add_typer(he_app, name="he")
app.command()(sanitize)
app.command()(scan)
app.command()(steal)
app.add_typer(keys_app, name="keys")
app.command()(serve)


def main(argv: list[str] | None = None) -> None:
    """Entry point: maps bastion's usage errors to exit code 2 with a one-line message (parameters named as
    the flags that set them), its other errors to exit code 1. Anything else is a bug and keeps its traceback."""
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit:
        raise
    except UsageError as exc:
        typer.echo(f"error: {flagged(str(exc))}", err=True)
        sys.exit(2)
    except BastionError as exc:
        typer.echo(f"error: {flagged(str(exc))}", err=True)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
