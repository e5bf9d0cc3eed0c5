"""Model presets of the pretraining methods: encoder from the backbone registry + decoder sizes + crop size.

Hi-End-MAE (FengheTan9/Hi-End-MAE ``networks/vit.py`` builders):

========  =============================================  =======  ================  ==========
preset    encoder                                        crop    decoder           params (*)
========  =============================================  =======  ================  ==========
paper     ``vit_hiend_large_patch12_3d`` 1536/12/16 p12  96^3    528 wide, 16 h    368 M
base      ``vit_hiend_base_patch16_3d`` 768/12/12 p16    96^3    384 wide, 12 h    102 M
small     ``vit_small_patch16_3d`` 384/12/6 p16          96^3    264 wide, 8 h     30 M
tiny      96 wide, 4 blocks, 4 heads, p16                48^3    96 wide, 8 h      2.0 M
========  =============================================  =======  ================  ==========

(*) whole pretraining model, fixed position tables included.

``small`` is ours (the official code has no small model): its decoder keeps the paper's head width 33
(264 = 8 x 33, also a multiple of 6 so the 3D sin-cos embedding has no zero channels). ``tiny`` exists for CPU
tests and the demo (27 tokens: few enough that one batch is overfit within 50 CPU steps). All Hi-End-MAE
presets use 2 self-attention + 3 cross-attention decoder blocks with taps
:func:`~medvit.pretrain.hi_end_mae.hiend_taps` (3, 6, 9 for 12 blocks; 1, 2, 3 for 4).

Plain MAE: 3D presets for CT (``tiny``, ``small``, ``base``) and 2D presets (``tiny_2d``, ``small_2d``
= Medical MAE's ``mae_vit_small_patch16_dec512d2b`` with mask ratio 0.9, ``base_2d`` = MAE ViT-B/16 with the
512-wide, 8-block decoder).

Encoder position embedding: every preset pretrains with a **fixed sin-cos table** (``pos_embed="sincos"``, a
``Parameter`` with ``requires_grad=False``), as the reference code does: MAE ``models_mae.py`` (2D table
``[1, 1 + L, D]`` whose cls slot is zero, MAE ``util/pos_embed.py`` channel layout; the thorax Medical MAE recipe
uses the same model code) and Hi-End-MAE (3D table without a cls slot). The 2D presets build on the timm-sized
registry backbones, whose own default is a learned table, so they set ``sincos`` explicitly; a learned, trainable
table stays available as an override::

    build_model(get_preset("mae", "small_2d"), pos_embed="learn")

Thorax "Medical MAE" (Xiao et al., WACV 2023; lambert-x/medical_mae README commands), method ``mae``, 2D:

===========  ==========================================  =======  ================  =====  ==========
preset       encoder                                     input    decoder           ratio  enc. params
===========  ==========================================  =======  ================  =====  ==========
cxr-vit-s    ``vit_small_patch16_224`` 384/12/6 p16      224^2    512 wide, 2 bl.   0.90   21.7 M
cxr-vit-b    ``vit_base_patch16_224`` 768/12/12 p16      224^2    512 wide, 8 bl.   0.90   85.8 M
cxr-tiny     64 wide, 2 blocks, 2 heads, p8              64^2     32 wide, 1 bl.    0.90   CPU tests
===========  ==========================================  =======  ================  =====  ==========

These carry the paper's recipe in :attr:`Preset.recipe` (a :class:`Recipe`, for the data pipeline and the
optimiser): 3 input channels (a grey X-ray replicated, as the released weights expect; ``in_chans=1`` is the
recorded alternative), intensities in [0, 1] normalised by the ChestX-ray14 mean 0.5056 / std 0.252 on every
channel, RandomResizedCrop(224, scale (0.5, 1.0), bicubic) + horizontal flip, AdamW betas (0.9, 0.95), weight
decay 0.05, ``blr`` 1.5e-4 scaled by the effective batch / 256 (the paper's 2048 gives the presets' ``lr``
1.2e-3), 40 warmup epochs of 800 then a half-cycle cosine per iteration. ``norm_pix_loss`` is off: the README
commands do not pass ``--norm_pix_loss`` (code default False); whether the paper's runs used it is not stated in
the sources we could read. The older ``small_2d`` / ``base_2d`` presets keep their own settings.

Uni4Eye (Cai et al., MICCAI 2022; sizes from the successor Davidczy/Uni4Eye_pp), method ``uni4eye``: one
encoder for 2D images (fundus, RGB) and 3D volumes (OCT, one channel), two decoders (intensity, gradient map):

==============  ======================================  ==============================  ================
preset          encoder                                 image / volume                  each decoder
==============  ======================================  ==============================  ================
uni4eye-vit-l   ``vit_large_patch16_224`` 1024/24/16    224^2 x 3 / 224x224x112 x 1     512 wide, 8 bl.
uni4eye-vit-b   ``vit_base_patch16_224`` 768/12/12      224^2 x 3 / 224x224x112 x 1     512 wide, 8 bl.
uni4eye-tiny    48 wide, 2 blocks, 2 heads, p16         64^2 x 3 / 64x64x32 x 1         32 wide, 1 bl.
uni4eye-cpu     64 wide, 4 blocks, 2 heads, p8          64^2 x 3 / 64x64x32 x 1         32 wide, 1 bl.
==============  ======================================  ==============================  ================

Mask ratio 0.75 (the successor's ``--mask_ratio`` default; its training loop hard-codes 0.5), loss weights
(1, 1), random masking (``mask_strategy="entropy"`` is Uni4Eye++'s option). The volume size is the successor
UPE's ``(S, S, S/2)``. Recipe (successor code): AdamW betas (0.9, 0.95), weight decay 0.05, ``blr`` 1e-3 at batch
64 (3D batches 8), 40 warmup epochs of 200; 2D RandomResizedCrop(224, scale (0.2, 1.0)) + horizontal flip and no
mean/std normalisation; 3D flips on every axis, Gaussian noise and a z-score over the non-zero voxels.

The CPU presets are called ``cxr-tiny`` and ``uni4eye-tiny``: ``mae:tiny`` is the 3D CT model, and a
``uni4eye:tiny`` would be taken for an MAE by the checks that build every ``tiny`` preset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from medvit.shared.backbone.registry import create_backbone
from medvit.shared.backbone.vit import VisionTransformer
from medvit.shared.errors import ConfigError

__all__ = [
    "METHODS",
    "ImageAugment",
    "InputSpec",
    "Intensity",
    "Preset",
    "Recipe",
    "VolumeAugment",
    "build_encoder",
    "build_model",
    "get_preset",
    "list_presets",
]

METHODS = ("hi-end-mae", "mae", "uni4eye")


@dataclass(frozen=True)
class Intensity:
    """How raw intensities become model inputs (recorded in the sidecar of an exported encoder).

    Attributes:
        kind: ``mean_std`` (images scaled to [0, 1], then ``(x - mean) / std`` on every channel) or
            ``zscore_nonzero`` (per volume, mean and std of the non-zero voxels).
        mean: per-channel mean for ``mean_std`` (one value, used for every channel).
        std: per-channel std for ``mean_std``.
    """

    kind: str = "mean_std"
    mean: float = 0.0
    std: float = 1.0

    def sidecar(self, in_chans: int) -> dict[str, Any]:
        """The ``intensity`` sidecar entry for ``in_chans`` channels."""
        if self.kind == "mean_std":
            return {
                "kind": "mean_std",
                "scale": [0.0, 1.0],
                "mean": [self.mean] * in_chans,
                "std": [self.std] * in_chans,
            }
        return {"kind": self.kind}


@dataclass(frozen=True)
class ImageAugment:
    """2D pretraining augmentation (torchvision names): ``RandomResizedCrop`` then ``RandomHorizontalFlip``.

    Attributes:
        crop_scale: area fraction range of the crop.
        crop_ratio: aspect ratio range of the crop (torchvision's default).
        interpolation: resize interpolation.
        hflip: probability of a horizontal flip.
    """

    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    interpolation: str = "bicubic"
    hflip: float = 0.5


@dataclass(frozen=True)
class VolumeAugment:
    """3D pretraining augmentation (Uni4Eye++'s volumentations pipeline).

    Attributes:
        flip: probability of a flip, per axis.
        noise_prob: probability of additive Gaussian noise.
        noise_var: range of the noise variance.
    """

    flip: float = 0.5
    noise_prob: float = 0.2
    noise_var: tuple[float, float] = (0.0, 5.0)


@dataclass(frozen=True)
class InputSpec:
    """One kind of input of a recipe: modality, channels, intensity scaling, augmentation.

    Attributes:
        modality: ``CXR``, ``fundus``, ``OCT``...
        in_chans: channels the model takes by default.
        in_chans_options: channel counts the recipe supports (``build_model(preset, in_chans=1)``).
        intensity: scaling of the inputs.
        augment: random augmentation.
        notes: what differs from the reference or is unverified.
    """

    modality: str
    in_chans: int
    in_chans_options: tuple[int, ...]
    intensity: Intensity
    augment: ImageAugment | VolumeAugment
    notes: str = ""


@dataclass(frozen=True)
class Recipe:
    """A paper's pretraining recipe, for the data pipeline and the optimiser (the model takes none of it).

    Attributes:
        blr: base learning rate; ``lr = blr * effective_batch / 256`` (:meth:`lr`).
        batch_size: the paper's effective batch.
        epochs: the paper's epochs.
        warmup_epochs: linear warmup, then a half-cycle cosine to ``min_lr``, per iteration.
        betas: AdamW betas.
        weight_decay: AdamW weight decay (not on biases, norms, tokens, position tables).
        min_lr: end of the cosine.
        image: the 2D input.
        volume: the 3D input (Uni4Eye).
        source: where the values come from.
    """

    blr: float
    batch_size: int
    epochs: int
    warmup_epochs: int
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    min_lr: float = 0.0
    image: InputSpec | None = None
    volume: InputSpec | None = None
    source: str = ""

    def lr(self, effective_batch: int) -> float:
        """Peak learning rate for an effective batch: ``blr * effective_batch / 256`` (MAE's linear scaling)."""
        return self.blr * effective_batch / 256

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (tuples become lists)."""
        return _jsonable(asdict(self))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


@dataclass(frozen=True)
class Preset:
    """One named model configuration of a method.

    Attributes:
        method: ``hi-end-mae`` or ``mae``.
        name: preset name.
        backbone: registered backbone name.
        backbone_overrides: architecture kwargs replacing the registry's.
        decoder_embed_dim: decoder width.
        decoder_num_heads: decoder heads.
        decoder_depth: decoder self-attention blocks (Hi-End-MAE: before the cross-attention blocks).
        crop_size: input crop, one value per spatial axis.
        mask_ratio: default mask ratio.
        norm_pix_loss: per-patch normalised targets (always on for Hi-End-MAE).
        lr: default peak learning rate (official Hi-End-MAE: 1e-4, not scaled with the batch; presets with a
            ``recipe``: its ``lr`` at the paper's effective batch).
        description: one line for ``--help`` and logs.
        crop_size_3d: Uni4Eye's volume size ``(H, W, D)`` (``crop_size`` is then the image size).
        in_chans_3d: Uni4Eye's volume channels.
        loss_weights: Uni4Eye's ``(lambda1, lambda2)`` of the intensity and gradient losses.
        mask_strategy: ``random`` or (Uni4Eye) ``entropy``.
        recipe: the paper's data and optimisation recipe, when the preset reproduces one.
    """

    method: str
    name: str
    backbone: str
    backbone_overrides: dict[str, Any] = field(default_factory=dict)
    decoder_embed_dim: int = 512
    decoder_num_heads: int = 16
    decoder_depth: int = 2
    crop_size: tuple[int, ...] = (96, 96, 96)
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    lr: float = 1e-4
    description: str = ""
    crop_size_3d: tuple[int, ...] | None = None
    in_chans_3d: int = 1
    loss_weights: tuple[float, float] = (1.0, 1.0)
    mask_strategy: str = "random"
    recipe: Recipe | None = None

    @property
    def spatial_dims(self) -> int:
        return len(self.crop_size)

    def sidecar_metadata(self, spatial_dims: int = 2, in_chans: int | None = None) -> dict[str, Any]:
        """Sidecar fields of an encoder this preset pretrains: method, preset, modality, channels, intensity, size.

        Args:
            spatial_dims: 2 (the image encoder) or 3 (Uni4Eye's volume encoder).
            in_chans: the channels actually used (default: the recipe's).

        Returns:
            A JSON-able dict (``save_backbone(..., metadata=...)``).
        """
        spec = None
        if self.recipe is not None:
            spec = self.recipe.image if spatial_dims == 2 else self.recipe.volume
        size = self.crop_size if spatial_dims == 2 or self.crop_size_3d is None else self.crop_size_3d
        meta: dict[str, Any] = {"method": self.method, "preset": self.name, "input_size": list(size)}
        if spec is not None:
            chans = spec.in_chans if in_chans is None else in_chans
            meta.update(
                modality=spec.modality,
                in_chans=chans,
                in_chans_options=list(spec.in_chans_options),
                intensity=spec.intensity.sidecar(chans),
            )
            if spec.modality == "CXR" and chans == 3:
                meta["grayscale"] = "replicated to 3 channels"
        return meta


# The CPU-sized 3D model both methods share (tests and the demo): encoder 96/4/4 with 16^3 patches on 48^3 crops,
# decoder 96 wide with 8 heads, lr 1e-3.
_TINY_3D: dict[str, Any] = {
    "backbone": "test_vit_3d",
    "backbone_overrides": {
        "img_size": 48,
        "patch_size": (16, 16, 16),
        "in_chans": 1,
        "embed_dim": 96,
        "depth": 4,
        "num_heads": 4,
        "pos_embed": "sincos",
        "pos_embed_prefix": False,
    },
    "decoder_embed_dim": 96,
    "decoder_num_heads": 8,
    "crop_size": (48, 48, 48),
    "lr": 1e-3,
}

# Thorax Medical MAE (lambert-x/medical_mae PRETRAIN.md commands and util/dataloader_med.py).
_CXR_RECIPE = Recipe(
    blr=1.5e-4,
    batch_size=2048,  # 8 GPUs x 256
    epochs=800,
    warmup_epochs=40,
    image=InputSpec(
        modality="CXR",
        in_chans=3,
        in_chans_options=(3, 1),
        intensity=Intensity("mean_std", mean=0.5056, std=0.252),
        augment=ImageAugment(crop_scale=(0.5, 1.0), interpolation="bicubic", hflip=0.5),
        notes=(
            "grey X-rays replicated to 3 channels (PIL RGB) as the released weights expect; 1 channel is an option. "
            "NIH mean/std; CheXpert and MIMIC used ImageNet mean/std in the reference pretraining."
        ),
    ),
    source="Xiao et al., WACV 2023 (arXiv 2210.12843); lambert-x/medical_mae README",
)
# Uni4Eye: successor code (Davidczy/Uni4Eye_pp main_pretrain_partial23D.py, octa500.py); the paper's values are
# not available to us.
_UNI4EYE_RECIPE = Recipe(
    blr=1e-3,
    batch_size=64,  # 2D batches; 3D batches are batch / 8
    epochs=200,
    warmup_epochs=40,
    image=InputSpec(
        modality="fundus",
        in_chans=3,
        in_chans_options=(3,),
        intensity=Intensity("mean_std", mean=0.0, std=1.0),
        augment=ImageAugment(crop_scale=(0.2, 1.0), interpolation="bilinear", hflip=0.5),
        notes="no mean/std normalisation (ToTensor only), as the successor; RandomGrayscale 0.2 in some of its loaders",
    ),
    volume=InputSpec(
        modality="OCT",
        in_chans=1,
        in_chans_options=(1,),
        intensity=Intensity("zscore_nonzero"),
        augment=VolumeAugment(flip=0.5, noise_prob=0.2, noise_var=(0.0, 5.0)),
        notes="crop to the non-background box, nearest resize, z-score of non-zero voxels (zeros -> N(0, 1) noise)",
    ),
    source="Cai et al., MICCAI 2022; recipe from the successor Davidczy/Uni4Eye_pp (Uni4Eye++)",
)
_CXR_2D = {"pos_embed": "sincos"}  # MAE's fixed 2D sin-cos table with a zero cls slot
_UNI4EYE_DECODER: dict[str, Any] = {
    "decoder_embed_dim": 512,
    "decoder_num_heads": 16,
    "decoder_depth": 8,
    "crop_size": (224, 224),
    "crop_size_3d": (224, 224, 112),
    "mask_ratio": 0.75,
    "norm_pix_loss": False,
    "lr": 2.5e-4,  # blr 1e-3 x 64 / 256
    "recipe": _UNI4EYE_RECIPE,
}

_PRESETS: dict[tuple[str, str], Preset] = {
    (p.method, p.name): p
    for p in (
        # ---------------------------------------------------------------- Hi-End-MAE
        Preset(
            "hi-end-mae",
            "paper",
            "vit_hiend_large_patch12_3d",
            decoder_embed_dim=528,
            decoder_num_heads=16,
            description="released configuration: ViT 1536/12/16, 12^3 patches on 96^3 crops, decoder 528/16",
        ),
        Preset(
            "hi-end-mae",
            "base",
            "vit_hiend_base_patch16_3d",
            decoder_embed_dim=384,
            decoder_num_heads=12,
            description="official base: ViT-B 768/12/12, 16^3 patches on 96^3, decoder 384/12",
        ),
        Preset(
            "hi-end-mae",
            "small",
            "vit_small_patch16_3d",
            decoder_embed_dim=264,
            decoder_num_heads=8,
            description="ViT-S 384/12/6, 16^3 patches on 96^3, decoder 264/8",
        ),
        Preset(
            method="hi-end-mae",
            name="tiny",
            **_TINY_3D,
            description="CPU tests and demo: ViT 96/4/4, 16^3 patches on 48^3 (27 tokens), decoder 96/8",
        ),
        # ---------------------------------------------------------------- MAE, 3D
        Preset(
            method="mae",
            name="tiny",
            **_TINY_3D,
            decoder_depth=2,
            description="CPU tests and demo: ViT 96/4/4 3D, 16^3 patches on 48^3, decoder 96 x 2 blocks",
        ),
        Preset(
            "mae",
            "small",
            "vit_small_patch16_3d",
            decoder_embed_dim=256,
            decoder_num_heads=8,
            decoder_depth=4,
            description="ViT-S 3D, 16^3 patches on 96^3, decoder 256 x 4 blocks",
        ),
        Preset(
            "mae",
            "base",
            "vit_base_patch16_3d",
            decoder_embed_dim=512,
            decoder_num_heads=16,
            decoder_depth=8,
            description="ViT-B 3D, 16^3 patches on 96^3, MAE decoder 512 x 8 blocks",
        ),
        # ---------------------------------------------------------------- MAE, 2D
        Preset(
            "mae",
            "tiny_2d",
            "test_vit_2d",
            backbone_overrides={"in_chans": 1, "pos_embed": "sincos"},
            decoder_embed_dim=32,
            decoder_num_heads=2,
            decoder_depth=1,
            crop_size=(32, 32),
            lr=1e-3,
            description="CPU tests: 2D ViT 32/4/2 on 32^2 grey images",
        ),
        Preset(
            "mae",
            "small_2d",
            "vit_small_patch16_224",
            backbone_overrides={"pos_embed": "sincos"},  # MAE's fixed 2D table (cls slot zero), not learned
            decoder_embed_dim=512,
            decoder_num_heads=16,
            decoder_depth=2,
            crop_size=(224, 224),
            mask_ratio=0.9,
            description="Medical MAE (thorax): ViT-S/16 224, decoder 512 x 2 blocks, mask ratio 0.9",
        ),
        Preset(
            "mae",
            "base_2d",
            "vit_base_patch16_224",
            backbone_overrides={"pos_embed": "sincos"},
            decoder_embed_dim=512,
            decoder_num_heads=16,
            decoder_depth=8,
            crop_size=(224, 224),
            description="MAE ViT-B/16 224, decoder 512 x 8 blocks",
        ),
        # ---------------------------------------------------------------- MAE, 2D chest X-ray (Medical MAE)
        Preset(
            "mae",
            "cxr-vit-s",
            "vit_small_patch16_224",
            backbone_overrides=_CXR_2D,
            decoder_embed_dim=512,
            decoder_num_heads=16,
            decoder_depth=2,
            crop_size=(224, 224),
            mask_ratio=0.9,
            norm_pix_loss=False,
            lr=_CXR_RECIPE.lr(_CXR_RECIPE.batch_size),
            recipe=_CXR_RECIPE,
            description="Medical MAE chest X-ray: ViT-S/16 224, decoder 512 x 2 blocks, mask ratio 0.9",
        ),
        Preset(
            "mae",
            "cxr-vit-b",
            "vit_base_patch16_224",
            backbone_overrides=_CXR_2D,
            decoder_embed_dim=512,
            decoder_num_heads=16,
            decoder_depth=8,
            crop_size=(224, 224),
            mask_ratio=0.9,
            norm_pix_loss=False,
            lr=_CXR_RECIPE.lr(_CXR_RECIPE.batch_size),
            recipe=_CXR_RECIPE,
            description="Medical MAE chest X-ray: ViT-B/16 224, decoder 512 x 8 blocks, mask ratio 0.9",
        ),
        Preset(
            "mae",
            "cxr-tiny",
            "test_vit_2d",
            backbone_overrides={**_CXR_2D, "embed_dim": 64, "depth": 2, "num_heads": 2},
            decoder_embed_dim=32,
            decoder_num_heads=2,
            decoder_depth=1,
            crop_size=(64, 64),
            mask_ratio=0.9,
            norm_pix_loss=False,
            lr=1e-3,
            recipe=_CXR_RECIPE,
            description="CPU tests: the chest X-ray recipe on a 2D ViT 64/2/2 with 8^2 patches on 64^2 (64 tokens)",
        ),
        # ---------------------------------------------------------------- Uni4Eye, 2D fundus + 3D OCT
        Preset(
            "uni4eye",
            "uni4eye-vit-l",
            "vit_large_patch16_224",
            backbone_overrides=_CXR_2D,
            **_UNI4EYE_DECODER,
            description="Uni4Eye: ViT-L/16, images 224^2 and volumes 224x224x112, two decoders 512 x 8 blocks",
        ),
        Preset(
            "uni4eye",
            "uni4eye-vit-b",
            "vit_base_patch16_224",
            backbone_overrides=_CXR_2D,
            **_UNI4EYE_DECODER,
            description="Uni4Eye: ViT-B/16, images 224^2 and volumes 224x224x112, two decoders 512 x 8 blocks",
        ),
        Preset(
            "uni4eye",
            "uni4eye-tiny",
            "test_vit_2d",
            backbone_overrides={**_CXR_2D, "patch_size": 16, "embed_dim": 48, "depth": 2, "num_heads": 2},
            **{
                **_UNI4EYE_DECODER,
                "decoder_embed_dim": 32,
                "decoder_num_heads": 2,
                "decoder_depth": 1,
                "crop_size": (64, 64),
                "crop_size_3d": (64, 64, 32),
                "lr": 1e-3,
            },
            description="CPU tests: Uni4Eye on a ViT 48/2/2, 16 px patches, images 64^2 (16 tokens), volumes "
            "64x64x32 (32 tokens), decoders 32 x 1 block",
        ),
        Preset(
            "uni4eye",
            "uni4eye-cpu",
            "test_vit_2d",
            backbone_overrides={**_CXR_2D, "patch_size": 8, "embed_dim": 64, "depth": 4, "num_heads": 2},
            **{
                **_UNI4EYE_DECODER,
                "decoder_embed_dim": 32,
                "decoder_num_heads": 2,
                "decoder_depth": 1,
                "crop_size": (64, 64),
                "crop_size_3d": (64, 64, 32),
                "lr": 1e-3,
            },
            description="CPU demo: Uni4Eye on the eye app's tiny classifier (ViT 64/4/2, 8 px patches), images 64^2 "
            "(64 tokens), volumes 64x64x32 (256 tokens), decoders 32 x 1 block",
        ),
    )
}


def list_presets(method: str | None = None) -> list[str]:
    """Preset names (of one method, or ``method:name`` for all)."""
    if method is None:
        return [f"{m}:{n}" for m, n in _PRESETS]
    return [n for m, n in _PRESETS if m == method]


def get_preset(method: str, name: str) -> Preset:
    """Look up a preset.

    Raises:
        ConfigError: unknown method or preset (listing the valid ones).
    """
    if method not in METHODS:
        raise ConfigError(f"method: unknown {method!r}; choose one of {', '.join(METHODS)}")
    try:
        return _PRESETS[(method, name)]
    except KeyError:
        raise ConfigError(
            f"preset: unknown {name!r} for method {method}; choose one of {', '.join(list_presets(method))}"
        ) from None


def build_encoder(preset: Preset, **overrides: Any) -> VisionTransformer:
    """The preset's backbone, with its crop size as ``img_size`` (plus ``overrides``)."""
    kwargs = {**preset.backbone_overrides, "img_size": list(preset.crop_size), **overrides}
    return create_backbone(preset.backbone, **kwargs)


def build_model(
    preset: Preset,
    *,
    mask_ratio: float | None = None,
    norm_pix_loss: bool | None = None,
    encoder: VisionTransformer | None = None,
    mask_strategy: str | None = None,
    **encoder_overrides: Any,
) -> nn.Module:
    """Build the full pretraining model (encoder + decoder) of a preset.

    Args:
        preset: from :func:`get_preset`.
        mask_ratio: override of the preset's ratio.
        norm_pix_loss: override for MAE (Hi-End-MAE always normalises targets).
        encoder: an existing encoder to wrap instead of a new one.
        mask_strategy: Uni4Eye only: ``random`` or ``entropy`` (default: the preset's).
        **encoder_overrides: architecture kwargs for the new encoder (e.g. ``drop_path_rate``, or
            ``pos_embed="learn"`` for a learned position table instead of the presets' fixed sin-cos one).

    Returns:
        :class:`~medvit.pretrain.hi_end_mae.HiEndMAE`, :class:`~medvit.pretrain.mae.MAE` or
        :class:`~medvit.pretrain.uni4eye.Uni4Eye` (whose 2D encoder is the preset's backbone).
    """
    enc = encoder if encoder is not None else build_encoder(preset, **encoder_overrides)
    ratio = preset.mask_ratio if mask_ratio is None else mask_ratio
    try:
        if preset.method == "hi-end-mae":
            from medvit.pretrain.hi_end_mae import HiEndMAE

            return HiEndMAE(
                enc,
                decoder_embed_dim=preset.decoder_embed_dim,
                decoder_num_heads=preset.decoder_num_heads,
                decoder_depth=preset.decoder_depth,
                mask_ratio=ratio,
            )
        if preset.method == "uni4eye":
            return _build_uni4eye(preset, enc, ratio, norm_pix_loss, mask_strategy)
        from medvit.pretrain.mae import MAE

        return MAE(
            enc,
            decoder_embed_dim=preset.decoder_embed_dim,
            decoder_depth=preset.decoder_depth,
            decoder_num_heads=preset.decoder_num_heads,
            mask_ratio=ratio,
            norm_pix_loss=preset.norm_pix_loss if norm_pix_loss is None else norm_pix_loss,
        )
    except ValueError as err:
        raise ConfigError(f"preset {preset.method}:{preset.name}: {err}") from None


def _build_uni4eye(
    preset: Preset, encoder: VisionTransformer, ratio: float, norm_pix_loss: bool | None, mask_strategy: str | None
) -> nn.Module:
    from medvit.pretrain.uni4eye import Uni4Eye

    if preset.crop_size_3d is None:
        raise ValueError("a Uni4Eye preset needs crop_size_3d (the volume size)")
    return Uni4Eye(
        encoder,
        volume_size=preset.crop_size_3d,
        in_chans_3d=preset.in_chans_3d,
        decoder_embed_dim=preset.decoder_embed_dim,
        decoder_depth=preset.decoder_depth,
        decoder_num_heads=preset.decoder_num_heads,
        mask_ratio=ratio,
        norm_pix_loss=preset.norm_pix_loss if norm_pix_loss is None else norm_pix_loss,
        loss_weights=preset.loss_weights,
        mask_strategy=preset.mask_strategy if mask_strategy is None else mask_strategy,
    )
