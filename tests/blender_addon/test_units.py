"""bpy-free parts: pixel conversion, bake file names, the PNG writer, wheel/platform bookkeeping and the zip build."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blender_addon import pixels
from blender_addon.package import AddonBuildError, blender_platforms_of_wheel, build_addon, gather_wheels, render_manifest
from blender_addon.vocabulary import bake_frame_name, sequence_index
from client.vendor import REPO_ROOT, VENDORED_FILES


def test_texture_becomes_bottom_up_float_rgba() -> None:
    texture = np.random.default_rng(0).integers(0, 256, (3, 5, 4), dtype=np.uint8)
    flat = pixels.texture_to_blender_pixels(texture)
    assert flat.dtype == np.float32 and flat.shape == (3 * 5 * 4,)
    assert np.allclose(flat.reshape(3, 5, 4)[::-1] * 255.0, texture, atol=1e-3)
    reused = pixels.texture_to_blender_pixels(texture[..., :3], out=flat)
    assert reused is flat and np.all(flat.reshape(3, 5, 4)[..., 3] == 1.0)
    back = pixels.blender_pixels_to_rgb8(flat, width=5, height=3)
    assert np.array_equal(back, texture[..., :3])


def test_png_writer_round_trips_through_pillow_and_is_atomic(tmp_path: Path) -> None:
    rgba = np.random.default_rng(1).integers(0, 256, (7, 9, 4), dtype=np.uint8)
    path = pixels.write_png_atomically(tmp_path / "frame_000001.png", rgba)
    with Image.open(path) as image:
        assert image.mode == "RGBA" and np.array_equal(np.asarray(image), rgba)
    assert [p.name for p in tmp_path.iterdir()] == ["frame_000001.png"]
    with pytest.raises(OSError):
        pixels.write_png_atomically(tmp_path / "missing" / "frame.png", rgba)
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    ("name", "platforms"),
    [
        ("pyzmq-27.3.0-cp311-cp311-manylinux_2_26_x86_64.manylinux_2_28_x86_64.whl", {"linux-x64"}),
        ("pyzmq-27.3.0-cp311-cp311-macosx_10_15_universal2.whl", {"macos-arm64", "macos-x64"}),
        ("msgpack-1.2.4-cp311-cp311-macosx_11_0_arm64.whl", {"macos-arm64"}),
        ("msgpack-1.2.4-cp311-cp311-win_amd64.whl", {"windows-x64"}),
        ("msgpack-1.2.4-cp312-cp312-win_amd64.whl", set()),
        ("imageio_ffmpeg-0.6.0-py3-none-manylinux2014_x86_64.whl", {"linux-x64"}),
        ("imageio_ffmpeg-0.6.0-py3-none-macosx_10_9_intel.macosx_10_9_x86_64.whl", {"macos-x64"}),
        ("imageio_ffmpeg-0.6.0-py3-none-win_amd64.whl", {"windows-x64"}),
        ("imageio_ffmpeg-0.6.0-py3-none-any.whl", set()),  # no ffmpeg inside: useless to the movie driver
    ],
)
def test_wheel_platforms(name: str, platforms: set[str]) -> None:
    assert blender_platforms_of_wheel(name) == platforms


def test_gathered_wheels_cover_all_platforms_or_say_what_is_missing() -> None:
    names = [
        "pyzmq-27.3.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        "pyzmq-27.3.0-cp311-cp311-win_amd64.whl",
        "pyzmq-27.3.0-cp311-cp311-macosx_10_15_universal2.whl",
        "msgpack-1.2.4-cp311-cp311-manylinux2014_x86_64.whl",
        "msgpack-1.2.4-cp311-cp311-win_amd64.whl",
        "msgpack-1.2.4-cp311-cp311-macosx_11_0_arm64.whl",
        "imageio_ffmpeg-0.6.0-py3-none-manylinux2014_x86_64.whl",
        "imageio_ffmpeg-0.6.0-py3-none-win_amd64.whl",
        "imageio_ffmpeg-0.6.0-py3-none-macosx_11_0_arm64.whl",
        "imageio_ffmpeg-0.6.0-py3-none-macosx_10_9_intel.macosx_10_9_x86_64.whl",
        "imageio_ffmpeg-0.6.0-py3-none-any.whl",
    ]
    gathered = gather_wheels([Path(n) for n in names])
    assert gathered.platforms == ("linux-x64", "macos-arm64", "windows-x64")
    assert gathered.missing == {"msgpack": ("macos-x64",)}
    assert sum(p.name.startswith("imageio_ffmpeg") for p in gathered.files) == 4  # one per platform, not the -any one


def test_manifest_lists_are_rewritten_and_stay_valid_toml() -> None:
    import tomllib

    template = (Path(__file__).resolve().parents[2] / "blender_addon" / "blender_manifest.toml").read_text()
    manifest = tomllib.loads(render_manifest(template, wheels=["./wheels/a-1-cp311-cp311-win_amd64.whl"], platforms=["windows-x64"]))
    assert manifest["id"] == "megalive" and manifest["schema_version"] == "1.0.0" and "bl_info" not in manifest
    assert manifest["wheels"] == ["./wheels/a-1-cp311-cp311-win_amd64.whl"] and manifest["platforms"] == ["windows-x64"]
    assert manifest["permissions"]["network"]
    with pytest.raises(AddonBuildError):
        render_manifest("id = 'x'\n", wheels=[], platforms=[])


def test_offline_build_vendors_the_client_and_lists_its_wheels(tmp_path: Path, offline_wheels: Path) -> None:
    import tomllib

    zip_path = build_addon(out_dir=tmp_path, offline_wheels_dir=offline_wheels)
    assert [p.name for p in tmp_path.iterdir()] == [zip_path.name]  # no staging or .partial left behind
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
        for name in VENDORED_FILES:
            assert archive.read(f"vendor/{name}") == (REPO_ROOT / name).read_bytes()
    bpy_layer = {"state.py", "properties.py", "sources.py", "material.py", "timer.py", "operators.py", "bake.py", "panel.py"}
    assert {"__init__.py", "registration.py", *bpy_layer, "vocabulary.py", "pixels.py", "wire.py", "movie.py"} <= names
    assert "package.py" not in names  # the builder stays out of what it builds
    assert any(n.startswith("wheels/imageio_ffmpeg-") for n in names)  # the movie clip driver's ffmpeg
    assert not any("__pycache__" in n or n.startswith("tests") for n in names)
    assert sorted(w.removeprefix("./") for w in manifest["wheels"]) == sorted(n for n in names if n.endswith(".whl"))
    assert manifest["platforms"] == ["linux-x64"]
    with pytest.raises(AddonBuildError):
        build_addon(out_dir=tmp_path / "none", offline_wheels_dir=tmp_path / "empty-does-not-exist")


def test_bake_frame_names_and_sequence_index() -> None:
    assert bake_frame_name("MegaLive", 7) == "MegaLive_000007.png"
    assert sequence_index(3, frame_start=1) == 2


def test_the_vendored_runtime_imports_only_what_the_hosts_have() -> None:
    """client/ and contract/ go into the zip and the Unreal package as they are: at module level they may import the
    standard library, pyzmq (zmq.auth and zmq.utils are part of it), msgpack and each other (relatively: the hosts
    have no top-level ``client`` or ``contract``), nothing else.
    (Line by line, not with ast: in the whole suite's process ast.parse hits CPython 3.11's AST recursion-depth bug.)"""
    import re
    import sys

    allowed = set(sys.stdlib_module_names) | {"zmq", "msgpack", "__future__"}
    packages = {Path(name).parent.as_posix() for name in VENDORED_FILES}  # client, contract: side by side in vendor/
    for name in VENDORED_FILES:
        package = Path(name).parent.as_posix()
        siblings = {Path(other).stem for other in VENDORED_FILES if Path(other).parent.as_posix() == package}
        for line in (REPO_ROOT / name).read_text(encoding="utf-8").splitlines():
            if match := re.match(r"from (\.*)(\w*)[\w.]* import (.+)", line):
                dots, module, names = match.groups()
                imported = {module} if module else {n.strip().split(" ")[0] for n in names.split(",")}
                if dots == ".":
                    assert imported <= siblings, (name, line)
                elif dots == "..":
                    assert imported <= packages, (name, line)
                else:
                    assert not dots and module in allowed, (name, line)
            elif match := re.match(r"import (.+)", line):
                assert {n.strip().split(".")[0].split(" ")[0] for n in match.group(1).split(",")} <= allowed, (name, line)
