"""The runtime files that the hosts ship copies of (the Blender zip, the Unreal package).

One list and one writer, so both builds vendor exactly the same files; the source of truth stays
in server/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

SERVER_DIR = Path(__file__).resolve().parent
VENDORED_FILES = ("protocol.py", "client.py", "live.py")  # need only the stdlib, pyzmq and msgpack


def write_vendor_package(package_dir: Path, *, made_by: str) -> tuple[Path, ...]:
    """Create package_dir/vendor/ with copies of VENDORED_FILES; returns the copied files."""
    vendor = package_dir / "vendor"
    vendor.mkdir()
    listed = ", ".join(f"server/{name}" for name in VENDORED_FILES)
    (vendor / "__init__.py").write_text(f'"""Copies of {listed} made by `{made_by}`; do not edit."""\n', encoding="utf-8")
    for name in VENDORED_FILES:
        shutil.copyfile(SERVER_DIR / name, vendor / name)
    return tuple(vendor / name for name in VENDORED_FILES)
