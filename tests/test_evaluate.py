"""Evaluation against independent references: scikit-learn, NumPy formulas, real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, jaccard_score

from tilesegment import segment
from tilesegment.errors import InputError
from tilesegment.evaluation import evaluate
from tilesegment.evaluation.seams import seam_band
from tilesegment.read.array import ArrayRaster
from tilesegment.read.base import Georef

RNG = np.random.default_rng(21)


def _fcn_reference(truth: np.ndarray, pred: np.ndarray, k: int) -> dict[str, float]:
    """The FCN paper's §5 formulas, written out directly over classes present."""
    n = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            n[i, j] = np.sum((truth == i) & (pred == j))
    t = n.sum(axis=1)
    present = (t + n.sum(axis=0)) > 0
    in_truth = t > 0
    iu = np.array([n[i, i] / (t[i] + n[:, i].sum() - n[i, i]) if present[i] else 0
                   for i in range(k)])
    return {
        "pixel_accuracy": np.trace(n) / t.sum(),
        "mean_accuracy": np.mean([n[i, i] / t[i] for i in range(k) if in_truth[i]]),
        "mean_iou": np.mean(iu[present]),
        "frequency_weighted_iou": np.sum(t[present] * iu[present]) / t.sum(),
    }


@pytest.mark.parametrize("k", [2, 5])
def test_against_sklearn_and_fcn_formulas(k):
    truth = RNG.integers(0, k, (211, 157)).astype(np.uint8)
    pred = np.where(RNG.random(truth.shape) < 0.7, truth,
                    RNG.integers(0, k, truth.shape)).astype(np.uint8)
    report = evaluate(pred, truth, num_classes=k, block=64)
    sk = confusion_matrix(truth.ravel(), pred.ravel(), labels=list(range(k)))
    assert np.array_equal(report.confusion, sk)
    assert report.confusion.dtype == np.int64
    jac = jaccard_score(truth.ravel(), pred.ravel(), average=None, labels=list(range(k)))
    assert np.array_equal([r["iou"] for r in report.per_class], jac)
    ref = _fcn_reference(truth, pred, k)
    for key, value in ref.items():
        assert report.measures[key] == pytest.approx(value, rel=1e-12)


def test_chunked_equals_whole():
    truth = RNG.integers(0, 4, (300, 257))
    pred = RNG.integers(0, 4, (300, 257))
    a = evaluate(pred, truth, block=37)
    b = evaluate(pred, truth, block=4096)
    assert np.array_equal(a.confusion, b.confusion)


def test_counts_past_float32_precision_stay_exact():
    h, w = 4100, 4100  # 16.81 M pixels > 2**24
    truth = np.zeros((h, w), np.uint8)
    pred = np.zeros((h, w), np.uint8)
    pred[0, :3] = 1
    report = evaluate(pred, truth, num_classes=2, block=1024)
    assert int(report.confusion[0, 0]) == h * w - 3
    assert int(np.float32(h * w - 3)) != h * w - 3  # a float32 counter would be wrong


def test_absent_class_and_empty_prediction():
    truth = np.array([[0, 0, 1, 1]] * 4)
    pred = np.array([[0, 0, 1, 0]] * 4)
    r = evaluate(pred, truth, num_classes=3)
    assert r.per_class[2]["absent"] is True and r.per_class[2]["iou"] is None
    assert r.measures["mean_iou"] == pytest.approx((8 / 12 + 4 / 8) / 2)
    bg = evaluate(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), num_classes=2)
    assert bg.measures["pixel_accuracy"] == 1.0
    assert bg.measures["mean_iou"] == 1.0 and bg.per_class[1]["absent"]
    # predicted but absent from the truth: IoU 0, counted in mean IoU, not mean accuracy
    fp = evaluate(np.array([[0, 1]]), np.array([[0, 0]]), num_classes=2)
    assert fp.per_class[1]["iou"] == 0.0
    assert fp.measures["mean_iou"] == pytest.approx(0.25)
    assert fp.measures["mean_accuracy"] == pytest.approx(0.5)


def test_ignore_index_and_nodata_are_not_counted():
    truth = RNG.integers(0, 3, (50, 60)).astype(np.int16)
    pred = RNG.integers(0, 3, (50, 60)).astype(np.uint8)
    truth[:10] = 255
    pred[:, :5] = 200
    t_r = ArrayRaster(truth)
    p_r = ArrayRaster(pred, nodata=200)
    r = evaluate(p_r, t_r, num_classes=3, ignore_index=255)
    keep = (truth != 255) & (pred != 200)
    sk = confusion_matrix(truth[keep], pred[keep], labels=[0, 1, 2])
    assert np.array_equal(r.confusion, sk)
    t_nd = ArrayRaster(truth, nodata=255)
    assert np.array_equal(evaluate(p_r, t_nd, num_classes=3).confusion, sk)


def test_out_of_range_class_is_an_error():
    with pytest.raises(InputError, match="class id 7"):
        evaluate(np.zeros((4, 4), np.uint8), np.full((4, 4), 7), num_classes=3)


def test_instances_and_mapping():
    labels = np.zeros((20, 20), np.uint16)
    labels[2:6, 2:6] = 17
    labels[10:15, 8:12] = 300
    pred = (labels > 0).astype(np.uint8)
    assert evaluate(pred, labels, instances=True).iou(1) == 1.0
    mapped = evaluate(pred, labels, mapping={17: 1, 300: 1})
    assert mapped.iou(1) == 1.0


def _geo(shift_px=0.0, epsg=32633):
    from rasterio.crs import CRS

    return Georef(crs_wkt=CRS.from_epsg(epsg).to_wkt(),
                  transform=(10.0, 0.0, 500000.0 + 10.0 * shift_px, 0.0, -10.0, 5e6))


def test_grid_mismatch_is_refused():
    mask = RNG.integers(0, 2, (30, 40)).astype(np.uint8)
    with pytest.raises(InputError, match="transforms differ"):
        evaluate(ArrayRaster(mask, georef=_geo()), ArrayRaster(mask, georef=_geo(1.0)))
    with pytest.raises(InputError, match="30×40 px but truth"):
        evaluate(mask, mask[:, :39])
    with pytest.raises(InputError, match="CRS differ"):
        evaluate(ArrayRaster(mask, georef=_geo()), ArrayRaster(mask, georef=_geo(0, 32632)))


def test_resampled_truth_matches_numpy_nearest():
    fine = RNG.integers(0, 3, (40, 60)).astype(np.uint8)
    coarse = fine[::2, ::2]
    g_pred = _geo()
    g_truth = Georef(crs_wkt=g_pred.crs_wkt, transform=(20.0, 0.0, 500000.0, 0.0, -20.0, 5e6))
    r = evaluate(ArrayRaster(fine, georef=g_pred), ArrayRaster(coarse, georef=g_truth),
                 resample_truth=True, num_classes=3)
    upsampled = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)
    assert np.array_equal(r.confusion, confusion_matrix(upsampled.ravel(), fine.ravel()))


def test_seam_band_against_brute_force():
    shape, core, width = (53, 47), 10, 3
    band = seam_band((0, 53, 0, 47), shape, core, width)
    rows, cols = np.mgrid[0:53, 0:47]

    def near(x, n):
        boundaries = [b for b in range(core, n, core)]
        return np.min([np.where(x < b, b - 1 - x, x - b) for b in boundaries], axis=0) < width

    assert np.array_equal(band, near(rows, 53) | near(cols, 47))
    part = seam_band((11, 29, 5, 40), shape, core, width)
    assert np.array_equal(part, band[11:29, 5:40])


def test_seam_report_splits_the_pixels():
    truth = RNG.integers(0, 2, (64, 64))
    pred = truth.copy()
    pred[16::16, :] = 1 - pred[16::16, :]  # errors only on rows 16, 32, 48: core boundaries
    r = evaluate(pred, truth, seam_width=1, core=16)
    assert r.seam.interior.trace() == r.seam.interior.sum()  # interior is perfect
    assert r.seam.seam.sum() + r.seam.interior.sum() == 64 * 64
    assert r.seam.summary()["seam"]["pixel_accuracy"] < 1.0


def test_report_renderings(tmp_path):
    truth = RNG.integers(0, 3, (40, 50))
    pred = RNG.integers(0, 3, (40, 50))
    r = evaluate(pred, truth, class_names=["a", "b", "c"], figures_dir=tmp_path)
    data = json.loads(r.to_json())
    assert data["confusion"] == confusion_matrix(truth.ravel(), pred.ravel()).tolist()
    assert "absent" in data["absent_class_policy"]
    lines = r.to_csv().splitlines()
    assert lines[0].startswith("class,name") and lines[1].startswith("0,a,")
    md = r.to_markdown()
    assert "| mean IoU |" in md and "confusion.png" in md
    for name in ("confusion.png", "preview.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


OTSU_IOU = 0.7166


@pytest.fixture()
def otsu_prediction(shared_data, tmp_path):
    import tifffile

    image = tifffile.imread(shared_data / "nuclei" / "nuclei.tif")
    path = tmp_path / "otsu.tif"
    tifffile.imwrite(path, (image > 47).astype(np.uint8))
    return path


def test_real_nuclei_otsu_iou_python_and_cli(shared_data, otsu_prediction, tmp_path):
    from click.testing import CliRunner

    from tilesegment.cli.main import cli

    truth = shared_data / "nuclei" / "nuclei_labels.tif"
    report = evaluate(otsu_prediction, truth, instances=True)
    assert report.iou(1) == pytest.approx(OTSU_IOU, abs=5e-4)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli, ["evaluate", str(otsu_prediction), str(truth),
                                      "--instances", "--json", str(out)])
    assert result.exit_code == 0, result.output
    cli_iou = json.loads(out.read_text())["per_class"][1]["iou"]
    assert cli_iou == report.iou(1)


def test_real_landsat_crs_alias_needs_the_flag(shared_data):
    truth = shared_data / "landsat" / "landcover_strata.tif"
    with pytest.raises(InputError, match="allow-crs-alias"):
        evaluate(_landsat_like_prediction(shared_data), truth, num_classes=8)
    r = evaluate(_landsat_like_prediction(shared_data), truth, num_classes=8,
                 allow_crs_alias=True)
    assert r.settings["pixels_counted"] > 0


def _landsat_like_prediction(shared_data):
    """A prediction on the Landsat scene's grid (EPSG:32119), all 'forest' (5)."""
    import rasterio

    with rasterio.open(shared_data / "landsat" / "landsat7_multiband.tif") as src:
        georef = Georef(crs_wkt=src.crs.to_wkt(), transform=tuple(src.transform)[:6])
        shape = src.shape
    return ArrayRaster(np.full(shape, 5, np.uint8), georef=georef)


def test_top_level_evaluate_is_the_function_even_after_submodule_import():
    import tilesegment
    import tilesegment.evaluation  # binds the subpackage on the parent package

    report = tilesegment.evaluate(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8))
    assert report.measures["pixel_accuracy"] == 1.0


def test_blended_run_disagreement_is_reported(tmp_path):
    """The overlap section counts exactly the pixels of the independent disagreement map."""
    image = RNG.normal(size=(2, 90, 100)).astype(np.float32)
    truth = RNG.integers(0, 3, (90, 100)).astype(np.uint8)
    common = dict(model="unet-tiny", classes=3, tile=64, halo=16, blend="gaussian")
    d = segment(image, returns="disagreement", **common)
    mask = segment(image, **common)
    summary = segment(image, tmp_path / "g.zarr", save_disagreement=True, **common)
    r = evaluate(summary.output, truth, figures_dir=tmp_path / "fig")
    o = r.overlap.summary()
    assert d.any()
    assert o["disagree"]["pixels"] == int(d.sum())
    hit = d == 1
    assert o["disagree"]["pixel_accuracy"] == pytest.approx((mask[hit] == truth[hit]).mean())
    assert (tmp_path / "fig" / "disagreement.png").is_file()
    with pytest.raises(Exception, match="needs --blend gaussian"):
        segment(image, tmp_path / "c.zarr", save_disagreement=True, model="unet-tiny",
                classes=3, tile=64, halo=16)


@pytest.mark.parametrize("wrong_where", ["ignored", "counted"])
def test_error_preview_paints_only_counted_pixels_red(tmp_path, wrong_where):
    """Pixels left out by --ignore-index (or truth nodata) are grey in the error panel, never
    red; a wrong pixel that is counted is red (the control)."""
    from matplotlib.image import imread

    pred = np.zeros((64, 64), np.uint8)
    truth = np.zeros((64, 64), np.uint8)
    truth[:, :20] = 255            # ignored: the prediction says 0 there, "wrong" if counted
    truth[40:, 40:] = 7            # truth nodata
    if wrong_where == "counted":
        pred[10:30, 30:50] = 1     # really wrong, and counted
    georef = Georef()
    report = evaluate(ArrayRaster(pred[None], georef=georef),
                      ArrayRaster(truth[None], georef=georef, nodata=7), num_classes=2,
                      ignore_index=255, figures_dir=tmp_path)
    assert report.measures["pixel_accuracy"] == (1.0 if wrong_where == "ignored" else
                                                 pytest.approx(1 - 400 / (64 * 64 - 1280 - 576)))
    png = (imread(tmp_path / "preview.png")[..., :3] * 255).round().astype(int)
    red = (png == (220, 30, 30)).all(axis=-1).sum()
    assert (red > 0) == (wrong_where == "counted")
