"""`megalive demo`: a driver clip through a real server to every avatar, written as a video.

The server runs as a subprocess on loopback (the same `megalive serve` a user runs); this process is
an ordinary AvatarClient with one session per avatar. Two pacings:

- `every` (default): each clip frame goes to every session as soon as its in-flight window allows,
  so every frame is rendered and the video is complete; the figures are the server's throughput.
- `realtime`: frames are offered at the clip's own rate, as a live performer would; the server keeps
  the newest (latest wins), and the video holds each avatar's newest texture at each clip frame.

Each output row shows the driver and the avatars it drives (up to four per row).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg
import numpy as np
from PIL import Image
from tqdm import tqdm

from client.client import AvatarClient, Texture
from server.bench import REPO_ROOT, start_server, stop_server
from server.engine import load_model_card

DEFAULT_CLIP = REPO_ROOT / "assets" / "default" / "driver.mp4"
AVATARS_PER_ROW = 4
PACINGS = ("every", "realtime")


class DemoError(Exception):
    """A demo that cannot run; one line for the user."""


@dataclass(frozen=True)
class DemoConfig:
    model: Path
    clip: Path = DEFAULT_CLIP
    out_dir: Path = REPO_ROOT / "out"
    pacing: str = "every"
    max_avatars: int = 8
    window: int = 2
    timeout_s: float = 10.0
    signing: tuple[Path, Path] | None = None  # (certificate chain, key): demo.mp4 gets a C2PA manifest (server/manifest.py)


@dataclass(frozen=True)
class DemoReport:
    video: Path
    still: Path
    clip_frames: int
    avatars: int
    textures: int
    dropped: int
    seconds: float
    latencies_ms: tuple[float, ...]

    def summary(self) -> str:
        p50, p99 = (np.percentile(self.latencies_ms, q) for q in (50, 99)) if self.latencies_ms else (math.nan, math.nan)
        return (
            f"{self.clip_frames} clip frames × {self.avatars} avatars in {self.seconds:.1f} s: "
            f"{self.textures / self.seconds:.1f} textures/s ({self.clip_frames / self.seconds:.1f} clip frames/s), "
            f"round trip p50 {p50:.1f} ms / p99 {p99:.1f} ms, {self.dropped} dropped\n"
            f"wrote {self.video} and {self.still}"
        )


def read_clip(path: Path) -> tuple[list[np.ndarray], float]:
    """All frames (H×W×3 uint8) and the frame rate of a video file, or of a folder of images at 25 fps."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise DemoError(f"no PNG/JPEG frames in {path}")
        return [np.asarray(Image.open(f).convert("RGB")) for f in files], 25.0
    if not path.is_file():
        raise DemoError(f"driver clip not found: {path}")
    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        width, height = meta["size"]
        frames = [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader]
    except (RuntimeError, OSError, StopIteration) as error:
        raise DemoError(f"cannot read driver clip {path}: {error}") from None
    if not frames:
        raise DemoError(f"driver clip {path} has no frames")
    return frames, float(meta.get("fps") or 25.0)


def compose_row_frame(driver: np.ndarray, textures: list[np.ndarray | None], tile: int) -> np.ndarray:
    """Rows of [driver | up to 4 avatars] on black; alpha composited over mid grey. -> H×W×3 uint8."""
    rows = max(1, math.ceil(len(textures) / AVATARS_PER_ROW))
    columns = 1 + min(len(textures), AVATARS_PER_ROW)
    canvas = np.zeros((rows * tile, columns * tile, 3), np.uint8)
    driver_tile = np.asarray(Image.fromarray(driver).resize((tile, tile), Image.BILINEAR))
    for row in range(rows):
        canvas[row * tile : (row + 1) * tile, :tile] = driver_tile
    for index, texture in enumerate(textures):
        if texture is None:
            continue
        row, column = divmod(index, AVATARS_PER_ROW)
        rgb = texture[:, :, :3].astype(np.float32)
        alpha = texture[:, :, 3:4].astype(np.float32) / 255.0
        composited = (rgb * alpha + 128.0 * (1 - alpha)).astype(np.uint8)
        canvas[row * tile : (row + 1) * tile, (column + 1) * tile : (column + 2) * tile] = composited
    return canvas


def write_video(frames: list[np.ndarray], path: Path, fps: float) -> None:
    """H.264 MP4 through the ffmpeg that imageio-ffmpeg bundles; temporary name, then rename."""
    height, width = frames[0].shape[:2]
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    writer = imageio_ffmpeg.write_frames(
        str(temporary), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=2, ffmpeg_log_level="error"
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    temporary.replace(path)


def run_demo(config: DemoConfig, *, progress: bool = True) -> DemoReport:
    if config.pacing not in PACINGS:
        raise DemoError(f"unknown pacing {config.pacing!r} (known: {', '.join(PACINGS)})")
    card = load_model_card(config.model)
    frames, fps = read_clip(config.clip)
    avatars = min(config.max_avatars, card.num_avatars)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    process, address = start_server(config.model, threads=0)
    try:
        # `every` keeps one frame in flight per session: a second one could supersede the first before the
        # worker claims it (latest wins), and this pacing promises every frame. Sessions still batch.
        window = 1 if config.pacing == "every" else config.window
        with AvatarClient(address=address, max_in_flight=window, timeout_s=config.timeout_s, name="megalive-demo") as client:
            client.hello()
            sessions = [client.open(avatar=a) for a in range(avatars)]
            stream = _stream_every if config.pacing == "every" else _stream_realtime
            began = time.perf_counter()
            rendered, latencies, dropped = stream(client, sessions, frames, fps, progress)
            seconds = time.perf_counter() - began
    finally:
        stop_server(process)
    tile = card.resolution[0]
    newest: list[np.ndarray | None] = [None] * avatars
    video_frames = []
    for index, driver in enumerate(frames):
        for slot in range(avatars):
            newest[slot] = rendered[slot].get(index, newest[slot])  # hold the newest texture so far
        video_frames.append(compose_row_frame(driver, newest, tile))
    video, still = config.out_dir / "demo.mp4", config.out_dir / "demo.png"
    write_video(video_frames, video, fps)
    if config.signing is not None:
        from server.manifest import AvatarNote, sign_file

        # The demo drives the model's own avatars (ids 0..), the synthetic ones it ships: no person, no consent record.
        notes = [AvatarNote(id=a, name=card.avatar_names[a], consent_sha256=None) for a in range(avatars)]
        sign_file(video, video, avatars=notes, cert_path=config.signing[0], key_path=config.signing[1])
    temporary = still.with_name(f".{still.name}.tmp")
    Image.fromarray(video_frames[len(video_frames) // 2]).save(temporary, format="PNG")
    temporary.replace(still)
    return DemoReport(
        video=video,
        still=still,
        clip_frames=len(frames),
        avatars=avatars,
        textures=sum(len(r) for r in rendered),
        dropped=dropped,
        seconds=seconds,
        latencies_ms=tuple(latencies),
    )


def _collect(
    client: AvatarClient,
    sessions: list[int],
    frame_of_seq: list[dict[int, int]],
    rendered: list[dict[int, np.ndarray]],
    latencies: list[float],
    timeout_ms: int,
) -> int:
    """Poll once; store textures by the clip frame they render; return how many frames were dropped."""
    dropped = 0
    for event in client.poll(timeout_ms=timeout_ms):
        slot = sessions.index(event.session)
        frame = frame_of_seq[slot].pop(event.seq, None)
        if isinstance(event, Texture) and frame is not None:
            rendered[slot][frame] = event.buffer.array()
            latencies.append(event.round_trip_ms)
        else:
            dropped += 1  # superseded (latest wins) or refused: the video holds the previous texture
    return dropped


def _stream_every(
    client: AvatarClient, sessions: list[int], frames: list[np.ndarray], fps: float, progress: bool
) -> tuple[list[dict[int, np.ndarray]], list[float], int]:
    rendered: list[dict[int, np.ndarray]] = [{} for _ in sessions]
    frame_of_seq: list[dict[int, int]] = [{} for _ in sessions]
    latencies: list[float] = []
    next_frame = [0] * len(sessions)
    dropped = 0
    with tqdm(total=len(frames) * len(sessions), desc="streaming", unit="tex", disable=not progress) as bar:
        while sum(len(r) for r in rendered) + dropped < len(frames) * len(sessions):
            for slot, session in enumerate(sessions):
                while next_frame[slot] < len(frames) and client.can_send(session):
                    frame_of_seq[slot][client.send_frame(session, frames[next_frame[slot]])] = next_frame[slot]
                    next_frame[slot] += 1
            before = sum(len(r) for r in rendered) + dropped
            dropped += _collect(client, sessions, frame_of_seq, rendered, latencies, timeout_ms=50)
            bar.update(sum(len(r) for r in rendered) + dropped - before)
    return rendered, latencies, dropped


def _stream_realtime(
    client: AvatarClient, sessions: list[int], frames: list[np.ndarray], fps: float, progress: bool
) -> tuple[list[dict[int, np.ndarray]], list[float], int]:
    rendered: list[dict[int, np.ndarray]] = [{} for _ in sessions]
    frame_of_seq: list[dict[int, int]] = [{} for _ in sessions]
    latencies: list[float] = []
    dropped = 0
    began = time.perf_counter()
    sent_frame = [-1] * len(sessions)
    with tqdm(total=len(frames), desc="streaming (real time)", unit="frame", disable=not progress) as bar:
        while (current := int((time.perf_counter() - began) * fps)) < len(frames):
            for slot, session in enumerate(sessions):
                if sent_frame[slot] < current and client.can_send(session):
                    frame_of_seq[slot][client.send_frame(session, frames[current])] = current
                    sent_frame[slot] = current
            dropped += _collect(client, sessions, frame_of_seq, rendered, latencies, timeout_ms=2)
            bar.n = current
            bar.update(0)
        deadline = time.perf_counter() + 5.0
        while any(client.in_flight(s) for s in sessions) and time.perf_counter() < deadline:
            dropped += _collect(client, sessions, frame_of_seq, rendered, latencies, timeout_ms=50)
    return rendered, latencies, dropped
