"""A matplotlib figure as PNG bytes, for files written whole or not at all."""

from __future__ import annotations

import io


def png_bytes(fig, dpi: int = 110) -> bytes:
    """The figure as a PNG; the figure is closed (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()
