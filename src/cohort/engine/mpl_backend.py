"""A matplotlib backend for engines: figures go to the client as PNG.

Engines select it when matplotlib is imported there (unless ``$MPLBACKEND``
picks another backend), so on an engine ``plt.show()`` — and any
figure still open when an ``execute`` task (a ``%px`` cell) ends, as with
Jupyter's inline backend — is sent to the client as ``image/png`` display
data, then closed. Rendering is Agg's.
"""

from __future__ import annotations

import logging

from matplotlib._pylab_helpers import Gcf
from matplotlib.backend_bases import FigureManagerBase
from matplotlib.backends.backend_agg import FigureCanvasAgg

log = logging.getLogger(__name__)

NAME = "module://cohort.engine.mpl_backend"

FigureCanvas = FigureCanvasAgg
FigureManager = FigureManagerBase


def _active() -> bool:
    """Whether pyplot runs under this backend."""
    import matplotlib
    try:
        backend = matplotlib.rcParams._get_backend_or_none()
    except Exception:
        backend = matplotlib.rcParams.get("backend")
    return backend == NAME or backend == __name__


def show(*args, **kwargs) -> None:
    """``plt.show()``: send every open figure to the client, then close them."""
    flush_figures(force=True)


def flush_figures(force: bool = False) -> None:
    """Send the open pyplot figures to the client and close them (only under
    this backend, unless `force`)."""
    if not (force or _active()):
        return
    from .display import display
    for manager in Gcf.get_all_fig_managers():
        try:
            display(manager.canvas.figure)
        except Exception:
            log.warning("could not send figure %s", manager.num, exc_info=True)
    close()


def close(fig=None) -> None:
    """Close `fig` (default: all figures) in pyplot."""
    if fig is None:
        Gcf.destroy_all()
    else:
        Gcf.destroy_fig(fig)
