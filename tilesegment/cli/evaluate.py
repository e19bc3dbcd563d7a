"""``tilesegment evaluate``: score a predicted mask against a truth mask."""

from __future__ import annotations

from pathlib import Path

import click


def parse_mapping(ctx, param, value: str | None) -> dict[int, int] | None:
    """``"1:0,2:1,7:1"`` → ``{1: 0, 2: 1, 7: 1}`` (truth value → class id)."""
    if not value:
        return None
    out = {}
    for item in value.split(","):
        try:
            src, dst = item.split(":")
            out[int(src)] = int(dst)
        except ValueError:
            raise click.BadParameter(
                f"{item!r} is not VALUE:CLASS (e.g. --map 1:0,2:1)", ctx, param) from None
    return out


TRUTH_OPTIONS = (
    ("ignore_index", click.option("--ignore-index", type=int,
                                  help="Truth value left out of the counts.")),
    ("instances", click.option(
        "--instances", is_flag=True,
        help="Truth is an instance-label mask: every id > 0 is foreground (1).")),
    ("mapping", click.option("--map", "mapping", callback=parse_mapping,
                             help="Truth value → class id, e.g. '1:0,2:1,7:1'.")),
    ("allow_crs_alias", click.option(
        "--allow-crs-alias", is_flag=True,
        help="Accept CRS that GDAL finds equivalent but that are named "
             "differently (e.g. EPSG:32119 vs EPSG:3358).")),
    ("resample_truth", click.option(
        "--resample-truth", is_flag=True,
        help="Sample the truth onto the prediction's grid by nearest neighbour.")),
    ("seam_width", click.option(
        "--seam-width", type=click.IntRange(min=1),
        help="Also score pixels within this many px of a tile-core boundary "
             "against the interior.")),
    ("core", click.option(
        "--core", type=click.IntRange(min=1),
        help="Core side in px for --seam-width (default: from the "
             "prediction's provenance).")),
    ("json_out", click.option(
        "--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True),
        help="Write the report as JSON ('-' for stdout).")),
    ("csv_out", click.option(
        "--csv", "csv_out", type=click.Path(dir_okay=False),
        help="Write per-class rows and the measures as CSV.")),
    ("report_dir", click.option(
        "--report", "report_dir", type=click.Path(file_okay=False),
        help="Folder for a Markdown report with PNG figures (confusion "
             "matrix, error preview).")),
)
"""``(parameter name, option)`` of the truth options, in ``--help`` order."""
TRUTH_ALIGNMENT = ("allow_crs_alias", "resample_truth")
"""The truth options that decide whether the truth lies on the mask's grid."""


def truth_options(f):
    """Options shared by ``evaluate`` and ``run --truth``."""
    for _, decorator in reversed(TRUTH_OPTIONS):
        f = decorator(f)
    return f


def truth_alignment_options(f):
    """Only the options of :data:`TRUTH_ALIGNMENT` (``plan --truth`` checks the grid)."""
    for name, decorator in reversed(TRUTH_OPTIONS):
        if name in TRUTH_ALIGNMENT:
            f = decorator(f)
    return f


@click.command()
@click.argument("prediction", type=click.Path(exists=True))
@click.argument("truth", type=click.Path(exists=True))
@click.option("--classes", type=click.IntRange(min=1), help="Number of classes K.")
@truth_options
@click.option("--class-field",
              help="TRUTH is polygons (.gpkg, .geojson, .fgb, .shp): the field holding "
              "each polygon's class (an id or a class name); rasterised onto the "
              "prediction's grid block by block, pixels outside every polygon not counted.")
@click.option("--image", type=click.Path(exists=True),
              help="Image under the error preview (default: the run's input, if found).")
def evaluate(prediction: str, truth: str, classes: int | None, **options) -> None:
    """Score PREDICTION (class ids) against TRUTH (a mask, or polygons with
    --class-field): pixel accuracy, mean accuracy, mean IoU,
    frequency-weighted IoU (the FCN paper's measures) and per-class IoU, Dice, precision,
    recall and support; counted exactly, block by block."""
    report_and_print(prediction, truth, classes=classes, **options)


def report_and_print(prediction, truth, *, classes=None, json_out=None, csv_out=None,
                     report_dir=None, image=None, **kwargs) -> None:
    """Evaluate and write the report wherever asked; the table goes to the terminal."""
    from tilesegment.evaluation import evaluate as run_evaluation

    report = run_evaluation(prediction, truth, num_classes=classes, figures_dir=report_dir,
                            image=image, **kwargs)
    if json_out == "-":
        click.echo(report.to_json())
    else:
        click.echo(report.table())
        if json_out:
            Path(json_out).write_text(report.to_json() + "\n", encoding="utf-8")
    if csv_out:
        Path(csv_out).write_text(report.to_csv(), encoding="utf-8")
    if report_dir:
        Path(report_dir, "report.md").write_text(report.to_markdown(), encoding="utf-8")
        click.echo(f"report: {Path(report_dir, 'report.md')}", err=json_out == "-")
