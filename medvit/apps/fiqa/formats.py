"""The ViT-FIQA checkpoint layout, registered with the shared weights layer (torch-free at import).

Official ViT-FIQA checkpoints and insightface ``arcface_torch`` face ViTs (``backbones/vit.py`` / ``vit_qs.py``)
hold a whole face model: patch embedding and blocks in timm's vocabulary plus ``feature.*`` (the embedding head),
``qs_token`` and ``head_qs.*`` (quality token and head). ``medvit weights convert`` recognises them by those keys
and hands them to :func:`medvit.apps.fiqa.convert.convert`, which keeps the heads.
"""

from __future__ import annotations

from collections.abc import Collection

from medvit.shared.backbone.formats import WholeModelFormat, WholeModelImport, register_format
from medvit.shared.errors import ConfigError


def _recognises(keys: Collection[str]) -> bool:
    return "patch_embed.proj.weight" in keys and ("feature.0.weight" in keys or "qs_token" in keys)


def _import(job: WholeModelImport) -> str:
    # Weights give every shape but the head count, so num_heads is the one override that applies.
    extra = sorted(set(job.overrides) - {"num_heads"})
    if extra:
        raise ConfigError(
            f"{job.src}: only --set num_heads=N applies to a ViT-FIQA checkpoint (its weights give every other "
            f"shape); got {', '.join(extra)}"
        )
    heads = job.overrides.get("num_heads")
    if heads is not None and (not isinstance(heads, int) or isinstance(heads, bool) or heads < 1):
        raise ConfigError(f"--set num_heads={heads!r}: expected a positive integer")
    from medvit.apps.fiqa.convert import convert
    from medvit.apps.fiqa.model import checkpoint_config

    side = convert(
        job.src,
        job.out,
        overwrite=job.overwrite,
        state_dict=dict(job.state_dict),
        num_heads=heads,
        config=checkpoint_config(job.src, dict(job.info)),
    )
    kw = side["backbone_kwargs"]
    return (
        f"wrote {job.out} (ViT-FIQA, head {side['head']}, width {kw['embed_dim']}, depth {kw['depth']}, "
        f"num_heads={kw['num_heads']} ({side['num_heads_source']})); "
        f"score with `medvit fiqa score DIR --weights {job.out}`"
    )


VIT_FIQA = register_format(
    WholeModelFormat(
        name="vit-fiqa",
        description="a ViT-FIQA / arcface_torch face model (quality token and heads)",
        recognises=_recognises,
        importer=_import,
        command="medvit fiqa convert",
    )
)
