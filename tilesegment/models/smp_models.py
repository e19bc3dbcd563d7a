"""segmentation_models_pytorch (smp) models under the model contract: ``--model
smp:ARCH:ENCODER`` (``smp:Unet:resnet50``, ``smp:FPN:resnet34``), where smp is installed.

smp is optional: nothing here imports it until a model is built, and a missing package is
one ``ModelError`` naming it. The model is ``getattr(smp, ARCH)(encoder_name=ENCODER,
encoder_weights=None, classes=K, in_channels=C)``: nothing is ever downloaded. Weights come
from local files only: ``--weights`` a whole smp model's state dict (``model.state_dict()``
saved with ``safetensors`` or ``torch.save``), ``--backbone-weights`` an encoder's (for the
ResNets, torchvision's classification state dict: ``fc.*`` is dropped, a 3-band first
convolution fitted to other band counts).

Geometry: tiles are multiples of 32 (smp's encoders stride 32). ``smp:Unet:resnet18|34|50``
is the very network of ``unet-resnet18|34|50`` (same layers and names; the tests load one's
weights into the other and compare outputs), so its receptive radius is derived the same
way. For other architectures and encoders the radius is not known here: the spec marks them
``global_context`` (many do pool globally: PSPNet, DeepLabV3, PAN, squeeze-and-excitation
encoders), so no seamless output is promised, and the halo is a quarter tile.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING, Any

from tilesegment.errors import ModelError
from tilesegment.grid import TileRule
from tilesegment.models.registry import ModelEntry, register_family
from tilesegment.models.resnet_unet_geometry import DEFAULT_TILE, RESNETS, resnet_unet_radius
from tilesegment.models.spec import ModelSpec, imagenet_or_raster

if TYPE_CHECKING:
    from torch import nn

PREFIX = "smp"
PACKAGE = "segmentation-models-pytorch"
STRIDE = 32


def parse(name: str) -> tuple[str, str]:
    """``"smp:Unet:resnet50"`` → ``("Unet", "resnet50")``."""
    parts = name.split(":")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise ModelError(f"{name!r}: write smp models as smp:ARCH:ENCODER, e.g. "
                         "smp:Unet:resnet50")
    return parts[1], parts[2]


def smp_available() -> bool:
    """True if segmentation_models_pytorch can be imported (it is not imported here)."""
    if "segmentation_models_pytorch" in sys.modules:  # None: an import blocked on purpose
        return sys.modules["segmentation_models_pytorch"] is not None
    return importlib.util.find_spec("segmentation_models_pytorch") is not None


def _import_smp() -> Any:
    if not smp_available():
        raise ModelError(f"smp models need the package {PACKAGE} (pip install {PACKAGE})")
    import segmentation_models_pytorch as smp

    return smp


def smp_entry(name: str) -> ModelEntry:
    """The registry entry of ``smp:ARCH:ENCODER`` (the family's ``make_entry``)."""
    arch, encoder = parse(name)
    if not smp_available():
        raise ModelError(f"{name}: smp models need the package {PACKAGE} "
                         f"(pip install {PACKAGE})")
    known = arch == "Unet" and encoder in RESNETS
    tile = DEFAULT_TILE[encoder] if known else 512

    def spec(c: int, k: int) -> ModelSpec:
        return ModelSpec(name=name, in_channels=c, num_classes=k,
                         tile_rule=TileRule(multiple=STRIDE, minimum=STRIDE),
                         receptive_radius=resnet_unet_radius(encoder) if known else tile // 4,
                         default_tile=tile, normalization=imagenet_or_raster(c),
                         global_context=not known)

    def build(c: int, k: int, backbone_weights: str | None = None) -> nn.Module:
        return build_smp(arch, encoder, c, k, backbone_weights=backbone_weights)

    return ModelEntry(name, f"segmentation_models_pytorch {arch} on {encoder}", spec, build,
                      kwargs={"arch": arch, "encoder": encoder})


def build_smp(arch: str, encoder: str, in_channels: int, num_classes: int,
              backbone_weights: str | None = None) -> nn.Module:
    """``smp.ARCH(encoder_name=encoder, encoder_weights=None, classes=num_classes,
    in_channels=in_channels)`` in eval mode, its encoder loaded from ``backbone_weights``
    (a local state-dict file) if given."""
    smp = _import_smp()
    cls = getattr(smp, arch, None)
    if not isinstance(cls, type):
        archs = sorted(n for n in dir(smp) if isinstance(getattr(smp, n), type)
                       and n[0].isupper() and hasattr(getattr(smp, n), "forward"))
        raise ModelError(f"smp has no architecture {arch!r}; known: {', '.join(archs)}")
    try:
        model = cls(encoder_name=encoder, encoder_weights=None, classes=num_classes,
                    in_channels=in_channels)
    except (KeyError, ValueError, TypeError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise ModelError(f"smp:{arch}:{encoder}: smp refuses it ({why})") from None
    if backbone_weights:
        load_encoder(model, backbone_weights)
    return model.eval()


def load_encoder(model: nn.Module, path: str) -> None:
    """Load a local encoder state dict into ``model.encoder``: ``fc.*`` dropped, a 3-band
    first convolution fitted to the model's bands
    (:func:`tilesegment.models.tv.adapt_rgb_kernel`); strict otherwise."""
    from tilesegment.models.tv import adapt_rgb_kernel
    from tilesegment.models.weights import check_state_fits, read_state_dict

    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    own = model.encoder.state_dict()
    for key, value in state.items():
        mine = own.get(key)
        if (mine is not None and value.ndim == 4 and value.shape[1] == 3
                and mine.shape[1] != 3 and mine.shape[0] == value.shape[0]):
            state[key] = adapt_rgb_kernel(value, mine.shape[1])
    check_state_fits({k: tuple(v.shape) for k, v in own.items()}, state, str(path),
                     problem="does not fit the smp encoder", show_shapes=True, limit=4)
    model.encoder.load_state_dict(state, strict=True)


register_family(PREFIX, smp_entry)
