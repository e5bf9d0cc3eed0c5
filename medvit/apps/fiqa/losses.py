"""ViT-FIQA objective: margin softmax over class centres + the online certainty-ratio target.

References:
    - ViT-FIQA official code (atzoriandrea/ViT-FIQA-..., ``losses.py: CombinedMarginLoss``,
      ``partial_fc_v2.py: PartialFC_V2``): CCS / NNCCS from the detached class-centre cosines before the margin,
      target ``CR = CCS / (NNCCS + 1 + 1e-9)``, loss ``CE + alpha * SmoothL1(beta=0.5)(CR, quality)``, alpha 10.
    - CR-FIQA (Boutros et al., CVPR 2023): the certainty ratio as a quality label learned online.
    - insightface arcface_torch ``losses.py: CombinedMarginLoss`` (margins ``cos(m1 * theta + m2) - m3``;
      CosFace = (1, 0, 0.4), ArcFace = (1, 0.5, 0)) and ``partial_fc_v2.py`` (model-parallel class centres,
      distributed softmax cross-entropy, the all-gather whose backward sums gradients and scales them by the
      world size to cooperate with DDP's averaging).

Class centres are sharded across ranks as in Partial FC with ``sample_rate=1`` (every centre is used): rank r
holds a contiguous slice of W (``num_classes / world`` rows), embeddings and labels are all-gathered, each rank
computes the cosines of the whole global batch against its slice, and the softmax is normalised with
all-reduced max / sum. Memory per rank for W is ``num_classes * D / world`` floats (85,742 MS1MV2 identities x
512 = 176 MB fp32 on one rank, 44 MB per rank on 4).

**Deviation (exactness):** the reference takes NNCCS as the max over the *local* shard only, so with several
ranks a sample's nearest negative centre may be missed. Here NNCCS is the local max all-reduced with MAX and
CCS comes from the rank owning the sample's class (all-reduce SUM of a masked value): the target is exactly the
single-process one whatever the world size. ArcFace's margin is applied differentiably
(``cos(theta + m)``), where arcface_torch edits the logits in place under ``no_grad`` (a straight-through
gradient).

The W shard must not be averaged by DDP: :class:`FIQATask` lists it in ``_ddp_params_and_buffers_to_ignore``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from medvit.apps.fiqa.model import ViTFIQA

__all__ = [
    "ClassCentres",
    "FIQATask",
    "MarginOutput",
    "certainty_ratio",
    "margin_logits",
    "shard_range",
]


def shard_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """``(class_start, num_local)`` of a rank: the first ``num_classes % world`` ranks take one class more."""
    num_local = num_classes // world + int(rank < num_classes % world)
    start = num_classes // world * rank + min(rank, num_classes % world)
    return start, num_local


def certainty_ratio(ccs: torch.Tensor, nnccs: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """CR = CCS / (NNCCS + 1 + eps) (ViT-FIQA code; the shift keeps the denominator in (0, 2]).

    Args:
        ccs: cosine to the sample's own class centre ``[N]``.
        nnccs: largest cosine to any other class centre ``[N]``.
        eps: the reference's 1e-9.

    Returns:
        ``[N]`` targets in [-1, 1 / eps).
    """
    return ccs / (nnccs + (1.0 + eps))


def margin_logits(
    cos: torch.Tensor,
    labels: torch.Tensor,
    positive: torch.Tensor,
    *,
    margin: Literal["cosface", "arcface"] = "cosface",
    s: float = 64.0,
    m: float = 0.4,
) -> torch.Tensor:
    """Scaled margin logits (CombinedMarginLoss for the CosFace and ArcFace settings).

    Args:
        cos: cosines ``[N, C]`` in [-1, 1].
        labels: column of each row's own class ``[N]`` (ignored where ``positive`` is False).
        positive: rows whose class lies in these columns ``[N]`` (always all-True on one rank).
        margin: ``cosface``: ``s * (cos - m)`` at the target; ``arcface``: ``s * cos(theta + m)``.
        s: scale.
        m: margin.

    Returns:
        ``[N, C]`` logits: ``s * cos`` with the margin applied at each positive row's target column.
    """
    rows = torch.nonzero(positive, as_tuple=True)[0]
    if rows.numel() == 0:
        return cos * s
    cols = labels[rows]
    target = cos[rows, cols]
    if margin == "cosface":
        new = target - m
    elif margin == "arcface":
        theta = torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7))
        new = torch.cos(theta + m)
    else:
        raise ValueError(f"margin must be cosface or arcface, got {margin!r}")
    delta = torch.zeros_like(cos)
    delta = delta.index_put((rows, cols), new - target)
    return (cos + delta) * s


# ----------------------------------------------------------------------------------------------- distributed
def _dist() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherGrad(torch.autograd.Function):
    """All-gather along dim 0; backward sums every rank's gradient for this rank's slice, times the world size.

    The factor cooperates with DDP, which averages parameter gradients over ranks while the gathered loss is
    already a mean over the global batch (arcface_torch ``AllGatherFunc``).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        world = dist.get_world_size()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.world, ctx.n = dist.get_rank(), world, x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n] * ctx.world


class _DistCrossEntropy(torch.autograd.Function):
    """Softmax cross-entropy over class columns sharded across ranks (arcface_torch ``DistCrossEntropyFunc``).

    ``forward(logits [N, C_local], labels [N], positive [N]) -> mean over N of -log p(target)``; the same value
    on every rank. Backward gives this rank's exact ``dL/dlogits`` = ``(softmax - onehot) / N``.
    """

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, labels: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        n = logits.shape[0]
        logits = logits.float()
        max_l = logits.max(dim=1)[0].detach()
        dist.all_reduce(max_l, op=dist.ReduceOp.MAX)
        shifted = logits - max_l[:, None]
        prob = shifted.exp()
        denom = prob.sum(dim=1)
        dist.all_reduce(denom, op=dist.ReduceOp.SUM)
        prob = prob / denom[:, None]
        rows = torch.nonzero(positive, as_tuple=True)[0]
        target = torch.zeros(n, device=logits.device)
        target[rows] = shifted[rows, labels[rows]]
        dist.all_reduce(target, op=dist.ReduceOp.SUM)
        ctx.save_for_backward(prob, labels, positive)
        # In log space (-log p = log(sum exp) - shifted target); arcface_torch clamps p at 1e-30 instead, which
        # caps each sample's loss at 69 when s = 64 pushes p below float32's range.
        return (denom.log() - target).mean()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        prob, labels, positive = ctx.saved_tensors
        g = prob.clone()
        rows = torch.nonzero(positive, as_tuple=True)[0]
        g[rows, labels[rows]] -= 1.0
        return g * (grad / prob.shape[0]), None, None


# ----------------------------------------------------------------------------------------------- the head
@dataclass
class MarginOutput:
    """What :class:`ClassCentres` returns for one batch.

    Attributes:
        ce: margin-softmax cross-entropy, mean over the global batch (scalar).
        cr: certainty-ratio targets of this rank's samples ``[B]`` (detached).
        ccs: cosine to the own class centre ``[B]`` (detached).
        nnccs: largest cosine to another class centre ``[B]`` (detached).
    """

    ce: torch.Tensor
    cr: torch.Tensor
    ccs: torch.Tensor
    nnccs: torch.Tensor

    @property
    def accuracy(self) -> torch.Tensor:
        """Top-1 training accuracy of the cosine classifier: the own centre is the nearest."""
        return (self.ccs > self.nnccs).float().mean()


class ClassCentres(nn.Module):
    """L2-normalised class centres (this rank's shard) + margin softmax + CR target (Partial FC, rate 1).

    Args:
        embedding_dim: D of the embeddings.
        num_classes: identities in the training set (all ranks together).
        margin: ``cosface`` or ``arcface``.
        scale: s.
        cosface_m: CosFace margin.
        arcface_m: ArcFace margin.
        cr_eps: epsilon of the certainty ratio.
        rank: this rank (default: from the process group).
        world: world size (default: from the process group).

    Attributes:
        weight: ``[num_local, D]`` centres of classes ``class_start .. class_start + num_local - 1``.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        *,
        margin: Literal["cosface", "arcface"] = "cosface",
        scale: float = 64.0,
        cosface_m: float = 0.4,
        arcface_m: float = 0.5,
        cr_eps: float = 1e-9,
        rank: int | None = None,
        world: int | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a margin softmax needs at least 2 classes, got {num_classes}")
        r, w = _dist()
        self.rank = r if rank is None else rank
        self.world = w if world is None else world
        if num_classes < self.world:
            raise ValueError(f"{num_classes} classes cannot be sharded over {self.world} ranks")
        self.num_classes = num_classes
        self.class_start, self.num_local = shard_range(num_classes, self.rank, self.world)
        self.margin = margin
        self.scale = float(scale)
        self.m = float(cosface_m if margin == "cosface" else arcface_m)
        self.cr_eps = float(cr_eps)
        self.weight = nn.Parameter(torch.normal(0.0, 0.01, (self.num_local, embedding_dim)))

    def extra_repr(self) -> str:
        return (
            f"classes={self.num_classes}, shard=[{self.class_start}, {self.class_start + self.num_local}), "
            f"margin={self.margin}, s={self.scale}, m={self.m}"
        )

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> MarginOutput:
        """Args: embeddings ``[B, D]`` (this rank's), labels ``[B]`` global class ids. Returns a MarginOutput."""
        labels = labels.long().reshape(-1)
        distributed = self.world > 1
        if distributed:
            import torch.distributed as dist

            emb_all = _AllGatherGrad.apply(embeddings)
            lab_parts = [torch.empty_like(labels) for _ in range(self.world)]
            dist.all_gather(lab_parts, labels.contiguous())
            lab_all = torch.cat(lab_parts)
        else:
            emb_all, lab_all = embeddings, labels
        cos = F.linear(F.normalize(emb_all.float()), F.normalize(self.weight.float())).clamp(-1.0, 1.0)
        local = lab_all - self.class_start
        positive = (local >= 0) & (local < self.num_local)
        local = torch.where(positive, local, torch.zeros_like(local))
        n = cos.shape[0]

        with torch.no_grad():
            c = cos.detach()
            rows = torch.arange(n, device=c.device)
            ccs = torch.where(positive, c[rows, local], torch.zeros_like(c[:, 0]))
            others = c.clone()
            others[rows[positive], local[positive]] = -math.inf
            nnccs = others.max(dim=1)[0] if others.shape[1] > 0 else torch.full_like(ccs, -math.inf)
            if distributed:
                dist.all_reduce(ccs, op=dist.ReduceOp.SUM)
                dist.all_reduce(nnccs, op=dist.ReduceOp.MAX)
            cr = certainty_ratio(ccs, nnccs, self.cr_eps)

        logits = margin_logits(cos, local, positive, margin=self.margin, s=self.scale, m=self.m)
        ce = _DistCrossEntropy.apply(logits, local, positive) if distributed else F.cross_entropy(logits, local)
        b = embeddings.shape[0]
        mine = slice(self.rank * b, (self.rank + 1) * b) if distributed else slice(0, b)
        return MarginOutput(ce=ce, cr=cr[mine], ccs=ccs[mine], nnccs=nnccs[mine])


class FIQATask(nn.Module):
    """The engine task: ``batch -> {"loss": CE + alpha * SmoothL1(quality, CR), "logs": ...}``.

    Args:
        model: :class:`~medvit.apps.fiqa.model.ViTFIQA`.
        centres: :class:`ClassCentres` for the training identities.
        alpha: quality-loss weight (reference 10).
        beta: SmoothL1 beta (reference 0.5).

    The batch is ``{"image": [B, 3, 112, 112] normalised, "label": [B]}``.
    """

    def __init__(self, model: ViTFIQA, centres: ClassCentres, *, alpha: float = 10.0, beta: float = 0.5) -> None:
        super().__init__()
        self.model = model
        self.centres = centres
        self.alpha = float(alpha)
        self.beta = float(beta)
        if centres.world > 1:
            # Each rank owns a different slice of W: DDP must neither broadcast nor average it.
            self._ddp_params_and_buffers_to_ignore = ["centres.weight"]

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        emb, quality = self.model(batch["image"])
        out = self.centres(emb, batch["label"])
        q_loss = F.smooth_l1_loss(quality.float(), out.cr, beta=self.beta)
        loss = out.ce + self.alpha * q_loss
        return {
            "loss": loss,
            "logs": {
                "ce": out.ce.detach(),
                "quality_loss": q_loss.detach(),
                "cr": out.cr.mean(),
                "quality": quality.detach().float().mean(),
                "acc": out.accuracy,
            },
        }
