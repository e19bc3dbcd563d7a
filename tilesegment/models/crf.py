"""Fully connected CRF (Krähenbühl & Koltun, NIPS 2011) by mean-field inference, as DeepLab
v1 uses it to sharpen its coarse score maps.

Energy ``E(x) = Σ_i ψ_u(x_i) + Σ_{i<j} μ(x_i, x_j) k(f_i, f_j)`` with unary
``ψ_u = -log p`` (the network's probabilities), Potts ``μ = [x_i ≠ x_j]`` and

    k(f_i, f_j) = w1 · exp(-|p_i - p_j|² / 2θα² - |I_i - I_j|² / 2θβ²)   (appearance)
                + w2 · exp(-|p_i - p_j|² / 2θγ²)                          (smoothness)

with ``p`` pixel positions (px) and ``I`` the image bands in 8-bit units (any number of
bands: the bilateral feature is ``(row/θα, col/θα, band_1/θβ, …, band_C/θβ)``).

:func:`dense_crf` runs the permutohedral-lattice implementation of pydensecrf2 (the
authors' C++ code): each kernel is applied symmetrically normalised,
``D^-½ K D^-½ Q`` with ``D = K·1`` (``NORMALIZE_SYMMETRIC``, the library default, the
self term ``j = i`` included), and one iteration is ``Q ← softmax(-ψ_u + Σ_m w_m k̃_m Q)``
(for Potts this equals the paper's update up to a per-pixel constant).
:func:`brute_force_dense_crf` does the same update with exact O(N²) Gaussian filtering in
NumPy: the reference for tests and tiny images.

Block by block: :func:`crf_halo` says how much context a block needs and
:func:`crf_block` refines a block given with that halo and returns its core.
No torch here; pydensecrf is imported when first used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tilesegment.errors import ModelError

Halo = int | tuple[int, int, int, int]
ImageRange = tuple[float | Sequence[float], float | Sequence[float]]

BRUTE_FORCE_MAX_PIXELS = 10_000
"""Largest image :func:`brute_force_dense_crf` accepts (it holds N×N float64 kernels)."""


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF parameters, named as in Krähenbühl & Koltun (2011): appearance kernel
    weight ``w1``, spatial and intensity widths ``θα`` (px) and ``θβ`` (8-bit grey levels,
    see :func:`crf_image`); smoothness kernel weight ``w2`` and width ``θγ`` (px).

    Defaults are Krähenbühl & Koltun's cross-validated values (``w1=10, θα=80, θβ=13,
    w2=3, θγ=3``), 10 iterations, chosen for 8-bit imagery of unknown source: θβ = 13
    grey levels tolerates sensor noise and texture of a few levels, the halo is 240 px
    (:func:`crf_halo`), and the lattice stays accurate. :meth:`deeplab` gives DeepLab-
    LargeFOV's values (``w1=4, θα=121, θβ=5``; same smoothness kernel) tuned on PASCAL VOC
    for DeepLab's own score maps: sharper colour edges, halo 363 px, ~1.5× slower.
    ``epsilon`` floors the probabilities before ``-log``: a class the network rules out
    costs at most ``-log ε`` ≈ 18.4.
    """

    w1: float = 10.0
    theta_alpha: float = 80.0
    theta_beta: float = 13.0
    w2: float = 3.0
    theta_gamma: float = 3.0
    iterations: int = 10
    epsilon: float = 1e-8

    def __post_init__(self) -> None:
        if min(self.theta_alpha, self.theta_beta, self.theta_gamma) <= 0:
            raise ValueError("θα, θβ and θγ must be positive")
        if self.w1 < 0 or self.w2 < 0:
            raise ValueError("the kernel weights w1, w2 must be ≥ 0")
        if self.iterations < 0:
            raise ValueError("iterations must be ≥ 0")
        if not 0 < self.epsilon < 1:
            raise ValueError("epsilon must lie in (0, 1)")

    @classmethod
    def krahenbuhl(cls, iterations: int = 10) -> CRFParams:
        """Krähenbühl & Koltun's values: the defaults."""
        return cls(iterations=iterations)

    @classmethod
    def deeplab(cls, iterations: int = 10) -> CRFParams:
        """DeepLab-LargeFOV's values (Chen et al. 2015)."""
        return cls(w1=4.0, theta_alpha=121.0, theta_beta=5.0, w2=3.0, theta_gamma=3.0,
                   iterations=iterations)


def crf_image(image: np.ndarray, image_range: ImageRange | None = None) -> np.ndarray:
    """``(C, H, W)`` image → ``float32 (C, H, W)`` in 8-bit units, the scale of ``θβ``.

    ``uint8`` is taken as it is. Any other dtype needs ``image_range=(lo, hi)`` (scalars or
    one value per band), mapped linearly to 0…255: pass one range for the whole raster
    (its dtype range, or percentiles), never one per block, or blocks disagree at seams.
    Non-finite values (nodata) become 0.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {image.shape}")
    if image_range is None:
        if image.dtype != np.uint8:
            raise ValueError(f"a {image.dtype} image needs image_range=(lo, hi) to map it to "
                             "the 8-bit units of θβ")
        return image.astype(np.float32)
    c = image.shape[0]
    lo = np.broadcast_to(np.asarray(image_range[0], np.float64), (c,))[:, None, None]
    hi = np.broadcast_to(np.asarray(image_range[1], np.float64), (c,))[:, None, None]
    if np.any(hi <= lo):
        raise ValueError(f"image_range {image_range}: need hi > lo for every band")
    out = ((image.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.float32)
    out[~np.isfinite(out)] = 0.0
    return out


def _unary(probabilities: np.ndarray, epsilon: float) -> np.ndarray:
    """``-log p`` as ``float32 (K, N)``; non-finite probabilities (nodata) → uniform."""
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim != 3:
        raise ValueError(f"probabilities must be (K, H, W), got shape {p.shape}")
    p = np.where(np.isfinite(p), p, np.float32(1.0 / p.shape[0]))
    u = -np.log(np.clip(p, epsilon, 1.0))
    return np.ascontiguousarray(u.reshape(p.shape[0], -1), dtype=np.float32)


# The permutohedral lattice is not translation invariant: a shift of the position features
# moves pixels relative to its vertices and changes the (approximate) filtering. It is
# invariant under its own lattice translations: in feature units √3 along feature 0 and 3
# along feature 1 (pydensecrf's scaling, ``(d+1)·sqrt(2/3)/sqrt((i+1)(i+2))`` for feature i,
# and vertices on (d+1)·ℤ^(d+1)). Reducing a block's global origin modulo these periods puts
# its pixels where the whole-image computation puts them, whatever the block.
LATTICE_PERIOD = (math.sqrt(3.0), 3.0)
# A fixed, generic offset (feature units) keeps the pixel grid off the lattice's simplex
# boundaries, where float rounding of the shifted positions would otherwise pick a
# different simplex in a block than in the whole image.
LATTICE_OFFSET = (0.2718281828, 0.3141592654)


def position_features(shape: tuple[int, int], theta: float,
                      origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """``float32 (2, H·W)``: (row, col) / θ of the pixels of a ``shape`` array whose top-left
    pixel is raster pixel ``origin``, placed on the lattice as the whole raster places them
    (see :data:`LATTICE_PERIOD`)."""
    h, w = shape
    rows = (origin[0] / theta) % LATTICE_PERIOD[0] + LATTICE_OFFSET[0] + np.arange(h) / theta
    cols = (origin[1] / theta) % LATTICE_PERIOD[1] + LATTICE_OFFSET[1] + np.arange(w) / theta
    grid = np.stack(np.meshgrid(rows, cols, indexing="ij"))
    return grid.reshape(2, -1).astype(np.float32)


def _kernels(shape: tuple[int, int], image8: np.ndarray, params: CRFParams,
             origin: tuple[int, int] = (0, 0)) -> list[tuple[np.ndarray, float]]:
    """``(features float32 (d, N), weight)`` for each kernel with a non-zero weight."""
    h, w = shape
    if image8.shape[1:] != (h, w):
        raise ValueError(f"image {image8.shape[1:]} and probabilities {(h, w)} differ in size")
    kernels = []
    if params.w1 > 0:
        bands = image8.reshape(image8.shape[0], -1) / np.float32(params.theta_beta)
        feats = np.concatenate([position_features(shape, params.theta_alpha, origin), bands])
        kernels.append((np.ascontiguousarray(feats, dtype=np.float32), params.w1))
    if params.w2 > 0:
        feats = position_features(shape, params.theta_gamma, origin)
        kernels.append((np.ascontiguousarray(feats), params.w2))
    return kernels


def require_pydensecrf() -> None:
    """ModelError unless pydensecrf2, an optional extra, can be imported."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        raise ModelError("the dense CRF (--crf) needs pydensecrf2, an optional extra: "
                         "pip install 'tilesegment[crf]' (it compiles: a C++ compiler is "
                         "needed)") from None


def dense_crf(probabilities: np.ndarray, image: np.ndarray, params: CRFParams | None = None,
              *, image_range: ImageRange | None = None,
              origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Refine ``probabilities`` ``float32 (K, H, W)`` with the dense CRF over ``image``
    ``(C, H, W)`` (any C; see :func:`crf_image`); returns ``float32 (K, H, W)``.

    Permutohedral-lattice filtering (pydensecrf2): O(N·d²) per iteration for ``d = 2 + C``
    bilateral features, and approximate. ``origin``: the raster pixel of the top-left
    pixel, when the arrays are a window of a larger raster (see :func:`crf_block`).
    Single-threaded, and it holds the GIL throughout: parallel blocks need processes.
    """
    require_pydensecrf()
    import pydensecrf.densecrf as dcrf

    params = params or CRFParams()
    k, h, w = np.shape(probabilities)
    unary = _unary(probabilities, params.epsilon)
    image8 = crf_image(image, image_range)
    crf = dcrf.DenseCRF(h * w, k)
    crf.setUnaryEnergy(unary)
    for feats, weight in _kernels((h, w), image8, params, origin):
        crf.addPairwiseEnergy(feats, compat=float(weight))
    q = np.asarray(crf.inference(params.iterations), dtype=np.float32)
    return q.reshape(k, h, w)


def brute_force_dense_crf(probabilities: np.ndarray, image: np.ndarray,
                          params: CRFParams | None = None, *,
                          image_range: ImageRange | None = None) -> np.ndarray:
    """The same mean-field update as :func:`dense_crf` with exact Gaussian kernels, in
    float64 NumPy: ``Q ← softmax(-ψ_u + Σ_m w_m D_m^-½ K_m D_m^-½ Q)``, ``D_m = K_m·1``,
    self term included. O(N²) memory and time: at most :data:`BRUTE_FORCE_MAX_PIXELS`."""
    params = params or CRFParams()
    k, h, w = np.shape(probabilities)
    if h * w > BRUTE_FORCE_MAX_PIXELS:
        raise ValueError(f"{h}×{w} is too large for the O(N²) reference "
                         f"(at most {BRUTE_FORCE_MAX_PIXELS} pixels)")
    unary = _unary(probabilities, params.epsilon).astype(np.float64)
    image8 = crf_image(image, image_range).reshape(-1, h * w).astype(np.float64)
    rows, cols = (g.ravel().astype(np.float64) for g in np.mgrid[0:h, 0:w])
    pairwise = np.zeros((h * w, h * w))
    for weight, theta, bands in ((params.w1, params.theta_alpha, image8),
                                 (params.w2, params.theta_gamma, None)):
        if weight == 0:
            continue
        dist2 = ((rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2) / theta**2
        if bands is not None:
            for band in bands:
                dist2 += (band[:, None] - band[None]) ** 2 / params.theta_beta**2
        kern = np.exp(-0.5 * dist2)
        norm = 1.0 / np.sqrt(kern.sum(axis=1))
        pairwise += weight * (norm[:, None] * kern * norm[None, :])
    q = _softmax(-unary)
    for _ in range(params.iterations):
        q = _softmax(-unary + q @ pairwise)  # pairwise is symmetric
    return q.astype(np.float32).reshape(k, h, w)


def _softmax(energy: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 of ``(K, N)``."""
    e = np.exp(energy - energy.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


# --- block by block ----------------------------------------------------------------------


def crf_halo(params: CRFParams | None = None, sigmas: float = 3.0) -> int:
    """Context (px) a block needs on each side: ``⌈sigmas · max(θα, θγ)⌉`` over the kernels
    in use. At 3σ a Gaussian kernel has fallen to e^-4.5 ≈ 1 % of its peak (the bilateral
    kernel can only be smaller). Mean-field couples pixels further over its iterations,
    but through ever smaller weights: measured, block-wise minus whole-image probabilities
    stay below ~0.02 at 3σ and ~1e-4 at 6σ (tests/models/test_crf.py)."""
    params = params or CRFParams()
    reach = max(params.theta_alpha if params.w1 > 0 else 0.0,
                params.theta_gamma if params.w2 > 0 else 0.0)
    return math.ceil(sigmas * reach)


def _margins(halo: Halo) -> tuple[int, int, int, int]:
    margins = (halo, halo, halo, halo) if isinstance(halo, int) else tuple(halo)
    if len(margins) != 4 or min(margins) < 0:
        raise ValueError(f"halo must be an int or (top, bottom, left, right) ≥ 0, got {halo}")
    return margins  # type: ignore[return-value]


def crf_block(probabilities: np.ndarray, image: np.ndarray, halo: Halo,
              params: CRFParams | None = None, *, origin: tuple[int, int],
              image_range: ImageRange | None = None) -> np.ndarray:
    """Refine one block given with its context and return its core ``float32 (K, h, w)``.

    ``probabilities`` ``(K, h + top + bottom, w + left + right)`` and ``image``
    ``(C, same)`` cover the block plus ``halo``: an int, or ``(top, bottom, left, right)``
    where the raster edge cuts it. Pass only real pixels there (no padding), so edge blocks
    see what the whole-image CRF sees. ``origin``: the raster pixel (row, col) of the arrays'
    top-left pixel (block origin minus the top/left halo); it places the pixels on the
    permutohedral lattice as :func:`dense_crf` of the whole raster does, without which
    blocks differ from the whole image by the lattice's translation error, not only by
    the halo's truncation.
    """
    top, bottom, left, right = _margins(halo)
    h, w = np.shape(probabilities)[1:]
    if top + bottom >= h or left + right >= w:
        raise ValueError(f"halo {halo} leaves no core in a {h}×{w} array")
    q = dense_crf(probabilities, image, params, image_range=image_range, origin=origin)
    return q[:, top:h - bottom, left:w - right]


# --- the model card's CRF setting ----------------------------------------------------------

CARD_KERNEL_FIELDS = ("w1", "theta_alpha", "theta_beta", "w2", "theta_gamma", "iterations")
"""The :class:`CRFParams` fields a model card's ``crf`` entry holds (``epsilon`` is fixed)."""


def crf_card_entry(params: CRFParams | None, tuning: dict | None = None) -> dict:
    """The model card's ``crf`` entry: ``{"enabled": true, "params": {w1, theta_alpha,
    theta_beta, w2, theta_gamma, iterations}, "tuning": {...}}``, or, for ``params=None``,
    ``{"enabled": false, "params": null, ...}``: the CRF was tuned and no setting beat the
    network alone ("no CRF"). ``tuning``: free provenance (region, score, numbers)."""
    values = None if params is None else {k: getattr(params, k) for k in CARD_KERNEL_FIELDS}
    return {"enabled": params is not None, "params": values, "tuning": dict(tuning or {})}


def crf_card_problems(entry: object) -> list[str]:
    """What is wrong with a model card's ``crf`` entry (empty when it is valid)."""
    if not isinstance(entry, dict):
        return ["crf must be a JSON object {enabled, params, tuning}"]
    out = []
    unknown = sorted(set(entry) - {"enabled", "params", "tuning"})
    if unknown:
        out.append(f"crf has unknown fields {', '.join(unknown)}")
    enabled, params = entry.get("enabled"), entry.get("params")
    if not isinstance(enabled, bool):
        out.append("crf.enabled must be true or false")
    elif not enabled and params is not None:
        out.append("crf.params must be null when crf.enabled is false (no CRF)")
    elif enabled:
        try:
            crf_from_card(entry)
        except (TypeError, ValueError) as exc:
            out.append(f"crf.params: {exc}")
    if not isinstance(entry.get("tuning", {}), dict):
        out.append("crf.tuning must be a JSON object")
    return out


def crf_from_card(entry: dict) -> CRFParams | None:
    """The :class:`CRFParams` a card's ``crf`` entry records, ``None`` for "no CRF"."""
    if not isinstance(entry, dict):
        raise ValueError("crf must be a JSON object {enabled, params, tuning}")
    if not entry.get("enabled"):
        return None
    values = entry.get("params")
    if not isinstance(values, dict) or set(values) != set(CARD_KERNEL_FIELDS):
        raise ValueError(f"needs exactly {', '.join(CARD_KERNEL_FIELDS)}")
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise ValueError(f"{key} must be a finite number, not {value!r}")
    if not float(values["iterations"]).is_integer():
        raise ValueError("iterations must be an integer")
    return CRFParams(**{k: float(v) for k, v in values.items() if k != "iterations"},
                     iterations=int(values["iterations"]))
