"""What the examples share for their figures."""

from __future__ import annotations

from pathlib import Path


def save_figure(fig, path) -> None:
    """Lay out ``fig``, write it to ``path`` (creating its folder) at 120 dpi, and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
