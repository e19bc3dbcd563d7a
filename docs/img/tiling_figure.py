"""Draw docs/img/tiling-overlap.png: the core grid, one tile's halo, mirror padding.

    python docs/img/tiling_figure.py            # writes docs/img/tiling-overlap.png

The padded canvas is made by the package's own ``tilesegment.split.read_canvas`` and the
grid by ``tilesegment.grid``, so the picture shows what the code does. Needs matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from tilesegment.grid import TileSpec, grid_shape
from tilesegment.split import read_canvas

H, W = 200, 280          # raster (rows, cols)
SPEC = TileSpec(tile=128, halo=32)  # core 64
MARGIN = 40              # canvas drawn past the raster edge on each side
OUT = Path(__file__).with_name("tiling-overlap.png")


def raster() -> np.ndarray:
    """A grey raster with an asymmetric 'F' near the top-left corner, so mirroring shows."""
    y, x = np.mgrid[0:H, 0:W].astype(float)
    img = 0.55 + 0.15 * np.sin(x / 23.0) * np.cos(y / 31.0)
    f = np.zeros((H, W), bool)
    f[6:58, 8:18] = True      # stem of the F, close to the left edge
    f[6:16, 8:44] = True      # top bar, close to the top edge
    f[26:35, 8:36] = True     # middle bar
    img[f] = 0.12
    disk = (y - 140) ** 2 + (x - 200) ** 2 < 30**2
    img[disk] = 0.85
    return img[np.newaxis].astype(np.float32)


def main() -> None:
    image = raster()
    window = (-MARGIN, H + MARGIN, -MARGIN, W + MARGIN)
    canvas = read_canvas(lambda w: image[:, w[0]:w[1], w[2]:w[3]], (H, W), window,
                         SPEC.pad_mode)[0]
    extent = (-MARGIN, W + MARGIN, H + MARGIN, -MARGIN)  # (left, right, bottom, top)

    fig, ax = plt.subplots(figsize=(9.0, 7.0), dpi=110)
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, extent=extent, interpolation="nearest")
    # dim everything outside the raster: that part is padding, not data
    outside = np.ones_like(canvas, dtype=bool)
    outside[MARGIN:MARGIN + H, MARGIN:MARGIN + W] = False
    shade = np.zeros((*canvas.shape, 4))
    shade[outside] = (0.20, 0.35, 0.85, 0.30)
    ax.imshow(shade, extent=extent, interpolation="nearest")

    core = SPEC.core
    n_i, n_j = grid_shape((H, W), SPEC)
    for k in range(1, n_j):  # core boundaries inside the raster
        ax.plot([k * core, k * core], [0, H], color="#ffbf00", lw=1.2)
    for k in range(1, n_i):
        ax.plot([0, W], [k * core, k * core], color="#ffbf00", lw=1.2)
    ax.add_patch(Rectangle((0, 0), W, H, fill=False, ec="black", lw=2.5))

    # one tile at the raster's corner: core (0, 0) plus its halo
    t0 = -SPEC.halo
    ax.add_patch(Rectangle((t0, t0), SPEC.tile, SPEC.tile, fill=False, ec="#d62728", lw=2.2,
                           ls="--"))
    ax.add_patch(Rectangle((0, 0), core, core, fc=(0.84, 0.15, 0.16, 0.22), ec="#d62728",
                           lw=2.2))
    # one interior tile, core (1, 2): its halo lies inside the raster
    ri, rj = 1 * core, 2 * core
    ax.add_patch(Rectangle((rj - SPEC.halo, ri - SPEC.halo), SPEC.tile, SPEC.tile, fill=False,
                           ec="#2ca02c", lw=2.0, ls="--"))
    ax.add_patch(Rectangle((rj, ri), core, core, fc=(0.17, 0.63, 0.17, 0.22), ec="#2ca02c",
                           lw=2.0))

    box = dict(boxstyle="round,pad=0.25", fc="white", ec="none", alpha=0.9)
    ax.annotate("core (0, 0)", (core - 3, core - 4), ha="right", va="bottom", fontsize=9,
                color="#a01010", bbox=box)
    ax.annotate(f"tile (0, 0) = core + halo {SPEC.halo} px each side\n"
                f"input window rows/cols [{t0}, {t0 + SPEC.tile})",
                xy=(t0 + SPEC.tile, t0 + 6), xytext=(t0 + SPEC.tile + 8, -MARGIN + 14),
                fontsize=9, color="#a01010", va="center", bbox=box,
                arrowprops=dict(arrowstyle="-", color="#a01010", lw=1))
    ax.annotate("halo reaches past the edge:\nfilled by mirror padding\n"
                "(reflect: edge px not repeated)",
                xy=(-16, 40), xytext=(-MARGIN + 4, H - 30), fontsize=9, color="#16307a",
                bbox=box, arrowprops=dict(arrowstyle="->", color="#16307a", lw=1.2))
    ax.annotate("interior tile (1, 2):\nhalo read from the raster",
                xy=(rj + core + SPEC.halo, ri + core + SPEC.halo),
                xytext=(rj + core + 36, ri + core + 54), fontsize=9, color="#1b6e1b", bbox=box,
                arrowprops=dict(arrowstyle="->", color="#1b6e1b", lw=1.2))
    ax.annotate(f"core grid: {core} px from the origin (0, 0);\n"
                "cores at the right/bottom edge are clipped",
                xy=(W - 4, H - 4), xytext=(W - 150, H + MARGIN - 6), fontsize=9,
                color="#7a5b00", bbox=box, va="bottom",
                arrowprops=dict(arrowstyle="->", color="#7a5b00", lw=1))

    ax.set_xlim(-MARGIN, W + MARGIN)
    ax.set_ylim(H + MARGIN, -MARGIN)
    ax.set_xlabel("column (px)")
    ax.set_ylabel("row (px)")
    ax.set_title(f"Overlap-tile: raster {H}×{W} px (black frame), tile {SPEC.tile}, "
                 f"halo {SPEC.halo}, core {core}; blue = padding", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
