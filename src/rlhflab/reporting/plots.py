"""Figure helpers shared by the run report and the comparison report (matplotlib without pyplot)."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Plot:
    """A PNG that was written: its title, path, side-by-side subplots (the page's grid width) and caption."""

    title: str
    path: Path
    columns: int = 1
    caption: str = ""


def new_figure(width: float, height: float, **margins: float):
    """A Figure on the Agg canvas with fixed margins (fractions of the figure, as ``subplots_adjust`` takes them).

    No pyplot: no global state, no GUI backend. Fixed margins rather than constrained layout, which draws every
    figure twice.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(**margins)
    return fig


def style_axes(ax, xlabel: str, ylabel: str, title: str | None = None) -> None:
    if title is not None:
        ax.set_title(title, fontsize=11.5, fontweight="bold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def smooth(values: list[float], half_window: int) -> list[float]:
    """Centred moving average over finite values (window 2·h+1, shorter at the ends)."""
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - half_window) : i + half_window + 1] if math.isfinite(v)]
        out.append(sum(window) / len(window) if window else math.nan)
    return out


def try_plot(who: str, name: str, draw: Callable[..., int], *args) -> int:
    """``draw(*args)``: the number of side-by-side subplots it drew to its PNG (0: none). A failure gives 0 and one
    warning on stderr: a plot must never fail a run or hide a report's tables."""
    try:
        return draw(*args)
    except Exception as err:
        print(f"{who}: skipped the {name} plot ({type(err).__name__}: {err})", file=sys.stderr)
        return 0
