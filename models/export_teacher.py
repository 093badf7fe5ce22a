"""The MegaPortraits teacher as a one-shot avatar model the server serves directly (DESIGN §4.1, §4.2, §6):
`megalive-train export-teacher` writes a `megalive-train base` checkpoint (and, optionally, its enhancer) as a
contract-v2 model: OUT.onnx, OUT.embedder.onnx, OUT.avatars.npz, OUT.thumbs.npy and the card OUT.json.

Design: the avatar's identity tensor is the source's encoded state, not the source picture.

    embedder graph   frames B×K×3×H×W ─first frame─▶ source ─E_app─▶ v_s, e_s      source ─E_mtn─▶ R_s, t_s, z_s
                     v_s ─warp(R_s, t_s, W_s→c(e_s, z_s))─▶ G3D ─▶ v_c             identity = pack(v_c, e_s)
    main graph       driver B×3×H×W ─E_mtn─▶ R_d, t_d, z_d      unpack(identity) -> v_c, e_s
                     v_c ─warp(R_d, t_d, W_c→d(e_s, z_d))─▶ G2D ─▶ rgb, alpha  (─enhancer─▶ 2× rgb, alpha)

Everything the teacher computes from its source alone (E_app, E_mtn on the source, W_s→c, the first 5-D warp and
G3D) depends on the source and not on the driver, so it runs once per avatar, at enrollment; every frame runs only
the driver's half (E_mtn on the driver, W_c→d, the second 5-D warp, G2D). That is exactly BaseModel.render split at
v_c: the split graphs give BaseModel.forward's output (tests/models/test_export_teacher.py). Re-encoding the source
picture every frame (the other honest design: the identity tensor is the portrait crop) gives the same pictures and
is slower: a random-weight cpu128 teacher (frozen head-pose network inside) at 128 px, ONNX Runtime CPU, batch 1, timed
interleaved on the 2-core box at the lowest priority beside a training job, ran 8.1 frames/s split against 3.5 when
re-encoding its source each frame (×2.3 the time per frame; 2026-11-30).

The state fits the avatar bank as it stands (contract/avatar_bank.py: one N×C_id×S×S float32 tensor per avatar):
v_c (C×D×S×S) is reshaped to C·D channels, and e_s (E×k×k, much smaller) is flattened row-major into as many further
S×S channels as it needs, zero-padded:

    identity = [ v_c: C·D channels | e_s: ceil(E·k·k / S²) channels ]      cpu128: 128 + 2 = 130 × 32 × 32 (532 KB)

The card's ``teacher`` entry records this layout, the preset, the teacher's resolution, that the model is one-shot,
where its head pose comes from (a frozen head-pose network inside E_mtn, or E_mtn's own learned pose head: either
way part of the graph) and the enhancer, if any. The teacher is one-shot: with K portraits the embedder encodes the
first. Refinement has nothing to fit (no student weights are written).

With ``--enhancer`` (an ENHANCER_KIND checkpoint trained behind a teacher of the same preset) the enhancer is appended
to the main graph: the model's resolution is 2r. Its pictures (driver and portraits) come in at 2r and are
area-downsampled to the teacher's r inside the graphs, as the enhancer's training fed its teacher
(models/megaportraits/enhancer.py), so the server's contract is unchanged: one resolution in and out. The enhancer's
output is clamped to [0, 1] (the contract's range; the enhancer itself leaves it unclamped).

Avatars shipped in the bank: the portraits given with ``--portrait`` (their largest face, framed as the server frames
a live face; a consent statement is required, as for enrollment), else ``--synthetic-avatars`` SyntheticHeads
identities in the neutral pose from a fixed seed. More can be enrolled on the server at any time.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from einops import rearrange
from PIL import Image
from torch import Tensor, nn

from contract.avatar_bank import AvatarBank, AvatarBankError, AvatarRecord, ConsentRecord
from models.checkpoints import BASE_KIND, base_model_from_checkpoint, check_kind, load_checkpoint, state_digest
from models.export import THUMBNAIL_SIZE, EnrollmentExport, ExportReport, export_avatar_model
from models.megaportraits.base import BaseModel
from models.megaportraits.enhancer import Enhancer, area_downsample, load_enhancer
from models.training.common import TrainingError

SYSTEM = "MegaPortraits base model (Drobyshev et al., ACM MM 2022), served directly"
SYNTHETIC_SEED = 616161  # the shipped synthetic avatars' identities (no training stream uses it)
DEFAULT_SYNTHETIC_AVATARS = 4
PARITY_BATCH = 2


@dataclass(frozen=True)
class IdentityLayout:
    """How the source's encoded state is packed into one identity tensor C_id×S×S (see the module docstring)."""

    volume_shape: tuple[int, int, int, int]  # v_c: C×D×S×S
    descriptor_shape: tuple[int, int, int]  # e_s: E×k×k

    @property
    def volume_channels(self) -> int:
        channels, depth, _, _ = self.volume_shape
        return channels * depth

    @property
    def side(self) -> int:
        return self.volume_shape[-1]

    @property
    def descriptor_values(self) -> int:
        return math.prod(self.descriptor_shape)

    @property
    def descriptor_channels(self) -> int:
        return math.ceil(self.descriptor_values / self.side**2)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.volume_channels + self.descriptor_channels, self.side, self.side)

    def pack(self, canonical: Tensor, descriptor: Tensor) -> Tensor:
        """v_c B×C×D×S×S, e_s B×E×k×k -> identity B×C_id×S×S."""
        batch = canonical.shape[0]
        volume = rearrange(canonical, "b c d h w -> b (c d) h w")  # B×C×D×S×S -> B×(C·D)×S×S
        flat = descriptor.reshape(batch, self.descriptor_values)  # B×E×k×k -> B×(E·k·k)
        padding = self.descriptor_channels * self.side**2 - self.descriptor_values
        flat = torch.cat([flat, flat.new_zeros(batch, padding)], dim=1)  # -> B×(n·S·S), zero-padded
        packed = flat.reshape(batch, self.descriptor_channels, self.side, self.side)  # -> B×n×S×S
        return torch.cat([volume, packed], dim=1)  # -> B×C_id×S×S

    def unpack(self, identity: Tensor) -> tuple[Tensor, Tensor]:
        """identity B×C_id×S×S -> v_c B×C×D×S×S, e_s B×E×k×k."""
        channels, depth, _, _ = self.volume_shape
        volume = rearrange(identity[:, : self.volume_channels], "b (c d) h w -> b c d h w", c=channels, d=depth)  # -> B×C×D×S×S
        flat = identity[:, self.volume_channels :].flatten(1)[:, : self.descriptor_values]  # B×n×S×S -> B×(E·k·k)
        descriptor = flat.reshape(-1, *self.descriptor_shape)  # -> B×E×k×k
        return volume, descriptor

    def describe(self) -> dict[str, Any]:
        """The card's account of the layout."""
        return {
            "shape": list(self.shape),
            "canonical_volume": {"shape": list(self.volume_shape), "channels": [0, self.volume_channels]},
            "descriptor": {"shape": list(self.descriptor_shape), "channels": [self.volume_channels, self.shape[0]]},
            "packing": "v_c (after G3D) reshaped C×D -> C·D channels, then e_s flattened row-major into S×S channels, zero-padded",
        }


def identity_layout(model: BaseModel) -> IdentityLayout:
    return IdentityLayout(volume_shape=model.config.volume_shape, descriptor_shape=model.config.descriptor_shape)


class TeacherSourceEncoder(nn.Module):
    """The embedder graph: portrait frames B×K×3×H×W in [0, 1] -> identity B×C_id×S×S (the first frame's encoded state:
    the teacher is one-shot). ``downsample``: the frames are at twice the teacher's side (a model with its enhancer)."""

    def __init__(self, *, teacher: BaseModel, downsample: bool) -> None:
        super().__init__()
        self.teacher = teacher
        self.layout = identity_layout(teacher)
        self.downsample = downsample

    def forward(self, frames: Tensor) -> Tensor:
        source = frames[:, 0]  # B×K×3×H×W -> B×3×H×W
        if self.downsample:
            source = area_downsample(source)  # B×3×2r×2r -> B×3×r×r
        appearance = self.teacher.encode_appearance(source)  # v_s B×C×D×S×S, e_s B×E×k×k
        motion = self.teacher.encode_motion(source)
        to_canonical = self.teacher.to_canonical(appearance.volume, descriptor=appearance.descriptor, motion=motion)
        canonical = self.teacher.volume_generator(to_canonical.volume)  # G3D: B×C×D×S×S -> B×C×D×S×S
        return self.layout.pack(canonical, appearance.descriptor)


class TeacherRenderer(nn.Module):
    """The main graph: driver B×3×H×W in [0, 1], identity B×C_id×S×S -> rgb B×3×H×W, alpha B×1×H×W (the driver's half of
    the teacher, then the enhancer when given: H = 2r, the driver area-downsampled to r first)."""

    def __init__(self, *, teacher: BaseModel, enhancer: Enhancer | None) -> None:
        super().__init__()
        self.teacher = teacher
        self.enhancer = enhancer
        self.layout = identity_layout(teacher)

    def forward(self, driver: Tensor, identity: Tensor) -> tuple[Tensor, Tensor]:
        canonical, descriptor = self.layout.unpack(identity)  # v_c B×C×D×S×S, e_s B×E×k×k
        if self.enhancer is not None:
            driver = area_downsample(driver)  # B×3×2r×2r -> B×3×r×r
        motion = self.teacher.encode_motion(driver)
        to_driver = self.teacher.to_driver(canonical, descriptor=descriptor, motion=motion)
        image = self.teacher.decode(to_driver.volume, motion=motion)  # B×C×D×S×S -> rgb B×3×r×r, alpha B×1×r×r
        if self.enhancer is None:
            return image.rgb, image.alpha
        enhanced = self.enhancer(image.rgb, image.alpha)  # -> B×3×2r×2r, B×1×2r×2r
        return enhanced.rgb.clamp(0, 1), enhanced.alpha.clamp(0, 1)


@dataclass(frozen=True, kw_only=True)
class TeacherExportConfig:
    checkpoint: str  # a `megalive-train base` RUN/checkpoint.pt
    out: str  # OUT.onnx
    enhancer: str | None = None  # a `megalive-train enhancer` RUN/checkpoint.pt for the same preset
    portraits: tuple[str, ...] = ()  # photographs whose faces become the shipped avatars (names: the files' stems)
    consent: str | None = None  # required with portraits: the statement of the people in them
    synthetic_avatars: int = DEFAULT_SYNTHETIC_AVATARS  # without portraits: SyntheticHeads identities shipped instead
    preset: str | None = None  # refuse a teacher of another preset
    command: str = ""

    def __post_init__(self) -> None:
        if not self.out.endswith(".onnx"):
            raise ValueError(f"--out {self.out}: the model is an .onnx file")
        if self.portraits and not (self.consent or "").strip():
            raise ValueError(
                "--portrait needs --consent: the statement of the people in the portraits that they agree to avatars of their faces"
            )
        if not self.portraits and not 1 <= self.synthetic_avatars <= 64:
            raise ValueError(f"--synthetic-avatars must be in [1, 64] without --portrait, got {self.synthetic_avatars}")


class LoadedTeacher(NamedTuple):
    model: BaseModel  # in eval mode
    preset: str
    step: int
    digest: str  # state_digest of the generator: equal digests, the same teacher
    commands: tuple[str, ...]  # what made it (its training command)
    enhancer: Enhancer | None
    enhancer_entry: dict[str, Any] | None  # the card's account of the enhancer


def load_teacher(config: TeacherExportConfig) -> LoadedTeacher:
    """The teacher (and enhancer) of ``config``, checked: TrainingError (one line) for a checkpoint that is not a base
    model, a teacher of another preset than --preset, a teacher whose poses must be given, or an enhancer that is not
    one or was trained for a teacher of another preset."""
    path = Path(config.checkpoint)
    checkpoint = load_checkpoint(path)
    check_kind(checkpoint, BASE_KIND, where=f"--checkpoint {path}")
    preset = str(checkpoint.get("train_config", {}).get("preset"))
    if config.preset is not None and preset != config.preset:
        raise TrainingError(f"--checkpoint {path} is a base model of preset {preset!r}, not {config.preset!r}")
    model = base_model_from_checkpoint(checkpoint, path=path).eval().requires_grad_(False)
    if model.config.pose_source == "given":
        raise TrainingError(
            f"--checkpoint {path} reads head poses given by the caller (pose source 'given'); the server drives by pictures"
        )
    digest = state_digest(checkpoint["generator"])
    command = str(checkpoint.get("train_config", {}).get("command", ""))
    enhancer, entry = None, None
    if config.enhancer is not None:
        loaded = load_enhancer(Path(config.enhancer), expect_teacher_preset=preset)
        trained_behind = str(loaded.teacher.get("digest", ""))
        enhancer = loaded.enhancer.requires_grad_(False)
        entry = {
            "path": config.enhancer,
            "model": asdict(enhancer.config),
            "step": loaded.step,
            "trained_behind": dict(loaded.teacher),
            "behind_this_teacher": trained_behind == digest,  # False: trained behind another teacher of the preset
        }
    return LoadedTeacher(
        model=model,
        preset=preset,
        step=int(checkpoint.get("step", 0)),
        digest=digest,
        commands=(command,) if command else (),
        enhancer=enhancer,
        enhancer_entry=entry,
    )


def pose_in_words(model: BaseModel) -> str:
    config = model.config
    if config.pose_source == "pretrained":
        return f"a frozen head-pose network (preset {config.head_pose_preset}) inside E_mtn, part of the graph"
    return "E_mtn's own pose head, learned end to end with the teacher (part of the graph)"


def per_frame_in_words(model: BaseModel, *, enhancer: bool) -> str:
    config = model.config
    return (
        "E_mtn on the driver"
        + (" (with its eye and mouth crops)" if config.feature_crops else "")
        + ", W_c→d, the 5-D warp of v_c, G2D"
        + (" (reading the driver's z)" if config.decoder_expression else "")
        + (", the enhancer" if enhancer else "")
    )


class ShippedAvatars(NamedTuple):
    pictures: np.ndarray  # N×H×W×3 uint8 at the model's resolution
    names: tuple[str, ...]
    consents: tuple[ConsentRecord | None, ...]
    provenance: tuple[dict[str, object], ...]


def synthetic_avatars(count: int, *, resolution: int) -> ShippedAvatars:
    """``count`` SyntheticHeads identities in the neutral pose (a fixed seed), rendered at ``resolution``."""
    from models.data.heads import SyntheticHeads, neutral_motion, sample_identities

    identities = sample_identities(count, generator=torch.Generator().manual_seed(SYNTHETIC_SEED))
    rendered = SyntheticHeads(resolution=resolution).render(identities, neutral_motion(count))
    pictures = (rendered.rgb.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8).numpy()  # N×3×H×W -> N×H×W×3
    how = {"how": f"a SyntheticHeads identity (seed {SYNTHETIC_SEED}, neutral pose), encoded one-shot by the teacher"}
    return ShippedAvatars(
        pictures=pictures,
        names=tuple(f"synthetic-{index}" for index in range(1, count + 1)),
        consents=(None,) * count,
        provenance=tuple({**how, "index": index} for index in range(count)),
    )


def portrait_avatars(paths: tuple[str, ...], *, consent: str, resolution: int) -> ShippedAvatars:
    """Each photograph's face, framed as the server frames a live face (mediapipe's face mesh), at ``resolution``.
    TrainingError (one line) for an unreadable file, a picture without a face, or two portraits of one name."""
    from models.data.person_frames import PersonFramesError, read_person_frames

    pictures, names, consents, provenance = [], [], [], []
    recorded_at = datetime.now(UTC).isoformat(timespec="seconds")
    for path in map(Path, paths):
        try:
            frames = read_person_frames(path, count=1, resolution=resolution)
            record = ConsentRecord.of(name=path.stem, statement=consent, recorded_at=recorded_at)
        except (PersonFramesError, AvatarBankError) as error:
            raise TrainingError(f"--portrait {error}") from None
        if path.stem in names:
            raise TrainingError(f"--portrait: two portraits named {path.stem!r}; an avatar's name is its file's stem")
        pictures.append(frames.crops[0])
        names.append(path.stem)
        consents.append(record)
        provenance.append(
            {
                "how": "a portrait given to export-teacher, encoded one-shot by the teacher",
                "file": path.name,
                "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        )
    return ShippedAvatars(pictures=np.stack(pictures), names=tuple(names), consents=tuple(consents), provenance=tuple(provenance))


def thumbnails_of(pictures: np.ndarray) -> np.ndarray:
    """N×H×W×3 uint8 -> N×T×T×3 uint8 (bilinear), T = THUMBNAIL_SIZE."""
    return np.stack([np.asarray(Image.fromarray(p).resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.BILINEAR)) for p in pictures])


@dataclass(frozen=True)
class TeacherExport:
    report: ExportReport
    resolution: int
    identity_shape: tuple[int, int, int]
    avatars: tuple[str, ...]


def export_teacher(config: TeacherExportConfig, *, teacher: LoadedTeacher | None = None) -> TeacherExport:
    """Write the model (module docstring). Raises TrainingError (one line) for bad inputs, before anything is written."""
    teacher = load_teacher(config) if teacher is None else teacher
    model = teacher.model
    resolution = model.config.resolution * (2 if teacher.enhancer is not None else 1)
    if config.portraits:
        shipped = portrait_avatars(config.portraits, consent=str(config.consent), resolution=resolution)
    else:
        shipped = synthetic_avatars(config.synthetic_avatars, resolution=resolution)
    encoder = TeacherSourceEncoder(teacher=model, downsample=teacher.enhancer is not None).eval()
    renderer = TeacherRenderer(teacher=model, enhancer=teacher.enhancer).eval()
    frames = torch.from_numpy(shipped.pictures).permute(0, 3, 1, 2).float() / 255  # N×H×W×3 uint8 -> N×3×H×W in [0, 1]
    with torch.no_grad():
        identity = encoder(frames[:, None]).numpy().astype(np.float32)  # N×1×3×H×W -> N×C_id×S×S
    provenance_command = " && ".join([*teacher.commands, config.command])
    records = tuple(
        AvatarRecord(name=name, consent=consent, provenance={**how, "command": provenance_command})
        for name, consent, how in zip(shipped.names, shipped.consents, shipped.provenance)
    )
    try:
        bank = AvatarBank(identity=identity, thumbnails=thumbnails_of(shipped.pictures), records=records)
    except AvatarBankError as error:
        raise TrainingError(str(error)) from None
    layout = identity_layout(model)
    entry = {
        "system": SYSTEM,
        "preset": teacher.preset,
        "teacher_resolution": model.config.resolution,
        "one_shot": True,
        "pose_source": model.config.pose_source,
        "pose": pose_in_words(model),
        "identity": layout.describe(),
        "per_frame": per_frame_in_words(model, enhancer=teacher.enhancer is not None),
        "per_avatar": "E_app, E_mtn on the source, W_s→c, the 5-D warp of v_s, G3D (the embedder graph, once)",
        "enhancer": teacher.enhancer_entry,
        "checkpoint": {"path": config.checkpoint, "step": teacher.step, "digest": teacher.digest},
    }
    recorded = {"teacher": asdict(model.config), "preset": teacher.preset, "step": teacher.step, "enhancer": teacher.enhancer_entry}
    report = export_avatar_model(
        renderer,
        out_path=Path(config.out),
        resolution=(resolution, resolution),
        avatar_names=list(shipped.names),
        command=provenance_command,
        config=recorded,
        thumbnails=bank.thumbnails,
        parity_batch=PARITY_BATCH,
        enrollment=EnrollmentExport(embedder=encoder, bank=bank, student=None),
        teacher=entry,
    )
    return TeacherExport(report=report, resolution=resolution, identity_shape=layout.shape, avatars=shipped.names)
