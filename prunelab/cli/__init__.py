"""``prunelab`` command line: a thin typer layer over the library.

Each module in this package defines ``register(app)`` and is discovered automatically, so a stage adds its
commands without touching this file. Every user error is one red line on stderr and exit status 2.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import typer

from prunelab.cli._groups import prune_app, stress_app
from prunelab.cli._common import apply_data_dir, err_console, quiet_libraries
from prunelab.errors import PrunelabError

app = typer.Typer(
    name="prunelab",
    help="Prune, recover, stress and evaluate causal language models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    data_dir: Path = typer.Option(None, "--data-dir", help="Folder holding the datasets (default: $PRUNELAB_DATA, then ../shared/data)."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """Prune, recover, stress and evaluate causal language models."""
    if version:
        from prunelab import __version__

        typer.echo(__version__)
        raise typer.Exit()
    apply_data_dir(data_dir)


def _register_all() -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(app)


_register_all()
app.add_typer(prune_app, name="prune")
app.add_typer(stress_app, name="stress")


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning :class:`PrunelabError` into one line + exit 2."""
    quiet_libraries()
    try:
        app(args=argv, standalone_mode=True)
    except PrunelabError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]")
        sys.exit(130)
