"""`megalive-train prepare SRC DST`: real videos -> aligned face crops, landmarks and masks (DESIGN.md §5).

Input. SRC is searched recursively (hidden entries skipped). Every video file (.mp4 .mov .mkv .avi .webm .m4v,
decoded by imageio-ffmpeg's bundled ffmpeg) is one video; every folder that directly holds PNG/JPEG images is one
video too, its frames in natural order (frame2 before frame10), all of one size. VoxCeleb-style trees
(SRC/person/video/clip.mp4) are welcome: the first path component under SRC is taken as the person, so cross
drivers can come from another person (a file or frame folder right under SRC is its own person).

Per video (one worker process each; mediapipe's graphs are made inside the worker, per video, because the face
mesh tracks across the frames of one stream):

1. Decode every frame; mediapipe's face mesh (legacy ``mp.solutions.face_mesh``, bundled in the 0.10.21 wheel,
   478 points) finds the face; ``MEDIAPIPE_TO_IBUG68`` picks the 68 iBUG landmarks. The square box that carries
   them onto the canonical ones (``contract.landmarks``) by a least-squares scale + shift (no rotation: head roll
   is motion the model must see) frames the face the way SyntheticHeads frames its heads. The mesh's 468 points
   (x, y) are kept too, for the head pose.
2. Frames where no face is found take their box, landmarks and mesh points by linear interpolation from the
   nearest frames that have one (held at the ends) and are marked in ``face_found``.
3. The box track (cx, cy, side) is smoothed over the whole video, non-causally: a Savitzky-Golay fit (a local
   quadratic over ``smoothing_seconds``), which removes the mesh's pixel jitter without the lag a causal filter
   (the server's One-Euro) must accept, and without flattening real head motion as a moving average would.
   The head pose of every frame is solved from its mesh points in its crop (models/data/face_pose.py: mediapipe's
   canonical face mesh fitted by weak perspective), in the renderer's convention: the labels the head-pose network
   learns from real video (DESIGN.md §4.1). The canonical mesh comes from the nets folder (``make nets``).
4. Decode again, crop each frame with its smoothed box (bilinear, antialiased when shrinking, edge-replicated
   where the box leaves the frame), and run mediapipe's selfie segmentation on the crop (the general 256×256
   model: a head-and-shoulders crop is what it was made for) for the foreground mask.

Decoding twice instead of holding the video: a minute of 1080p is 9 GB of RGB; a second decode costs far less
than the mesh.

Output layout of DST (written under a temporary name beside it and renamed when complete, so a crash or Ctrl-C
never leaves a half-written dataset under the final name; DST must not exist):

    meta.json                     format, version, resolution, the producing command, the config, the prepared
                                  videos (name, source, person, frames, source size, fps, face fraction) and the
                                  skipped ones ({source, reason}: unreadable, empty, no video stream, too few
                                  frames, no face in enough frames, frames of mixed sizes, ...); ``poses``: how
                                  poses.npy was solved (its labels, convention and canonical mesh)
    preview.png                   a few crops per video with the mask (background dimmed) and the 68 landmarks
    videos/<name>/frames.npy      N×S×S×3 uint8   RGB crops
    videos/<name>/masks.npy       N×S×S   uint8   foreground probability × 255 (selfie segmentation of the crop)
    videos/<name>/landmarks.npy   N×68×2  float32 iBUG order, x right / y down in crop units ([0, 1] over the crop)
    videos/<name>/boxes.npy       N×3     float32 smoothed box (centre x, centre y, side) in source pixels
    videos/<name>/face_found.npy  N       bool    False: box and landmarks interpolated from neighbouring frames
    videos/<name>/poses.npy       N×6     float32 head pose over the crop: yaw, pitch, roll (radians), tx, ty, scale
                                                  (head_pose.py's convention; read by face_pose.load_poses)

Frames as one uint8 .npy per video rather than PNGs: a training sample needs two random frames of one video and
one of another; a memory-mapped array gives any frame without decoding, and its pages are shared by every
DataLoader worker. The price is disk: S=256 costs 192 KiB a frame (4.8 MB per second of 25 fps video); ``every``
keeps every k-th frame.

A bad input never stops the run: each is listed in meta.json's ``skipped`` with a one-line reason, and the rest
is prepared. Only when nothing at all could be prepared is it an error (and nothing is written).

This module needs numpy, Pillow, imageio-ffmpeg, tqdm and mediapipe (imported in the workers), not torch: workers
start fast under spawn.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

# The 68-point table, the canonical framing and the box fit are the server's too (one copy, in contract/).
from contract.landmarks import MEDIAPIPE_TO_IBUG68, crop_box_from_landmarks, crop_square
from models.config_checks import check_ranges
from models.data.face_pose import GEOMETRY_FILE, MESH_VERTICES, POSE_NAMES, CanonicalFace, canonical_face, solve_head_pose
from models.nets.weights import FILES, NetWeightsError

PREPARED_FORMAT = "megalive-video-crops"
PREPARED_VERSION = 1
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VIDEO_FILES = ("frames.npy", "masks.npy", "landmarks.npy", "boxes.npy", "face_found.npy", "poses.npy")


class PrepareError(Exception):
    """Preparation cannot start or produced nothing; one line for the user (nothing was written)."""


class UnusableVideo(Exception):
    """This one input cannot be prepared; the message is the reason listed in meta.json."""


@dataclass(frozen=True, kw_only=True)
class PrepareConfig:
    resolution: int = 256  # S: side of the square crops in pixels
    min_face_fraction: float = 0.5  # a video whose face is found in fewer of its frames is skipped
    every: int = 1  # keep every k-th frame (thins 50/60 fps video and saves disk)
    smoothing_seconds: float = 0.5  # span of the Savitzky-Golay fit of the box track (0: no smoothing)
    frame_folder_fps: float = 25.0  # frame rate assumed for frame folders (it only sets the smoothing span)
    min_detection_confidence: float = 0.5  # mediapipe face mesh
    min_tracking_confidence: float = 0.5

    def __post_init__(self) -> None:
        check_ranges(self, (
            ("resolution", not 32 <= self.resolution <= 1024, "must be in [32, 1024]"),
            ("min_face_fraction", not 0.0 <= self.min_face_fraction <= 1.0, "must be in [0, 1]"),
            ("every", not self.every >= 1, "must be at least 1"),
            ("smoothing_seconds", not 0.0 <= self.smoothing_seconds <= 10.0, "must be in [0, 10]"),
            ("frame_folder_fps", not self.frame_folder_fps > 0, "must be positive"),
            ("min_detection_confidence", not 0.0 <= self.min_detection_confidence <= 1.0, "must be in [0, 1]"),
            ("min_tracking_confidence", not 0.0 <= self.min_tracking_confidence <= 1.0, "must be in [0, 1]"),
        ))  # fmt: skip


@dataclass(frozen=True)
class VideoInput:
    """One input: a video file or a folder of frames."""

    path: Path  # absolute
    source: str  # path relative to SRC ("." for SRC itself), as listed in meta.json
    kind: Literal["video", "frames"]
    name: str  # its folder under DST/videos
    person: str  # first path component under SRC (cross drivers prefer another person)


@dataclass(frozen=True)
class PreparedVideo:
    name: str
    source: str
    person: str
    frames: int
    source_size: tuple[int, int]  # width, height of the source frames
    fps: float  # of the kept frames
    face_fraction: float  # share of the kept frames where the mesh found a face


@dataclass(frozen=True)
class SkippedVideo:
    source: str
    reason: str


@dataclass(frozen=True)
class PrepareReport:
    root: Path
    videos: tuple[PreparedVideo, ...]
    skipped: tuple[SkippedVideo, ...]

    @property
    def frames(self) -> int:
        return sum(video.frames for video in self.videos)


# -- discovery ----------------------------------------------------------------------------------------------------


def natural_key(name: str) -> list[int | str]:
    """frame2 before frame10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def discover_inputs(src: Path) -> list[VideoInput]:
    """The videos and frame folders under ``src``, in a stable order, with unique output names."""
    src = Path(src)
    if not src.is_dir():
        raise PrepareError(f"{src}: no such folder")
    found: list[tuple[Path, Literal["video", "frames"]]] = []
    for folder, subfolders, files in os.walk(src):
        subfolders[:] = sorted((name for name in subfolders if not name.startswith(".")), key=natural_key)
        visible = [name for name in files if not name.startswith(".")]
        found += [(Path(folder) / name, "video") for name in sorted(visible, key=natural_key) if name.lower().endswith(VIDEO_SUFFIXES)]
        if any(name.lower().endswith(IMAGE_SUFFIXES) for name in visible):
            found.append((Path(folder), "frames"))
    inputs, used = [], set()
    for path, kind in found:
        relative = path.relative_to(src)
        parts = relative.parts
        stem = (*parts[:-1], Path(parts[-1]).stem if kind == "video" else parts[-1]) if parts else (src.resolve().name,)
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", "__".join(stem)).strip("._") or "video"
        unique, counter = name, 1
        while unique in used:  # clip.mp4 beside clip.mov, or clip.mp4 beside a folder clip/
            counter += 1
            unique = f"{name}-{counter}"
        used.add(unique)
        person = parts[0] if len(parts) > 1 else unique
        inputs.append(VideoInput(path=path.resolve(), source=relative.as_posix(), kind=kind, name=unique, person=person))
    return inputs


# -- decoding -----------------------------------------------------------------------------------------------------


def _ffmpeg_reason(error: Exception) -> str:
    """The telling line of an imageio-ffmpeg error (whose message carries ffmpeg's whole stderr)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = " ".join(lines)
    if "does not contain any stream" in text:
        return "no video stream"
    for line in reversed(lines):
        if "Error opening input:" in line or "Invalid data" in line or "error" in line.lower():
            return "unreadable: " + re.sub(r"^\[[^\]]*\]\s*", "", line)
    return "unreadable: " + (lines[0] if lines else type(error).__name__)


def open_video(path: Path) -> tuple[float, Iterator[np.ndarray]]:
    """The fps and the frames (H×W×3 uint8 RGB) of a video file; UnusableVideo when ffmpeg cannot open it."""
    import imageio_ffmpeg

    if path.stat().st_size == 0:
        raise UnusableVideo("empty file (0 bytes)")
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as error:
        reader.close()
        raise UnusableVideo(_ffmpeg_reason(error)) from None
    fps = float(meta.get("fps") or 0.0)
    width, height = (int(value) for value in meta["size"])

    def frames() -> Iterator[np.ndarray]:
        try:
            for raw in reader:
                if len(raw) != width * height * 3:
                    raise UnusableVideo(f"decoded a frame of {len(raw)} bytes, expected {width}×{height}×3")
                yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)  # bytes -> H×W×3
        except (OSError, RuntimeError) as error:
            raise UnusableVideo(_ffmpeg_reason(error)) from None
        finally:
            reader.close()

    return (fps if math.isfinite(fps) and fps > 0 else 25.0), frames()


def image_frames(folder: Path) -> Iterator[np.ndarray]:
    names = sorted(
        (name for name in os.listdir(folder) if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")), key=natural_key
    )
    size: tuple[int, int] | None = None
    for name in names:
        try:
            with Image.open(folder / name) as image:
                frame = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise UnusableVideo(f"unreadable image {name}: {error}") from None
        if size is None:
            size = frame.shape[1], frame.shape[0]
        elif (frame.shape[1], frame.shape[0]) != size:
            raise UnusableVideo(f"frames of mixed sizes ({size[0]}×{size[1]}, then {frame.shape[1]}×{frame.shape[0]} at {name})")
        yield frame


def _open(video: VideoInput, config: PrepareConfig) -> tuple[float, Iterator[np.ndarray]]:
    """The frame rate after thinning and the kept frames (H×W×3 uint8 RGB) of an input; UnusableVideo on unreadable or
    inconsistent data (raised here or while iterating)."""
    if video.kind == "frames":
        fps, frames = config.frame_folder_fps, image_frames(video.path)
    else:
        fps, frames = open_video(video.path)
    return fps / config.every, (frame for index, frame in enumerate(frames) if index % config.every == 0)


# -- geometry -----------------------------------------------------------------------------------------------------


def smooth_over_time(values: np.ndarray, *, window: int, order: int = 2) -> np.ndarray:
    """Savitzky-Golay smoothing of an N×C track: each row replaced by the value at its own time of the
    least-squares polynomial (degree ``order``) through the ``window`` rows around it. Near the ends the window
    slides inwards rather than shrinking, so the ends are fitted, not clamped."""
    values = np.asarray(values, dtype=np.float64)
    count = values.shape[0]
    window = min(window, count if count % 2 else count - 1)  # odd, at most N
    if window <= order:
        return values.copy()
    half = window // 2
    weights: dict[int, np.ndarray] = {}  # offset of the row within its window -> the window's weights
    smoothed = np.empty_like(values)
    for row in range(count):
        start = min(max(row - half, 0), count - window)
        offset = row - start
        if offset not in weights:
            design = np.vander(np.arange(window) - offset, order + 1, increasing=True)  # W×(order+1)
            weights[offset] = np.linalg.pinv(design)[0]  # the fitted constant term: the value at this row
        smoothed[row] = weights[offset] @ values[start : start + window]  # W @ W×C -> C
    return smoothed


def _interpolate_missing(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """N×... values with the rows where ``found`` is False replaced by linear interpolation over time between the
    nearest found rows (held constant beyond the first and last)."""
    flat = values.reshape(values.shape[0], -1)  # N×... -> N×C
    known = np.flatnonzero(found)
    everywhere = np.arange(values.shape[0])
    filled = np.stack([np.interp(everywhere, known, flat[known, column]) for column in range(flat.shape[1])], axis=1)
    return filled.reshape(values.shape)  # N×C -> N×...


# -- one video (runs in a worker) ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    video: VideoInput
    out_dir: Path  # DST's staging folder / videos / name
    config: PrepareConfig
    face: CanonicalFace  # read once by prepare_videos: the workers need no nets folder


@dataclass(frozen=True)
class _Outcome:
    prepared: PreparedVideo | None
    skipped: SkippedVideo | None


class _Graph(Protocol):
    """The part of mediapipe's legacy solutions (FaceMesh, SelfieSegmentation) used here."""

    def process(self, image: np.ndarray) -> Any: ...


def face_mesh_points(mesh: _Graph, frame: np.ndarray) -> np.ndarray | None:
    """The face mesh's points (478×2 source pixels, x and y; 468 without iris refinement) of the face in ``frame``,
    or None."""
    results = mesh.process(np.ascontiguousarray(frame))
    faces = getattr(results, "multi_face_landmarks", None)
    if not faces:
        return None
    height, width = frame.shape[:2]
    points = np.array([(point.x, point.y) for point in faces[0].landmark])  # 478×2 in [0, 1]
    return points * (width, height)  # 478×2 pixels


def face_landmarks(mesh: _Graph, frame: np.ndarray) -> np.ndarray | None:
    """The 68 iBUG landmarks (68×2 source pixels) of the face in ``frame``, or None."""
    points = face_mesh_points(mesh, frame)
    return None if points is None else points[list(MEDIAPIPE_TO_IBUG68)].astype(np.float64)  # 478×2 -> 68×2 pixels


def _track_faces(video: VideoInput, config: PrepareConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int], float]:
    """Pass 1: landmarks (N×68×2 source pixels, NaN where no face), mesh points (N×468×2 float32 source pixels, NaN
    where no face), found (N bool), the frame size and the kept frames' rate."""
    fps, frames = _open(video, config)  # an unreadable file fails here, before mediapipe is loaded
    import mediapipe

    landmarks, meshes, size = [], [], (0, 0)
    with mediapipe.solutions.face_mesh.FaceMesh(
        static_image_mode=False,  # video: tracks the face from frame to frame, detects again when lost
        max_num_faces=1,
        refine_landmarks=True,  # 478 points (iris), the indices MEDIAPIPE_TO_IBUG68 was measured on
        min_detection_confidence=config.min_detection_confidence,
        min_tracking_confidence=config.min_tracking_confidence,
    ) as mesh:
        for frame in frames:
            size = frame.shape[1], frame.shape[0]
            points = face_mesh_points(mesh, frame)
            landmarks.append(np.full((68, 2), np.nan) if points is None else points[list(MEDIAPIPE_TO_IBUG68)])
            meshes.append(np.full((MESH_VERTICES, 2), np.nan, np.float32) if points is None else points[:MESH_VERTICES].astype(np.float32))
    if not landmarks:
        raise UnusableVideo("no frames decoded")
    stacked = np.stack(landmarks)  # N×68×2
    return stacked, np.stack(meshes), ~np.isnan(stacked).any(axis=(1, 2)), size, fps


def _prepare_one(job: _Job) -> _Outcome:
    """Prepare one input into job.out_dir; a bad input comes back as a SkippedVideo (its folder removed)."""
    video, config = job.video, job.config
    try:
        return _Outcome(prepared=_prepare_into(video, job.out_dir, config, face=job.face), skipped=None)
    except UnusableVideo as reason:
        shutil.rmtree(job.out_dir, ignore_errors=True)
        return _Outcome(prepared=None, skipped=SkippedVideo(source=video.source, reason=str(reason)))


def _prepare_into(video: VideoInput, out_dir: Path, config: PrepareConfig, *, face: CanonicalFace) -> PreparedVideo:
    landmarks_px, mesh_px, found, size, fps = _track_faces(video, config)
    raw_boxes = np.zeros((len(found), 3))  # N×3; rows without a face are filled in below
    for index in np.flatnonzero(found):
        try:
            raw_boxes[index] = crop_box_from_landmarks(landmarks_px[index])
        except ValueError:  # a degenerate mesh (all points on a line) frames nothing: treat it as no face
            found[index] = False
    count, with_face = len(found), int(found.sum())
    if count < 2:
        raise UnusableVideo(f"only {count} frame (a source/driver pair needs 2)")
    if with_face == 0:
        raise UnusableVideo(f"no face found in any of {count} frames")
    fraction = with_face / count
    if with_face < 2 or fraction < config.min_face_fraction:
        raise UnusableVideo(f"a face in only {with_face} of {count} frames ({fraction:.0%}; the minimum is {config.min_face_fraction:.0%})")

    landmarks_px = _interpolate_missing(np.nan_to_num(landmarks_px), found)  # N×68×2
    boxes = _interpolate_missing(raw_boxes, found)
    window = 2 * round(config.smoothing_seconds * fps / 2) + 1  # odd, about smoothing_seconds long
    boxes = smooth_over_time(boxes, window=window)
    boxes[:, 2] = np.maximum(boxes[:, 2], 1.0)  # a fit never turns a box inside out
    origins = boxes[:, None, :2] - boxes[:, None, 2:] / 2  # N×1×2
    landmarks = ((landmarks_px - origins) / boxes[:, None, 2:]).astype(np.float32)  # N×68×2 in crop units
    mesh_px = _interpolate_missing(np.nan_to_num(mesh_px), found)  # N×468×2
    poses = solve_head_pose((mesh_px - origins) / boxes[:, None, 2:], face=face).astype(np.float32)  # N×468×2 crop units -> N×6

    out_dir.mkdir(parents=True)
    resolution = config.resolution
    frames = np.lib.format.open_memmap(out_dir / "frames.npy", mode="w+", dtype=np.uint8, shape=(count, resolution, resolution, 3))
    masks = np.lib.format.open_memmap(out_dir / "masks.npy", mode="w+", dtype=np.uint8, shape=(count, resolution, resolution))
    written = 0
    import mediapipe

    # Made per video, like the mesh, so nothing carries over from one video into the next.
    with mediapipe.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as segmentation:
        for index, frame in enumerate(_open(video, config)[1]):  # pass 2: crop and segment
            if index >= count:
                raise UnusableVideo(f"decoded {count} frames the first time and more the second")
            crop = crop_square(frame, tuple(boxes[index]), output_size=resolution)
            mask = segmentation.process(np.ascontiguousarray(crop)).segmentation_mask  # S×S float32 in [0, 1]
            frames[index] = crop
            masks[index] = np.clip(np.asarray(mask) * 255 + 0.5, 0, 255).astype(np.uint8)
            written = index + 1
    if written != count:
        raise UnusableVideo(f"decoded {count} frames the first time and {written} the second")
    frames.flush()
    masks.flush()
    del frames, masks  # unmap before the folder may be renamed
    np.save(out_dir / "landmarks.npy", landmarks, allow_pickle=False)
    np.save(out_dir / "boxes.npy", boxes.astype(np.float32), allow_pickle=False)
    np.save(out_dir / "face_found.npy", found, allow_pickle=False)
    np.save(out_dir / "poses.npy", poses, allow_pickle=False)
    return PreparedVideo(
        name=video.name,
        source=video.source,
        person=video.person,
        frames=count,
        source_size=size,
        fps=round(fps, 3),
        face_fraction=round(fraction, 4),
    )


# -- the whole folder ---------------------------------------------------------------------------------------------


def prepare_videos(
    src: Path, dst: Path, *, config: PrepareConfig = PrepareConfig(), workers: int = 1, command: str = "", progress: bool = True
) -> PrepareReport:
    """Prepare every video and frame folder under ``src`` into the new folder ``dst`` (layout: module docstring).

    ``workers`` processes (spawned; 1: in this process) each take one video at a time. Raises PrepareError when
    ``src`` is missing or holds no inputs, ``dst`` exists, the canonical face mesh is not installed (``make nets``),
    or no input could be prepared; in each case nothing is left behind.
    """
    src, dst = Path(src), Path(dst)
    if workers < 1:
        raise PrepareError(f"workers must be at least 1, got {workers}")
    if dst.exists():
        raise PrepareError(f"{dst} exists already; choose a new folder (nothing was overwritten)")
    inputs = discover_inputs(src)
    if not inputs:
        raise PrepareError(f"{src}: no videos ({' '.join(VIDEO_SUFFIXES)}) or folders of PNG/JPEG frames found")
    try:
        face = canonical_face()  # before any work: every video's poses are solved against it
    except NetWeightsError as error:
        raise PrepareError(f"cannot solve head poses: {error}") from None
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.partial-", dir=dst.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a dataset is ordinary data
    try:
        jobs = [_Job(video=video, out_dir=staging / "videos" / video.name, config=config, face=face) for video in inputs]
        outcomes = _run_jobs(jobs, workers=workers, progress=progress)
        prepared = sorted((o.prepared for o in outcomes if o.prepared is not None), key=lambda video: video.name)
        skipped = sorted((o.skipped for o in outcomes if o.skipped is not None), key=lambda video: video.source)
        if not prepared:
            first = skipped[0]
            raise PrepareError(f"no video could be prepared: all {len(skipped)} skipped (e.g. {first.source}: {first.reason})")
        meta = {
            "format": PREPARED_FORMAT,
            "version": PREPARED_VERSION,
            "resolution": config.resolution,
            "command": command,
            "source": str(src),
            "config": asdict(config),
            "videos": [asdict(video) for video in prepared],
            "poses": {
                "file": "poses.npy",
                "labels": list(POSE_NAMES),
                "convention": "over each crop: x right, y up over [-1, 1]; R = Rz(roll)·Ry(yaw)·Rx(-pitch); scale = skull "
                "half-height in image half-heights (models/megaportraits/head_pose.py)",
                "solver": "weak-perspective fit of mediapipe's canonical face mesh (models/data/face_pose.py)",
                "canonical_mesh": FILES[GEOMETRY_FILE].source,
            },
            "skipped": [asdict(video) for video in skipped],
        }
        _write_preview(staging, prepared, path=staging / "preview.png")
        (staging / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        staging.rename(dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return PrepareReport(root=dst, videos=tuple(prepared), skipped=tuple(skipped))


def _run_jobs(jobs: list[_Job], *, workers: int, progress: bool) -> list[_Outcome]:
    outcomes: list[_Outcome] = []
    with tqdm(total=len(jobs), desc="preparing videos", unit="video", disable=not progress) as bar:

        def record(outcome: _Outcome) -> None:
            outcomes.append(outcome)
            bar.update(1)
            bar.set_postfix(skipped=sum(o.skipped is not None for o in outcomes))

        if workers == 1:
            for job in jobs:
                record(_prepare_one(job))
        else:
            # spawn: mediapipe's graphs and threads do not survive fork; each worker imports this module afresh.
            context = multiprocessing.get_context("spawn")
            with context.Pool(processes=min(workers, len(jobs))) as pool:
                for outcome in pool.imap_unordered(_prepare_one, jobs):
                    record(outcome)
    return outcomes


def _write_preview(root: Path, videos: list[PreparedVideo], *, path: Path, rows: int = 8, columns: int = 4) -> None:
    """Up to ``rows`` videos × ``columns`` evenly spaced frames: background dimmed by the mask, landmarks in red."""
    tiles = []
    for video in videos[:rows]:
        folder = root / "videos" / video.name
        frames = np.load(folder / "frames.npy", mmap_mode="r")  # N×S×S×3
        masks = np.load(folder / "masks.npy", mmap_mode="r")  # N×S×S
        landmarks = np.load(folder / "landmarks.npy")  # N×68×2
        size = frames.shape[1]
        row = []
        for index in np.linspace(0, video.frames - 1, columns).round().astype(int):
            alpha = masks[index, :, :, None].astype(np.float32) / 255  # S×S -> S×S×1
            tile = (np.asarray(frames[index], dtype=np.float32) * (0.3 + 0.7 * alpha)).astype(np.uint8)
            points = np.clip((landmarks[index] * size).astype(int), 0, size - 1)  # 68×2 pixels
            tile[points[:, 1], points[:, 0]] = (255, 0, 0)
            row.append(tile)
        tiles.append(np.concatenate(row, axis=1))  # columns × S×S×3 -> S×(columns·S)×3
    Image.fromarray(np.concatenate(tiles, axis=0)).save(path, format="PNG")  # rows × S×(c·S)×3 -> (r·S)×(c·S)×3
