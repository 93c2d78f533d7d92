"""The studies' one way into matplotlib: the non-interactive Agg backend, so figures render without a display."""

from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
