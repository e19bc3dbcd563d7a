"""``tilesegment tune-crf``: choose the dense CRF's kernel values on a validation region and
write them into a copy of the model's card, which ``run --crf`` then uses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from tilesegment.cli.evaluate import TRUTH_OPTIONS

_TRUTH = dict(TRUTH_OPTIONS)


@click.command("tune-crf")
@click.argument("probs", metavar="PROBS", type=click.Path(exists=True))
@click.argument("image", type=click.Path(exists=True))
@click.option("--truth", type=click.Path(exists=True), required=True,
              help="Truth mask on the same grid (class ids; see --instances, --map).")
@click.option("--window", metavar="ROW0:ROW1,COL0:COL1",
              help="The validation region scored (half-open px). Default: the whole raster, "
                   "if it fits --max-pixels with its CRF context.")
@click.option("--score", type=click.Choice(["mean-iou", "foreground-iou"]),
              default="mean-iou", show_default=True,
              help="What the search maximises: mean IoU over classes, or foreground IoU "
                   "(the mean IoU of classes 1…K-1; for 2 classes class 1's IoU).")
@click.option("--iterations", type=click.IntRange(min=1), default=10, show_default=True,
              help="Mean-field iterations (fixed during the search).")
@click.option("--max-candidates", type=click.IntRange(min=1), default=200,
              show_default=True, help="Most CRF settings tried (coarse grid: 72).")
@click.option("--max-pixels", type=click.IntRange(min=1), default=4 * 1024 * 1024,
              show_default=True,
              help="Cap on the pixels held at once: the window plus its CRF context (up to "
                   "480 px a side).")
@_TRUTH["ignore_index"]
@_TRUTH["instances"]
@_TRUTH["mapping"]
@click.option("-m", "--model",
              help="The model whose card gets the setting: a shipped model's name or a "
                   "checkpoint. Default: the model that wrote PROBS (its provenance).")
@click.option("--card", type=click.Path(dir_okay=False),
              help="Write the model as checkpoint CARD (NAME.safetensors + NAME.json, the "
                   "tensors copied) with the tuned setting (or \"no CRF\") in its card; "
                   "then `run --model NAME.safetensors --crf` uses it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing CARD.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write every candidate's scores as JSON ('-' for stdout).")
def tune_crf(probs: str, image: str, truth: str, window: str | None, score: str, iterations: int,
             max_candidates: int, max_pixels: int, ignore_index: int | None,
             instances: bool, mapping: dict[int, int] | None, model: str | None,
             card: str | None, overwrite: bool, json_out: str | None) -> None:
    """Tune the dense CRF on a validation region: PROBS is a run's output written with
    --save-probabilities (or its probabilities layer), IMAGE that run's input, --truth the
    truth mask. A coarse grid over the appearance (w1, θα, θβ) and smoothness (w2, θγ)
    kernels, then a local refinement around the best (as DeepLab v1 did); each candidate's
    IoU is printed next to the network's own (no CRF). The best goes into --card only if it
    beats no CRF; otherwise the card records "no CRF"."""
    from tilesegment.evaluation.confusion import LabelRules
    from tilesegment.refine.tune import parse_window
    from tilesegment.refine.tune import tune_crf as search

    region = None if window is None else parse_window(window)
    layer, meta = _probabilities_layer(probs)
    model = model or _provenance_model(meta, card)
    if card is not None:  # refused before the search, not after it
        from tilesegment.models.tuned_card import base_checkpoint

        base_checkpoint(model)
        _check_card_target(card, overwrite)
    rules = LabelRules(ignore_index=ignore_index, instances=instances,
                       mapping=tuple(sorted((mapping or {}).items())))
    result = search(layer, image, truth, window=region, score=score, iterations=iterations,
                    rules=rules, max_pixels=max_pixels, max_candidates=max_candidates,
                    class_names=tuple(meta.get("class_names") or ()))
    data: dict[str, Any] = result.to_dict()
    if card is not None:
        from tilesegment.models.tuned_card import write_tuned_card

        tensors, side = write_tuned_card(model, card, result.card_entry(),
                                         overwrite=overwrite)
        data["card"] = str(side)
    if json_out == "-":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo(result.table())
        if json_out:
            Path(json_out).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    done = "crf" if result.best is not None else "no CRF"
    if card is not None:
        click.echo(f"wrote {side} ({done}; tensors {tensors.name}): `tilesegment run "
                   f"--model {tensors} --crf` uses it", err=json_out == "-")


def _probabilities_layer(probs: str) -> tuple[str, dict[str, Any]]:
    """The probabilities layer of the tilesegment output ``probs`` (the output or the layer
    itself), and the output's metadata; one-line errors otherwise."""
    from tilesegment.errors import InputError
    from tilesegment.write.verify import check_output

    try:
        meta = check_output(probs)
    except InputError as exc:
        raise InputError(f"PROBS: {exc} (tune-crf reads a tilesegment output written with "
                         "--save-probabilities)") from None
    layer = (meta.get("layer_paths") or {}).get("probabilities")
    if layer is None:
        raise InputError(f"{probs}: this output has no probabilities: run it again with "
                         "--save-probabilities")
    return layer, meta


def _provenance_model(meta: dict[str, Any], card: str | None) -> str | None:
    """The model that wrote the output, where a card can be found for it."""
    prov = meta.get("provenance") or {}
    if prov.get("model_kind") == "checkpoint" and prov.get("model_source"):
        return str(prov["model_source"])
    name = prov.get("model")
    if card is not None and not name:
        from tilesegment.errors import ModelError

        raise ModelError("PROBS does not say which model wrote it: name it with --model")
    return name


def _check_card_target(card: str, overwrite: bool) -> None:
    from tilesegment.errors import OutputExistsError, SettingError
    from tilesegment.models.tuned_card import package_folder

    path = Path(card)
    if path.suffix not in (".safetensors", ".json"):
        raise SettingError(f"--card {card}: name the checkpoint NAME.safetensors (its card "
                           "NAME.json is written beside it)")
    side = path.with_suffix(".json")
    if side.parent.resolve() == package_folder():
        raise SettingError(f"--card {card}: refusing to change a shipped model's card in the "
                           "installed package; write a copy elsewhere")
    if side.exists() and not overwrite:
        raise OutputExistsError(f"{side} exists (pass --overwrite to replace it)")
