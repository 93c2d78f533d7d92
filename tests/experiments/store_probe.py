"""Read a store from outside the process that writes it (tests that kill or race `prunelab run`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def stored_run_count(db: Path | str) -> int:
    """Finished runs in ``db`` read-only, 0 while the store does not exist yet or is being created."""
    if not Path(db).exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0
