"""Provenance of every texture (DESIGN §3, issue 15): an invisible watermark saying "MegaLive, synthetic, avatar id".

The watermark is the DWT-DCT-SVD method of the invisible-watermark library (``imwatermark.dwtDctSvd``, the
method Stable Diffusion's reference scripts mark their images with): the chroma (U) plane's Haar approximation band
is cut into blocks; each block's DCT has its largest singular value quantised to carry one bit, the payload repeated
over all blocks, and reading averages each bit over its blocks.

Marking is that method re-expressed in vectorised numpy (``watermark_texture``), checked equal to the library's own
embedder by tests/server/test_provenance.py; the library's embedder stays here (``watermark_texture_library``) for that
check and the bench. The library loops over blocks in Python (a DCT, an SVD, two products and an inverse DCT per 8×8
block: about 14 ms per 256×256 texture, half the live frame rate). Here: the same OpenCV colour conversions; the Haar
transforms as PyWavelets computes them, the same float32 operations in the same order (the same bits); then all blocks
at once. The DCT is orthonormal, so a block and its DCT have the same singular values, and the library's change (the
largest singular value s0 moved to its quantised value s0') is the rank-one update ``block + (s0' - s0)·u0·v0ᵀ`` of
the block itself, u0 and v0 its top singular vectors. These come from a vectorised power iteration in float64 with a
proven error bound; a block whose bound is not met, or whose s0 lies so near a quantisation step that the library's
float32 s0 could fall on the other side of it, is done exactly as the library does (cv2.dct, LAPACK's SVD, the
products, cv2.idct, in float32), and so is every block with ``exact=True`` (then the output is the library's, bit for
bit). Otherwise it differs from the library's by float rounding only: the same uint8 values but for 1 level on a few
pixels in 100 000 (the tests bound it). Reading is the library's own decoder.

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


# How the library computes `s[0] // scale + ...`: numpy < 2 promotes its float32 scalar with a Python float to float64,
# numpy 2 stays in float32. The vectorised step computes in the same type, so the quantised values are the same bits.
_QUANTISE_DTYPE = np.dtype(type(np.float32(1.0) // SCALE))
# Power iteration: at most this many rounds, then a block's top singular vector must be within this angle (a proven
# bound: residual over a lower bound of the eigen-gap), else the block is done the library's way.
_POWER_ROUNDS = 12
_ANGLE_TOLERANCE = 1e-9
_UNCHECKED_ROUNDS = 3  # rounds before the first check: a check costs about a round, and few blocks settle sooner
# The library's s0 is LAPACK's in float32 (relative error about 1e-6); a block whose s0 is within this relative distance
# of a quantisation step could fall on the other side there, so it is done the library's way.
_STEP_MARGIN = 1e-4


def _lengths(vectors: np.ndarray) -> np.ndarray:
    """Euclidean length of each row of an N×b array."""
    return np.sqrt(np.einsum("ni,ni->n", vectors, vectors))


def _requantised(s0: np.ndarray, bits: np.ndarray, scale: float) -> np.ndarray:
    """The library's ``s[0] = (s[0] // scale + 0.25 + 0.5 * wmBit) * scale``, per block, stored as float32."""
    half_bits = (0.5 * bits).astype(_QUANTISE_DTYPE)
    return (((s0.astype(_QUANTISE_DTYPE) // scale) + 0.25 + half_bits) * scale).astype(np.float32)


def _library_blocks(blocks: np.ndarray, bits: np.ndarray, scale: float) -> np.ndarray:
    """M×b×b float32 blocks marked exactly as the library's ``diffuse_dct_svd`` does, bit for bit: cv2.dct, LAPACK's
    SVD (batched: the same routine per block), the quantised s0, u·diag(s)·v, cv2.idct, all in float32."""
    import cv2

    coefficients = np.stack([cv2.dct(block) for block in blocks])
    u, s, v = np.linalg.svd(coefficients)
    s[:, 0] = _requantised(s[:, 0], bits, scale)
    # diag(s)·v is s[i]·v[i, j] exactly (the other terms are zeros), so the products round as the library's np.dot.
    rebuilt = np.matmul(u, s[:, :, None] * v)
    return np.stack([cv2.idct(block) for block in rebuilt])


def _vectorised_blocks(blocks: np.ndarray, bits: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """N×b×b float32 blocks marked as the library marks them, all at once, and which of them still need the library's
    way (bool N: too near a quantisation step, or the power iteration not proven converged).

    The DCT is orthonormal, so the block's singular values are its DCT's and the library's change is the rank-one
    update block + (s0' - s0)·u0·v0ᵀ of the block itself (u0, v0: its top singular vectors)."""
    x = blocks.astype(np.float64)  # N×b×b
    gram = np.matmul(x.transpose(0, 2, 1), x)  # N×b×b, xᵀx: its top eigenvector is v0, its eigenvalue s0²
    trace = np.einsum("nii->n", gram)  # the sum of its eigenvalues
    v = x.sum(axis=1) + 1e-300  # N×b, xᵀ·1: a near-constant block (the usual chroma block) has v0 close to it
    v /= _lengths(v)[:, None]
    for round_index in range(_POWER_ROUNDS):
        gram_v = np.einsum("nij,nj->ni", gram, v)
        if round_index >= _UNCHECKED_ROUNDS:
            rayleigh = np.einsum("ni,ni->n", v, gram_v)
            residual = _lengths(gram_v - rayleigh[:, None] * v)
            # sin(angle to v0) <= residual / (rayleigh - s1²) (v a unit vector), s1² <= trace - s0² <= trace - rayleigh.
            gap = 2.0 * rayleigh - trace
            converged = (gap > 0) & (residual <= _ANGLE_TOLERANCE * gap)
            if converged.all():
                break
        v = gram_v / (_lengths(gram_v) + 1e-300)[:, None]  # a further round never takes v further from v0
    xv = np.einsum("nij,nj->ni", x, v)
    s0 = _lengths(xv)
    u = xv / (s0 + 1e-300)[:, None]
    steps = s0 / scale
    to_step = np.minimum(steps - np.floor(steps), np.ceil(steps) - steps) * scale
    library_way = ~converged | (to_step <= _STEP_MARGIN * (1.0 + s0))
    delta = _requantised(s0, bits, scale).astype(np.float64) - s0
    marked = x + delta[:, None, None] * u[:, :, None] * v[:, None, :]
    return marked.astype(np.float32), library_way


def _mark_band(band: np.ndarray, bits: np.ndarray, scale: float, *, exact: bool) -> None:
    """The library's ``encode_frame``: each whole BLOCK² block of the H×W float32 band, row by row, carries payload bit
    (block number mod 32); the band is changed in place, the partial blocks at its right and bottom edges are not."""
    rows, cols = band.shape[0] // BLOCK, band.shape[1] // BLOCK
    if rows * cols == 0:
        return
    area = band[: rows * BLOCK, : cols * BLOCK]
    blocks = area.reshape(rows, BLOCK, cols, BLOCK).swapaxes(1, 2).reshape(rows * cols, BLOCK, BLOCK)  # row-major
    block_bits = np.resize(bits, rows * cols)  # the payload repeated: block n carries bit n mod 32
    if exact:
        marked, library_way = blocks.copy(), np.ones(rows * cols, bool)
    else:
        marked, library_way = _vectorised_blocks(blocks, block_bits, scale)
    if library_way.any():
        marked[library_way] = _library_blocks(blocks[library_way], block_bits[library_way], scale)
    area[...] = marked.reshape(rows, cols, BLOCK, BLOCK).swapaxes(1, 2).reshape(rows * BLOCK, cols * BLOCK)


_HAAR_TAP = np.float32(np.sqrt(0.5))  # PyWavelets' Haar filter taps (±1/√2), as it holds them for float32 data


def _haar_forward(plane: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``pywt.dwt2(plane, "haar")`` of an even-sided float32 plane: (approximation, (horizontal, vertical, diagonal)).
    PyWavelets filters along rows of pixels, then columns, each output the sum of two tap·value products, each product
    rounded to float32: the same operations here (a product is rounded the same wherever it is computed), so the same
    bits (tests/server/test_provenance.py checks it), in a fifth of its time."""
    scaled = plane * _HAAR_TAP  # H×W
    even, odd = scaled[0::2], scaled[1::2]
    low, high = (odd + even) * _HAAR_TAP, (even - odd) * _HAAR_TAP  # H/2×W each
    approx, vertical = low[:, 1::2] + low[:, 0::2], low[:, 0::2] - low[:, 1::2]  # H/2×W/2 each
    horizontal, diagonal = high[:, 1::2] + high[:, 0::2], high[:, 0::2] - high[:, 1::2]
    return approx, (horizontal, vertical, diagonal)


def _haar_inverse(approx: np.ndarray, horizontal: np.ndarray, vertical: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
    """``pywt.idwt2((approx, (horizontal, vertical, diagonal)), "haar")``, float32, the same operations and bits."""
    height, width = approx.shape
    a, h, v, d = (band * _HAAR_TAP for band in (approx, horizontal, vertical, diagonal))
    low, high = np.empty((height, 2 * width), np.float32), np.empty((height, 2 * width), np.float32)
    low[:, 0::2], low[:, 1::2], high[:, 0::2], high[:, 1::2] = a + v, a - v, h + d, h - d
    low *= _HAAR_TAP
    high *= _HAAR_TAP
    plane = np.empty((2 * height, 2 * width), np.float32)
    plane[0::2], plane[1::2] = low + high, low - high
    return plane


def _mark_yuv(yuv: np.ndarray, bits: list[int], *, exact: bool) -> None:
    """The library's ``EmbedDwtDctSvd.encode`` between its two colour conversions, with scales [0, SCALE, 0] and block
    BLOCK, vectorised: the U plane of an H×W×3 float32 YUV picture marked in place."""
    top, left = yuv.shape[0] // 4 * 4, yuv.shape[1] // 4 * 4
    approx, (horizontal, vertical, diagonal) = _haar_forward(yuv[:top, :left, 1])  # H/2×W/2 each
    _mark_band(approx, np.asarray(bits, np.int64), SCALE, exact=exact)
    # The library hands the detail bands back with horizontal and vertical swapped; so does this, to mark as it does.
    yuv[:top, :left, 1] = _haar_inverse(approx, vertical, horizontal, diagonal)


def _checked_module(pixels: np.ndarray) -> ModuleType:
    module, problem = _load()
    if module is None:
        raise RuntimeError(f"watermark unavailable: {problem}")
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise ValueError(f"watermark_texture takes H×W×3 or ×4 uint8, got {pixels.dtype} {pixels.shape}")
    return module


def watermark_texture(pixels: np.ndarray, avatar_id: int, *, exact: bool = False) -> np.ndarray:
    """H×W×4 (or ×3) uint8 -> the same with the watermark in its colour (alpha untouched): the library's method,
    vectorised (module docstring); ``exact`` does every block the library's way (slower; the library's bits).
    RuntimeError when the library is unavailable (callers check ``unavailable()`` first): its decoder reads the mark."""
    import cv2

    _checked_module(pixels)
    bits = payload_bits(avatar_id)
    pixels = np.ascontiguousarray(pixels)
    # The float route of watermark_texture_library, bit for bit, with fewer passes: BGR float32 in [0, 1] (as
    # _as_bgr_float), OpenCV's YUV and back (YUV2RGB is YUV2BGR with the channels reversed), x·255 + 0.5, clipped,
    # truncated to uint8.
    to_bgr = cv2.COLOR_RGBA2BGR if pixels.shape[2] == 4 else cv2.COLOR_RGB2BGR
    bgr = np.multiply(cv2.cvtColor(pixels, to_bgr), np.float32(1.0 / 255.0), dtype=np.float32)
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    _mark_yuv(yuv, bits, exact=exact)
    rgb = cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB)
    rgb *= 255.0
    rgb += 0.5
    np.clip(rgb, 0.0, 255.0, out=rgb)
    colour = rgb.astype(np.uint8)
    if pixels.shape[2] == 3:
        return colour
    out = cv2.cvtColor(colour, cv2.COLOR_RGB2RGBA)  # much faster than writing the colour into a copy's strided channels
    out[:, :, 3] = pixels[:, :, 3]
    return out


def watermark_texture_library(pixels: np.ndarray, avatar_id: int) -> np.ndarray:
    """``watermark_texture`` by the library's own embedder (its Python loop over blocks, PyWavelets, the original float
    route): the reference the vectorised one is checked against, and the bench's "before"."""
    module = _checked_module(pixels)
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
