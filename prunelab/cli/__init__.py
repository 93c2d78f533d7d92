"""``prunelab`` command line: a thin typer layer over the library.

Each module in this package defines ``register(app)`` and is discovered automatically, so a stage adds its
commands without touching this file. Every user error is one red line on stderr and exit status 2.
"""

from __future__ import annotations

import contextlib
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
    """Console entry point: run the app; user and resource errors become one line + exit 2, SIGINT/SIGTERM
    one line + 128+signal (after the atomic writers have removed their temporary files)."""
    import signal

    from prunelab.atomic import Interrupted, install_signal_handlers, resource_problem

    quiet_libraries()
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    install_signal_handlers()  # SIGTERM must unwind like Ctrl-C, so temporary siblings are removed
    try:
        app(args=argv, standalone_mode=True)
    except PrunelabError as exc:
        _fail(str(exc), 2)
    except Interrupted as exc:
        msg = f"interrupted by {signal.Signals(exc.signum).name}"
        if exc.target is not None:
            msg += (f" while writing {exc.target}; it had just been completed" if exc.completed
                    else f" while writing {exc.target}; it was left as it was and temporary files were removed")
        _fail(msg, 128 + exc.signum)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # a resource error outside the atomic writers (loading, the results database, ...)
        problem = resource_problem(exc)
        if problem is None:
            raise
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        _fail(f"{problem[0]} ({detail}); {problem[1]}", 2)
    finally:
        for s, h in previous.items():
            if h is not None:
                with contextlib.suppress(ValueError):  # only the main thread may set handlers
                    signal.signal(s, h)


def _fail(message: str, code: int) -> None:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)
