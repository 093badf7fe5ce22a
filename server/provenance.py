"""Provenance of every texture (DESIGN §3, issue 15): an invisible watermark saying "MegaLive, synthetic, avatar id".

The watermark is the DWT-DCT-SVD method of the invisible-watermark library (``imwatermark.dwtDctSvd``, the
method Stable Diffusion's reference scripts mark their images with), not code of ours: the chroma (U) plane's
Haar approximation band is cut into blocks; each block's DCT has its largest singular value quantised to carry
one bit, the payload repeated over all blocks, and reading averages each bit over its blocks.

Payload, 32 bits: the magic ``b"ML"`` (MegaLive; every texture it makes is a synthetic face, so the magic says
"MegaLive, synthetic") and the avatar id, 16 bits big-endian. A picture is reported marked only when the magic
reads back exactly.

Configuration, chosen by measurement (bench/provenance.py, README "Provenance"): block 8, scale 80 on the U plane,
pixels handed to the library as float32 in [0, 1] (scale 80/255). The float route matters: the library converts
to YUV with OpenCV, and in uint8 a saturated red's V channel clips at 255 (a colour shift of 17 levels on average
over the picture) and values written back wrap around; in float nothing clips until the one final rounding here.

The library's package ``__init__`` imports its RivaGAN module, which imports torch, and the runtime never imports
torch (DESIGN §1); its wheel also declares torch as a requirement, so it is installed with ``--no-deps`` (Makefile)
and its ``dwtDctSvd.py`` is loaded here by file location, without running the package ``__init__``. That module
needs OpenCV (``cv2``) and PyWavelets (``pywt``). When any of them is missing the server says so at start and
reports ``watermark: "unavailable: <why>"``; it never pretends to mark.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterable
from types import ModuleType

import numpy as np

MAGIC = b"ML"
PAYLOAD_BITS = 32
BLOCK = 8
SCALE = 80.0 / 255.0  # on pixels in [0, 1]: a step of 80 levels of the library's uint8 scale
MAX_AVATAR_ID = 0xFFFF
# Texture sizes the server produces (square, the models' resolutions): a picture resized from one of them is
# resized back before reading, so a texture shrunk to half is still found.
TEXTURE_SIZES = (256, 512, 128)
MIN_SIDE = 64  # smaller pictures are resized up to a texture size, never read as they are

_MODULE_NAME = "megalive_imwatermark_dwtdctsvd"
_lock = threading.Lock()
_loaded: tuple[ModuleType | None, str | None] | None = None


def _load() -> tuple[ModuleType | None, str | None]:
    """The library's dwtDctSvd module, or None and why not (once per process)."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        try:
            import cv2  # noqa: F401  (the library's module imports it; its absence is said plainly here)
        except ImportError as error:
            _loaded = (None, f"OpenCV (cv2) is not installed ({error}); install the 'provenance' extra or 'capture'")
            return _loaded
        try:
            import pywt  # noqa: F401
        except ImportError as error:
            _loaded = (None, f"PyWavelets (pywt) is not installed ({error}); install the 'provenance' extra")
            return _loaded
        spec = importlib.util.find_spec("imwatermark")
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations:
            _loaded = (
                None,
                "the invisible-watermark package (imwatermark) is not installed: pip install --no-deps invisible-watermark==0.2.0",
            )
            return _loaded
        # Its dwtDctSvd.py alone, by file location: importing `imwatermark` would run the package __init__, which
        # imports rivaGan.py and so torch (never imported by the runtime, DESIGN §1, and not installed with it).
        path = f"{locations[0]}/dwtDctSvd.py"
        try:
            module_spec = importlib.util.spec_from_file_location(_MODULE_NAME, path)
            if module_spec is None or module_spec.loader is None:
                raise ImportError(f"no module at {path}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            module.EmbedDwtDctSvd  # noqa: B018  (the class this file uses; a different library version fails here)
        except Exception as error:
            _loaded = (None, f"cannot load invisible-watermark's dwtDctSvd module: {type(error).__name__}: {error}")
            return _loaded
        sys.modules.setdefault(_MODULE_NAME, module)
        _loaded = (module, None)
        return _loaded


def unavailable() -> str | None:
    """Why textures cannot be watermarked here, or None when they can."""
    return _load()[1]


def blocks_per_bit(height: int, width: int) -> int:
    """How many blocks carry each payload bit in an H×W texture (the Haar band is half size, cut in BLOCK²)."""
    return (height // 2 // BLOCK) * (width // 2 // BLOCK) // PAYLOAD_BITS


MIN_BLOCKS_PER_BIT = 2  # 128×128 textures at least; the shipped model's 256×256 carry 8 blocks per bit


def unavailable_for(resolution: tuple[int, int]) -> str | None:
    """Why a model's textures (H, W) cannot be watermarked here, or None when they can."""
    problem = unavailable()
    if problem is None and blocks_per_bit(*resolution) < MIN_BLOCKS_PER_BIT:
        height, width = resolution
        problem = f"the model's {width}×{height} textures are too small to carry the 32-bit watermark (128×128 at least)"
    return problem


def payload_bits(avatar_id: int) -> list[int]:
    """The 32 payload bits for an avatar: magic "ML" then the id, 16 bits big-endian."""
    if not 0 <= avatar_id <= MAX_AVATAR_ID:
        raise ValueError(f"avatar id {avatar_id} does not fit the watermark's 16 bits")
    raw = np.frombuffer(MAGIC + int(avatar_id).to_bytes(2, "big"), np.uint8)
    return [int(bit) for bit in np.unpackbits(raw)]


def decode_payload(bits: Iterable[int]) -> int | None:
    """The avatar id the bits carry, or None when the magic does not read back exactly."""
    raw = np.packbits(np.asarray(list(bits), np.uint8)).tobytes()
    if len(raw) != PAYLOAD_BITS // 8 or raw[:2] != MAGIC:
        return None
    return int.from_bytes(raw[2:], "big")


def _embedder(module: ModuleType, bits: list[int]):
    return module.EmbedDwtDctSvd(bits, wmLen=PAYLOAD_BITS, scales=[0, SCALE, 0], block=BLOCK)


def _as_bgr_float(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[:, :, 2::-1], dtype=np.float32) * np.float32(1.0 / 255.0)


def watermark_texture(pixels: np.ndarray, avatar_id: int) -> np.ndarray:
    """H×W×4 (or ×3) uint8 -> the same with the watermark in its colour (alpha untouched). RuntimeError when the
    library is unavailable (callers check ``unavailable()`` first)."""
    module, problem = _load()
    if module is None:
        raise RuntimeError(f"watermark unavailable: {problem}")
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"watermark_texture takes H×W×3 or ×4 uint8, got {pixels.dtype} {pixels.shape}")
    marked_bgr = _embedder(module, payload_bits(avatar_id)).encode(_as_bgr_float(pixels[:, :, :3]))
    out = pixels.copy()
    rgb = marked_bgr[:, :, ::-1] * 255.0 + 0.5
    np.clip(rgb, 0.0, 255.0, out=rgb)
    out[:, :, :3] = rgb.astype(np.uint8)
    return out


def _read_one(module: ModuleType, rgb: np.ndarray) -> int | None:
    bits = _embedder(module, [0] * PAYLOAD_BITS).decode(_as_bgr_float(rgb))
    return decode_payload(int(b) for b in bits)


def _resized(rgb: np.ndarray, side: int) -> np.ndarray:
    import cv2

    # Area averaging when shrinking (a picture enlarged from a texture), cubic when enlarging (a shrunk one).
    shrinking = rgb.shape[0] * rgb.shape[1] > side * side
    return cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def candidate_views(rgb: np.ndarray, sizes: Iterable[int] = TEXTURE_SIZES) -> list[np.ndarray]:
    """The views of a picture a watermark is looked for in: as it is, resized to each texture size, and, for a
    picture tiled by textures (the demo's rows), each square tile."""
    height, width = rgb.shape[:2]
    views = [rgb] if min(height, width) >= MIN_SIDE else []
    views += [_resized(rgb, side) for side in sizes if (height, width) != (side, side)]
    for side in sizes:
        if height % side == 0 and width % side == 0 and (height, width) != (side, side):
            views += [rgb[y : y + side, x : x + side] for y in range(0, height, side) for x in range(0, width, side)]
    return views


def read_watermark(picture: np.ndarray, sizes: Iterable[int] = TEXTURE_SIZES) -> int | None:
    """The avatar id of a MegaLive watermark in an H×W×{3,4} uint8 picture, or None. Tries the picture as it is,
    resized to each texture size the server produces, and each texture-sized tile of a tiled picture."""
    module, problem = _load()
    if module is None:
        raise RuntimeError(f"watermark unavailable: {problem}")
    rgb = np.ascontiguousarray(picture[:, :, :3]) if picture.ndim == 3 else np.repeat(picture[:, :, None], 3, axis=2)
    for view in candidate_views(rgb, tuple(sizes)):
        if blocks_per_bit(*view.shape[:2]) < MIN_BLOCKS_PER_BIT:
            continue
        found = _read_one(module, view)
        if found is not None:
            return found
    return None
