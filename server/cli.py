"""The runtime's commands of `megalive` (serve, keys, bench, avatars, demo); megalive/cli.py assembles them
with the hosts' commands, so that the server never imports the host packages."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server import __version__
from server.proxy_cli import add_proxy_command
from server.triton_export import add_export_triton

if TYPE_CHECKING:
    from contract.model_card import TeacherModel
    from server.service import ServiceConfig


def _add_serve(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve an avatar model over ZeroMQ",
        description="Serve an avatar model (ONNX + JSON sidecar) to MegaLive clients. Stops cleanly on Ctrl-C or SIGTERM. "
        "Exit status: 0 stopped, 1 the service failed, 2 bad options or an address that cannot be bound.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument(
        "--model",
        type=Path,
        default=None,
        metavar="PATH",
        help="avatar model .onnx (its .json sidecar beside it); default: the shipped model",
    )
    serve.add_argument(
        "--bind",
        default="tcp://127.0.0.1:5555",
        metavar="ADDR",
        help="ZeroMQ address: loopback, ipc:// in a private folder, or any host with --curve-secret and --allow",
    )
    serve.add_argument(
        "--curve-secret", type=Path, default=None, metavar="FILE", help="the server's CURVE .key_secret file (megalive keys new)"
    )
    serve.add_argument("--allow", type=Path, default=None, metavar="DIR", help="folder of allowed clients' CURVE public .key files")
    serve.add_argument(
        "--max-batch",
        type=_batch_option,
        default="auto",
        metavar="N",
        help="most frames of different sessions in one engine call [1-64]; auto: measured at start, up to "
        f"{AUTO_BATCH_LIMIT} (the smallest batch within 5%% of the best frames/s on this machine)",
    )
    serve.add_argument("--max-sessions", type=int, default=64, metavar="N", help="sessions held at once; more get a 'busy' error [1-1024]")
    serve.add_argument("--max-sessions-per-client", type=int, default=16, metavar="N", help="sessions one connection may hold [1-1024]")
    serve.add_argument(
        "--max-output",
        type=int,
        default=2048,
        metavar="SIDE",
        help="largest output texture, as the side of a square of the same pixel count [16-4096]",
    )
    serve.add_argument(
        "--idle-timeout", type=float, default=120.0, metavar="S", help="close a session after this many seconds without a message"
    )
    serve.add_argument(
        "--engine",
        default="onnxruntime",
        metavar="ENGINE",
        help="onnxruntime: run the graphs in this process | triton://HOST:PORT[/NAME]: on an NVIDIA Triton server's gRPC port, "
        "serving the repository `megalive export-triton` wrote from --model",
    )
    serve.add_argument(
        "--engine-timeout", type=float, default=10.0, metavar="S", help="a Triton call failing after this long fails its frames"
    )
    serve.add_argument("--providers", default="", metavar="LIST", help="comma-separated ONNX Runtime providers; empty: best available")
    serve.add_argument("--threads", type=int, default=0, metavar="N", help="ONNX Runtime intra-op threads; 0: one per core")
    serve.add_argument("--lanes", type=_lanes_option, default="auto", metavar="N", help=LANES_HELP)
    serve.add_argument("--spin-wait", action="store_true", help=SPIN_WAIT_HELP)
    serve.add_argument(
        "--bank",
        type=Path,
        default=None,
        metavar="FILE",
        help="where avatars enrolled on this server are kept (contract-v2 models); default: "
        "$XDG_DATA_HOME/megalive/<model>.avatars.npz (~/.local/share when unset)",
    )
    serve.add_argument("--no-enroll", dest="enroll", action="store_false", help="refuse `enroll` (no bank file is read or written)")
    serve.add_argument(
        "--refine-steps",
        type=int,
        default=120,
        metavar="N",
        help="few-shot refinement steps after each enrollment, in a separate process (needs torch); 0: none",
    )
    serve.add_argument("--refine-threads", type=int, default=0, metavar="N", help="torch threads of a refinement job; 0: torch's default")
    serve.add_argument(
        "--refine-teacher",
        type=Path,
        default=None,
        metavar="PT",
        help="refinement fits a frozen MegaPortraits teacher's reenactments of the enrollment frames (a `megalive-train base` "
        "checkpoint; checked at start) instead of the frames themselves",
    )
    serve.add_argument(
        "--refine-enhancer",
        type=Path,
        default=None,
        metavar="PT",
        help="with --refine-teacher: a `megalive-train enhancer` checkpoint of that teacher's preset (reenactments at twice its side)",
    )
    _add_signing_options(serve)  # `png` textures (the Blender bake's) then carry C2PA manifests
    serve.add_argument(
        "--no-watermark",
        dest="watermark",
        action="store_false",
        help="send textures without the provenance watermark (README: Provenance); reported in hello and stats",
    )
    serve.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    serve.set_defaults(run=_serve)


def default_bank_path(model_name: str) -> Path:
    """Where a model's enrolled avatars live unless --bank says otherwise: the user's data folder, not the model's
    (the shipped model's folder is the repository's, or a read-only install)."""
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data_home / "megalive" / f"{model_name}.avatars.npz"


SPIN_WAIT_HELP = "ONNX Runtime's threads busy-wait between operators (faster on idle cores, slower beside other work)"
LANES_HELP = (
    "CPU: a batch of 2+ frames is split across N copies of the graphs run side by side, the cores shared out between "
    "them [1-64]; 1: every batch on one session; auto: one per core (at most the batch)"
)
AUTO_BATCH_LIMIT = 8  # the largest batch `--max-batch auto` tries
AUTO_BATCH_SECONDS = 1.5  # how long `--max-batch auto` measures, all batch sizes together


def _lanes_option(text: str) -> int | None:
    """--lanes: "auto" (None: one per core) or a whole number, checked against its range where it is used."""
    value = _batch_option(text)
    return None if value == "auto" else int(value)


def _batch_option(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a whole number, got {text!r}") from None


def _serve_config(args: argparse.Namespace) -> ServiceConfig:
    """The service configuration from `serve`'s options; ValueError (one line) for a bad one."""
    from server.binding import check_bind_address
    from server.keys import load_server_keys
    from server.refinement import RefinementTarget
    from server.service import ServiceConfig

    ranges = {
        "--max-batch": (AUTO_BATCH_LIMIT if args.max_batch == "auto" else args.max_batch, 1, 64),
        "--max-sessions": (args.max_sessions, 1, 1024),
        "--max-sessions-per-client": (args.max_sessions_per_client, 1, 1024),
        "--max-output": (args.max_output, 16, 4096),
        "--refine-steps": (args.refine_steps, 0, 1000),
        "--refine-threads": (args.refine_threads, 0, 256),
        "--lanes": (1 if args.lanes is None else args.lanes, 1, 64),
    }
    for option, (value, low, high) in ranges.items():
        if not low <= value <= high:
            raise ValueError(f"{option} must be between {low} and {high}")
    if not args.idle_timeout > 0:
        raise ValueError("--idle-timeout must be a positive number of seconds")
    if (args.curve_secret is None) != (args.allow is None):
        raise ValueError("--curve-secret and --allow go together")
    if args.refine_teacher is not None and not args.enroll:
        raise ValueError("--refine-teacher refines enrolled avatars: not with --no-enroll")
    curve = None if args.curve_secret is None else load_server_keys(secret_file=args.curve_secret, allow_dir=args.allow)
    config = ServiceConfig(
        bind=args.bind,
        max_batch=AUTO_BATCH_LIMIT if args.max_batch == "auto" else args.max_batch,
        max_sessions=args.max_sessions,
        max_sessions_per_client=args.max_sessions_per_client,
        max_output_pixels=args.max_output**2,
        session_idle_s=args.idle_timeout,
        curve=curve,
        watermark=args.watermark,
        refine_steps=args.refine_steps,
        refine_threads=args.refine_threads,
        refine_target=RefinementTarget(teacher=args.refine_teacher, enhancer=args.refine_enhancer),
        signing=_signing_files(args),
    )
    check_bind_address(config.bind, curve=curve is not None)
    return config


def _teacher_words(teacher: TeacherModel | None) -> str:
    """What the serve line says of a teacher served directly ("" for other models)."""
    if teacher is None:
        return ""
    enhanced = " + enhancer" if teacher.enhancer else ""
    return f"MegaPortraits teacher {teacher.preset}{enhanced}, one-shot, pose: {teacher.pose_source}, "


def _serve(args: argparse.Namespace) -> int:
    from server.engine import Engine, ModelError, batch_candidates, best_batch, load_model_card, model_or_shipped
    from server.refinement import check_refinement_target
    from server.service import AvatarService
    from server.triton_engine import TritonEngine, parse_engine_address

    providers = [p for p in args.providers.split(",") if p] or None
    try:
        config = _serve_config(args)
        args.model = model_or_shipped(args.model)
        card = load_model_card(args.model)
        triton = None if args.engine == "onnxruntime" else parse_engine_address(args.engine)  # ValueError for a bad one
        if args.enroll:
            check_refinement_target(card, config.refine_target)  # a wrong teacher stops here, not in every job
        if args.dry_run:
            shown = {
                **asdict(config),
                "max_batch": config.max_batch if args.max_batch != "auto" else f"auto (measured at start, up to {config.max_batch})",
                "curve": None
                if config.curve is None
                else {"public": config.curve.public.decode(), "allow_dir": str(config.curve.allow_dir)},
            }
            print(
                json.dumps(
                    {
                        "service": shown,
                        "model": {**asdict(card), "model_path": str(card.model_path), "thumbnails_path": str(card.thumbnails_path)},
                        "providers": providers,
                        "engine": str(triton or args.engine),
                        "spin_wait": args.spin_wait,
                        "lanes": "auto" if args.lanes is None else args.lanes,
                        "bank": None if not args.enroll or card.enrollment is None else str(args.bank or default_bank_path(card.name)),
                    },
                    indent=2,
                    default=str,
                )
            )
            return 0
        bank = None
        if args.enroll and card.enrollment is not None:
            bank = args.bank if args.bank is not None else default_bank_path(card.name)
        if triton is None:
            engine = Engine(
                model_path=args.model,
                providers=providers,
                intra_op_threads=args.threads,
                max_batch=config.max_batch,
                bank_path=bank,
                spin_wait=args.spin_wait,
                lanes=args.lanes,
            )
        else:
            if providers is not None or args.threads or args.spin_wait or args.lanes is not None:
                raise ValueError(
                    "--providers, --threads, --lanes and --spin-wait are the in-process engine's; Triton's config.pbtxt places the graphs"
                )
            engine = TritonEngine(
                model_path=args.model, address=triton, timeout_s=args.engine_timeout, max_batch=config.max_batch, bank_path=bank
            )
        measured = None
        if triton is None and args.max_batch == "auto":  # Triton batches by its own config.pbtxt
            measured = engine.frames_per_second_by_batch(batch_candidates(config.max_batch), seconds=AUTO_BATCH_SECONDS)
            engine.max_batch = best_batch(measured)
            config = replace(config, max_batch=engine.max_batch)
        service = AvatarService(engine=engine, config=config)
        address = service.start()
    except (ModelError, ValueError) as error:  # BindRefused and KeyFileError are ValueErrors with one-line messages
        print(f"megalive serve: {error}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        service.stop(timeout_s=0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(
        f"megalive {__version__}: serving {card.name} ({engine.num_avatars} avatars, "
        f"{card.resolution[0]}×{card.resolution[1]}, {'landmark-driven, ' if engine.landmark_driven else ''}"
        f"{_teacher_words(card.teacher)}"
        f"{', '.join(engine.providers)}) on {address}"
        f"{' with CURVE' if config.curve else ''}",
        flush=True,
    )
    if measured is not None:
        rates = ", ".join(f"{batch}: {rate:.1f}" for batch, rate in measured.items())
        print(f"megalive: engine batch {engine.max_batch} (measured frames/s by batch: {rates})", flush=True)
    if engine.lane_layout.lanes > 1:
        layout = engine.lane_layout
        print(f"megalive: batches of 2+ frames split across {layout.lanes} lanes of {layout.threads_per_lane} thread(s)", flush=True)
    if service.watermark_state.startswith("unavailable"):
        print(
            f"megalive serve: textures carry no watermark: {service.watermark_state.removeprefix('unavailable: ')}",
            file=sys.stderr,
            flush=True,
        )
    elif not config.watermark:
        print("megalive: the provenance watermark is off (--no-watermark)", flush=True)
    if engine.bank_path is not None:
        print(f"megalive: enrolled avatars are kept in {engine.bank_path}", flush=True)
    if engine.bank_problem is not None:
        print(f"megalive serve: {engine.bank_problem}", file=sys.stderr, flush=True)
    while service.is_running():
        service.wait(0.5)
    if service.failure is not None:
        print(f"megalive serve: the service failed: {service.failure}", file=sys.stderr, flush=True)
        return 1
    print("megalive: stopped", flush=True)
    return 0


def _add_keys(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser(
        "keys",
        help="make CURVE keypairs for remote clients and servers",
        description="Remote clients reach a server only over CURVE. Make a keypair for the server and one per client; "
        "copy each client's public NAME.key into the server's --allow folder and give clients the server's public key.",
    )
    actions = keys.add_subparsers(title="actions", metavar="ACTION")
    new = actions.add_parser(
        "new",
        help="write NAME.key (public) and NAME.key_secret (secret, mode 0600) into DIR",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    new.add_argument("dir", type=Path, metavar="DIR", help="folder for the two files (made, mode 0700, when missing)")
    new.add_argument("--name", default="megalive", metavar="NAME", help="file name stem, e.g. server or the client's host name")
    new.set_defaults(run=_keys_new)
    signing = actions.add_parser(
        "signing",
        help="make an ES256 key and certificate chain for signing C2PA manifests (demo video, baked frames)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    signing.add_argument(
        "--out", type=Path, default=None, metavar="DIR", help="folder for the two files; default: ~/.config/megalive/signing"
    )
    signing.add_argument("--name", default="MegaLive user", metavar="NAME", help="organisation named in the certificates")
    signing.set_defaults(run=_keys_signing)


def _keys_new(args: argparse.Namespace) -> int:
    from server.keys import KeyFileError, new_keypair

    try:
        public, secret = new_keypair(args.dir, args.name)
    except KeyFileError as error:
        print(f"megalive keys: {error}", file=sys.stderr)
        return 2
    print(f"public key {public} (hand it out)\nsecret key {secret} (keep it; mode 0600)")
    return 0


def _keys_signing(args: argparse.Namespace) -> int:
    from server.manifest import ManifestError, default_signing_dir, make_signing_keys, unavailable

    if (problem := unavailable()) is not None:
        print(f"megalive keys signing: {problem}", file=sys.stderr)
        return 2
    try:
        cert, key = make_signing_keys(args.out or default_signing_dir(), name=args.name)
    except (ManifestError, OSError) as error:
        print(f"megalive keys signing: {error}", file=sys.stderr)
        return 2
    print(
        f"certificate chain {cert} (signing certificate + the local CA that issued it; untrusted by others)\nsigning key {key} (mode 0600)"
    )
    return 0


def _signing_files(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """The --signing-cert/--signing-key pair, else the default folder's pair when it is there, else None."""
    from server.manifest import CERT_FILE, KEY_FILE, default_signing_dir

    if (args.signing_cert is None) != (args.signing_key is None):
        raise ValueError("--signing-cert and --signing-key go together")
    if args.signing_cert is not None:
        return args.signing_cert, args.signing_key
    folder = default_signing_dir()
    return (folder / CERT_FILE, folder / KEY_FILE) if (folder / KEY_FILE).is_file() else None


def _add_signing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--signing-cert", type=Path, default=None, metavar="PEM", help="certificate chain (default: megalive keys signing's)"
    )
    parser.add_argument("--signing-key", type=Path, default=None, metavar="PEM", help="its private key (ES256)")


def _add_verify(commands: argparse._SubParsersAction) -> None:
    verify = commands.add_parser(
        "verify",
        help="report the provenance of PNG, JPEG and MP4 files: watermark found / C2PA manifest valid / neither",
        description="One line per file. Exit status 0 when every file carries provenance (a watermark or a valid manifest), 1 otherwise.",
    )
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    verify.add_argument("--json", action="store_true", help="print a JSON list instead of lines")
    verify.set_defaults(run=_verify)


def _verify(args: argparse.Namespace) -> int:
    from server.verify import verify_file

    verdicts = [verify_file(path) for path in args.files]
    if args.json:
        print(json.dumps([v.as_dict() for v in verdicts], indent=2))
    else:
        for verdict in verdicts:
            print(verdict.line())
    return 0 if all(v.has_provenance for v in verdicts) else 1


def _add_sign(commands: argparse._SubParsersAction) -> None:
    sign = commands.add_parser(
        "sign",
        help="add a C2PA manifest to baked PNG/JPEG/MP4 files of an avatar (in place)",
        description="Sign files MegaLive made with a manifest naming the tool, the avatar and its consent record's hash "
        "(shipped synthetic avatars: 'synthetic avatar, no person'). The avatar is read from the files' watermark "
        "unless --avatar names it.",
    )
    sign.add_argument("files", nargs="+", type=Path, metavar="FILE")
    sign.add_argument("--avatar", type=int, default=None, metavar="ID", help="the avatar's id (default: read from the watermark)")
    sign.add_argument("--model", type=Path, default=None, metavar="PATH", help="the model whose avatar it is; default: the shipped model")
    sign.add_argument("--bank", type=Path, default=None, metavar="FILE", help="the server's bank of enrolled avatars (see serve --bank)")
    _add_signing_options(sign)
    sign.set_defaults(run=_sign)


def _sign(args: argparse.Namespace) -> int:
    from server.engine import Engine, ModelError, model_or_shipped
    from server.manifest import AvatarNote, ManifestError, sign_file
    from server.verify import verify_file

    try:
        signing = _signing_files(args)
        if signing is None:
            raise ValueError("no signing key: run `megalive keys signing` or pass --signing-cert and --signing-key")
        model = model_or_shipped(args.model)
        engine = Engine(model_path=model, bank_path=args.bank)
        records = engine.avatar_records()
        for path in args.files:
            avatar = args.avatar if args.avatar is not None else verify_file(path).watermark
            if avatar is None or not 0 <= avatar < engine.num_avatars:
                raise ValueError(f"{path}: no avatar id (no MegaLive watermark found, and no --avatar); not signed")
            record = records[avatar] if avatar < len(records) else None
            consent = None if record is None or record.consent is None else record.consent.sha256
            note = AvatarNote(id=avatar, name=engine.avatar_names[avatar], consent_sha256=consent)
            sign_file(path, path, avatars=[note], cert_path=signing[0], key_path=signing[1])
            print(f"signed {path} (avatar {avatar} {note.name!r})")
    except (ManifestError, ModelError, ValueError, OSError) as error:
        print(f"megalive sign: {error}", file=sys.stderr)
        return 2
    return 0


def _add_bench(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure engine and server speed on this machine",
        description="Measure raw engine FPS, end-to-end FPS through a real server on loopback, round-trip latency "
        "and batched throughput with 1, 2 and 4 sessions (interleaved rounds). Prints one table; never passes or fails on a time.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    bench.add_argument("--model", type=Path, default=None, metavar="PATH", help="avatar model .onnx; default: the shipped model")
    bench.add_argument(
        "--seconds", type=float, default=10.0, metavar="S", help="length of each measured phase (sessions: S per count, over the rounds)"
    )
    bench.add_argument("--window", type=int, default=2, metavar="N", help="frames in flight per session")
    bench.add_argument(
        "--session-rounds",
        type=int,
        default=3,
        metavar="N",
        help="the 1-, 2- and 4-session phases, and the engine alone beside one session, in N interleaved rounds (each S / N "
        "long); their ratios are the rounds' median",
    )
    bench.add_argument("--threads", type=int, default=0, metavar="N", help="ONNX Runtime intra-op threads; 0: one per core")
    bench.add_argument(
        "--lanes", type=_lanes_option, default="auto", metavar="N", help=LANES_HELP + "; in the engine and the served server"
    )
    bench.add_argument("--spin-wait", action="store_true", help=SPIN_WAIT_HELP + " in the engine and the served server")
    bench.add_argument(
        "--provider", default=None, metavar="NAME", help="cpu | cuda | tensorrt (needs onnxruntime-gpu); default: the best installed"
    )
    bench.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    bench.set_defaults(run=_bench)


def _bench(args: argparse.Namespace) -> int:
    from server.bench import BenchConfig, run_bench
    from server.engine import ModelError, model_or_shipped

    if not 1 <= args.session_rounds <= 100:
        print(f"megalive bench: --session-rounds must be between 1 and 100, got {args.session_rounds}", file=sys.stderr)
        return 2
    if args.lanes is not None and not 1 <= args.lanes <= 64:
        print(f"megalive bench: --lanes must be between 1 and 64, got {args.lanes}", file=sys.stderr)
        return 2
    try:
        report = run_bench(
            BenchConfig(
                model_path=model_or_shipped(args.model),
                seconds=args.seconds,
                window=args.window,
                session_rounds=args.session_rounds,
                threads=args.threads,
                spin_wait=args.spin_wait,
                lanes=args.lanes,
                provider=args.provider,
            )
        )
    except ModelError as error:
        print(f"megalive bench: {error}", file=sys.stderr)
        return 2
    print(report.table())
    if args.json is not None:
        args.json.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


def _add_demo(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser(
        "demo",
        help="stream a driver clip through a local server to every avatar and write a video",
        description="Start a server on loopback with the model, stream the driver clip to every avatar, write out/demo.mp4 "
        "(each row: the driver and the avatars it drives) and out/demo.png, and print the speed achieved.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--model", type=Path, default=None, metavar="PATH", help="avatar model .onnx; default: the shipped model")
    demo.add_argument("--clip", type=Path, default=None, metavar="PATH", help="driver video or folder of frames; default: the shipped clip")
    demo.add_argument("--out", type=Path, default=Path("out"), metavar="DIR", help="folder for demo.mp4 and demo.png")
    demo.add_argument(
        "--pacing",
        default="every",
        metavar="MODE",
        help="every: render every frame | realtime: offer frames at the clip's rate, latest wins",
    )
    demo.add_argument("--avatars", type=int, default=8, metavar="N", help="most avatars to drive [1-64]")
    _add_signing_options(demo)
    demo.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    demo.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    from server.demo import DEFAULT_CLIP, DemoConfig, DemoError, run_demo
    from server.engine import ModelError, model_or_shipped

    try:
        model = model_or_shipped(args.model)
    except ModelError as error:
        print(f"megalive demo: {error}", file=sys.stderr)
        return 2
    try:
        signing = _signing_files(args)
    except ValueError as error:
        print(f"megalive demo: {error}", file=sys.stderr)
        return 2
    config = DemoConfig(
        model=model, clip=args.clip or DEFAULT_CLIP, out_dir=args.out, pacing=args.pacing, max_avatars=args.avatars, signing=signing
    )
    if args.dry_run:
        print(json.dumps(asdict(config), indent=2, default=str))
        return 0
    from server.manifest import ManifestError

    try:
        report = run_demo(config)
    except (DemoError, ModelError, ManifestError) as error:
        print(f"megalive demo: {error}", file=sys.stderr)
        return 2
    print(report.summary())
    if signing is None:
        print(f"{report.video} carries no C2PA manifest: no signing key (megalive keys signing, or --signing-cert/--signing-key)")
    else:
        print(f"{report.video} carries a C2PA manifest signed with {signing[0]}")
    return 0


def _add_avatars(commands: argparse._SubParsersAction) -> None:
    avatars = commands.add_parser(
        "avatars", help="list the avatars of a running server", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    avatars.add_argument("--server", default="tcp://127.0.0.1:5555", metavar="ADDR", help="server address")
    avatars.add_argument("--timeout", type=float, default=2.0, metavar="S", help="seconds to wait for the server")
    avatars.set_defaults(run=_avatars)


def _avatars(args: argparse.Namespace) -> int:
    from client.client import AvatarClient, ServerError, ServerGoneError

    try:
        with AvatarClient(address=args.server, timeout_s=args.timeout, name="megalive-cli") as client:
            info = client.hello()
            print(f"{info.server} at {args.server}")
            for avatar in client.avatars():
                thumbnail = "×".join(map(str, avatar.thumbnail.shape[:2])) if avatar.thumbnail else "-"
                print(f"  {avatar.id:>3}  {avatar.name:<24} model {avatar.model}  thumbnail {thumbnail}")
    except (ServerGoneError, ServerError) as error:
        print(f"megalive avatars: {error}", file=sys.stderr)
        return 2
    return 0


def _add_enroll(commands: argparse._SubParsersAction) -> None:
    enroll = commands.add_parser(
        "enroll",
        help="turn portraits of one person into an avatar on a running server",
        description="Send one to a few portraits (PNG or JPEG files, or a video: frames taken evenly through it) with a name "
        "and the consent statement of the person shown; the server finds the largest face in each, embeds them into a new "
        "avatar at once and keeps it in its bank, with the statement. Refused without a consent statement.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    enroll.add_argument("inputs", nargs="+", type=Path, metavar="IMAGE|VIDEO", help="portrait pictures, or one video")
    enroll.add_argument("--name", required=True, metavar="NAME", help="the avatar's name (unique on the server)")
    enroll.add_argument(
        "--consent", required=True, metavar="STATEMENT", help='the person\'s own words, e.g. "I, Ada Lee, agree to this avatar of my face"'
    )
    enroll.add_argument("--frames", type=int, default=8, metavar="K", help="frames taken from a video [1-8]")
    enroll.add_argument(
        "--refine-steps",
        type=int,
        default=None,
        metavar="N",
        help="few-shot refinement after the one-shot avatar (server side, in the background); default: the server's; 0: none",
    )
    enroll.add_argument("--no-wait", action="store_true", help="return once the one-shot avatar is made; do not follow its refinement")
    enroll.add_argument("--server", default="tcp://127.0.0.1:5555", metavar="ADDR", help="server address")
    enroll.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds to wait for the server")
    enroll.add_argument("--dry-run", action="store_true", help="read the inputs and print what would be sent")
    enroll.set_defaults(run=_enroll)


def _enroll(args: argparse.Namespace) -> int:
    from client.client import AvatarClient, ServerError, ServerGoneError
    from server.portraits import PortraitError, read_portraits

    try:
        portraits = read_portraits(args.inputs, video_frames=args.frames)
    except PortraitError as error:
        print(f"megalive enroll: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        sizes = ", ".join(f"{p.shape[1]}×{p.shape[0]}" for p in portraits)
        print(
            json.dumps(
                {"server": args.server, "name": args.name, "consent": args.consent, "portraits": sizes}, indent=2, ensure_ascii=False
            )
        )
        return 0
    try:
        with AvatarClient(address=args.server, timeout_s=args.timeout, name="megalive-enroll") as client:
            client.hello()
            enrolled = client.enroll(name=args.name, consent=args.consent, portraits=portraits, refine_steps=args.refine_steps)
            print(f"enrolled avatar {enrolled.avatar} {enrolled.name!r} from {enrolled.frames} portrait(s) in {enrolled.seconds:.2f} s")
            for note in enrolled.notes:
                print(f"  note: {note}")
            if enrolled.refinement_unavailable:
                print(f"  not refined: {enrolled.refinement_unavailable}")
            if enrolled.refinement_job is not None and not args.no_wait:
                return _follow_refinement(client, enrolled.refinement_job)
    except (ServerGoneError, ServerError) as error:
        print(f"megalive enroll: {error}", file=sys.stderr)
        return 2
    return 0


def _follow_refinement(client: Any, job_id: int) -> int:
    """A progress bar of the server's refinement job until it ends; Ctrl-C cancels it (the one-shot avatar stays)."""
    from tqdm import tqdm

    job: dict[str, Any] = {}
    with tqdm(desc="refining", unit="step") as bar:
        try:
            for job in client.follow_refinement(job_id):
                bar.total = job.get("steps") or bar.total
                bar.n = int(job.get("step") or 0)
                if job.get("loss") is not None:
                    bar.set_postfix(loss=f"{job['loss']:.4f}")
                bar.refresh()
        except KeyboardInterrupt:
            cancelled = client.cancel_refinement(job_id)
            print(f"refinement {'cancelled' if cancelled else 'had already ended'}; the one-shot avatar stays")
            return 130
    if job["state"] == "done":
        print(f"refined in {job.get('seconds') or 0:.0f} s ({job.get('steps')} steps): the avatar now draws its refined identity")
        return 0
    why = job.get("error") or "no reason given"
    print(f"megalive enroll: refinement {job['state']}: {why}; the one-shot avatar stays", file=sys.stderr)
    return 1


def add_runtime_commands(commands: argparse._SubParsersAction) -> None:
    """The runtime's commands, for the one `megalive` parser (megalive/cli.py)."""
    _add_serve(commands)
    _add_keys(commands)
    _add_bench(commands)
    _add_avatars(commands)
    _add_enroll(commands)
    _add_demo(commands)
    _add_verify(commands)
    _add_sign(commands)
    add_proxy_command(commands)
    add_export_triton(commands)
