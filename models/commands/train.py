"""`megalive-train` training commands: student, embedder, landmark-solver, base, regressor."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from models.commands.common import refuse
from models.losses import LossWeights
from models.training.embedder_config import EmbedderTrainConfig
from models.training.objective_weights import ObjectiveWeights


def add_commands(commands: argparse._SubParsersAction) -> None:
    _add_student(commands)
    _add_embedder(commands)
    _add_landmark_solver(commands)
    _add_head_pose(commands)
    _add_base(commands)
    _add_regressor(commands)


def _add_student(commands: argparse._SubParsersAction) -> None:
    student = commands.add_parser(
        "student",
        help="train the real-time student in cross-driving mode",
        description="Train the MegaPortraits student on a paired dataset (megalive-train synth). Resumes from RUN/checkpoint.pt "
        "when it exists. Losses: L1 (weighted up on eyes and mouth) + SSIM + mask + perceptual (EfficientNet-Lite0) + face "
        "(dlib ResNet) + PatchGAN hinge and feature matching; the two pretrained networks come from `make nets`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    student.add_argument("--data", type=Path, required=True, metavar="DIR", help="paired dataset folder")
    student.add_argument(
        "--run", dest="run_dir", type=Path, required=True, metavar="DIR", help="run folder (config, checkpoint, log, samples)"
    )
    student.add_argument("--preset", default="cpu256", metavar="NAME", help="student preset (tiny, cpu256, cpu512)")
    student.add_argument(
        "--init",
        default=None,
        metavar="PATH",
        help="a new run starts from this student checkpoint's weights where they fit (e.g. cpu256 into cpu512; same avatars)",
    )
    student.add_argument(
        "--target", default="renderer", metavar="SRC", help="target source: renderer (ground truth) | teacher (distillation from --teacher)"
    )
    student.add_argument(
        "--teacher", default=None, metavar="PATH", help="`megalive-train base` RUN/checkpoint.pt whose outputs are the targets"
    )
    student.add_argument("--steps", type=int, default=3000, metavar="N", help="optimiser steps in total (resume counts on)")
    student.add_argument("--batch", type=int, default=8, metavar="N", help="pairs per step")
    student.add_argument("--lr", type=float, default=1e-3, metavar="LR", help="initial learning rate (cosine to 1e-5)")
    student.add_argument("--jitter", type=float, default=0.3, metavar="X", help="driver colour jitter strength [0-1]")
    student.add_argument("--warp", type=float, default=0.04, metavar="X", help="driver affine warp strength [0-0.2]")
    student.add_argument("--seed", type=int, default=0, metavar="N", help="seed of weights, sampling and augmentation")
    student.add_argument("--workers", type=int, default=1, metavar="N", help="data loader processes")
    student.add_argument("--checkpoint-every", type=int, default=200, metavar="N", help="steps between checkpoints")
    weights = ObjectiveWeights()
    student.add_argument("--region-weight", type=float, default=weights.region, metavar="W", help="extra L1 weight on eyes and mouth")
    student.add_argument(
        "--perceptual-weight", type=float, default=weights.perceptual, metavar="W", help="perceptual (EfficientNet-Lite0) λ; 0: off"
    )
    student.add_argument("--face-weight", type=float, default=weights.face, metavar="W", help="face (dlib ResNet) λ; 0: off")
    student.add_argument("--adversarial-weight", type=float, default=weights.adversarial, metavar="W", help="PatchGAN hinge λ")
    student.add_argument("--matching-weight", type=float, default=weights.feature_matching, metavar="W", help="feature matching λ")
    student.add_argument(
        "--allow-missing-nets", action="store_true", help="train without a loss network whose weights are missing (recorded in the run)"
    )
    student.add_argument(
        "--perceptual-size", type=int, default=128, metavar="PX", help="frames resized to this before the perceptual network (0: full)"
    )
    student.add_argument("--discriminator", default="small", choices=("small", "large"), help="the PatchGAN's width")
    student.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to train (auto: CUDA if present)")
    student.add_argument("--no-amp", dest="amp", action="store_false", help="full precision on CUDA (default: bfloat16 autocast)")
    student.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    student.set_defaults(run=_student)


def _student(args: argparse.Namespace) -> int:
    from models.data.paired import DatasetError
    from models.export import current_command
    from models.megaportraits.student import student_config
    from models.training.common import TrainingError
    from models.training.train_student import StudentTrainConfig, check_student_config, train_student

    try:
        objective = ObjectiveWeights(
            region=args.region_weight,
            perceptual=args.perceptual_weight,
            face=args.face_weight,
            adversarial=args.adversarial_weight,
            feature_matching=args.matching_weight,
        )
    except ValueError as error:
        return refuse("student", error)
    config = StudentTrainConfig(
        data=str(args.data),
        run_dir=str(args.run_dir),
        preset=args.preset,
        target=args.target,
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.lr,
        colour_jitter=args.jitter,
        warp=args.warp,
        seed=args.seed,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        objective=objective,
        perceptual_size=args.perceptual_size,
        discriminator=args.discriminator,
        allow_missing_nets=args.allow_missing_nets,
        device=args.device,
        amp=args.amp,
        teacher=args.teacher,
        init=args.init,
        command=current_command(),
    )
    try:
        check_student_config(config)
        model_config = student_config(config.preset, num_avatars=1)
        if args.dry_run:
            print(json.dumps({"train": asdict(config), "model (avatars from the dataset)": asdict(model_config)}, indent=2))
            return 0
        summary = train_student(config)
    except (TrainingError, DatasetError, ValueError) as error:
        return refuse("student", error)
    print(
        f"trained to step {summary.steps} in {summary.run_dir}; last losses {summary.final_losses}; "
        f"{summary.samples_per_second:.1f} samples/s"
    )
    return 0


def _add_embedder(commands: argparse._SubParsersAction) -> None:
    embedder = commands.add_parser(
        "embedder",
        help="meta-learn the identity embedder with a trained student (portraits -> avatars in one pass)",
        description="Start from a `megalive-train student` checkpoint and train an identity embedder (K frames -> identity "
        "tensor) with it, on new SyntheticHeads identities rendered on the fly beside the student's own avatars' pairs (which "
        "keep training, so they keep their quality). Resumes from RUN/checkpoint.pt when it exists. The student's objective "
        "without the discriminator. `megalive-train export` writes the enrollment graphs from the result.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = EmbedderTrainConfig(student="", data="", run_dir="")
    embedder.add_argument("--student", type=Path, required=True, metavar="PATH", help="the student's RUN/checkpoint.pt to start from")
    embedder.add_argument("--data", type=Path, required=True, metavar="DIR", help="the student's paired dataset (its avatars)")
    embedder.add_argument(
        "--run", dest="run_dir", type=Path, required=True, metavar="DIR", help="run folder (config, checkpoint, log, samples)"
    )
    embedder.add_argument("--preset", default=defaults.preset, metavar="NAME", help="the student's preset (tiny, cpu256)")
    embedder.add_argument("--steps", type=int, default=defaults.steps, metavar="N", help="optimiser steps in total (resume counts on)")
    embedder.add_argument(
        "--native-batch", type=int, default=defaults.native_batch, metavar="N", help="the student's avatars' pairs per step"
    )
    embedder.add_argument("--new-batch", type=int, default=defaults.new_batch, metavar="N", help="new identities per step")
    embedder.add_argument("--shots", type=int, default=defaults.shots, metavar="K", help="frames per new identity (a step uses 1..K)")
    embedder.add_argument("--lr", type=float, default=defaults.learning_rate, metavar="LR", help="the student's learning rate")
    embedder.add_argument("--embedder-lr", type=float, default=defaults.embedder_learning_rate, metavar="LR", help="the embedder's")
    embedder.add_argument("--seed", type=int, default=defaults.seed, metavar="N", help="seed of weights, identities and augmentation")
    embedder.add_argument("--workers", type=int, default=defaults.workers, metavar="N", help="processes rendering the new identities")
    embedder.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every, metavar="N", help="steps between checkpoints")
    embedder.add_argument(
        "--allow-missing-nets", action="store_true", help="train without a loss network whose weights are missing (recorded in the run)"
    )
    embedder.add_argument("--dry-run", action="store_true", help="check the inputs, print the resolved config and exit")
    embedder.set_defaults(run=_embedder)


def _embedder(args: argparse.Namespace) -> int:
    from models.data.paired import DatasetError
    from models.export import current_command
    from models.training.common import TrainingError
    from models.training.train_embedder import check_embedder_config, train_embedder

    config = EmbedderTrainConfig(
        student=str(args.student),
        data=str(args.data),
        run_dir=str(args.run_dir),
        preset=args.preset,
        steps=args.steps,
        native_batch=args.native_batch,
        new_batch=args.new_batch,
        shots=args.shots,
        learning_rate=args.lr,
        embedder_learning_rate=args.embedder_lr,
        seed=args.seed,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        allow_missing_nets=args.allow_missing_nets,
        command=current_command(),
    )
    try:
        check_embedder_config(config)
        if args.dry_run:
            print(json.dumps({"train": asdict(config)}, indent=2))
            return 0
        summary = train_embedder(config)
    except (TrainingError, DatasetError, ValueError) as error:
        return refuse("embedder", error)
    print(
        f"trained to step {summary.steps} in {summary.run_dir}; last losses {summary.final_losses}; "
        f"{summary.samples_per_second:.1f} samples/s"
    )
    return 0


def _add_landmark_solver(commands: argparse._SubParsersAction) -> None:
    solver = commands.add_parser(
        "landmark-solver",
        help="train the landmark solver (68 points -> the ARKit curves and framing the capture puppet draws them with)",
        description="Train the small MLP that turns a `landmarks` frame into the puppet's curves and framing "
        "(models/megaportraits/puppet.py), on the renderer's exact landmark / motion pairs over random identities; no "
        "picture is drawn, so it trains in minutes. Its held-out errors, beside answering zero and the mean, are printed and stored. "
        "`megalive-train export --landmark-solver PATH` adds the landmarks driver.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    solver.add_argument("--out", type=Path, required=True, metavar="PATH", help="checkpoint to write (.pt)")
    solver.add_argument("--motions", type=int, default=40000, metavar="N", help="the motion pool (half of it talking-head clip frames)")
    solver.add_argument("--steps", type=int, default=6000, metavar="N", help="optimiser steps")
    solver.add_argument("--batch", type=int, default=256, metavar="N", help="landmark sets per step")
    solver.add_argument("--lr", type=float, default=1e-3, metavar="LR", help="initial learning rate (cosine to 1/100 of it)")
    solver.add_argument("--seed", type=int, default=11, metavar="N", help="seed of identities, motions, weights and batches")
    solver.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    solver.set_defaults(run=_landmark_solver)


def _landmark_solver(args: argparse.Namespace) -> int:
    from models.export import current_command
    from models.megaportraits.puppet import LandmarkSolverConfig
    from models.training.common import TrainingError
    from models.training.train_landmark_solver import LandmarkSolverTrainConfig, check_solver_config, train_landmark_solver

    config = LandmarkSolverTrainConfig(
        out=str(args.out),
        motions=args.motions,
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.lr,
        seed=args.seed,
        command=current_command(),
    )
    try:
        check_solver_config(config)
        if args.dry_run:
            print(json.dumps({"train": asdict(config), "model": asdict(LandmarkSolverConfig())}, indent=2))
            return 0
        summary = train_landmark_solver(config)
    except (TrainingError, OSError) as error:
        return refuse("landmark-solver", error)
    print(summary.describe())
    return 0


def _add_head_pose(commands: argparse._SubParsersAction) -> None:
    head_pose = commands.add_parser(
        "head-pose",
        help="pretrain the teacher's frozen head-pose network (scale, rotation, translation) on SyntheticHeads renders",
        description="Pretrain the head-pose network the teacher reads its pose from (`megalive-train base --pose-network`), as the "
        "paper's pretrained pose estimator: full-frame renders with their exact pose labels, augmented as the teacher's drivers "
        "(colour jitter, thin-plate-spline warp, blur). Its errors on held-out renders (degrees) are printed and stored.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    head_pose.add_argument("--out", type=Path, required=True, metavar="PATH", help="checkpoint to write (.pt)")
    head_pose.add_argument("--preset", default="cpu", metavar="NAME", help="network: tiny (tests), cpu, resnet18 (the follow-up code's)")
    head_pose.add_argument("--resolution", type=int, default=128, metavar="PX", help="render size: the teacher's image size")
    head_pose.add_argument("--renders", type=int, default=8000, metavar="N", help="training images, rendered once")
    head_pose.add_argument(
        "--videos", default=None, metavar="DIR", help="also a `megalive-train prepare` folder: real frames with their solved poses"
    )
    head_pose.add_argument("--real-share", type=float, default=0.5, metavar="X", help="with --videos: share of each batch from it")
    head_pose.add_argument("--steps", type=int, default=1500, metavar="N", help="optimiser steps")
    head_pose.add_argument("--batch", type=int, default=64, metavar="N", help="images per step")
    head_pose.add_argument("--lr", type=float, default=2e-3, metavar="LR", help="initial learning rate (cosine to 1/100 of it)")
    head_pose.add_argument("--held-out", type=int, default=512, metavar="N", help="fresh renders per held-out measurement")
    head_pose.add_argument("--seed", type=int, default=11, metavar="N", help="seed of identities, motions, weights and batches")
    head_pose.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    head_pose.set_defaults(run=_head_pose)


def _head_pose(args: argparse.Namespace) -> int:
    from models.export import current_command
    from models.megaportraits.head_pose import head_pose_config
    from models.training.common import TrainingError
    from models.training.train_head_pose import HeadPoseTrainConfig, check_head_pose_config, train_head_pose

    config = HeadPoseTrainConfig(
        out=str(args.out), preset=args.preset, render_resolution=args.resolution, renders=args.renders, steps=args.steps,
        batch_size=args.batch, learning_rate=args.lr, held_out=args.held_out, seed=args.seed, videos=args.videos,
        real_share=args.real_share, command=current_command(),
    )  # fmt: skip
    try:
        check_head_pose_config(config)
        if args.dry_run:
            print(json.dumps({"train": asdict(config), "model": asdict(head_pose_config(config.preset))}, indent=2))
            return 0
        summary = train_head_pose(config)
    except (TrainingError, OSError) as error:
        return refuse("head-pose", error)
    print(summary.describe())
    return 0


def _add_base(commands: argparse._SubParsersAction) -> None:
    base = commands.add_parser(
        "base",
        help="train the MegaPortraits base model (the teacher), plain or under torchrun (DDP)",
        description="Train the MegaPortraits base model on self- and cross-reenactment pairs. One process, or "
        "`torchrun --nproc_per_node=N -m models.cli base ...` (DDP: gloo on CPU, nccl on GPU; --batch is per process). "
        "Resumes exactly from RUN/checkpoint.pt when it exists. With --pose-network the head pose comes from a frozen, pretrained "
        "network (the paper's way; `megalive-train head-pose` makes one), else E_mtn learns it. Losses on the foreground: L1, mask, "
        "perceptual (EfficientNet-Lite0) λ 20 and face (dlib ResNet) λ 4 from `make nets` (gaze: absent), PatchGAN hinge, feature "
        "matching λ 40, contrastive λ 2.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    base.add_argument("--preset", default="cpu128", metavar="NAME", help="model preset: tiny (64 px, tests), cpu128, paper256, paper512")
    base.add_argument(
        "--data",
        default="synthetic",
        metavar="SRC",
        help="synthetic (SyntheticHeads, on the fly) | a `megalive-train prepare` folder (real video, resized to the preset)",
    )
    base.add_argument(
        "--run",
        "--run-dir",
        dest="run_dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="run folder (config, checkpoint, log, samples, tensorboard); under torchrun write --run-dir "
        "(torchrun's parser reads --run as its own --run-path)",
    )
    base.add_argument("--steps", type=int, default=20_000, metavar="N", help="optimiser steps in total (resume counts on)")
    base.add_argument("--batch", type=int, default=2, metavar="N", help="samples per process and step (each: a self- and a cross-pair)")
    base.add_argument("--lr", type=float, default=2e-4, metavar="LR", help="initial learning rate of both networks (cosine to 1e-6)")
    base.add_argument("--jitter", type=float, default=0.5, metavar="X", help="driver colour jitter strength [0-1]")
    base.add_argument("--warp", type=float, default=0.06, metavar="X", help="driver thin-plate-spline displacement [0-0.2]")
    base.add_argument("--identities", type=int, default=1000, metavar="N", help="synthetic identity pool [2-]")
    base.add_argument(
        "--open-mouth-share",
        type=float,
        default=0.0,
        metavar="X",
        help="share of synthetic samples drawn as a closed-mouth source with open-mouth drivers [0-1]",
    )
    base.add_argument("--seed", type=int, default=0, metavar="N", help="seed of weights, data order and augmentation")
    base.add_argument("--workers", type=int, default=1, metavar="N", help="data loader processes per training process")
    base.add_argument("--checkpoint-every", type=int, default=500, metavar="N", help="steps between checkpoints (and samples.png)")
    base.add_argument("--log-every", type=int, default=25, metavar="N", help="steps between log lines and TensorBoard scalars")
    base.add_argument(
        "--pose-network", default=None, metavar="PATH", help="`megalive-train head-pose` checkpoint: frozen head pose (default: learned)"
    )
    base.add_argument(
        "--feature-crops",
        action="store_true",
        help="E_mtn's expression also reads eye and mouth crops placed by the frozen head pose (needs --pose-network)",
    )
    base.add_argument(
        "--decoder-expression",
        action="store_true",
        help="G2D's norms also read the driver's expression z, to draw what warps cannot move (an open mouth's inside)",
    )
    base.add_argument("--perceptual-weight", type=float, default=20.0, metavar="W", help="perceptual (EfficientNet-Lite0) λ; 0: off")
    base.add_argument("--face-weight", type=float, default=4.0, metavar="W", help="face (dlib ResNet) λ; 0: off")
    base.add_argument(
        "--region-weight", type=float, default=0.0, metavar="W", help="λ of the L1 inside the target's eye and mouth boxes; 0: off"
    )
    base.add_argument(
        "--adversarial-weight", type=float, default=LossWeights.adversarial, metavar="W", help="λ of the PatchGAN hinge (paper: 1); 0: off"
    )
    base.add_argument(
        "--feature-matching-weight",
        type=float,
        default=LossWeights.feature_matching,
        metavar="W",
        help="λ of the discriminator feature matching (paper: 40); 0: off",
    )
    base.add_argument(
        "--cycle-weight", type=float, default=LossWeights.cycle, metavar="W", help="λ of the contrastive loss on z (paper: 2); 0: off"
    )
    base.add_argument(
        "--allow-missing-nets", action="store_true", help="train without a loss network whose weights are missing (recorded in the run)"
    )
    base.add_argument("--init", default=None, metavar="PATH", help="start from this base checkpoint's weights (same preset)")
    base.add_argument("--device", default="auto", metavar="DEV", help="auto | cpu | cuda (under torchrun: one GPU per process)")
    base.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bfloat16, else float16 with scaling)")
    base.add_argument(
        "--stop-at", type=int, default=None, metavar="N", help="end this invocation at step N (the schedule still spans --steps)"
    )
    base.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    base.set_defaults(run=_base)


def _base(args: argparse.Namespace) -> int:
    from models.export import current_command
    from models.megaportraits.base import base_config
    from models.training.common import TrainingError
    from models.training.distributed import end_process, resolve_device, world_size_from_environment
    from models.training.train_base import (
        BaseTrainConfig,
        check_base_config,
        resolved_config,
        train_base,
        training_data,
    )

    config = BaseTrainConfig(
        run_dir=str(args.run_dir),
        preset=args.preset,
        data=args.data,
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.lr,
        colour_jitter=args.jitter,
        warp=args.warp,
        identities=args.identities,
        open_mouth_share=args.open_mouth_share,
        seed=args.seed,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        perceptual_weight=args.perceptual_weight,
        face_weight=args.face_weight,
        region_weight=args.region_weight,
        adversarial_weight=args.adversarial_weight,
        feature_matching_weight=args.feature_matching_weight,
        cycle_weight=args.cycle_weight,
        allow_missing_nets=args.allow_missing_nets,
        pose_network=args.pose_network,
        feature_crops=args.feature_crops,
        decoder_expression=args.decoder_expression,
        init=args.init,
        device=args.device,
        amp=args.amp,
        command=current_command(),
    )
    try:
        check_base_config(config)
        if args.dry_run:
            device = resolve_device(config.device)
            data = training_data(config, resolution=base_config(config.preset).resolution).describe()
            networks = {"perceptual": "not loaded (--dry-run)", "face": "not loaded (--dry-run)"}
            resolved = resolved_config(config, world_size=world_size_from_environment(), device=device, data=data, networks=networks)
            print(json.dumps(resolved, indent=2))
            return 0
        summary = train_base(config, stop_at=args.stop_at)
    except (TrainingError, ValueError, OSError) as error:
        return end_process(refuse("base", error), distributed=world_size_from_environment() > 1)
    if summary.rank == 0:
        agreement = "" if summary.world_size == 1 else ("; all processes agree" if summary.replicas_agree else "; PROCESSES DIFFER")
        print(
            f"trained the base model to step {summary.steps} in {summary.run_dir} on {summary.world_size} process(es); "
            f"last losses {summary.final_losses}; {summary.samples_per_second:.2f} samples/s; weights {summary.weights_digest}{agreement}"
        )
    return end_process(0, distributed=summary.world_size > 1)


def _add_regressor(commands: argparse._SubParsersAction) -> None:
    regressor = commands.add_parser(
        "regressor",
        help="train the benchmark's parameter regressor (image -> pose, ARKit controls, identity) on SyntheticHeads renders",
        description="Train the small network `megalive-train eval --regressor` measures motion and identity errors with. "
        "It reads foregrounds on white: pose, identity and its own 68 landmarks at 64 px, the ARKit controls from eye and mouth "
        "crops it cuts by those landmarks (up to 128 px); its held-out errors, beside answering zero, are printed and stored.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    regressor.add_argument("--out", type=Path, required=True, metavar="PATH", help="checkpoint to write (.pt)")
    regressor.add_argument("--renders", type=int, default=6000, metavar="N", help="training images, rendered once at 128 px")
    regressor.add_argument("--steps", type=int, default=3000, metavar="N", help="optimiser steps")
    regressor.add_argument("--batch", type=int, default=64, metavar="N", help="images per step")
    regressor.add_argument("--lr", type=float, default=2e-3, metavar="LR", help="initial learning rate (cosine to 1/100 of it)")
    regressor.add_argument("--seed", type=int, default=7, metavar="N", help="seed of identities, motions, weights and batches")
    regressor.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    regressor.set_defaults(run=_regressor)


def _regressor(args: argparse.Namespace) -> int:
    from models.export import current_command
    from models.nets.parameter_regressor import RegressorConfig
    from models.training.common import TrainingError
    from models.training.train_regressor import RegressorTrainConfig, train_regressor

    config = RegressorTrainConfig(
        out=str(args.out),
        renders=args.renders,
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=args.lr,
        seed=args.seed,
        command=current_command(),
    )
    if args.dry_run:
        print(json.dumps({"train": asdict(config), "model": asdict(RegressorConfig())}, indent=2))
        return 0
    try:
        summary = train_regressor(config)
    except (TrainingError, OSError) as error:
        return refuse("regressor", error)
    print(summary.describe())
    return 0
