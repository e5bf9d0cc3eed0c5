"""Classification core speed: the fine-tuning step (TL-Align vs CutMix, ours vs timm) and prediction throughput.

Part ``step``: one fine-tuning step (forward, BCE over 14 findings, backward, fused AdamW) on random images of
``--img`` pixels, batch ``--batch``, for three models built alike (``--model``'s widths, global average pooling +
``fc_norm``, drop path 0.2, 14 outputs, the same fused AdamW over the same decay / no-decay split):

* ``cutmix``   - :class:`medvit.shared.classify.train.ClassifyTask` with ``mix.mode=cutmix`` (target = area ratio);
* ``tl-align`` - the same task with ``mix.mode=tl-align`` (token labels carried through every block's attention
  inside the fused attention call);
* ``timm``     - ``timm.models.vision_transformer.VisionTransformer`` with the same arguments, the same CutMix and
  loss (:func:`medvit.shared.classify.mixing.apply_mix`, the area-ratio target).

The three alternate step by step after ``--warmup`` untimed steps each, so load from other jobs hits them alike;
the median and the minimum of ``--steps`` steps are reported (the minimum is the least disturbed by other jobs on a
shared machine). Targets: tl-align / cutmix <= 1.10, cutmix / timm <= 1.0.

Part ``predict``: :func:`medvit.shared.classify.predict.predict` on ``--images`` synthetic chest X-rays (PNG,
``--src-size`` px: decoding, the evaluation resize + centre crop, normalisation, the forward pass, the manifest
and ``predictions.csv``) against the bare forward pass of the same model on already preprocessed tensors at the
same batch size; images/s of both and their ratio (target >= 0.8). The model is a freshly initialised classifier
saved as a run folder (weights do not change the speed).

Usage (one OpenMP thread per process on a shared CPU)::

    OMP_NUM_THREADS=1 python benchmarks/classify.py --model test_vit_2d --img 64 --batch 8 --steps 6 --images 32
    python benchmarks/classify.py --model vit_small_patch16_224 --batch 64 --device cuda
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _classifier(args: argparse.Namespace, labels: Any) -> Any:
    from medvit.shared.classify.config import ClassifyDataCfg, ClassifyModelCfg
    from medvit.shared.classify.model import build_classifier

    cfg = ClassifyModelCfg(backbone=args.model, drop_path=0.2)
    model, spec, _ = build_classifier(cfg, ClassifyDataCfg(size=(args.img,)), labels, "cxr")
    return model, spec


def _timm_twin(ours: Any, args: argparse.Namespace) -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=args.img,
        patch_size=ours.patch_size[0],
        in_chans=ours.patch_embed.proj.in_channels,
        num_classes=ours.num_classes,
        global_pool="avg",
        fc_norm=True,
        embed_dim=ours.embed_dim,
        depth=len(ours.blocks),
        num_heads=ours.num_heads,
        drop_path_rate=0.2,
    )


class _TimmTask(torch.nn.Module):
    """timm's ViT with the same CutMix and BCE as the medvit task."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        from medvit.shared.classify.mixing import apply_mix, draw_mix, mix_targets

        x, t = batch["image"], batch["target"]
        plan = draw_mix("cutmix", x.shape[2:], mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.0)
        assert plan is not None
        logits = self.model(apply_mix(x, plan)).float()
        return {"loss": F.binary_cross_entropy_with_logits(logits, mix_targets(t, plan.lam))}


class _Side:
    def __init__(self, name: str, task: torch.nn.Module, device: torch.device, precision: str) -> None:
        from medvit.shared.engine.optim import build_param_groups

        self.name = name
        self.task = task.to(device).train()
        groups = build_param_groups(self.task, 0.05)
        self.opt = torch.optim.AdamW(groups, lr=1e-4, fused=True)
        self.device = device
        self.amp = precision != "fp32"
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        self.times: list[float] = []

    def step(self, batch: dict[str, torch.Tensor], record: bool) -> None:
        _sync(self.device)
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.amp):
            loss = self.task(batch)["loss"]
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        _sync(self.device)
        if record:
            self.times.append(time.perf_counter() - t0)


def part_step(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from medvit.shared.classify.config import MixCfg
    from medvit.shared.classify.labels import LabelSpace
    from medvit.shared.classify.train import ClassifyTask

    labels = LabelSpace("multilabel", tuple(f"f{i}" for i in range(14)))
    torch.manual_seed(0)
    model_a, _ = _classifier(args, labels)
    model_b, _ = _classifier(args, labels)
    sides = [
        _Side("cutmix", ClassifyTask(model_a, labels, MixCfg(mode="cutmix")), device, args.precision),
        _Side("tl-align", ClassifyTask(model_b, labels, MixCfg(mode="tl-align")), device, args.precision),
        _Side("timm", _TimmTask(_timm_twin(model_a, args)), device, args.precision),
    ]
    chans = model_a.patch_embed.proj.in_channels
    batch = {
        "image": torch.randn(args.batch, chans, args.img, args.img, device=device),
        "target": torch.randint(0, 2, (args.batch, 14), device=device).float(),
    }
    for i in range(args.warmup + args.steps):
        for side in sides:
            side.step(batch, record=i >= args.warmup)
    med = {s.name: statistics.median(s.times) for s in sides}
    best = {s.name: min(s.times) for s in sides}  # least disturbed by other jobs on a shared machine
    return {
        "step_s_median": med,
        "step_s_min": best,
        "images_per_s": {k: args.batch / v for k, v in med.items()},
        "tl_align_over_cutmix": med["tl-align"] / med["cutmix"],
        "cutmix_over_timm": med["cutmix"] / med["timm"],
        "tl_align_over_cutmix_min": best["tl-align"] / best["cutmix"],
        "cutmix_over_timm_min": best["cutmix"] / best["timm"],
    }


def _write_run(model: Any, spec: Any, labels: Any, run: Path) -> None:
    from medvit.shared.classify.model import new_model_spec, save_classifier

    side = new_model_spec(model, labels, spec, "cxr", eval_cfg={"crop_pct": 0.875, "interpolation": "bicubic"})
    save_classifier(run / "model.safetensors", model.state_dict(), side)


def part_predict(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from medvit.shared.classify.inputs import EvalTransform, read_source
    from medvit.shared.classify.labels import LabelSpace, Sample
    from medvit.shared.classify.predict import predict
    from medvit.shared.data.synth_xray import synth_cxr

    labels = LabelSpace("multilabel", tuple(f"f{i}" for i in range(14)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth_cxr(root / "data", n=args.images, size=args.src_size, seed=0)
        files = sorted((root / "data" / "images").glob("*.png"))
        samples = [Sample(p, key=p.name) for p in files]
        model, spec = _classifier(args, labels)
        _write_run(model, spec, labels, root / "run")
        t0 = time.perf_counter()
        predict(root / "run", samples, root / "pred", batch_size=args.batch, workers=args.workers, quiet=True,
                device=str(device))  # fmt: skip
        e2e = time.perf_counter() - t0
        transform = EvalTransform(spec)
        x = torch.stack([transform(read_source(p, "cxr")) for p in files]).to(device)
        model = model.to(device).eval()
        with torch.no_grad():
            model(x[: args.batch])  # warm-up
            _sync(device)
            t0 = time.perf_counter()
            for i in range(0, len(files), args.batch):
                torch.sigmoid(model(x[i : i + args.batch])).cpu()
            _sync(device)
        bare = time.perf_counter() - t0
    return {
        "predict_images_per_s": len(files) / e2e,
        "bare_forward_images_per_s": len(files) / bare,
        "predict_over_bare": (len(files) / e2e) / (len(files) / bare),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("all", "step", "predict"), default="all")
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--images", type=int, default=128)
    p.add_argument("--src-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    args = p.parse_args()
    from medvit.shared.engine.fit import resolve_device

    device = resolve_device(args.device)
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "args": vars(args),
    }
    if args.part in ("all", "step"):
        out["step"] = part_step(args, device)
    if args.part in ("all", "predict"):
        out["predict"] = part_predict(args, device)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
