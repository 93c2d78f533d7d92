"""prunelab's one way into matplotlib: the non-interactive Agg backend, so every figure renders without a display.

:func:`pyplot` is for code that draws with ``matplotlib.pyplot`` (the report's and the studies' figures, the
Adapt-Pruner sparsity profile); :func:`agg_figure` gives a ``Figure`` on its own Agg canvas, without pyplot's
global state (safe in threads and servers). matplotlib is imported on first use: it is slow to import.
"""

from __future__ import annotations

from typing import Any


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (headless; never opens a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def agg_figure(**kwargs: Any):
    """A ``matplotlib.figure.Figure(**kwargs)`` attached to its own Agg canvas: no pyplot, no backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig
