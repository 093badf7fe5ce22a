"""Portrait files for `enroll` from the hosts (Blender, Unreal), standard library only: a PNG or JPEG file goes to the
server as it is (an encoded buffer); the server reads its size from the header, decodes it and finds the face.

The hosts' Python has no Pillow, and sending the file unchanged keeps every pixel the user chose.
"""

from __future__ import annotations

import os
from pathlib import Path

from .protocol import EncodedBuffer

# A file's first bytes -> its codec on the wire.
PORTRAIT_SIGNATURES = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}
MAX_PORTRAIT_FILE_BYTES = 24 * 1024 * 1024  # under the wire's 32 MiB per buffer


class PortraitFileError(ValueError):
    """A file that cannot be sent as a portrait; the message is one line for the user."""


def encoded_portrait(path: str | os.PathLike[str]) -> EncodedBuffer:
    """One PNG or JPEG portrait file, unchanged, as an encoded buffer."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_PORTRAIT_FILE_BYTES:
            raise PortraitFileError(f"{path}: {size / 2**20:.1f} MiB; a portrait file is at most {MAX_PORTRAIT_FILE_BYTES // 2**20} MiB")
        data = path.read_bytes()
    except FileNotFoundError:
        raise PortraitFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PortraitFileError(f"{path}: a folder, not a picture") from None
    except OSError as error:
        raise PortraitFileError(f"{path}: cannot be read ({error.strerror or error})") from None
    codec = next((codec for signature, codec in PORTRAIT_SIGNATURES.items() if data.startswith(signature)), None)
    if codec is None:
        raise PortraitFileError(f"{path}: not a PNG or JPEG picture")
    return EncodedBuffer(codec=codec, data=memoryview(data))
