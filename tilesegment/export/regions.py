"""Connected regions of a class mask as polygons, traced block by block.

Each block is labelled (4-connectivity: a pixel's neighbours share an edge, the
connectivity ``rasterio.features.shapes`` uses by default and ``scipy.ndimage.label``'s
default structure) and traced with ``rasterio.features.shapes``; the pieces of a region
cut by a block edge are joined with a union-find over the pixels on both sides of the edge
and merged with ``shapely.union_all`` once no unprocessed edge touches them. A region is
yielded as soon as it is whole, so memory holds one block plus the regions that cross the
edges still open; the polygons do not depend on the block size (exact integer pixel
coordinates; collinear vertices dropped; ``shapely.normalize``'d).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from tilesegment.read.base import Raster

CONNECTIVITY = 4
"""Pixels of one region share an edge; diagonal neighbours are separate regions."""


@dataclass
class Region:
    """One connected region: its polygon in mask pixel coordinates (x = column, y = row,
    origin at the top-left corner of pixel (0, 0)), its class id, its pixel count and the
    sum (and count of finite values) of its class's probability over its pixels."""

    geometry: object  # shapely Polygon
    class_id: int
    pixels: int
    prob_sum: float = 0.0
    prob_count: int = 0

    @property
    def mean_probability(self) -> float | None:
        return self.prob_sum / self.prob_count if self.prob_count else None


@dataclass
class _Group:
    """Pieces of one region not yet known to be whole (``pending``: open block edges)."""

    class_id: int
    members: list[int]
    pieces: list = field(default_factory=list)
    pixels: int = 0
    prob_sum: float = 0.0
    prob_count: int = 0
    pending: int = 0


class _Joiner:
    """A union-find over global piece ids; only pieces of unfinished regions are kept."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}
        self.groups: dict[int, _Group] = {}

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def add(self, i: int, group: _Group) -> None:
        self.parent[i] = i
        self.groups[i] = group

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        ga, gb = self.groups[ra], self.groups[rb]
        if len(ga.members) < len(gb.members):
            ra, rb, ga, gb = rb, ra, gb, ga
        self.parent[rb] = ra
        del self.groups[rb]
        ga.members += gb.members
        ga.pieces += gb.pieces
        ga.pixels += gb.pixels
        ga.prob_sum += gb.prob_sum
        ga.prob_count += gb.prob_count
        ga.pending += gb.pending

    def pop(self, root: int) -> _Group:
        group = self.groups.pop(root)
        for m in group.members:
            del self.parent[m]
        return group


def _finish(group: _Group) -> Region:
    """The region of a whole group: its pieces' union without the collinear vertices the
    seams leave (``rasterio.features.shapes`` leaves none: a vertex at every turn only;
    Douglas-Peucker at tolerance 0 drops exactly the collinear ones), normalised."""
    import shapely

    geom = group.pieces[0]
    if len(group.pieces) > 1:
        geom = shapely.simplify(shapely.union_all(group.pieces), 0.0, preserve_topology=False)
    return Region(shapely.normalize(geom), group.class_id, group.pixels, group.prob_sum,
                  group.prob_count)


def label_block(mask: np.ndarray, nodata: int | None,
                skip: frozenset[int] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """Connected regions of equal value: labels ``int32 (h, w)`` (0 where nodata or a
    class in ``skip``; regions 1..n) and each label's class id ``(n + 1,)`` (index 0
    unused)."""
    from scipy import ndimage

    labels = np.zeros(mask.shape, np.int32)
    valid = np.ones(mask.shape, bool) if nodata is None else mask != nodata
    classes = [np.zeros(1, mask.dtype)]
    n = 0
    for value in np.unique(mask[valid]):
        if int(value) in skip:
            continue
        lab, k = ndimage.label(mask == value)  # the default cross: 4-connectivity
        np.add(labels, lab + np.int32(n), out=labels, where=lab > 0)
        classes.append(np.full(k, value, mask.dtype))
        n += k
    return labels, np.concatenate(classes)


def trace_regions(mask: Raster, block: int, *, nodata: int | None,
                  probabilities: Raster | None = None,
                  skip: frozenset[int] = frozenset()) -> Iterator[Region]:
    """Every connected region of each class of ``mask`` (a one-band ``(1, H, W)`` raster of
    class ids), read ``block``×``block`` pixels at a time; ``nodata`` pixels and the
    classes in ``skip`` belong to no region. ``probabilities`` (``(K, H, W)``, same grid)
    adds each region's sum of its class's probability. Regions come out as soon as they
    are whole, in no set order."""
    import shapely
    from affine import Affine
    from rasterio import features

    height, width = mask.height, mask.width
    joiner = _Joiner()
    above_ids = np.full(width, -1, np.int64)  # global piece ids along the last row read
    above_cls = np.zeros(width, np.int64)
    next_id = 0
    for r0 in range(0, height, block):
        r1 = min(r0 + block, height)
        left_ids = np.full(r1 - r0, -1, np.int64)
        left_cls = np.zeros(r1 - r0, np.int64)
        for c0 in range(0, width, block):
            c1 = min(c0 + block, width)
            m = mask.read((r0, r1, c0, c1))[0]
            labels, classes = label_block(m, nodata, skip)
            n = len(classes) - 1

            def gid(edge: np.ndarray, first: int = next_id) -> np.ndarray:
                """Global piece ids along an edge of the block (-1: no region)."""
                return np.where(edge > 0, edge.astype(np.int64) + (first - 1), -1)

            flat = labels.ravel()
            pixels = np.bincount(flat, minlength=n + 1)
            psum = pcount = None
            if probabilities is not None and n:
                p = probabilities.read((r0, r1, c0, c1))
                ids = np.clip(m.astype(np.int64), 0, p.shape[0] - 1)
                pv = np.take_along_axis(p, ids[None], 0)[0].astype(np.float64).ravel()
                finite = np.isfinite(pv) & (flat > 0)
                psum = np.bincount(flat, weights=np.where(finite, pv, 0.0), minlength=n + 1)
                pcount = np.bincount(flat, weights=finite, minlength=n + 1)
            pending = np.zeros(n + 1, np.int64)
            if r1 < height:
                pending[np.unique(labels[-1])] += 1
            if c1 < width:
                pending[np.unique(labels[:, -1])] += 1
            for geom, value in features.shapes(labels, mask=labels > 0,
                                               connectivity=CONNECTIVITY,
                                               transform=Affine.translation(c0, r0)):
                k = int(value)
                piece = shapely.geometry.shape(geom)
                group = _Group(int(classes[k]), [next_id + k - 1], [piece], int(pixels[k]),
                               pending=int(pending[k]))
                if psum is not None:
                    group.prob_sum, group.prob_count = float(psum[k]), int(pcount[k])
                joiner.add(next_id + k - 1, group)
            touched: list[int] = [next_id + k for k in range(n)]
            old: list[np.ndarray] = []
            if r0 > 0:
                old.append(_join(joiner, above_ids[c0:c1], above_cls[c0:c1], gid(labels[0]),
                                  m[0]))
            if c0 > 0:
                old.append(_join(joiner, left_ids, left_cls, gid(labels[:, 0]), m[:, 0]))
            for ids in old:  # the edge just read is closed for the pieces behind it
                for i in ids.tolist():
                    joiner.groups[joiner.find(i)].pending -= 1
                touched += ids.tolist()
            for root in {joiner.find(i) for i in touched if i in joiner.parent}:
                if root in joiner.groups and joiner.groups[root].pending == 0:
                    yield _finish(joiner.pop(root))
            above_ids[c0:c1], above_cls[c0:c1] = gid(labels[-1]), m[-1]
            left_ids, left_cls = gid(labels[:, -1]), m[:, -1].astype(np.int64)
            next_id += n
    if joiner.groups:  # cannot happen: every edge is closed by the block after it
        raise AssertionError(f"{len(joiner.groups)} regions left open")


def _join(joiner: _Joiner, old_ids: np.ndarray, old_cls: np.ndarray, new_ids: np.ndarray,
          new_cls: np.ndarray) -> np.ndarray:
    """Union the pieces facing each other across an edge with the same class; returns the
    distinct old piece ids along the edge (each touched it, so each had it pending)."""
    same = (old_ids >= 0) & (new_ids >= 0) & (old_cls == new_cls)
    if same.any():
        pairs = np.unique(np.stack([old_ids[same], new_ids[same]], axis=1), axis=0)
        for a, b in pairs.tolist():
            joiner.union(a, b)
    return np.unique(old_ids[old_ids >= 0])
