"""`megalive-train export-teacher` (models/export_teacher.py): the teacher split at its canonical volume gives its own
output, the exported graphs agree with PyTorch (with the frozen head-pose network and with the enhancer inside), the card
says what the model is, and bad inputs are refused in one line with nothing written. Tiny networks: plumbing, not looks."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from contract.avatar_bank import read_bank
from contract.model_card import read_model_card
from models.checkpoints import ENHANCER_KIND, save_checkpoint
from models.cli import main
from models.export_teacher import (
    IdentityLayout,
    LoadedTeacher,
    TeacherExportConfig,
    TeacherRenderer,
    TeacherSourceEncoder,
    export_teacher,
    identity_layout,
    load_teacher,
)
from models.megaportraits.base import BASE_PRESETS, BaseModel, base_config
from models.megaportraits.enhancer import Enhancer, area_downsample, enhancer_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PARITY = 1e-4  # ONNX Runtime CPU against PyTorch, rgb and alpha in [0, 1]


def random_teacher(*, pose: str = "learned") -> BaseModel:
    torch.manual_seed(0)
    if pose == "learned":
        config = base_config("tiny")
    else:  # "pretrained"; "crops": the frozen pose network placing E_mtn's eye and mouth crops too; "crops-decoder": and G2D reading z
        crops, decoder = pose.startswith("crops"), pose == "crops-decoder"
        config = base_config("tiny", pose_source="pretrained", head_pose_preset="tiny", feature_crops=crops, decoder_expression=decoder)
    return BaseModel(config=config).eval().requires_grad_(False)


def loaded(model: BaseModel, *, enhancer: Enhancer | None = None) -> LoadedTeacher:
    entry = None if enhancer is None else {"model": asdict(enhancer.config), "behind_this_teacher": True}
    return LoadedTeacher(model=model, preset="tiny", step=0, digest="0", commands=(), enhancer=enhancer, enhancer_entry=entry)


def onnx_versus_torch(path: Path, module: torch.nn.Module, inputs: dict[str, np.ndarray]) -> float:
    """Max abs difference of the graph at ``path`` and ``module`` on ``inputs`` (all outputs), printed."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    actual = session.run(names, inputs)
    with torch.no_grad():
        produced = module(*(torch.from_numpy(value) for value in inputs.values()))
    expected = produced if isinstance(produced, tuple) else (produced,)
    difference = max(float(np.abs(a - e.numpy()).max()) for a, e in zip(actual, expected, strict=True))
    print(f"{path.name}: ONNX Runtime vs PyTorch max abs difference {difference:.2e}")
    return difference


def tiny_enhancer_checkpoint(path: Path, *, teacher_preset: str, seed: int = 0) -> Path:
    """An ENHANCER_KIND checkpoint with random weights (its zero head made non-zero, so it is more than bicubic)."""
    torch.manual_seed(seed)
    enhancer = Enhancer(config=enhancer_config(teacher_preset))
    torch.nn.init.normal_(enhancer.head.weight, std=0.05)
    teacher = {"preset": teacher_preset, "path": "elsewhere", "digest": "0" * 16, "resolution": BASE_PRESETS[teacher_preset].resolution}
    payload = {"enhancer": enhancer.state_dict(), "discriminator": {}, "model_config": asdict(enhancer.config), "train_config": {}}
    save_checkpoint({**payload, "teacher": teacher, "step": 1}, path, kind=ENHANCER_KIND)
    return path


@pytest.mark.parametrize("pose", ["learned", "pretrained", "crops-decoder"])
def test_the_teacher_split_at_its_canonical_volume_gives_its_own_output(pose: str) -> None:
    model = random_teacher(pose=pose)
    encoder, renderer = TeacherSourceEncoder(teacher=model, downsample=False), TeacherRenderer(teacher=model, enhancer=None)
    source, driver = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        whole = model(source, driver)
        identity = encoder(torch.stack([source, torch.rand(2, 3, 64, 64)], dim=1))  # K = 2: the first frame is the source
        rgb, alpha = renderer(driver, identity)
    assert identity.shape == (2, *identity_layout(model).shape) == (2, 33, 16, 16)
    torch.testing.assert_close(rgb, whole.rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(alpha, whole.alpha, atol=1e-6, rtol=0)


def test_the_identity_layout_packs_volume_and_descriptor_losslessly() -> None:
    layout = IdentityLayout(volume_shape=(8, 4, 16, 16), descriptor_shape=(16, 2, 2))
    volume, descriptor = torch.randn(3, 8, 4, 16, 16), torch.randn(3, 16, 2, 2)
    packed = layout.pack(volume, descriptor)
    assert packed.shape == (3, 33, 16, 16) and float(packed[:, 32].flatten(1)[:, 64:].abs().max()) == 0.0  # zero padding
    unpacked = layout.unpack(packed)
    assert torch.equal(unpacked[0], volume) and torch.equal(unpacked[1], descriptor)
    cpu128 = BASE_PRESETS["cpu128"]
    assert IdentityLayout(volume_shape=cpu128.volume_shape, descriptor_shape=cpu128.descriptor_shape).shape == (130, 32, 32)


def test_export_teacher_writes_a_card_and_graphs_that_agree_with_pytorch(teacher: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model" / "teacher.onnx"
    assert main(["export-teacher", "--checkpoint", str(teacher), "--out", str(out), "--synthetic-avatars", "2"]) == 0
    printed = capsys.readouterr().out
    assert "64×64, teacher tiny, 2 avatars, identity 33×16×16" in printed and "max abs error" in printed
    card = read_model_card(out)
    assert (card.family, card.contract, card.drivers, card.resolution) == ("teacher", 2, ("image",), (64, 64))
    assert card.avatar_names == ("synthetic-1", "synthetic-2") and card.enrollment is not None and card.enrollment.weights_path is None
    assert card.teacher is not None and (card.teacher.preset, card.teacher.teacher_resolution, card.teacher.enhancer) == ("tiny", 64, False)
    assert card.teacher.pose_source == "learned" and "learned" in card.teacher.pose and card.teacher.entry["one_shot"] is True
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["parity_max_abs_error"] < PARITY and sidecar["embedder"]["parity_max_abs_error"] < PARITY
    assert sidecar["gflops_per_frame"] > 0 and "export-teacher" in sidecar["command"]
    assert sidecar["teacher"]["identity"]["canonical_volume"]["shape"] == [8, 4, 16, 16]
    # Fresh random inputs, the graphs against the checkpoint's own teacher.
    model = load_teacher(TeacherExportConfig(checkpoint=str(teacher), out=str(out))).model
    generator = np.random.default_rng(1)
    frames = generator.random((2, 3, 3, 64, 64), dtype=np.float32)
    assert (
        onnx_versus_torch(card.enrollment.embedder_path, TeacherSourceEncoder(teacher=model, downsample=False), {"frames": frames}) < PARITY
    )
    bank = read_bank(card.enrollment.bank_path)
    assert bank.identity.shape == (2, 33, 16, 16) and bank.thumbnails.shape == (2, 96, 96, 3)
    assert all(record.consent is None and "SyntheticHeads" in str(record.provenance["how"]) for record in bank.records)
    inputs = {"driver": generator.random((2, 3, 64, 64), dtype=np.float32), "identity": bank.identity[[1, 0]]}
    assert onnx_versus_torch(out, TeacherRenderer(teacher=model, enhancer=None), inputs) < PARITY


@pytest.mark.parametrize("pose", ["pretrained", "crops", "crops-decoder"])
def test_a_teacher_with_a_frozen_head_pose_network_exports_it_inside_the_graph(pose: str, tmp_path: Path) -> None:
    model = random_teacher(pose=pose)
    assert model.motion_encoder.head_pose is not None and (model.motion_encoder.crops is not None) == pose.startswith("crops")
    assert model.decoder.condition_dim == (16 if pose == "crops-decoder" else 0)
    config = TeacherExportConfig(checkpoint="unused", out=str(tmp_path / "posed.onnx"), synthetic_avatars=1, command="tests")
    written = export_teacher(config, teacher=loaded(model))
    print(f"{pose} teacher: ONNX Runtime vs PyTorch max abs error {written.report.max_abs_error:.2e}")
    assert written.report.max_abs_error < PARITY
    card = read_model_card(written.report.model_path)
    assert (
        card.teacher is not None
        and card.teacher.pose_source == "pretrained"
        and "frozen head-pose network (preset tiny)" in card.teacher.pose
    )
    assert ("crops" in card.teacher.entry["per_frame"]) == pose.startswith("crops")
    assert ("reading the driver's z" in card.teacher.entry["per_frame"]) == (pose == "crops-decoder")


def test_the_enhancer_appended_doubles_the_side_and_agrees_with_pytorch(tmp_path: Path) -> None:
    from models.megaportraits.enhancer import load_enhancer

    model = random_teacher()
    enhancer = load_enhancer(tiny_enhancer_checkpoint(tmp_path / "enhancer.pt", teacher_preset="tiny")).enhancer
    config = TeacherExportConfig(checkpoint="unused", out=str(tmp_path / "enhanced.onnx"), synthetic_avatars=2, command="tests")
    written = export_teacher(config, teacher=loaded(model, enhancer=enhancer))
    print(f"teacher + enhancer: ONNX Runtime vs PyTorch max abs error {written.report.max_abs_error:.2e}")
    assert written.resolution == 128 and written.report.max_abs_error < PARITY
    card = read_model_card(written.report.model_path)
    assert card.resolution == (128, 128) and card.teacher is not None and card.teacher.enhancer and card.teacher.teacher_resolution == 64
    renderer = TeacherRenderer(teacher=model, enhancer=enhancer)
    encoder = TeacherSourceEncoder(teacher=model, downsample=True)
    source, driver = torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        rgb, alpha = renderer(driver, encoder(source[:, None]))
        low = model(area_downsample(source), area_downsample(driver))  # the teacher at its own side, then the enhancer
        expected = enhancer(low.rgb, low.alpha)
    assert rgb.shape == (1, 3, 128, 128) and alpha.shape == (1, 1, 128, 128) and 0 <= float(rgb.min()) and float(rgb.max()) <= 1
    torch.testing.assert_close(rgb, expected.rgb.clamp(0, 1), atol=1e-5, rtol=0)
    bank = read_bank(card.enrollment.bank_path)  # type: ignore[union-attr]
    inputs = {"driver": np.random.default_rng(2).random((2, 3, 128, 128), dtype=np.float32), "identity": bank.identity}
    assert onnx_versus_torch(written.report.model_path, renderer, inputs) < PARITY


def test_bad_inputs_are_refused_in_one_line_and_nothing_is_written(teacher: Path, tmp_path: Path, capsys) -> None:
    other_preset = tiny_enhancer_checkpoint(tmp_path / "cpu128-enhancer.pt", teacher_preset="cpu128")
    out = tmp_path / "out" / "teacher.onnx"
    cases = [
        (["--checkpoint", str(other_preset)], "is not a MegaPortraits base-model checkpoint: it holds kind 'megaportraits-enhancer'"),
        (["--checkpoint", str(teacher), "--enhancer", str(other_preset)], "is an enhancer for teacher preset 'cpu128', not 'tiny'"),
        (["--checkpoint", str(teacher), "--enhancer", str(teacher)], "is not a high-resolution enhancer checkpoint"),
        (["--checkpoint", str(teacher), "--preset", "cpu128"], "is a base model of preset 'tiny', not 'cpu128'"),
        (["--checkpoint", str(teacher), "--portrait", str(tmp_path / "me.png")], "--portrait needs --consent"),
        (["--checkpoint", str(tmp_path / "none.pt")], "checkpoint not found"),
        (["--checkpoint", str(teacher), "--synthetic-avatars", "0"], "--synthetic-avatars must be in [1, 64]"),
    ]
    for arguments, message in cases:
        assert main(["export-teacher", *arguments, "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert message in error and error.startswith("megalive-train export-teacher: ") and error.count("\n") == 1, error
    no_face = tmp_path / "grey.png"
    from PIL import Image

    Image.new("RGB", (200, 200), (128, 128, 128)).save(no_face)
    if importlib.util.find_spec("mediapipe") is not None:
        assert (
            main(["export-teacher", "--checkpoint", str(teacher), "--portrait", str(no_face), "--consent", "yes", "--out", str(out)]) == 2
        )
        error = capsys.readouterr().err
        assert "no face found" in error and error.count("\n") == 1
    assert not out.parent.exists()  # nothing written, not even the folder


def test_a_portrait_becomes_the_shipped_avatar_with_its_consent(teacher: Path, tmp_path: Path) -> None:
    from PIL import Image

    pytest.importorskip("mediapipe")
    photo = tmp_path / "eileen.png"
    Image.fromarray(pytest.importorskip("skimage.data").astronaut()).save(photo)
    config = TeacherExportConfig(
        checkpoint=str(teacher), out=str(tmp_path / "m" / "eileen.onnx"), portraits=(str(photo),), consent="I agree.", command="tests"
    )
    written = export_teacher(config)
    bank = read_bank(read_model_card(written.report.model_path).enrollment.bank_path)  # type: ignore[union-attr]
    record = bank.records[0]
    assert bank.names == ("eileen",) and record.consent is not None and record.consent.statement == "I agree."
    assert record.provenance["file"] == "eileen.png" and len(str(record.provenance["file_sha256"])) == 64
    assert written.report.max_abs_error < PARITY
