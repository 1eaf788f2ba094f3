"""Shared pieces of the validation sections: the run plan, section results, Markdown and
figure helpers."""

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Plan:
    """Sizes of one validation run; :func:`plan` gives the quick and the full one.

    ``cells_2d``/``cells_4d``: cells per axis of the convergence ladders (an empty 4-D
    ladder skips 4-D); ``periods``: rotation periods of the transients; ``fipy_cells``:
    grids of the FiPy comparison; ``landscape_cells``: the Ψ/current grid; ``mc_chains``,
    ``mc_steps``: Monte-Carlo moments; ``diff_*``: the anomalous-diffusion run.
    """

    quick: bool
    cells_2d: tuple
    cells_4d: tuple
    periods: int
    fipy_cells: tuple
    landscape_cells: int
    mc_chains: int
    mc_steps: int
    diff_dim: int
    diff_chains: int
    diff_steps: int
    seed: int = 20240107


def plan(quick):
    """The quick (< 2 min on 2 cores) or the full (< 20 min) plan."""
    if quick:
        return Plan(quick=True, cells_2d=(32, 64, 128), cells_4d=(12, 16, 24), periods=1,
                    fipy_cells=(32, 64, 128), landscape_cells=128, mc_chains=1024,
                    mc_steps=2000, diff_dim=24, diff_chains=256, diff_steps=2000)
    return Plan(quick=False, cells_2d=(64, 128, 256), cells_4d=(16, 24, 32), periods=2,
                fipy_cells=(32, 64, 128, 256), landscape_cells=256, mc_chains=4096,
                mc_steps=8000, diff_dim=32, diff_chains=1024, diff_steps=10000)


@dataclass
class Section:
    """One report section: Markdown body, headline numbers (checked), data (results.json)."""

    key: str
    title: str
    markdown: str = ""
    headline: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    wall_time_s: float = 0.0


def fmt(x, digits=3):
    """Compact number: integers as is, floats in %.{digits}g, None/NaN as '—'."""
    if x is None:
        return "—"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    x = float(x)
    if not np.isfinite(x):
        return "—" if np.isnan(x) else ("∞" if x > 0 else "−∞")
    return f"{x:.{digits}g}"


def md_table(header, rows):
    """A GitHub Markdown table; cells are str()-ed (use :func:`fmt` for numbers), and a
    "|" inside a cell (|z|, |∫p − 1|) is escaped so it does not split the cell."""
    def row_line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    lines = [row_line(header), "|" + "---|" * len(header)]
    lines += [row_line(row) for row in rows]
    return "\n".join(lines)


def save_figure(fig, figdir, name):
    """Save ``fig`` as ``figdir/name.png`` (150 dpi), close it; returns the Markdown link."""
    import matplotlib.pyplot as plt

    fig.savefig(figdir / f"{name}.png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return f"![{name}](figures/{name}.png)"
