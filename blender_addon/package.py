"""`megalive addon build`: the Blender extension zip (DESIGN §7).

The zip holds ``blender_addon/`` (no tests, no caches), byte-identical copies of the ``client/`` and
``contract/`` packages under ``vendor/`` (client/vendor.py lists them; one source of truth stays in the
repository), and cp311 wheels of pyzmq and msgpack, plus the py3 wheels of imageio-ffmpeg
(pure Python + a bundled ffmpeg per platform, for the movie clip driver), for every platform Blender ships on. The
manifest's ``wheels`` and ``platforms`` lists are written from the wheels actually gathered.

Wheels come from ``pip download`` (pinned to the versions installed here, so the zip runs the
client the tests ran) or, with ``offline_wheels_dir``, from a folder. The zip is written under a
temporary name and renamed, so an interrupted build never leaves a broken zip under the final name.

It lives beside the extension it builds but is not part of it: the zip leaves this file out, and
it runs where the zip is built (it imports client/vendor.py, which Blender never sees). Imports
neither torch nor models (DESIGN §1).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from client.vendor import write_vendor_package

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
ADDON_SOURCE_DIR = REPO_ROOT / "blender_addon"
MANIFEST_NAME = "blender_manifest.toml"
WHEEL_PACKAGES = ("pyzmq", "msgpack", "imageio-ffmpeg")  # distribution names, as pip and wheel file names spell them

# Blender platform -> the pip --platform tags that fetch a wheel for it. macOS wheels of pyzmq are
# universal2, so the arm64 and x64 downloads may resolve to the same file; imageio-ffmpeg's arm64
# wheel (its bundled ffmpeg) is tagged macOS 12, hence the second arm64 tag.
PIP_PLATFORMS: dict[str, tuple[str, ...]] = {
    "linux-x64": ("manylinux_2_28_x86_64",),
    "windows-x64": ("win_amd64",),
    "macos-arm64": ("macosx_11_0_arm64", "macosx_12_0_arm64"),
    "macos-x64": ("macosx_10_15_x86_64",),
}
# What the zip leaves out of blender_addon/: caches, build leftovers, and this builder itself.
SKIPPED_NAMES = shutil.ignore_patterns(
    "__pycache__", "*.pyc", "*.pyo", ".pytest_cache", "vendor", "wheels", "*.zip", "*.partial", Path(__file__).name
)


class AddonBuildError(RuntimeError):
    """The extension cannot be built as asked (missing wheels, pip failed, bad manifest template)."""


@dataclass(frozen=True)
class AddonBuildConfig:
    out_dir: Path
    offline_wheels_dir: Path | None = None
    python_version: str = "3.11"  # Blender 4.2-5.0 embed CPython 3.11


@dataclass(frozen=True)
class GatheredWheels:
    files: tuple[Path, ...]
    platforms: tuple[str, ...]  # Blender platforms every package has a wheel for
    missing: dict[str, tuple[str, ...]]  # package -> Blender platforms without a wheel


def private_blender_home() -> Path:
    """Point HOME and Blender's user folders at a fresh temporary folder. Call it before `import bpy`
    (tests, benchmarks): the PyPI bpy module reads and writes the user's config and extensions there."""
    home = Path(tempfile.mkdtemp(prefix="megalive-blender-home-"))
    os.environ["HOME"] = str(home)
    for variable, folder in (
        ("BLENDER_USER_RESOURCES", "resources"),
        ("BLENDER_USER_CONFIG", "config"),
        ("BLENDER_USER_SCRIPTS", "scripts"),
        ("BLENDER_USER_EXTENSIONS", "extensions"),
        ("BLENDER_USER_DATAFILES", "datafiles"),
    ):
        os.environ[variable] = str(home / folder)
    return home


def repack_installed_wheel(distribution: str, out_dir: Path, *, compresslevel: int | None = None) -> Path:
    """A wheel file rebuilt from an installed distribution (its RECORD lists every file), so an
    offline build has real cp311 wheels without any network. Same files, same tag as installed."""
    dist = importlib.metadata.distribution(distribution)
    wheel_info = dist.read_text("WHEEL") or ""
    tag = next(line.split(":", 1)[1].strip() for line in wheel_info.splitlines() if line.startswith("Tag:"))
    name = dist.metadata["Name"].replace("-", "_")
    path = out_dir / f"{name}-{dist.version}-{tag}.whl"
    site_packages = Path(dist.locate_file(""))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as archive:
        for entry in dist.files or ():
            relative = entry.as_posix()
            source = site_packages / entry
            if relative.startswith("..") or "__pycache__" in relative or not source.is_file():
                continue  # scripts outside site-packages and byte code are not part of the wheel we need
            archive.write(source, relative)  # keeps the Unix mode (Blender's installer drops it anyway)
    return path


def blender_platforms_of_wheel(filename: str) -> set[str]:
    """Blender platforms a cp311 (or py3, e.g. imageio-ffmpeg's) wheel runs on, read from its platform tag(s);
    empty when it is neither."""
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6) or not {"cp311", "py3"} & set(parts[-3].split(".")):
        return set()
    platforms: set[str] = set()
    for tag in parts[-1].split("."):  # compressed tag sets: manylinux2014_x86_64.manylinux_2_17_x86_64
        if re.fullmatch(r"(many|musl)?linux.*_x86_64", tag):
            platforms.add("linux-x64")
        elif tag == "win_amd64":
            platforms.add("windows-x64")
        elif tag.startswith("macosx_"):
            if tag.endswith(("_arm64", "_universal2")):
                platforms.add("macos-arm64")
            if tag.endswith(("_x86_64", "_universal2", "_intel")):
                platforms.add("macos-x64")
    return platforms


def _package_of_wheel(filename: str) -> str:
    return filename.split("-", 1)[0].lower().replace("_", "-")


def gather_wheels(wheel_files: list[Path]) -> GatheredWheels:
    """Keep the cp311 wheels of WHEEL_PACKAGES and say which platforms they cover."""
    chosen: list[Path] = []
    coverage: dict[str, set[str]] = {package: set() for package in WHEEL_PACKAGES}
    for path in sorted(wheel_files):
        package = _package_of_wheel(path.name)
        platforms = blender_platforms_of_wheel(path.name) & set(PIP_PLATFORMS)
        if package in coverage and platforms and not platforms <= coverage[package]:
            chosen.append(path)
            coverage[package] |= platforms
    covered = set(PIP_PLATFORMS).intersection(*coverage.values())
    missing = {
        package: tuple(sorted(set(PIP_PLATFORMS) - platforms)) for package, platforms in coverage.items() if set(PIP_PLATFORMS) - platforms
    }
    return GatheredWheels(files=tuple(chosen), platforms=tuple(sorted(covered)), missing=missing)


def _pinned_requirements() -> list[str]:
    """pyzmq==X msgpack==Y as installed here; unpinned when one is not installed."""
    requirements = []
    for package in WHEEL_PACKAGES:
        try:
            requirements.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            requirements.append(package)
    return requirements


def download_wheels(destination: Path, *, python_version: str) -> list[Path]:
    """pip download the cp311 binary wheels for every Blender platform (needs the package index)."""
    abi = "cp" + python_version.replace(".", "")
    for blender_platform, pip_platforms in PIP_PLATFORMS.items():
        platform_options = [option for tag in pip_platforms for option in ("--platform", tag)]
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--no-deps",
            "--python-version",
            python_version,
            "--implementation",
            "cp",
            "--abi",
            abi,
            *platform_options,
            "--dest",
            str(destination),
            *_pinned_requirements(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise AddonBuildError(
                f"pip download for {blender_platform} failed (use --offline DIR with wheels "
                f"already downloaded): {result.stderr.strip()[-800:]}"
            )
    return sorted(destination.glob("*.whl"))


def render_manifest(template: str, *, wheels: list[str], platforms: list[str]) -> str:
    """The manifest template with its ``wheels`` and ``platforms`` lines replaced (one line each)."""
    lines = template.splitlines()
    replacements = {"wheels": wheels, "platforms": platforms}
    for key, values in replacements.items():
        pattern = re.compile(rf"^{key}\s*=")
        indices = [i for i, line in enumerate(lines) if pattern.match(line)]
        if len(indices) != 1:
            raise AddonBuildError(f"{MANIFEST_NAME} must hold exactly one single-line '{key} = [...]' (found {len(indices)})")
        lines[indices[0]] = f"{key} = {json.dumps(values)}"  # a JSON list of plain strings is valid TOML
    return "\n".join(lines) + "\n"


def _addon_version(template: str) -> str:
    match = re.search(r'^version\s*=\s*"([^"]+)"', template, re.MULTILINE)
    if match is None:
        raise AddonBuildError(f"{MANIFEST_NAME} has no version")
    return match.group(1)


def build_addon(*, out_dir: str | os.PathLike[str], offline_wheels_dir: str | os.PathLike[str] | None = None) -> Path:
    """Build ``megalive-<version>.zip`` in ``out_dir`` and return its path."""
    config = AddonBuildConfig(out_dir=Path(out_dir), offline_wheels_dir=None if offline_wheels_dir is None else Path(offline_wheels_dir))
    template = (ADDON_SOURCE_DIR / MANIFEST_NAME).read_text(encoding="utf-8")
    config.out_dir.mkdir(parents=True, exist_ok=True)
    final = config.out_dir / f"megalive-{_addon_version(template)}.zip"
    with tempfile.TemporaryDirectory(prefix=".megalive-addon-", dir=config.out_dir) as staging_root:
        staging = Path(staging_root)
        if config.offline_wheels_dir is not None:
            if not config.offline_wheels_dir.is_dir():
                raise AddonBuildError(f"--offline {config.offline_wheels_dir}: not a folder")
            wheel_files = sorted(config.offline_wheels_dir.glob("*.whl"))
        else:
            download_dir = staging / "download"
            download_dir.mkdir()
            wheel_files = download_wheels(download_dir, python_version=config.python_version)
        gathered = gather_wheels(wheel_files)
        if not gathered.platforms:
            raise AddonBuildError(f"no platform has wheels of all of {', '.join(WHEEL_PACKAGES)} (found: {[p.name for p in wheel_files]})")
        if gathered.missing:
            if config.offline_wheels_dir is None:
                raise AddonBuildError(f"wheels missing for {gathered.missing}")
            # Offline builds may target fewer platforms; the manifest then lists only those.
            log.warning(
                "offline wheels do not cover %s; the extension will install on %s only", gathered.missing, ", ".join(gathered.platforms)
            )

        package = staging / "megalive"
        shutil.copytree(ADDON_SOURCE_DIR, package, ignore=SKIPPED_NAMES)
        write_vendor_package(package, made_by="megalive addon build")
        (package / "wheels").mkdir()
        for wheel in gathered.files:
            shutil.copyfile(wheel, package / "wheels" / wheel.name)
        manifest = render_manifest(template, wheels=[f"./wheels/{w.name}" for w in gathered.files], platforms=list(gathered.platforms))
        (package / MANIFEST_NAME).write_text(manifest, encoding="utf-8")

        partial = config.out_dir / (final.name + ".partial")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(package.rglob("*")):
                if path.is_file():  # wheels are zips already: stored, not compressed again
                    archive.write(
                        path, path.relative_to(package).as_posix(), compress_type=zipfile.ZIP_STORED if path.suffix == ".whl" else None
                    )
        os.replace(partial, final)
    return final


# ------------------------------------------------------------------------------------------------
# Command line: `megalive addon build`


def add_addon_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `addon build` on a `megalive` subparsers object."""
    addon = subparsers.add_parser("addon", help="build the Blender extension", description="Blender extension (4.2+) tools.")
    commands = addon.add_subparsers(title="addon commands", metavar="COMMAND")
    build = commands.add_parser(
        "build",
        help="build the Blender extension zip (Edit ▸ Preferences ▸ Get Extensions ▸ Install from Disk)",
        description="Build megalive-<version>.zip: blender_addon/, copies of the client/ and contract/ packages, "
        "and cp311 pyzmq/msgpack and imageio-ffmpeg wheels for Linux x64, Windows x64, macOS arm64 and x64.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build.add_argument("--out", type=Path, default=Path("dist"), metavar="DIR", help="folder the zip is written to")
    build.add_argument(
        "--offline",
        type=Path,
        default=None,
        metavar="DIR",
        help="take wheels from this folder instead of pip download (may cover fewer platforms)",
    )
    build.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    build.set_defaults(run=_build)


def _build(args: argparse.Namespace) -> int:
    config = AddonBuildConfig(out_dir=args.out, offline_wheels_dir=args.offline)
    if args.dry_run:
        print(
            json.dumps(
                {**asdict(config), "source": str(ADDON_SOURCE_DIR), "packages": _pinned_requirements(), "platforms": PIP_PLATFORMS},
                indent=2,
                default=str,
            )
        )
        return 0
    try:
        path = build_addon(out_dir=config.out_dir, offline_wheels_dir=config.offline_wheels_dir)
    except (AddonBuildError, OSError) as error:
        print(f"megalive addon build: {error}", file=sys.stderr)
        return 2
    print(f"megalive addon build: wrote {path}")
    return 0
