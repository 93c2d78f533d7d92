"""The consoles prunelab prints to (ground floor): library progress and messages go to ``err_console`` so that
stdout stays the command's result; the CLI re-exports both, so no library module needs to import the CLI."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
