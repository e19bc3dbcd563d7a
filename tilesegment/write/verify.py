"""Reading an output back (``info``, ``evaluate``, ``read_output_meta``): its metadata and
whether it is whole.

- :func:`read_output_meta`: the metadata of an output of any registered kind;
- :func:`check_output`: a whole output as a reader finds it: a completion record, complete,
  its blocks all there, every layer of a GeoTIFF set from the same run
  (:func:`output_problems`, which asks the kind's writer class).

This module sits above the registry (it looks the kind up there); the checks the writers
themselves use live in the leaf :mod:`tilesegment.write.integrity` (re-exported here), so
no writer imports this module and no import cycle runs through ``tilesegment.write``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tilesegment.errors import IncompleteOutputError, InputError
from tilesegment.write import atomic, layout, registry
from tilesegment.write.integrity import (  # noqa: F401  (re-exported: callers use verify.*)
    MISSING_LIST_LIMIT,
    expected_blocks,
    geotiff_problems,
    missing_blocks,
    verify_tiff,
    zarr_chunk_problems,
    zarr_problems,
    zarr_written_blocks,
)


def read_output_meta(path: str | Path) -> dict[str, Any]:
    """The ``tilesegment`` metadata of an output (the JSON of ``meta_to_attrs``).

    Adds ``path``; ``layers`` (``"mask"``, then ``"probabilities"``/``"disagreement"`` when
    saved; derived for outputs older than that key) and ``layer_paths`` (layer → the path
    ``open_raster`` opens it from: ``out.zarr/<layer>``, or the GeoTIFF and its
    ``<stem>.<layer><suffix>`` siblings); for a GeoTIFF also ``overviews`` (decimation
    factors) and ``tiff_block_shape``. InputError when ``path`` is not a tilesegment output.
    The kind's writer class reads it (:meth:`Output.read_meta`).
    """
    path = Path(path)
    if not atomic.exists(path):
        raise InputError(f"{path} does not exist")
    return registry.reader_for(path).read_meta(path)


def check_output(path: str | Path) -> dict[str, Any]:
    """The metadata of the tilesegment output at ``path`` (see ``read_output_meta``),
    after checking it is complete and consistent; :class:`IncompleteOutputError` (one line,
    naming what is wrong) otherwise.

    ``path`` may be a layer of an output (``out.zarr/mask``, ``out.probabilities.tif``):
    the whole output is checked.
    """
    path = Path(path)
    meta = read_output_meta(path)
    problems = output_problems(meta)
    if problems:
        raise IncompleteOutputError(f"{meta['path']} is not a complete tilesegment output: "
                                    + "; ".join(problems))
    return meta


def output_problems(meta: dict[str, Any]) -> list[str]:
    """Everything wrong with an output described by ``read_output_meta``; [] when none."""
    path = Path(meta["path"])
    completion = meta.get(layout.COMPLETION_KEY)
    if not isinstance(completion, dict) or "complete" not in completion:
        return ["it has no completion record (a partial or altered output)"]
    if completion.get("complete") is not True:
        written = completion.get("blocks_written")
        problem = (f"its completion record says incomplete (blocks written: {written} of "
                   f"{completion.get('blocks_total')}): a partial output of a run that did not "
                   "finish")
        final = layout.final_of(path)
        if layout.block_store_key(final, path.name) and meta.get(layout.FINGERPRINT_KEY):
            from tilesegment.write import manifest

            problem += (f" (the block store of an unfinished run of {final.name}, "
                        f"{manifest.count_done(path)} blocks done: finish it with "
                        f"`tilesegment run ... -o {final} --resume`)")
        return [problem]
    if int(meta.get("format_version") or 1) < 2:
        return []  # written before run ids and block records: nothing more to check
    try:
        writer = registry.writer(str(meta.get("kind")))
    except KeyError:
        return [f"its kind {meta.get('kind')!r} is not a registered output kind"]
    return writer.problems(path, meta, completion)
