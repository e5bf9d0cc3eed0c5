"""Fixtures of the FIQA tests: synthetic faces and a stand-in SCRFD detector ONNX.

No real detector weights can be used offline, so :func:`make_fake_scrfd` writes a tiny ONNX graph with the
input/output signature of insightface's SCRFD-with-keypoints models (input ``1x3x640x640``; nine outputs:
scores, box distances and keypoint offsets for strides 8, 16, 32, two anchors per cell). It reports exactly one
face, at a fixed box with fixed landmarks, whenever the image is not dark (its score is a sigmoid of the mean
normalised brightness), and nothing on a black image. insightface's real SCRFD decoding, NMS and
``model_zoo.get_model`` routing then run on it unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

ARCFACE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])
FAKE_FACE_OFFSET = 208.0  # a 112 px face scaled x2 and pasted at (208, 208) of a 640x640 photo
FAKE_LANDMARKS = ARCFACE * 2 + FAKE_FACE_OFFSET
FAKE_BOX = np.array([220.0, 220.0, 420.0, 420.0])


def make_fake_scrfd(path: Path) -> Path:
    """Write the stand-in SCRFD ONNX (see the module docstring) to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    size = 640
    nodes, outputs, inits = [], [], []
    nodes.append(helper.make_node("ReduceMean", ["input.1"], ["m"], axes=[0, 1, 2, 3], keepdims=0))
    inits += [
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(20.0, np.float32), "gain"),
    ]
    nodes += [
        helper.make_node("Add", ["m", "half"], ["m1"]),
        helper.make_node("Mul", ["m1", "gain"], ["m2"]),
        helper.make_node("Sigmoid", ["m2"], ["gate"]),
    ]
    centre = np.array([320.0, 320.0])
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride in (8, 16, 32):
            n = (size // stride) ** 2 * 2
            value = np.zeros((n, width), np.float32)
            if stride == 32:
                k = (10 * (size // 32) + 10) * 2  # cell (row 10, col 10), anchor 0: centre (320, 320)
                if kind == "score":
                    value[k] = 1.0
                elif kind == "bbox":
                    value[k] = [(centre[0] - FAKE_BOX[0]) / 32, (centre[1] - FAKE_BOX[1]) / 32,
                                (FAKE_BOX[2] - centre[0]) / 32, (FAKE_BOX[3] - centre[1]) / 32]  # fmt: skip
                else:
                    value[k] = ((FAKE_LANDMARKS - centre) / 32).reshape(-1)
            name = f"{kind}_{stride}"
            inits.append(numpy_helper.from_array(value, f"c_{name}"))
            if kind == "score":
                nodes.append(helper.make_node("Mul", [f"c_{name}", "gate"], [name]))
            else:
                nodes.append(helper.make_node("Identity", [f"c_{name}"], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, width]))
    graph = helper.make_graph(
        nodes,
        "fake_scrfd",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def official_state_dict(head: str, depth: int = 2, d: int = 32, fr_only: bool = False) -> dict[str, torch.Tensor]:
    """A state dict with the key names and shapes of ViT-FIQA's backbones/vit_qs.py (DataParallel-saved)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    n_tok = 144 + (0 if head == "crfiqa" else 1)
    sd = {"patch_embed.proj.weight": r(d, 3, 9, 9), "patch_embed.proj.bias": r(d), "pos_embed": r(1, n_tok, d)}
    if head != "crfiqa":
        sd["qs_token"] = r(1, 1, d)
    for i in range(depth):
        p = f"blocks.{i}."
        sd |= {
            p + "norm1.weight": 1 + r(d),
            p + "norm1.bias": r(d),
            p + "attn.qkv.weight": r(3 * d, d),
            p + "attn.proj.weight": r(d, d),
            p + "attn.proj.bias": r(d),
            p + "norm2.weight": 1 + r(d),
            p + "norm2.bias": r(d),
            p + "mlp.fc1.weight": r(4 * d, d),
            p + "mlp.fc1.bias": r(4 * d),
            p + "mlp.fc2.weight": r(d, 4 * d),
            p + "mlp.fc2.bias": r(d),
        }
    sd |= {"norm.weight": 1 + r(d), "norm.bias": r(d), "mask_token": r(1, 1, d)}
    n_in = d * (145 if head == "full" else 144)
    sd["feature.0.weight"] = r(d, n_in)
    for j in (1, 3):
        sd |= {
            f"feature.{j}.weight": 1 + r(d),
            f"feature.{j}.bias": r(d),
            f"feature.{j}.running_mean": r(d),
            f"feature.{j}.running_var": 1 + r(d).abs(),
            f"feature.{j}.num_batches_tracked": torch.tensor(7),
        }
    sd["feature.2.weight"] = r(d, d)
    if not fr_only:
        sd |= {
            "head_qs.0.weight": 1 + r(d),
            "head_qs.0.bias": r(d),
            "head_qs.0.running_mean": r(d),
            "head_qs.0.running_var": 1 + r(d).abs(),
            "head_qs.0.num_batches_tracked": torch.tensor(7),
            "head_qs.1.weight": r(1, d),
        }
    return {f"module.{k}": v for k, v in sd.items()}


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, head: str, depth: int = 2, heads: int = 8) -> tuple:
    """The official forward (eval mode, ``backbones/vit_qs.py``) written out with plain ops, for comparison."""
    import torch.nn.functional as F

    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    d = sd["patch_embed.proj.weight"].shape[0]
    b = x.shape[0]
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=9).flatten(2).transpose(1, 2)
    if head != "crfiqa":
        t = torch.cat([sd["qs_token"].expand(b, -1, -1), t], 1)
    t = t + sd["pos_embed"]
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(t, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-5)
        qkv = F.linear(h, sd[p + "attn.qkv.weight"]).reshape(b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        att = (qkv[0] @ qkv[1].transpose(-2, -1)) * (d // heads) ** -0.5
        o = (att.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(b, -1, d)
        t = t + F.linear(o, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(t, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-5)
        h = F.relu6(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        t = t + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    t = F.layer_norm(t, (d,), sd["norm.weight"], sd["norm.bias"], eps=1e-5)

    def bn(v: torch.Tensor, pre: str) -> torch.Tensor:
        return F.batch_norm(v, sd[pre + "running_mean"], sd[pre + "running_var"], sd[pre + "weight"], sd[pre + "bias"],
                            eps=2e-5)  # fmt: skip

    def feature(v: torch.Tensor) -> torch.Tensor:
        v = bn(F.linear(v, sd["feature.0.weight"]), "feature.1.")
        return bn(F.linear(v, sd["feature.2.weight"]), "feature.3.")

    if head == "token":
        emb, qin = feature(t[:, 1:].reshape(b, -1)), t[:, 0]
    else:
        emb = feature(t.reshape(b, -1))
        qin = emb
    q = F.linear(bn(qin, "head_qs.0."), sd["head_qs.1.weight"])
    return emb, q.squeeze(1)


def save_official(path: Path, sd: dict[str, torch.Tensor], num_heads: int = 8) -> Path:
    """``torch.save`` an official-layout state dict with ``PATH.json`` = ``{"num_heads": N}`` beside it.

    The tiny test checkpoints (width 32, 2 blocks) are no published architecture, so their head count has to travel
    with them, as it would for any custom-trained face ViT.
    """
    torch.save(sd, path)
    path.with_suffix(".json").write_text(json.dumps({"num_heads": num_heads}))
    return path


# On scikit-image's astronaut() (512 px): dlib HOG's box of her face, and her suit below it (no face there, but a
# round embroidered patch and a name tag that dlib scores up to 0.22).
ASTRONAUT_FACE = (175, 76, 265, 166)
ASTRONAUT_SUIT = (0, 290, 512, 512)


def group_photo(
    scales: tuple[float, ...] = (0.5, 0.75, 1.0), lfw_side: int = 80, cols: int = 10, gap: int = 16
) -> tuple[np.ndarray, dict[str, list[tuple[int, int, int, int]]]]:
    """A "group photo" of real faces: the 100 face crops of ``skimage.data.lfw_subset()`` (25 px, grey) upscaled to
    ``lfw_side`` in a grid, above ``astronaut()`` at several ``scales`` side by side, on grey.

    Returns:
        (RGB uint8 image, boxes ``(x1, y1, x2, y2)`` by kind: ``lfw`` faces, ``astronaut`` faces, ``suit``: the
        astronaut's suit with its badges, where there is no face).
    """
    import cv2
    from skimage.data import astronaut, lfw_subset

    lfw = (lfw_subset()[:100] * 255).astype(np.uint8)  # the first 100 are faces, the rest are not
    astros = [cv2.resize(astronaut(), None, fx=f, fy=f, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
              for f in scales]  # fmt: skip
    rows = -(-len(lfw) // cols)
    width = max(cols * (lfw_side + gap) + gap, sum(a.shape[1] + gap for a in astros) + gap)
    top = rows * (lfw_side + gap) + gap
    img = np.full((top + max(a.shape[0] for a in astros) + gap, width, 3), 128, np.uint8)
    boxes: dict[str, list[tuple[int, int, int, int]]] = {"lfw": [], "astronaut": [], "suit": []}
    for k, face in enumerate(lfw):
        y, x = gap + (k // cols) * (lfw_side + gap), gap + (k % cols) * (lfw_side + gap)
        tile = cv2.resize(face, (lfw_side, lfw_side), interpolation=cv2.INTER_CUBIC)
        img[y : y + lfw_side, x : x + lfw_side] = tile[..., None]
        boxes["lfw"].append((x, y, x + lfw_side, y + lfw_side))
    x = gap
    for f, a in zip(scales, astros, strict=True):
        img[top : top + a.shape[0], x : x + a.shape[1]] = a
        for kind, box in (("astronaut", ASTRONAUT_FACE), ("suit", ASTRONAUT_SUIT)):
            x1, y1, x2, y2 = (round(v * f) for v in box)
            boxes[kind].append((x + x1, top + y1, x + x2, top + y2))
        x += a.shape[1] + gap
    return img, boxes


def box_kind(box: np.ndarray, boxes: dict[str, list[tuple[int, int, int, int]]]) -> str | None:
    """The kind of the ground-truth box holding the centre of a detection ``box``, or None."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    for kind, items in boxes.items():
        if any(x1 <= cx <= x2 and y1 <= cy <= y2 for x1, y1, x2, y2 in items):
            return kind
    return None


def face_photo(face112: np.ndarray, background: int = 128) -> np.ndarray:
    """A 640x640 RGB photo with ``face112`` scaled x2 at the stand-in detector's fixed position."""
    import cv2

    photo = np.full((640, 640, 3), background, np.uint8)
    big = cv2.resize(face112, (224, 224), interpolation=cv2.INTER_LINEAR)
    o = int(FAKE_FACE_OFFSET)
    photo[o : o + 224, o : o + 224] = big
    return photo


@pytest.fixture(scope="session")
def fake_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An insightface-style model folder ``models/buffalo_test/det_10g.onnx`` holding the stand-in detector."""
    root = tmp_path_factory.mktemp("insightface") / "models"
    make_fake_scrfd(root / "buffalo_test" / "det_10g.onnx")
    return root


@pytest.fixture(scope="session")
def synth_face(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """One clean synthetic aligned face (RGB uint8 112x112) whose landmarks are near the ArcFace template."""
    from medvit.apps.fiqa.data import read_face_file
    from medvit.shared.data.synth import synth_faces

    out = tmp_path_factory.mktemp("one_face")
    synth_faces(out, identities=2, images_per_identity=1, seed=3)
    return read_face_file(out / "person_000" / "person_000_0001.jpg")
