"""The CLI loop: train tiny -> score -> evaluate on synthetic faces; bad inputs; weights import; .bin export.

Budget of the loop (stated, as the issue asks): the tiny preset (64-wide, 2-block face ViT) with the CR-FIQA head
(``--set model.head=crfiqa``: quality regressed from the embedding) trained for ``STEPS`` steps of 32 faces on
``IDS`` synthetic identities x ``PER`` images with graded blur, occlusion and low light (the demo's setting), then
scoring ``HELD_IDS`` x ``HELD_PER`` faces of unseen identities; about 2 minutes on one CPU thread. At this budget
the held-out Spearman(quality, -degradation strength) was 0.583 (blur 0.615, low light 0.600, occlusion 0.553; one
thread, measured 2026-12-07), so the issue's target (>= 0.5 pooled, >= 0.3 per kind) is asserted; at 1200 steps of
40 x 150 faces it was 0.56-0.62 for optimizer seeds 0-4 (BENCHMARKS.md, ``benchmarks/fiqa_ranking.py``). The paper's
quality token is not used here: in a 2-block, 64-wide encoder it learns the ranking less reliably (0.48-0.58 after
800 steps on the same data), which is a statement about the tiny CPU model, not about ViT-FIQA at its real size.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from medvit.apps.fiqa.api import degradation_ranking
from medvit.apps.fiqa.cli import app as fiqa_app

from .conftest import face_photo, official_state_dict, save_official

STEPS, IDS, PER = 600, 40, 100
HELD_IDS, HELD_PER = 40, 20  # 800 faces: the Spearman of 80 faces has a standard error near 0.1
DEGRADATIONS = ("blur", "occlusion", "low_light")
runner = CliRunner()


def _root() -> typer.Typer:
    """The root ``medvit`` app if it mounts ``fiqa`` already, else the same error handling around our sub-app."""
    from medvit import cli

    if any(g.name == "fiqa" for g in cli.app.registered_groups):
        return cli.app
    wrapper = typer.Typer(cls=cli._MedvitGroup)
    wrapper.add_typer(fiqa_app, name="fiqa")
    return wrapper


def invoke(*args: str) -> object:
    return runner.invoke(_root(), ["fiqa", *[str(a) for a in args]])


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """The loop's arithmetic on one thread whatever ``OMP_NUM_THREADS`` says: its ranking, asserted near measured
    values, is then the same number on every run of a machine type (thread count changes float summation order),
    the one-thread numbers of the module docstring; and ``make test`` runs two pytest workers on two cores, where a
    second thread per worker would only wait for the other worker."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from medvit.shared.data.synth import synth_faces

    root = tmp_path_factory.mktemp("fiqa_loop")
    synth_faces(root / "train", identities=IDS, images_per_identity=PER, seed=0, degradations=DEGRADATIONS)
    held = root / "held"
    synth_faces(
        held, identities=HELD_IDS, images_per_identity=HELD_PER, seed=0, held_out=True, degradations=DEGRADATIONS
    )
    res = invoke(
        "train", root / "train", "--out", root / "run", "--preset", "tiny", "--steps", STEPS,
        "--set", "model.head=crfiqa", "--val", held / "pairs.txt", "--quiet",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return {"root": root, "run": root / "run", "held": root / "held"}


@pytest.mark.slow  # uses the learning loop (600 training steps, trained once per run)
def test_train_writes_a_run_directory(loop: dict[str, Path]) -> None:
    run = loop["run"]
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "last.pt", "model.safetensors", "model.json"):
        assert (run / name).is_file(), name
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == STEPS
    assert {"ce", "quality_loss", "cr", "acc"} <= set(records[-1])
    assert any("val/pairs_acc" in r for r in records)  # verification accuracy on the held-out pairs
    assert records[-1]["loss"] < records[0]["loss"]
    side = json.loads((run / "model.json").read_text())
    assert side["identities"] == IDS and side["head"] == "crfiqa"


@pytest.mark.slow  # uses the learning loop (600 training steps, trained once per run)
def test_score_then_evaluate_writes_edc_and_resumes(loop: dict[str, Path]) -> None:
    root, held = loop["root"], loop["held"]
    out = root / "scores"
    res = invoke("score", held, "--weights", loop["run"], "--out", out, "--aligned", "--workers", 1, "--quiet")
    assert res.exit_code == 0, res.output
    rows = _read(out / "scores.csv")
    assert len(rows) == HELD_IDS * HELD_PER and all(r["status"] == "ok" and r["face"] == "0" for r in rows)
    assert {r["detector"] for r in rows} == {"aligned"}  # no detection ran
    assert (out / "quality_hist.png").stat().st_size > 0 and (out / "contact_sheet.png").stat().st_size > 0
    strength = {os.path.abspath(held / r["path"]): float(r["strength"]) for r in _read(held / "degradations.csv")}
    assert set(strength) == {r["path"] for r in rows}  # every held-out face scored, paths absolute
    # The app's target: quality ranks the degradations of unseen identities (pooled over kinds and per kind).
    ranking = degradation_ranking(out / "scores.csv", held)
    print(f"held-out ranking: {ranking}")  # shown with -s; the number behind the assertion
    assert ranking["rho"] >= 0.5, ranking
    assert all(ranking[f"rho_{k}"] >= 0.3 for k in DEGRADATIONS), ranking

    ev = root / "edc"
    res = invoke("evaluate", held / "pairs.txt", "--quality", out / "scores.csv", "--weights", loop["run"], "--out", ev)
    assert res.exit_code == 0, res.output
    summary = _read(ev / "edc_summary.csv")
    assert {(r["convention"], float(r["fmr"])) for r in summary} == {
        (c, f) for c in ("recomputed", "fixed") for f in (1e-2, 1e-3, 1e-4)
    }
    edc_rows = _read(ev / "edc.csv")
    assert len(edc_rows) == 6 * 20 and (ev / "edc.png").stat().st_size > 0
    assert json.loads((ev / "summary.json").read_text())["n_pairs"] == len(_read(ev / "pairs_scored.csv"))

    # Rerun: every image is skipped (resume), and scores.csv is complete again.
    res = invoke("score", held, "--weights", loop["run"], "--out", out, "--aligned", "--quiet")
    assert res.exit_code == 0 and len(_read(out / "scores.csv")) == HELD_IDS * HELD_PER
    assert {r["status"] for r in _read(out / "manifest.csv")} == {"skipped"}


@pytest.mark.slow  # uses the learning loop (600 training steps, trained once per run)
def test_bad_inputs_get_rows_and_the_batch_continues(loop: dict[str, Path], fake_models: Path, tmp_path: Path) -> None:
    from medvit.apps.fiqa.data import read_face_file

    face = read_face_file(loop["held"] / "heldout_000" / "heldout_000_0001.jpg")
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a_face.jpg"), face_photo(face)[..., ::-1])
    cv2.imwrite(str(photos / "b_dark.png"), np.zeros((640, 640, 3), np.uint8))  # the detector finds nothing
    (photos / "c_notes.jpg").write_text("not an image")
    cv2.imwrite(str(photos / "d_face.png"), face_photo(face)[..., ::-1])
    out = tmp_path / "out"
    res = invoke("score", photos, "--weights", loop["run"], "--out", out, "--models", fake_models, "--quiet")
    assert res.exit_code == 1, res.output  # one input failed
    rows = {Path(r["path"]).name: r for r in _read(out / "scores.csv")}
    assert rows["a_face.jpg"]["status"] == "ok" and rows["d_face.png"]["status"] == "ok"
    assert rows["b_dark.png"]["status"] == "no_face"
    assert rows["c_notes.jpg"]["status"] == "error" and "c_notes.jpg" in rows["c_notes.jpg"]["message"]
    assert float(rows["a_face.jpg"]["x1"]) == pytest.approx(220.0, abs=0.01)
    assert float(rows["a_face.jpg"]["det_score"]) > 0.9
    assert {r["detector"] for r in rows.values()} == {"scrfd"}  # every row names it, errors and no-face rows too
    # Same face, same alignment: same quality, whatever the container format.
    assert float(rows["a_face.jpg"]["quality"]) == pytest.approx(float(rows["d_face.png"]["quality"]), abs=0.05)


def test_no_weights_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDVIT_WEIGHTS", str(tmp_path / "empty"))
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "x.png"), np.zeros((112, 112, 3), np.uint8))
    res = invoke("score", tmp_path / "in", "--out", tmp_path / "out", "--aligned")
    assert res.exit_code == 2
    assert "medvit fiqa train" in res.output and "convert" in res.output and "Traceback" not in res.output


def test_convert_official_checkpoint_then_score(tmp_path: Path) -> None:
    save_official(tmp_path / "model.pt", official_state_dict("token"))  # model.json beside it: {"num_heads": 8}
    res = invoke("convert", tmp_path / "model.pt", "--out", tmp_path / "vit_fiqa.safetensors")
    assert res.exit_code == 0, res.output
    assert "head token" in res.output and "num_heads=8 (checkpoint config)" in res.output
    (tmp_path / "in").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "in" / f"{i}.png"), np.random.default_rng(i).integers(0, 255, (112, 112, 3)))
    for weights in (tmp_path / "vit_fiqa.safetensors", tmp_path / "model.pt"):  # converted, or in memory
        out = tmp_path / f"out_{weights.suffix[1:]}"
        res = invoke("score", tmp_path / "in", "--weights", weights, "--out", out, "--aligned", "--quiet")
        assert res.exit_code == 0, res.output
    a = [float(r["quality"]) for r in _read(tmp_path / "out_safetensors" / "scores.csv")]
    b = [float(r["quality"]) for r in _read(tmp_path / "out_pt" / "scores.csv")]
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_scores_of_later_runs_and_shards_add_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs with other inputs into one --out keep both; RANK/WORLD_SIZE alone (a Slurm array) shard a run."""
    save_official(tmp_path / "model.pt", official_state_dict("token"))
    for folder, n in (("a", 3), ("b", 4)):
        (tmp_path / folder).mkdir()
        for i in range(n):
            img = np.random.default_rng(10 * n + i).integers(0, 255, (112, 112, 3))
            cv2.imwrite(str(tmp_path / folder / f"{i}.png"), img)
    common = ["--weights", tmp_path / "model.pt", "--aligned", "--quiet"]
    out = tmp_path / "out"
    assert invoke("score", tmp_path / "a", "--out", out, *common).exit_code == 0
    assert invoke("score", tmp_path / "b", "--out", out, *common).exit_code == 0
    rows = _read(out / "scores.csv")
    assert sorted(Path(r["path"]).parent.name + Path(r["path"]).name for r in rows) == [
        *[f"a{i}.png" for i in range(3)],
        *[f"b{i}.png" for i in range(4)],
    ]
    assert len(_read(out / "manifest.csv")) == 7

    # Array tasks 0 and 1 of 2 (no torchrun, no MASTER_ADDR): each scores its half; the last one merges.
    sharded = tmp_path / "sharded"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        res = invoke("score", tmp_path / "b", "--out", sharded, *common)
        assert res.exit_code == 0, res.output
    assert not list(sharded.glob("manifest.rank*"))
    by_path = {r["path"]: r["quality"] for r in _read(sharded / "scores.csv")}
    assert by_path == {r["path"]: r["quality"] for r in rows if "/b/" in r["path"]}


def test_weights_convert_hands_a_vit_fiqa_checkpoint_to_the_fiqa_importer(tmp_path: Path) -> None:
    """`medvit weights convert` recognises the ViT-FIQA layout (arcface_torch wrapper, DataParallel prefixes)."""
    from medvit.apps.fiqa.model import load_fiqa
    from medvit.shared.backbone.weights import WholeModelCheckpointError, convert_checkpoint

    sd = official_state_dict("token")  # keys carry DataParallel's module. prefix
    torch.save({"state_dict_backbone": sd, "epoch": 3}, tmp_path / "checkpoint_gpu_0.pt")
    src, out = tmp_path / "checkpoint_gpu_0.pt", tmp_path / "w.safetensors"

    res = runner.invoke(_root(), ["weights", "inspect", str(src), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["format"] == "vit-fiqa"
    res = runner.invoke(_root(), ["weights", "convert", str(src), "--out", str(out), "--set", "depth=4"])
    assert res.exit_code == 2 and "only --set num_heads=N applies" in res.output and not out.exists()
    res = runner.invoke(_root(), ["weights", "convert", str(src), "--out", str(out), "--set", "num_heads=8"])
    assert res.exit_code == 0, res.output
    assert "head token" in res.output and "num_heads=8 (given)" in res.output and "fiqa score" in res.output
    model, side = load_fiqa(out)
    assert side["head"] == "token"
    torch.testing.assert_close(model.backbone.quality_token, sd["module.qs_token"])
    torch.testing.assert_close(model.state_dict()["feature.0.weight"], sd["module.feature.0.weight"])
    # The library's backbone converter refuses the whole model instead of dropping its heads silently.
    with pytest.raises(WholeModelCheckpointError, match="medvit weights convert"):
        convert_checkpoint(src, tmp_path / "backbone.safetensors")
    assert not (tmp_path / "backbone.safetensors").exists()


def test_face_vit_with_another_head_count_converts_only_when_told(tmp_path: Path) -> None:
    """A 4-head face ViT: refused without a head count (not silently read as 8), right with --set / --num-heads."""
    from medvit.apps.fiqa.model import load_fiqa

    from .conftest import reference_forward

    sd = {k: v * 10 if k.endswith("attn.qkv.weight") else v for k, v in official_state_dict("token").items()}
    src = tmp_path / "vit_4heads.pt"
    torch.save(sd, src)
    x = torch.randn(2, 3, 112, 112)
    ref_emb, ref_q = reference_forward(sd, x, "token", heads=4)
    res = runner.invoke(_root(), ["weights", "convert", str(src), "--out", str(tmp_path / "no.safetensors")])
    assert res.exit_code == 2 and "cannot tell the attention head count" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "no.safetensors").exists()
    for args in (
        ["weights", "convert", str(src), "--out", str(tmp_path / "a.safetensors"), "--set", "num_heads=4"],
        ["fiqa", "convert", str(src), "--out", str(tmp_path / "b.safetensors"), "--num-heads", "4"],
    ):
        res = runner.invoke(_root(), args)
        assert res.exit_code == 0, res.output
        assert "num_heads=4 (given)" in res.output
        model, side = load_fiqa(Path(args[4]))
        assert side["backbone_kwargs"]["num_heads"] == 4 and side["num_heads_source"] == "given"
        with torch.no_grad():
            emb, q = model(x)
        torch.testing.assert_close(emb, ref_emb, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(q, ref_q, atol=1e-4, rtol=1e-4)


def test_scoring_is_rgb_and_the_readme_says_how_the_official_script_differs(tmp_path: Path) -> None:
    """README: the official ViT-FIQA scoring script feeds BGR by default, medvit RGB; the RGB part is checked."""
    from medvit.apps.fiqa.model import model_from_official, preprocess_faces

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Face-image quality") :]
    section = section[: section.index("\n## ")]
    for phrase in ("getQualityScore.py", "--color_channel BGR", "--color_channel RGB", "medvit uses RGB throughout"):
        assert phrase in section, phrase
    sd = official_state_dict("token")
    save_official(tmp_path / "model.pt", sd)
    face = np.zeros((112, 112, 3), np.uint8)
    face[:, :56, 0], face[:, 56:, 2], face[40:70, :, 1] = 230, 120, 60  # red left, blue right: order matters
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "face.png"), cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    res = invoke("score", tmp_path / "in", "--weights", tmp_path / "model.pt", "--out", tmp_path / "out", "--aligned")
    assert res.exit_code == 0, res.output
    scored = float(_read(tmp_path / "out" / "scores.csv")[0]["quality"])
    model = model_from_official({k.removeprefix("module."): v for k, v in sd.items()}, num_heads=8)
    with torch.no_grad():
        q_rgb = float(model(preprocess_faces(face[None]))[1])
        q_bgr = float(model(preprocess_faces(np.ascontiguousarray(face[None, ..., ::-1])))[1])
    assert scored == pytest.approx(q_rgb, abs=1e-5) and abs(q_rgb - q_bgr) > 1e-3


@pytest.mark.slow  # uses the learning loop (600 training steps, trained once per run)
def test_bin_extract_and_evaluate(loop: dict[str, Path], tmp_path: Path) -> None:
    from medvit.apps.fiqa.bin_reader import write_bin
    from medvit.apps.fiqa.data import read_pairs

    ps = read_pairs(loop["held"] / "pairs.txt")
    pick = [*np.flatnonzero(ps.issame)[:10], *np.flatnonzero(~ps.issame)[:10]]  # an EDC needs both kinds
    blobs = []
    for k in pick:
        blobs += [Path(ps.refs[ps.a[k]]).read_bytes(), Path(ps.refs[ps.b[k]]).read_bytes()]
    write_bin(tmp_path / "held.bin", blobs, [bool(ps.issame[k]) for k in pick], protocol=2)
    res = invoke("extract-bin", tmp_path / "held.bin", "--out", tmp_path / "x")
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "x" / "pair_list.txt").read_text().splitlines()
    assert len(lines) == 20 and lines[0] == "0 1 1" and lines[19] == "38 39 0"
    assert (tmp_path / "x" / "images" / "39.jpg").read_bytes() == blobs[39]
    res = invoke("evaluate", tmp_path / "held.bin", "--weights", loop["run"], "--out", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    assert len(_read(tmp_path / "ev" / "pairs_scored.csv")) == 20


@pytest.mark.slow  # uses the learning loop (600 training steps, trained once per run)
def test_evaluate_needs_genuine_and_impostor_pairs(loop: dict[str, Path], tmp_path: Path) -> None:
    from medvit.apps.fiqa.bin_reader import write_bin
    from medvit.apps.fiqa.data import read_pairs

    ps = read_pairs(loop["held"] / "pairs.txt")
    genuine = np.flatnonzero(ps.issame)[:4]
    blobs = [Path(ps.refs[x]).read_bytes() for k in genuine for x in (ps.a[k], ps.b[k])]
    write_bin(tmp_path / "same.bin", blobs, [True] * len(genuine), protocol=2)
    res = invoke("evaluate", tmp_path / "same.bin", "--weights", loop["run"], "--out", tmp_path / "ev")
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "same.bin" in res.output and "4 genuine and 0 impostor" in res.output


def test_same_seed_same_training(tmp_path: Path) -> None:
    """optim.seed fixes the run: initial weights, centres, data order, masking and augmentation."""
    from medvit.apps.fiqa import api
    from medvit.apps.fiqa.config import load_fiqa_config
    from medvit.shared.data.synth import synth_faces
    from medvit.shared.engine.checkpoint import load_checkpoint

    synth_faces(tmp_path / "faces", identities=4, images_per_identity=4, seed=0)
    opts = {"optim.steps": 4, "optim.log_every": 2, "optim.batch_size": 8, "data.augment": "full"}

    def run(name: str, seed: int) -> tuple[list[float], dict[str, torch.Tensor]]:
        api.train(
            load_fiqa_config("tiny", **{**opts, "optim.seed": seed}), tmp_path / "faces", tmp_path / name, quiet=True
        )
        losses = [json.loads(x)["loss"] for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return losses, load_checkpoint(tmp_path / name / "last.pt")["model"]

    (loss_a, sd_a), (loss_b, sd_b), (loss_c, _) = run("a", 0), run("b", 0), run("c", 1)
    assert loss_a == loss_b
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert loss_a != loss_c
