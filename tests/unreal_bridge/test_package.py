"""`megalive unreal package`: vendored copies are byte-identical, and the packaged editor code imports
the vendored client with neither the repository nor Unreal on the path (the fake host stands in)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from client.vendor import VENDORED_FILES
from unreal_bridge.package import build_unreal_bridge

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_vendor_copies_are_byte_identical_and_nothing_extra_is_shipped(tmp_path: Path) -> None:
    package = build_unreal_bridge(tmp_path / "out")
    vendor = package.python_package / "vendor"
    for name in VENDORED_FILES:
        assert (vendor / name).read_bytes() == (REPO_ROOT / name).read_bytes()
    assert package.vendored == tuple(vendor / name for name in VENDORED_FILES)
    assert (package.python_package / "editor" / "unreal_host.py").is_file()
    for name in ("__init__.py", "packet.py", "receiver.py", "take.py"):
        assert (package.python_package / "livelink" / name).is_file()
    assert (package.plugin / "MegaLiveTexture.uplugin").is_file()
    shipped = [p.relative_to(package.python_package) for p in package.python_package.rglob("*")]
    assert not any("__pycache__" in p.parts or p.suffix == ".pyc" or "MegaLiveTexture" in p.parts for p in shipped)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["MegaLiveTexture", "megalive_bridge"]  # no staging left
    build_unreal_bridge(tmp_path / "out")  # rebuilding over an old build replaces it
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["MegaLiveTexture", "megalive_bridge"]


def test_packaged_editor_module_imports_the_vendored_client_without_the_repository(tmp_path: Path) -> None:
    build_unreal_bridge(tmp_path / "out")
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    shutil.copyfile(REPO_ROOT / "tests" / "unreal_bridge" / "fake_unreal.py", fakes / "fake_unreal.py")
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        class RefuseRepository(importlib.abc.MetaPathFinder):
            # the repository may be installed in the venv: make sure nothing comes from it
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("client", "contract", "server", "unreal_bridge", "models", "tests"):
                    raise ImportError(f"{{name}} must not be imported by the packaged bridge")
                return None
        sys.meta_path.insert(0, RefuseRepository())
        sys.path[:0] = [{str(tmp_path / "out")!r}, {str(fakes)!r}]
        import fake_unreal
        fake_unreal.install(native=False)
        from megalive_bridge.editor import unreal_host
        from megalive_bridge import client_shim
        from megalive_bridge.editor.live_texture import ImageSequenceSource
        from megalive_bridge.client_shim import live
        assert client_shim.CLIENT_ORIGIN == "vendored", client_shim.client.__name__
        assert live.__name__ == "megalive_bridge.vendor.client.live" and live.client_module is client_shim.client, live.__name__
        assert client_shim.arkit.__name__ == "megalive_bridge.vendor.contract.arkit"
        from megalive_bridge.livelink import packet, receiver, take
        assert packet.CURVE_NAMES is client_shim.arkit.ARKIT_CURVES
        assert receiver.LiveLinkFaceReceiver and take.TakeWriter
        assert live.LiveController and live.LiveConfig
        assert client_shim.client.__file__.startswith({str(tmp_path / "out")!r})
        print("ok", client_shim.client.__name__, unreal_host.NATIVE_LIBRARY)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "megalive_bridge.vendor.client.client", "MegaLiveTextureLibrary"]


def test_package_command(tmp_path: Path) -> None:
    from tests.unreal_bridge.test_relay import megalive

    assert megalive(["unreal", "package", "--out", str(tmp_path / "pkg")]) == 0
    assert (tmp_path / "pkg" / "megalive_bridge" / "vendor" / "client" / "client.py").is_file()
