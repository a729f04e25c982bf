r"""The ``unfoldmem`` command line: a thin typer app, one module per verb group.

Each verb module exposes ``register(app)``; verbs not built yet are registered as stubs that exit
with code 2 and say so. User mistakes (:class:`unfoldmem.errors.UnfoldmemError`) become one-line
messages with exit code 2.
"""

from __future__ import annotations

import sys

import typer

from unfoldmem import __version__
from unfoldmem.cli import cards as cards_cli
from unfoldmem.cli import demo as demo_cli
from unfoldmem.cli import export as export_cli
from unfoldmem.cli import generate as generate_cli
from unfoldmem.cli import inference as inference_cli
from unfoldmem.cli import inspect as inspect_cli
from unfoldmem.cli import likelihood as likelihood_cli
from unfoldmem.cli import omnifold as omnifold_cli
from unfoldmem.cli import quality as quality_cli
from unfoldmem.cli import train as train_cli
from unfoldmem.cli import unfold as unfold_cli
from unfoldmem.cli import xsec as xsec_cli
from unfoldmem.cli._common import state
from unfoldmem.errors import NotYetAvailableError, UnfoldmemError

__all__ = ["app", "main"]

app = typer.Typer(
    name="unfoldmem",
    help="Unfolding (cINN, OmniFold) and matrix-element-method likelihoods for collider events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"unfoldmem {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or chatter."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail in the log."),
) -> None:
    state.quiet = quiet
    state.verbose = verbose


def _stub(verb: str, summary: str) -> None:
    def command(
        args: list[str] = typer.Argument(None, help="(not yet available)"),
    ) -> None:
        raise NotYetAvailableError(verb)

    command.__doc__ = f"{summary} (not yet available)."
    app.command(verb, context_settings={"ignore_unknown_options": True})(command)


cards_cli.register(app)
inspect_cli.register(app)
omnifold_cli.register(app)
# Verbs still to build: each issue replaces its line with `<module>.register(app)`.
xsec_cli.register(app)
generate_cli.register(app)
train_cli.register(app)
unfold_cli.register(app)
likelihood_cli.register(app)
inference_cli.register(app)
quality_cli.register(app)
export_cli.register(app)
demo_cli.register(app)


def main() -> None:
    """Entry point: run the app; user errors become one line on stderr and exit code 2."""
    try:
        app(standalone_mode=False)
    except UnfoldmemError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except typer.TyperException as exc:
        # usage errors (bad option, missing argument): click's message and exit code 2
        show = getattr(exc, "show", None)
        if show is None:
            raise
        show()
        sys.exit(getattr(exc, "exit_code", 2))
