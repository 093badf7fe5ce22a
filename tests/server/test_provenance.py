"""Provenance (issue 15): the invisible watermark on real rendered frames (round trip, JPEG 75, a 50 % resize, no
false positive), the server's `--no-watermark` and its report in hello/stats, `megalive verify`, and C2PA."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server import imaging, provenance
from server.engine import SHIPPED_MODEL, Engine

pytestmark = pytest.mark.skipif(provenance.unavailable() is not None, reason=f"watermark library: {provenance.unavailable()}")


@pytest.fixture(scope="module")
def shipped_engine() -> Engine:
    return Engine(model_path=SHIPPED_MODEL, max_batch=4)


@pytest.fixture(scope="module")
def rendered(shipped_engine: Engine) -> list[tuple[int, np.ndarray]]:
    """Six textures (H×W×4 uint8) of the shipped model, driven by frames of its driver clip: (avatar, pixels)."""
    from server.demo import read_clip

    frames, _ = read_clip(SHIPPED_MODEL.parent / "driver.mp4")
    out = []
    for index in range(6):
        driver = imaging.resize_rgb(frames[index * 7 % len(frames)], shipped_engine.resolution)
        avatar = index % shipped_engine.num_avatars
        output = shipped_engine.run(imaging.to_engine_batch([driver]), np.array([avatar]))
        out.append((avatar, imaging.to_texture_pixels(output.rgb, output.alpha)[0]))
    return out


def jpeg_75(rgb: np.ndarray) -> np.ndarray:
    encoded = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[:, :, :3])).save(encoded, format="JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(encoded.getvalue())).convert("RGB"))


def half_size(rgb: np.ndarray) -> np.ndarray:
    height, width = rgb.shape[:2]
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb[:, :, :3])).resize((width // 2, height // 2), Image.BILINEAR))


def test_payload_round_trip_and_magic() -> None:
    for avatar in (0, 7, 255, 0xFFFF):
        assert provenance.decode_payload(provenance.payload_bits(avatar)) == avatar
    bits = provenance.payload_bits(3)
    bits[0] ^= 1  # one bit of the magic wrong: not ours
    assert provenance.decode_payload(bits) is None
    with pytest.raises(ValueError):
        provenance.payload_bits(0x10000)


def test_watermark_survives_png_jpeg_75_and_half_size_on_rendered_frames(rendered: list[tuple[int, np.ndarray]], tmp_path: Path) -> None:
    for avatar, texture in rendered:
        marked = provenance.watermark_texture(texture, avatar + 40)
        assert marked.shape == texture.shape and marked.dtype == np.uint8
        assert np.array_equal(marked[:, :, 3], texture[:, :, 3])  # alpha untouched
        difference = marked[:, :, :3].astype(float) - texture[:, :, :3]
        assert 10 * np.log10(255.0**2 / np.mean(difference**2)) > 35.0  # PSNR: invisible, not a pattern painted on
        png = tmp_path / "marked.png"
        Image.fromarray(marked).save(png)
        assert provenance.read_watermark(np.asarray(Image.open(png))) == avatar + 40
        assert provenance.read_watermark(jpeg_75(marked)) == avatar + 40
        assert provenance.read_watermark(half_size(marked)) == avatar + 40


def smooth_picture(height: int, width: int, seed: int) -> np.ndarray:
    """H×W×4 uint8: random colours on a coarse grid, cubic-upsampled (smooth like a render), alpha varying too."""
    import cv2

    coarse = np.random.default_rng(seed).integers(0, 256, (height // 24 + 2, width // 24 + 2, 4)).astype(np.uint8)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)


# What the vectorised embedder may differ from the library's by (server/provenance.py): float rounding only, so 1 level
# where a value lands within about 1e-4 of a rounding boundary. Measured: 0 to 8 values per texture, at most 2.5e-5 of
# them (256×384: 7 of 294 912); asserted: at most 1 level, on at most 1e-4 of the values.
MAX_DIFFERING_FRACTION = 1e-4


def assert_marks_as_the_library(texture: np.ndarray, avatar: int) -> np.ndarray:
    reference = provenance.watermark_texture_library(texture, avatar)
    assert np.array_equal(provenance.watermark_texture(texture, avatar, exact=True), reference)  # bit for bit
    marked = provenance.watermark_texture(texture, avatar)
    assert marked.shape == texture.shape and marked.dtype == np.uint8
    difference = np.abs(marked.astype(np.int16) - reference)
    assert difference.max() <= 1 and np.count_nonzero(difference) <= MAX_DIFFERING_FRACTION * difference.size
    assert np.array_equal(marked[:, :, 3:], texture[:, :, 3:])  # alpha untouched
    assert not np.array_equal(marked, texture)  # it did mark
    return marked


@pytest.mark.parametrize(("height", "width"), [(256, 256), (512, 512), (256, 384), (202, 301)])
def test_vectorised_embedder_marks_smooth_pictures_as_the_library_does(height: int, width: int) -> None:
    for seed, avatar in ((height + width, 7), (1, 0xFFFF)):
        texture = smooth_picture(height, width, seed)
        marked = assert_marks_as_the_library(texture, avatar)
        assert provenance.read_watermark(marked) == avatar  # the library's decoder reads it
    rgb = np.ascontiguousarray(texture[:, :, :3])  # ×3 pictures too
    assert_marks_as_the_library(rgb, 9)


def test_vectorised_embedder_marks_rendered_textures_as_the_library_does(rendered: list[tuple[int, np.ndarray]]) -> None:
    import cv2

    for avatar, texture in rendered[:3]:
        assert provenance.read_watermark(assert_marks_as_the_library(texture, avatar)) == avatar
    avatar, texture = rendered[3]
    large = cv2.resize(texture, (512, 512), interpolation=cv2.INTER_CUBIC)  # a session at 512: marked after the resize
    assert provenance.read_watermark(assert_marks_as_the_library(large, avatar)) == avatar
    saturated = np.zeros((256, 256, 4), np.uint8)
    saturated[:, :128, 0], saturated[:, :, 3] = 255, 255  # pure red beside black: U and V at their extremes
    marked = assert_marks_as_the_library(saturated, 12)
    # Neither mark survives the final clipping to 0..255 there (the method's limit, not this embedder's).
    assert provenance.read_watermark(marked) is provenance.read_watermark(provenance.watermark_texture_library(saturated, 12)) is None


def test_haar_transforms_are_pywavelets_bit_for_bit() -> None:
    import pywt

    rng = np.random.default_rng(3)
    for shape in ((256, 256), (100, 152)):
        plane = rng.random(shape, dtype=np.float32)
        approx, details = provenance._haar_forward(plane)
        expected_approx, expected_details = pywt.dwt2(plane, "haar")
        assert all(np.array_equal(a, b) for a, b in zip((approx, *details), (expected_approx, *expected_details), strict=True))
        changed = approx + rng.random(approx.shape, dtype=np.float32)
        swapped = (details[1], details[0], details[2])
        assert np.array_equal(provenance._haar_inverse(changed, *swapped), pywt.idwt2((changed, swapped), "haar"))


def test_blocks_the_power_iteration_cannot_settle_are_marked_the_library_s_way() -> None:
    """A band of 8×8 blocks: smooth ones (vectorised); ones whose s0 sits on a quantisation step, where float32 rounding
    decides the side (the library's s0 is LAPACK's in float32); ones whose top singular values are equal (no top singular
    vector to converge to). The band comes out as the library's encode_frame makes it."""
    import cv2

    module, _ = provenance._load()
    rng = np.random.default_rng(4)
    blocks = 1.0 + 0.05 * rng.standard_normal((64, 8, 8)).astype(np.float32)  # 64 blocks, DC-dominated like chroma
    on_step = [5, 9, 40, 41, 42, 43]
    for index in on_step:  # scaled so that s0 is a whole number of steps, to float32 precision
        s0 = np.linalg.svd(blocks[index].astype(np.float64), compute_uv=False)[0]
        blocks[index] *= np.float32(np.round(s0 / provenance.SCALE) * provenance.SCALE / s0)
    blocks[20] = np.eye(8, dtype=np.float32) * 2  # eight equal singular values
    blocks[33] = np.kron(np.eye(2, dtype=np.float32), np.ones((4, 4), np.float32))  # two equal ones
    band = blocks.reshape(8, 8, 8, 8).swapaxes(1, 2).reshape(64, 64)
    bits = np.array(provenance.payload_bits(321))

    # On some of them the library's float32 s0 and the exact one are on different sides of the step.
    exact_s0 = np.linalg.svd(blocks[on_step].astype(np.float64), compute_uv=False)[:, 0]
    library_s0 = np.linalg.svd(np.stack([cv2.dct(block) for block in blocks[on_step]]))[1][:, 0].astype(np.float64)
    assert np.any(exact_s0 // provenance.SCALE != library_s0 // provenance.SCALE)
    _, library_way = provenance._vectorised_blocks(blocks, np.resize(bits, 64), provenance.SCALE)
    assert set(np.flatnonzero(library_way)) == {*on_step, 20, 33}

    expected = band.copy()
    provenance._embedder(module, list(bits)).encode_frame(expected, provenance.SCALE)
    exact, vectorised = band.copy(), band.copy()
    provenance._mark_band(exact, bits, provenance.SCALE, exact=True)
    provenance._mark_band(vectorised, bits, provenance.SCALE, exact=False)
    assert np.array_equal(exact, expected)
    assert np.abs(vectorised - expected).max() < 1e-5  # float32 rounding, against changes of up to 0.03
    settled_by_library = np.kron(library_way.reshape(8, 8), np.ones((8, 8))).astype(bool)
    assert np.array_equal(vectorised[settled_by_library], expected[settled_by_library])
    assert np.abs(expected - band).max() > 0.01


def test_no_false_positive_on_unmarked_pictures(rendered: list[tuple[int, np.ndarray]]) -> None:
    from server.demo import read_clip

    frames, _ = read_clip(SHIPPED_MODEL.parent / "driver.mp4")
    rng = np.random.default_rng(0)
    pictures = [texture for _, texture in rendered] + frames[::20] + [rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)]
    pictures += [np.zeros((256, 256, 3), np.uint8), np.full((300, 200, 3), 255, np.uint8)]
    assert [provenance.read_watermark(picture) for picture in pictures] == [None] * len(pictures)


def test_small_textures_are_reported_too_small() -> None:
    assert provenance.unavailable_for((256, 256)) is None
    assert "too small" in provenance.unavailable_for((32, 32))


@pytest.mark.parametrize("watermark", [True, False])
def test_server_marks_every_texture_unless_told_not_to_and_says_so(shipped_engine: Engine, watermark: bool) -> None:
    from client.client import AvatarClient
    from server.service import AvatarService, ServiceConfig
    from tests.server.test_service import render_one

    service = AvatarService(engine=shipped_engine, config=ServiceConfig(bind="tcp://127.0.0.1:*", max_batch=4, watermark=watermark))
    service.start()
    try:
        with AvatarClient(address=service.bound_address) as client:
            info = client.hello()
            assert info.capabilities["watermark"] == ("on" if watermark else "off")
            session = client.open(avatar=5, size=[512, 512])  # marked at the model's 256, then resized: still found
            texture = render_one(client, session, np.random.default_rng(1).integers(0, 256, (256, 256, 3), dtype=np.uint8))
            assert client.stats()["server"]["watermark"] == ("on" if watermark else "off")
    finally:
        service.stop()
    pixels = texture.buffer.array()
    assert pixels.shape == (512, 512, 4)
    assert provenance.read_watermark(pixels) == (5 if watermark else None)


def test_unavailable_library_is_reported_never_pretended(contract_model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from server.service import AvatarService, ServiceConfig

    small = AvatarService(engine=Engine(model_path=contract_model_path), config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    assert small.watermark_state.startswith("unavailable: the model's 32×32 textures are too small")
    assert not small.worker.watermark
    monkeypatch.setattr(provenance, "_loaded", (None, "the invisible-watermark package (imwatermark) is not installed"))
    service = AvatarService(engine=Engine(model_path=SHIPPED_MODEL), config=ServiceConfig(bind="tcp://127.0.0.1:*"))
    assert service.watermark_state == "unavailable: the invisible-watermark package (imwatermark) is not installed"
    assert not service.worker.watermark


def write_mp4(path: Path, frames: list[np.ndarray]) -> None:
    from server.demo import write_video

    write_video([np.ascontiguousarray(f[:, :, :3]) for f in frames], path, 25.0)


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from megalive.cli import main

    folder = tmp_path_factory.mktemp("signing")
    assert main(["keys", "signing", "--out", str(folder)]) == 0
    assert main(["keys", "signing", "--out", str(folder)]) == 2  # never overwrites a key
    key = folder / "megalive-signing.key"
    assert key.stat().st_mode & 0o777 == 0o600
    return folder / "megalive-signing.pem", key


def test_verify_png_jpeg_mp4_with_and_without_provenance(
    rendered: list[tuple[int, np.ndarray]], signing_keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import json

    from megalive.cli import main

    avatar, texture = rendered[1]
    marked = provenance.watermark_texture(texture, avatar)
    Image.fromarray(marked).save(tmp_path / "marked.png")
    Image.fromarray(np.ascontiguousarray(marked[:, :, :3])).save(tmp_path / "marked.jpg", quality=75)
    Image.fromarray(texture).save(tmp_path / "plain.png")
    Image.fromarray(np.ascontiguousarray(texture[:, :, :3])).save(tmp_path / "plain.jpg", quality=75)
    write_mp4(tmp_path / "marked.mp4", [provenance.watermark_texture(t, 4) for _, t in rendered])
    write_mp4(tmp_path / "plain.mp4", [t for _, t in rendered])
    marked_files = [tmp_path / name for name in ("marked.png", "marked.jpg", "marked.mp4")]
    plain_files = [tmp_path / name for name in ("plain.png", "plain.jpg", "plain.mp4")]

    assert main(["verify", *map(str, marked_files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [f"avatar {avatar})" in lines[0], f"avatar {avatar})" in lines[1], "avatar 4)" in lines[2]] == [True] * 3
    assert main(["verify", "--json", *map(str, plain_files)]) == 1
    verdicts = json.loads(capsys.readouterr().out)
    assert [(v["provenance"], v["watermark"], v["manifest"]["present"]) for v in verdicts] == [(False, None, False)] * 3

    # C2PA: the unmarked PNG and MP4 signed; valid (certificate untrusted: a local CA), then one tampered with.
    cert, key = signing_keys
    assert main(["sign", "--avatar", "2", "--signing-cert", str(cert), "--signing-key", str(key), *map(str, plain_files[::2])]) == 0
    capsys.readouterr()
    assert main(["verify", "--json", *map(str, plain_files[::2])]) == 0
    for verdict in json.loads(capsys.readouterr().out):
        report = verdict["manifest"]
        assert report["valid"] and not report["trusted"] and verdict["watermark"] is None
        assert report["tool"] == "MegaLive 0.1.0" and report["signer"].startswith("MegaLive signer")
        assert report["avatars"] == [{"id": 2, "name": SHIPPED_AVATAR_NAMES[2], "consent_sha256": "synthetic avatar, no person"}]
    assert main(["verify", str(plain_files[0])]) == 0
    assert "C2PA manifest valid, certificate untrusted" in capsys.readouterr().out
    data = bytearray((tmp_path / "plain.png").read_bytes())
    data[data.rfind(b"IDAT") + 40] ^= 0xFF  # one byte of the picture changed after signing
    (tmp_path / "tampered.png").write_bytes(bytes(data))
    assert main(["verify", str(tmp_path / "tampered.png")]) == 1
    assert "C2PA manifest INVALID (" in capsys.readouterr().out


SHIPPED_AVATAR_NAMES = Engine(model_path=SHIPPED_MODEL).avatar_names if SHIPPED_MODEL.is_file() else ()


def test_png_textures_carry_a_c2pa_manifest_and_the_watermark_when_the_server_has_a_signing_key(
    shipped_engine: Engine, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    from client.client import AvatarClient
    from server.manifest import read_manifest
    from server.service import AvatarService, ServiceConfig
    from tests.server.test_service import render_one

    driver = np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    for signing in (signing_keys, None):
        service = AvatarService(engine=shipped_engine, config=ServiceConfig(bind="tcp://127.0.0.1:*", signing=signing))
        service.start()
        try:
            with AvatarClient(address=service.bound_address) as client:
                capability = client.hello().capabilities["c2pa"]
                texture = render_one(client, client.open(avatar=3, output_format="png"), driver)
        finally:
            service.stop()
        path = tmp_path / f"signed-{signing is not None}.png"
        path.write_bytes(bytes(texture.buffer.data))
        report = read_manifest(path)
        assert texture.buffer.codec == "png" and texture.c2pa is (signing is not None)
        assert imaging.decode_texture(texture.buffer).shape == (256, 256, 4)
        assert provenance.read_watermark(imaging.decode_texture(texture.buffer)) == 3
        if signing is None:
            assert capability.startswith("off: no signing key") and not report.present
        else:
            assert capability == "on" and report.valid
            assert report.avatars == ({"id": 3, "name": SHIPPED_AVATAR_NAMES[3], "consent_sha256": "synthetic avatar, no person"},)
