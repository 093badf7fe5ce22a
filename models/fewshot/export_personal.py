"""Write a fine-tuned person as a served model (DESIGN §4.4, §6): OUT.onnx (landmark image, avatar -> rgb, alpha), the
ARKit graph OUT.arkit.onnx (curves, avatar -> landmarks through the puppet), thumbnails and the model card, whose
``driver_input`` marks the model as landmark-driven (contract/model_card.py LandmarkImageInput)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from contract.landmark_image import LINE_THICKNESS
from models.checkpoints import FewShotNetworks
from models.data.person_frames import PersonFrames
from models.export import THUMBNAIL_SIZE, ExportReport, ExtraDriver, export_avatar_model
from models.fewshot.personal import PersonalGenerator, PuppetLandmarks, mean_landmarks
from models.megaportraits.puppet import CAPTURE_INPUTS
from models.training.fewshot_settings import FewShotFinetuneConfig
from models.training.finetune_fewshot import FinetunedPerson


def export_personal_model(
    person: FinetunedPerson,
    *,
    networks: FewShotNetworks,
    frames: PersonFrames,
    config: FewShotFinetuneConfig,
    out_path: Path,
    loss_status: dict[str, str],
) -> ExportReport:
    size = networks.config.resolution
    neutral = mean_landmarks(torch.from_numpy(frames.landmarks))  # 68×2 in [0, 1]
    input_name, input_shape = CAPTURE_INPUTS["arkit"]
    arkit = ExtraDriver(
        kind="arkit",
        module=PuppetLandmarks(neutral_landmarks=neutral[None]),
        input_name=input_name,
        input_shape=input_shape,
        config={"design": "puppet landmarks retargeted onto the person's neutral landmarks"},
        outputs=("landmarks",),
    )
    portrait = Image.fromarray(frames.crops[0]).resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.BILINEAR)
    recorded: dict[str, Any] = {
        "system": "few-shot talking heads (Zakharov et al. 2019)",
        "model": asdict(networks.config),
        "preset": networks.preset,
        "finetune": asdict(config),
        "frames": list(frames.sources),
        "loss_networks": loss_status,
        "seconds": round(person.seconds, 2),
    }
    return export_avatar_model(
        PersonalGenerator(generator=person.generator, adain=person.adain[None]),
        out_path=out_path,
        resolution=(size, size),
        avatar_names=[config.name],
        command=config.command,
        config=recorded,
        extra_drivers=[arkit],
        thumbnails=np.asarray(portrait)[None],
        parity_batch=2,
        driver_input={"kind": "landmark_image", "line_thickness": LINE_THICKNESS, "neutral_landmarks": [neutral.tolist()]},
    )
