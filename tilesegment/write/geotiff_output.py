"""GeoTIFF outputs: blocks go to a scratch Zarr store; ``finalize`` transcodes it.

Tasks cannot write a compressed GeoTIFF concurrently, so they fill a scratch
:class:`~tilesegment.write.zarr_output.BlockStore` (``.<name>.partial-<token>.scratch.zarr``)
and :meth:`GeoTiffOutput.finalize` writes ``.<name>.partial-<token>.tif`` window by window,
renames it to the final name and removes the scratch. With ``save_probabilities`` a sibling
``<stem>.probabilities<suffix>`` (K float32 bands, same georeference) is written the same
way, and with ``save_disagreement`` a sibling ``<stem>.disagreement<suffix>`` (one uint8
band: 1 where overlapping tiles disagree, 0 where they agree, nodata 255). Siblings are
published before the mask, so a visible mask means the set is complete; when publishing
fails part-way, the siblings this run had just made appear are removed again.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tilesegment.write import atomic
from tilesegment.write.base import Output
from tilesegment.write.meta import DISAGREEMENT_NODATA, OutputMeta, meta_to_attrs
from tilesegment.write.transcode import Layer, json_tag, parse_crs, write_geotiff
from tilesegment.write.zarr_output import BlockStore

TAG_ATTRS = "TILESEGMENT"
"""Dataset tag holding the JSON of :func:`~tilesegment.write.meta.meta_to_attrs`."""


def sibling_path(path: Path, layer: str) -> Path:
    """``<dir>/<stem>.<layer><suffix>``: the GeoTIFF of ``layer`` next to the mask ``path``."""
    return path.with_name(f"{path.stem}.{layer}{path.suffix}")


def probabilities_path(path: Path) -> Path:
    """``<dir>/<stem>.probabilities<suffix>`` next to the mask GeoTIFF ``path``."""
    return sibling_path(path, "probabilities")


def disagreement_path(path: Path) -> Path:
    """``<dir>/<stem>.disagreement<suffix>`` next to the mask GeoTIFF ``path``."""
    return sibling_path(path, "disagreement")


class GeoTiffOutput(Output):
    """A single-band class-mask GeoTIFF (tiled, DEFLATE, colour map; COG if ``cog``)."""

    kind = "geotiff"

    def __init__(self, path: Path, meta: OutputMeta, *, overwrite: bool, cog: bool) -> None:
        super().__init__(path, meta, overwrite=overwrite)
        self.cog = cog
        self.store = BlockStore(atomic.partial_path(path, self.token, ".scratch.zarr"), meta)

    @property
    def probabilities_path(self) -> Path | None:
        """The probabilities GeoTIFF, None unless the output saves probabilities."""
        return probabilities_path(self.path) if self.meta.save_probabilities else None

    @property
    def disagreement_path(self) -> Path | None:
        """The disagreement GeoTIFF, None unless the output saves that layer."""
        return disagreement_path(self.path) if self.meta.save_disagreement else None

    @property
    def final_paths(self) -> tuple[Path, ...]:
        siblings = (self.probabilities_path, self.disagreement_path)
        return (self.path, *(path for path in siblings if path is not None))

    def _create(self) -> None:
        parse_crs(self.meta.georef.crs_wkt)  # a CRS GDAL rejects fails now, not at the end
        attrs = meta_to_attrs(self.meta, kind=self.kind)
        attrs["cog"] = self.cog
        self.store = BlockStore.create(self.store.root, self.meta, attrs)

    def _finalize(self) -> None:
        attrs = self.store.mark_complete()
        plan = [(self._mask_layer(attrs), self.path)]
        if self.probabilities_path is not None:
            plan.append((self._probabilities_layer(attrs), self.probabilities_path))
        if self.disagreement_path is not None:
            plan.append((self._disagreement_layer(attrs), self.disagreement_path))
        staged: list[tuple[Path, Path]] = []
        appeared: list[Path] = []  # siblings published where nothing was before
        try:
            for layer, final in plan:
                tmp = atomic.partial_path(final, self.token, ".tif")
                staged.append((tmp, final))
                write_geotiff(
                    layer,
                    tmp,
                    shape=self.meta.shape,
                    block_shape=self.meta.block_shape,
                    georef=self.meta.georef,
                    cog=self.cog,
                )
            for tmp, final in reversed(staged):  # the mask last
                fresh = not atomic.exists(final)
                atomic.publish(tmp, final, overwrite=self.overwrite)
                if fresh:
                    appeared.append(final)
        except BaseException:
            # Keep the scratch store (finalize may be retried); drop half-written TIFFs, and
            # the siblings already published if the mask could not be: no partial set.
            for tmp, _ in staged:
                atomic.remove_prefixed(tmp)
            for final in appeared:
                try:
                    atomic.remove(final)
                except OSError as exc:
                    warnings.warn(f"could not remove {final}: {exc}", RuntimeWarning,
                                  stacklevel=2)
            raise

    def _tags(self, attrs: dict[str, Any], layer: str) -> dict[str, str]:
        return {
            TAG_ATTRS: json_tag(attrs),
            "TILESEGMENT_LAYER": layer,
            "CLASS_NAMES": json_tag(list(self.meta.class_names)),
            "PROVENANCE": json_tag(self.meta.provenance),
        }

    def _mask_layer(self, attrs: dict[str, Any]) -> Layer:
        mask = self.store.arrays().mask
        meta = self.meta
        colormap = {i: (*rgb, 255) for i, rgb in enumerate(meta.class_colors)}
        colormap[meta.nodata] = (0, 0, 0, 0)
        return Layer(
            read=lambda r0, r1, c0, c1: mask[r0:r1, c0:c1][np.newaxis],
            bands=1,
            dtype=meta.mask_dtype,
            nodata=meta.nodata,
            descriptions=(f"class id 0..{meta.num_classes - 1}, nodata {meta.nodata}",),
            tags=self._tags(attrs, "mask"),
            resampling="MODE",
            colormap=colormap,
        )

    def _probabilities_layer(self, attrs: dict[str, Any]) -> Layer:
        probs = self.store.arrays().probabilities
        assert probs is not None
        return Layer(
            read=lambda r0, r1, c0, c1: probs[:, r0:r1, c0:c1],
            bands=self.meta.num_classes,
            dtype=np.dtype(np.float32),
            nodata=float("nan"),
            descriptions=tuple(f"probability: {name}" for name in self.meta.class_names),
            tags=self._tags(attrs, "probabilities"),
            resampling="AVERAGE",
            predictor=3,
        )

    def _disagreement_layer(self, attrs: dict[str, Any]) -> Layer:
        disagreement = self.store.arrays().disagreement
        assert disagreement is not None
        nodata = DISAGREEMENT_NODATA
        return Layer(
            read=lambda r0, r1, c0, c1: disagreement[r0:r1, c0:c1][np.newaxis],
            bands=1,
            dtype=np.dtype(np.uint8),
            nodata=nodata,
            descriptions=(
                f"1: overlapping tiles disagree on the class, 0: they agree, nodata {nodata}",
            ),
            tags=self._tags(attrs, "disagreement"),
            resampling="MODE",
            colormap={0: (0, 0, 0, 0), 1: (255, 0, 0, 255), nodata: (0, 0, 0, 0)},
        )
