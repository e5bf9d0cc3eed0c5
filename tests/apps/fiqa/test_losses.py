"""Margin softmax, certainty ratio, total loss, and the sharded (partial-FC) head against one process."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F

from medvit.apps.fiqa.losses import ClassCentres, FIQATask, certainty_ratio, margin_logits, shard_range
from medvit.apps.fiqa.model import build_fiqa_model

# Two unit embeddings in R^4 whose cosines to the first three basis vectors are chosen by hand.
COS = torch.tensor([[0.8, 0.3, -0.2], [0.1, 0.5, 0.4]], dtype=torch.float64)
LABELS = torch.tensor([0, 2])


def _unit_rows(cos: torch.Tensor) -> torch.Tensor:
    extra = torch.sqrt(1 - (cos**2).sum(1, keepdim=True))
    return torch.cat([cos, extra], 1)


def _centres_identity(num_classes: int = 3, dim: int = 4) -> ClassCentres:
    head = ClassCentres(dim, num_classes, rank=0, world=1)
    with torch.no_grad():
        head.weight.copy_(torch.eye(num_classes, dim))
    return head


def test_certainty_ratio_hand_computed() -> None:
    # sample 0: CCS 0.8, NNCCS 0.3 -> 0.8 / 1.3; sample 1 (class 2): CCS 0.4, NNCCS 0.5 -> 0.4 / 1.5
    head = _centres_identity()
    out = head(_unit_rows(COS), LABELS)  # cosines are computed in fp32
    torch.testing.assert_close(out.cr.double(), torch.tensor([0.8 / 1.3, 0.4 / 1.5]).double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.ccs.double(), torch.tensor([0.8, 0.4]).double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.nnccs.double(), torch.tensor([0.3, 0.5]).double(), atol=1e-6, rtol=0)
    assert out.accuracy.item() == 0.5  # sample 1's nearest centre is class 1
    torch.testing.assert_close(
        certainty_ratio(torch.tensor([0.8]), torch.tensor([0.3]), 1e-9), torch.tensor([0.8 / (1.3 + 1e-9)])
    )
    assert not out.cr.requires_grad


@pytest.mark.parametrize("margin", ["cosface", "arcface"])
def test_margin_logits_formula(margin: str) -> None:
    positive = torch.ones(2, dtype=torch.bool)
    m = 0.4 if margin == "cosface" else 0.5
    logits = margin_logits(COS, LABELS, positive, margin=margin, s=64.0, m=m)  # float64 in, float64 out
    expected = COS.clone() * 64
    for i, c in enumerate(LABELS.tolist()):
        t = COS[i, c].item()
        expected[i, c] = 64 * ((t - m) if margin == "cosface" else math.cos(math.acos(t) + m))
    torch.testing.assert_close(logits, expected)


def test_ce_is_cosface_softmax_over_normalised_centres() -> None:
    torch.manual_seed(0)
    head = ClassCentres(8, 5, rank=0, world=1)
    emb, labels = torch.randn(6, 8) * 3, torch.randint(0, 5, (6,))
    out = head(emb, labels)
    cos = F.normalize(emb) @ F.normalize(head.weight).T
    logits = 64 * (cos - 0.4 * F.one_hot(labels, 5))
    torch.testing.assert_close(out.ce, F.cross_entropy(logits, labels))


def test_total_loss_is_ce_plus_10_smooth_l1() -> None:
    torch.manual_seed(0)
    model = build_fiqa_model("test_vit_fiqa").eval()  # eval: deterministic heads for the comparison
    centres = ClassCentres(model.embedding_dim, 4, rank=0, world=1)
    task = FIQATask(model, centres, alpha=10.0, beta=0.5)
    batch = {"image": torch.randn(4, 3, 112, 112), "label": torch.tensor([0, 1, 2, 3])}
    out = task(batch)
    emb, q = model(batch["image"])
    mo = centres(emb, batch["label"])
    diff = (q - mo.cr).abs()
    smooth = torch.where(diff < 0.5, 0.5 * diff**2 / 0.5, diff - 0.25).mean()  # SmoothL1, beta 0.5, by hand
    torch.testing.assert_close(out["loss"], mo.ce + 10 * smooth)
    torch.testing.assert_close(out["logs"]["quality_loss"], smooth)
    out["loss"].backward()
    assert model.head_qs[1].weight.grad is not None and model.head_qs[1].weight.grad.abs().sum() > 0
    assert centres.weight.grad is not None


@pytest.mark.parametrize(("classes", "world"), [(10, 3), (7, 2), (4, 4)])
def test_shard_ranges_cover_all_classes(classes: int, world: int) -> None:
    spans = [shard_range(classes, r, world) for r in range(world)]
    covered = [c for start, n in spans for c in range(start, start + n)]
    assert covered == list(range(classes))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, emb: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, out) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        head = ClassCentres(emb.shape[1], w.shape[0], rank=rank, world=world)
        with torch.no_grad():
            head.weight.copy_(w[head.class_start : head.class_start + head.num_local])
        b = emb.shape[0] // world
        local = emb[rank * b : (rank + 1) * b].clone().requires_grad_(True)
        mo = head(local, labels[rank * b : (rank + 1) * b])
        mo.ce.backward()
        # DDP would average the embedding-side gradient over ranks: undo the x world here to compare.
        # numpy arrays travel by value: torch tensors would go through shared memory that vanishes when this
        # process exits before the parent has read them (a FileNotFoundError in the parent, seen as a flake)
        grads = (mo.cr, local.grad / world, head.weight.grad)
        out.put((rank, mo.ce.item(), *(g.detach().numpy().copy() for g in grads), head.class_start))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # process spawn
def test_sharded_centres_match_one_process() -> None:
    """Partial-FC over 2 gloo ranks gives the single-process CE, CR (exact NNCCS) and gradients."""
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    emb, labels, w = torch.randn(8, 6), torch.randint(0, 5, (8,)), torch.randn(5, 6)
    single = ClassCentres(6, 5, rank=0, world=1)
    with torch.no_grad():
        single.weight.copy_(w)
    e = emb.clone().requires_grad_(True)
    ref = single(e, labels)
    ref.ce.backward()

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, emb, labels, w, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(q.get(timeout=120) for _ in range(2))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    grads_w = torch.zeros_like(w)
    for rank, ce, cr_np, g_emb_np, g_w_np, start in results:
        cr, g_emb, g_w = (torch.from_numpy(a) for a in (cr_np, g_emb_np, g_w_np))
        assert ce == pytest.approx(ref.ce.item(), rel=1e-5)
        torch.testing.assert_close(cr, ref.cr[rank * 4 : (rank + 1) * 4])
        torch.testing.assert_close(g_emb, e.grad[rank * 4 : (rank + 1) * 4], atol=1e-6, rtol=1e-4)
        grads_w[start : start + g_w.shape[0]] = g_w
    torch.testing.assert_close(grads_w, single.weight.grad, atol=1e-6, rtol=1e-4)
