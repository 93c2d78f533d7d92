"""Sub-command groups shared by several modules (``prunelab prune width|depth``, ``prunelab stress relapse|chronic``)."""

import typer

prune_app = typer.Typer(help="Structured pruning: width (neurons/heads) or depth (blocks).", no_args_is_help=True)
stress_app = typer.Typer(help="Stress a treated model: acute relapse or chronic cycles.", no_args_is_help=True)
