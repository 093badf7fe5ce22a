"""The runtime files that the hosts ship copies of (the Blender zip, the Unreal package). This module
itself is not among them: it runs where the packages are built.

One list and one writer, so both builds vendor exactly the same files; the source of truth stays in the
repository's ``client/`` and ``contract/`` packages. The copies keep that layout under ``vendor/`` (``vendor/client/``
beside ``vendor/contract/``), so the client's relative imports (``from . import protocol``) work unchanged and host
code reaches both through its shim (blender_addon/wire.py, unreal_bridge/client_shim.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# Repository-relative; each needs only the stdlib, pyzmq and msgpack at import time (numpy only inside functions).
VENDORED_FILES: tuple[str, ...] = (
    "client/__init__.py",
    "client/protocol.py",
    "client/client.py",
    "client/live.py",
    "client/portrait_files.py",
    "client/enrollment.py",
    "contract/__init__.py",
    "contract/arkit.py",
    "contract/landmarks.py",
    "contract/model_card.py",
)


def write_vendor_package(package_dir: Path, *, made_by: str) -> tuple[Path, ...]:
    """Create package_dir/vendor/ with copies of VENDORED_FILES (same relative paths); returns the copied files."""
    vendor = package_dir / "vendor"
    vendor.mkdir()
    packages = ", ".join(sorted({f"{Path(name).parent}/" for name in VENDORED_FILES}))
    (vendor / "__init__.py").write_text(f'"""Copies of {packages} made by `{made_by}`; do not edit."""\n', encoding="utf-8")
    copied = []
    for name in VENDORED_FILES:
        target = vendor / name
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(REPO_ROOT / name, target)
        copied.append(target)
    return tuple(copied)
