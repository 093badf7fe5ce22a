"""`megalive-train` commands of the few-shot talking heads (DESIGN §4.4): fewshot-meta (meta-learning) and
fewshot-finetune (a personal model from K frames of a new face)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, replace
from pathlib import Path

from models.commands.common import refuse
from models.training.fewshot_settings import FewShotFinetuneConfig, FewShotLossWeights, FewShotMetaConfig
from models.training.objective_weights import ObjectiveWeights


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_meta(commands)
    _add_finetune(commands)
    _add_preview(commands)


def _add_loss_options(parser: argparse.ArgumentParser, *, content: ObjectiveWeights, losses: FewShotLossWeights) -> None:
    parser.add_argument("--region-weight", type=float, default=content.region, metavar="W", help="extra L1 weight on eyes and mouth")
    parser.add_argument(
        "--perceptual-weight", type=float, default=content.perceptual, metavar="W", help="perceptual (EfficientNet-Lite0) λ"
    )
    parser.add_argument("--face-weight", type=float, default=content.face, metavar="W", help="face (dlib ResNet) λ; 0: off")
    parser.add_argument(
        "--adversarial-weight", type=float, default=losses.adversarial, metavar="W", help="projection discriminator hinge λ"
    )
    parser.add_argument("--matching-weight", type=float, default=losses.feature_matching, metavar="W", help="feature matching λ (paper 10)")
    parser.add_argument(
        "--match-weight", type=float, default=losses.embedding_match, metavar="W", help="embedding match: W_i pulled toward ê (paper 80)"
    )
    parser.add_argument(
        "--embedder-match-weight",
        type=float,
        default=losses.embedder_match,
        metavar="W",
        help="embedding match: ê pulled toward W_i (paper 80; the CPU recipe 0)",
    )
    parser.add_argument("--allow-missing-nets", action="store_true", help="train without a loss network whose weights are missing")


def _weights(args: argparse.Namespace, content: ObjectiveWeights) -> tuple[ObjectiveWeights, FewShotLossWeights]:
    return (
        replace(content, region=args.region_weight, perceptual=args.perceptual_weight, face=args.face_weight),
        FewShotLossWeights(
            adversarial=args.adversarial_weight,
            feature_matching=args.matching_weight,
            embedding_match=args.match_weight,
            embedder_match=args.embedder_match_weight,
        ),
    )


def _add_meta(commands: argparse._SubParsersAction) -> None:
    defaults = FewShotMetaConfig(run_dir="")
    meta = commands.add_parser(
        "fewshot-meta",
        help="meta-learn the few-shot talking heads (embedder, generator, projection discriminator) in K-shot episodes",
        description="Meta-learning of Zakharov et al. 2019 on SyntheticHeads videos rendered when the run starts (or a "
        "`megalive-train prepare` folder with --data): each episode embeds K frames of a video and redraws another of its frames "
        "from that frame's landmark image. Resumes from RUN/checkpoint.pt when it exists. Under torchrun --nproc_per_node=N: "
        "DistributedDataParallel (gloo on CPU, nccl on CUDA), rank 0 writes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    meta.add_argument(
        "--run",
        "--run-dir",
        dest="run_dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="run folder (config, checkpoint, log, samples, tensorboard); under torchrun write --run-dir",
    )
    meta.add_argument("--preset", default=defaults.preset, metavar="NAME", help="few-shot preset (tiny, cpu128, paper256)")
    meta.add_argument("--data", type=Path, default=None, metavar="DIR", help="a prepared real-video folder (default: SyntheticHeads)")
    meta.add_argument("--identities", type=int, default=defaults.identities, metavar="N", help="synthetic videos (one identity each)")
    meta.add_argument("--frames-per-video", type=int, default=defaults.frames_per_video, metavar="N", help="frames rendered per video")
    meta.add_argument("--shots", type=int, default=defaults.shots, metavar="K", help="frames embedded per episode")
    meta.add_argument("--steps", type=int, default=defaults.steps, metavar="N", help="optimiser steps in total (resume counts on)")
    meta.add_argument("--batch", type=int, default=defaults.batch, metavar="N", help="episodes per step")
    meta.add_argument("--lr", type=float, default=defaults.learning_rate, metavar="LR", help="generator and embedder learning rate")
    meta.add_argument("--d-lr", type=float, default=defaults.discriminator_learning_rate, metavar="LR", help="discriminator learning rate")
    _add_loss_options(meta, content=defaults.content, losses=defaults.losses)
    meta.add_argument("--seed", type=int, default=defaults.seed, metavar="N", help="seed of weights, videos and episodes")
    meta.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, metavar="N", help="steps between checkpoints")
    meta.add_argument("--device", default=defaults.device, choices=("auto", "cpu", "cuda"), help="where to train (auto: CUDA if present)")
    meta.add_argument("--dry-run", action="store_true", help="check the inputs, print the resolved config and exit")
    meta.set_defaults(run=_meta)


def _meta(args: argparse.Namespace) -> int:
    from models.export import current_command
    from models.training.common import TrainingError
    from models.training.distributed import end_process, world_size_from_environment
    from models.training.train_fewshot_meta import check_meta_config, train_fewshot_meta

    try:
        content, losses = _weights(args, FewShotMetaConfig(run_dir="").content)
        config = FewShotMetaConfig(
            run_dir=str(args.run_dir),
            preset=args.preset,
            data="" if args.data is None else str(args.data),
            identities=args.identities,
            frames_per_video=args.frames_per_video,
            shots=args.shots,
            steps=args.steps,
            batch=args.batch,
            learning_rate=args.lr,
            discriminator_learning_rate=args.d_lr,
            content=content,
            losses=losses,
            allow_missing_nets=args.allow_missing_nets,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            device=args.device,
            command=current_command(),
        )
        check_meta_config(config)
        if args.dry_run:
            print(json.dumps({"train": asdict(config)}, indent=2))
            return 0
        summary = train_fewshot_meta(config)
    except (TrainingError, ValueError, OSError) as error:
        return end_process(refuse("fewshot-meta", error), distributed=world_size_from_environment() > 1)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
        print(
            f"meta-trained to step {summary.steps} in {summary.run_dir}; last losses {summary.final_losses}; "
            f"{summary.samples_per_second:.2f} episodes/s"
        )
    return end_process(0, distributed=world_size_from_environment() > 1)


def _add_finetune(commands: argparse._SubParsersAction) -> None:
    defaults = FewShotFinetuneConfig(checkpoint="", frames="", out="")
    finetune = commands.add_parser(
        "fewshot-finetune",
        help="a personal landmark-driven avatar from K frames (or one portrait) of a new face",
        description="Fine-tune the meta-learned few-shot talking heads on K frames of one person (a folder of images, a "
        "video or one image; faces found and framed by the server's crop) and write OUT.onnx with its model card: a "
        "landmark-driven model the server serves with drivers landmarks, image (crop auto) and arkit. --steps 0 writes the "
        "feed-forward model (no fine-tuning).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    finetune.add_argument("--checkpoint", type=Path, required=True, metavar="PATH", help="`megalive-train fewshot-meta` RUN/checkpoint.pt")
    finetune.add_argument("--frames", type=Path, required=True, metavar="PATH", help="a folder of images, a video or one image")
    finetune.add_argument("--out", type=Path, required=True, metavar="PATH", help="the personal model to write (.onnx; card beside it)")
    finetune.add_argument("--name", default="", metavar="NAME", help="the avatar's name (default: the output's stem)")
    finetune.add_argument("--k", dest="shots", type=int, default=defaults.shots, metavar="K", help="frames used (spread over the input)")
    finetune.add_argument("--steps", type=int, default=defaults.steps, metavar="N", help="fine-tuning steps (0: feed-forward)")
    finetune.add_argument("--batch", type=int, default=defaults.batch, metavar="N", help="frames per step")
    finetune.add_argument("--lr", type=float, default=defaults.learning_rate, metavar="LR", help="learning rate of G, ψ' and D")
    finetune.add_argument("--preset", default=None, metavar="NAME", help="refuse a checkpoint of another preset")
    _add_loss_options(finetune, content=defaults.content, losses=defaults.losses)
    finetune.add_argument("--threads", type=int, default=0, metavar="N", help="torch threads (0: torch's default)")
    finetune.add_argument("--seed", type=int, default=defaults.seed, metavar="N", help="seed of the frames drawn per step")
    finetune.add_argument("--dry-run", action="store_true", help="check the checkpoint and the frames, print the config and exit")
    finetune.set_defaults(run=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from models.checkpoints import load_fewshot
    from models.data.person_frames import PersonFramesError, read_person_frames
    from models.export import current_command
    from models.fewshot.export_personal import export_personal_model
    from models.training.common import TrainingError
    from models.training.finetune_fewshot import finetune_person
    from models.training.student_objective import load_loss_networks

    try:
        if args.out.suffix != ".onnx":
            raise ValueError(f"--out {args.out}: the personal model is an .onnx file")
        if args.shots < 1 or args.steps < 0 or args.batch < 1:
            raise ValueError("--k and --batch must be at least 1, --steps at least 0")
        content, losses = _weights(args, FewShotFinetuneConfig(checkpoint="", frames="", out="").content)
        config = FewShotFinetuneConfig(
            checkpoint=str(args.checkpoint),
            frames=str(args.frames),
            out=str(args.out),
            name=args.name or args.out.stem,
            shots=args.shots,
            steps=args.steps,
            batch=args.batch,
            learning_rate=args.lr,
            content=content,
            losses=losses,
            allow_missing_nets=args.allow_missing_nets,
            threads=args.threads,
            seed=args.seed,
            command=current_command(),
        )
        networks = load_fewshot(args.checkpoint, expect_preset=args.preset)
        person = read_person_frames(args.frames, count=args.shots, resolution=networks.config.resolution)
        if args.dry_run:
            print(json.dumps({"finetune": asdict(config), "preset": networks.preset, "frames": list(person.sources)}, indent=2))
            return 0
        if args.threads:
            torch.set_num_threads(args.threads)
        loss_networks = load_loss_networks(content, allow_missing=args.allow_missing_nets)
    except (TrainingError, PersonFramesError, ValueError, OSError) as error:
        return refuse("fewshot-finetune", error)
    size = networks.config.resolution
    frames = torch.from_numpy(person.crops).permute(0, 3, 1, 2).float() / 255  # K×S×S×3 uint8 -> K×3×S×S
    landmarks = torch.from_numpy(person.landmarks) * size  # crop units -> pixels
    with tqdm(total=config.steps, desc="fine-tuning", unit="step", disable=config.steps == 0) as bar:

        def on_step(step: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

        result = finetune_person(networks, frames=frames, landmarks=landmarks, config=config, loss_networks=loss_networks, on_step=on_step)
    try:
        report = export_personal_model(
            result, networks=networks, frames=person, config=config, out_path=args.out, loss_status=loss_networks.status
        )
    except (ValueError, OSError) as error:
        return refuse("fewshot-finetune", error)
    print(
        f"fine-tuned {config.steps} steps on {len(frames)} frames in {result.seconds:.1f} s (loss {result.first_loss:.4f} -> "
        f"{result.last_loss:.4f}); wrote {report.model_path} (parity {report.max_abs_error:.1e})"
    )
    return 0


def _add_preview(commands: argparse._SubParsersAction) -> None:
    preview = commands.add_parser(
        "fewshot-preview",
        help="a contact sheet of a personal few-shot model driven by held-out synthetic performers (landmarks and ARKit)",
        description="Drive an exported landmark-driven model with held-out SyntheticHeads clips: per frame the performer, the "
        "landmark image the model reads (the performer's points retargeted onto the person's neutral landmarks), the output, and "
        "the output for the same motion as ARKit curves. No ground truth exists for a real person: this is for looking at.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    preview.add_argument("--model", type=Path, required=True, metavar="PATH", help="the personal model (.onnx with its card)")
    preview.add_argument("--out", type=Path, required=True, metavar="PATH", help="the contact sheet to write (.png)")
    preview.add_argument("--clips", type=int, default=3, metavar="N", help="held-out performers (one clip each)")
    preview.add_argument("--frames", type=int, default=4, metavar="N", help="frames per clip")
    preview.add_argument("--dry-run", action="store_true", help="check the model and exit")
    preview.set_defaults(run=_preview)


def _preview(args: argparse.Namespace) -> int:
    from contract.model_card import ModelCardError, read_model_card
    from models.fewshot.preview import preview_sheet

    try:
        if args.clips < 1 or args.frames < 1:
            raise ValueError("--clips and --frames must be at least 1")
        if args.dry_run:
            card = read_model_card(args.model)
            print(json.dumps({"model": str(args.model), "landmark_driven": card.landmark_input is not None, "drivers": card.drivers}))
            return 0
        rows = preview_sheet(args.model, args.out, clips=args.clips, frames=args.frames)
    except (ModelCardError, ValueError, OSError) as error:
        return refuse("fewshot-preview", error)
    print(f"wrote {args.out}: {rows} frames (driver, landmark image, output from landmarks, output from ARKit curves)")
    return 0
