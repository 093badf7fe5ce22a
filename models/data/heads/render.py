"""SyntheticHeads: a procedural cartoon-head renderer written in torch (DESIGN.md §5).

Every machine can make training data without downloads, and because identity and motion are
separate inputs, ``render(identity_of_A, motion_of_B)`` *is* the cross-reenactment ground truth.

The renderer casts one orthographic ray per pixel into head space (``geometry``), hits the skull
and the hair ellipsoids, paints the face (skin, brows, nostrils, lips, lighting, mouth interior,
eyes) on the skull surface, adds ears, neck, shoulders and a background, and composites the layers
front to back. ``draw_landmarks`` and ``contact_sheet`` are for looking at the results.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from models.data.heads.geometry import (
    Layout,
    brow_curve,
    eye_curves,
    face_layout,
    face_width,
    intersect_ellipsoid,
    mouth_curves,
    pick_side,
    project_landmarks,
    rotation_matrix,
)
from models.data.heads.params import HeadMotion, Identity


@dataclass(frozen=True)
class HeadRender:
    """One rendered batch plus the exact parameters that made it."""

    rgb: Tensor  # B×3×H×W in [0, 1]
    alpha: Tensor  # B×1×H×W in [0, 1]: head, hair, ears, neck and shoulders
    landmarks: Tensor  # B×68×2 pixel (x, y), iBUG 68 order, pixel centres at i + 0.5
    identity: Identity
    motion: HeadMotion


def _soft(distance: Tensor, edge: Tensor | float) -> Tensor:
    """Coverage of a signed distance (positive inside) with a one-pixel soft edge."""
    return torch.sigmoid(distance / edge)


def _mix(base: Tensor, colour: Tensor, weight: Tensor) -> Tensor:
    """Blend B×3×N base towards colour (B×3×1 or B×3×N) by weight (B×N)."""
    return base + (colour - base) * weight.unsqueeze(1)


def _rgb(colour: Tensor) -> Tensor:
    """B×3 -> B×3×1 for broadcasting against B×3×N pixels."""
    return colour.unsqueeze(2)


class SyntheticHeads:
    """Renders batches of procedural heads: ``render(identity, motion) -> HeadRender``."""

    def __init__(self, *, resolution: int = 128, device: torch.device | str = "cpu") -> None:
        if resolution < 16:
            raise ValueError(f"resolution must be at least 16, got {resolution}")
        self.resolution = resolution
        self.device = torch.device(device)
        centres = (torch.arange(resolution, device=self.device, dtype=torch.float32) + 0.5) / resolution
        xs = centres * 2 - 1
        ys = 1 - centres * 2
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # H×W each
        self._pixel_x = grid_x.reshape(1, -1)  # H×W -> 1×N
        self._pixel_y = grid_y.reshape(1, -1)

    def landmarks(self, identity: Identity, motion: HeadMotion) -> Tensor:
        """iBUG-68 landmarks without rendering: B×68×2 pixel (x, y)."""
        identity, motion = identity.to(self.device), motion.to(self.device)
        return project_landmarks(face_layout(identity, motion), motion, self.resolution)

    def render(self, identity: Identity, motion: HeadMotion) -> HeadRender:
        """One identity per motion, or one identity for every motion (batch of one, broadcast: what depends on the
        identity alone - its background, its colours - is then computed once, and folds into a constant in an ONNX
        graph of a fixed face)."""
        identity, motion = identity.to(self.device), motion.to(self.device)
        if len(identity) not in (1, len(motion)):
            raise ValueError(f"identity batch {len(identity)} != motion batch {len(motion)} (and not 1)")
        res = self.resolution
        lay = face_layout(identity, motion)
        rotation = rotation_matrix(motion.yaw, motion.pitch, motion.roll)  # B×3×3
        r = [[rotation[:, i, j].unsqueeze(1) for j in range(3)] for i in range(3)]  # B×1 entries
        scale = motion.scale.unsqueeze(1)  # B×1
        pixel_world = 2.0 / res
        edge = 0.6 * pixel_world / scale  # one soft pixel in head units: B×1
        world_x, world_y = self._pixel_x, self._pixel_y  # 1×N

        # Camera ray through each pixel, in head space: o = Rᵀ(p - t)/s, d = Rᵀ(0, 0, -1).
        qx = (world_x - motion.tx.unsqueeze(1)) / scale  # B×N
        qy = (world_y - motion.ty.unsqueeze(1)) / scale
        ox, oy, oz = (r[0][i] * qx + r[1][i] * qy for i in range(3))
        ray = (-r[2][0], -r[2][1], -r[2][2])

        # Skull.
        skull = intersect_ellipsoid(
            ox, oy, oz, ray, a=lay.a, b_up=lay.b_up, b_low=lay.b_low, c=lay.c,
            width=lambda y: face_width(y, lay),
        )  # fmt: skip
        t = skull["near"]
        hx, hy, hz = ox + t * ray[0], oy + t * ray[1], oz + t * ray[2]
        face_cover = _soft(skull["rim"] * lay.a, edge)
        w = face_width(hy, lay)
        dw = (face_width(hy + 1e-3, lay) - face_width(hy - 1e-3, lay)) / 2e-3
        b_at = torch.where(hy > 0, lay.b_up, lay.b_low)
        aw = lay.a * w
        normal = [hx / aw**2, hy / b_at**2 - hx * hx * dw / (lay.a**2 * w**3), hz / lay.c**2]

        # Bump height field: its gradient perturbs the normal (nose, cheeks, lips, sockets...).
        bump_x, bump_y = self._bump_gradient(hx, hy, lay)
        length = torch.sqrt(normal[0] ** 2 + normal[1] ** 2 + normal[2] ** 2)
        normal = [n / length for n in normal]
        nz = normal[2].abs()
        normal = [normal[0] - bump_x * nz, normal[1] - bump_y * nz, normal[2]]
        length = torch.sqrt(normal[0] ** 2 + normal[1] ** 2 + normal[2] ** 2)
        normal = [n / length for n in normal]
        face_normal = self._to_world(normal, r)

        face_rgb = self._paint_face(hx, hy, face_normal, lay, identity, edge)  # B×3×N

        # Hair: a bigger ellipsoid cut below a hairline; near side in front, far side behind.
        volume = identity.hair_volume.unsqueeze(1)
        length_h = identity.hair_length.unsqueeze(1)
        hair_centre_y, hair_centre_z = 0.06, -0.04
        flare = 0.25 * length_h
        hair = intersect_ellipsoid(
            ox, oy - hair_centre_y, oz - hair_centre_z, ray,
            a=lay.a + volume, b_up=lay.b_up + volume * 1.2 - hair_centre_y,
            b_low=lay.b_up * (0.8 + 0.55 * length_h) + volume, c=lay.c + volume,
            width=lambda y: 1 + flare * (-y / lay.b_up).clamp(0, 1), iterations=2, far=True,
        )  # fmt: skip
        hair_cover = _soft(hair["rim"] * lay.a, edge) * identity.hair_amount.unsqueeze(1)
        layers_rgb, layers_alpha = [], []
        for which in ("near", "far"):
            th = hair[which]
            px, py, pz = ox + th * ray[0], oy + th * ray[1], oz + th * ray[2]
            around = torch.atan2(px, pz - hair_centre_z)  # 0 front, ±π/2 sides, ±π back
            keep = self._hair_keep(around, py - hair_centre_y, lay, identity, edge)
            rgb = self._paint_hair(px, py, pz, around, which == "far", identity, r)
            layers_rgb.append(rgb)
            layers_alpha.append(hair_cover * keep)
        hair_front_rgb, hair_back_rgb = layers_rgb
        hair_front_alpha, hair_back_alpha = layers_alpha

        ears_rgb, ears_alpha = self._paint_ears(world_x, world_y, lay, identity, motion, r, edge)
        body_rgb, body_alpha = self._paint_body(world_x, world_y, lay, identity, motion, pixel_world)
        background = self._paint_background(world_x, world_y, identity)

        # Front-to-back "over" compositing.
        layers = [
            (hair_front_rgb, hair_front_alpha),
            (face_rgb, face_cover),
            (ears_rgb, ears_alpha),
            (body_rgb, body_alpha),
            (hair_back_rgb, hair_back_alpha),
        ]
        # Batch-shaped from the rays, not from a Python count: an ONNX trace keeps the batch dynamic (the puppet).
        transmittance = torch.ones_like(qx)  # B×N
        colour = torch.zeros_like(qx).unsqueeze(1).repeat(1, 3, 1)  # B×3×N
        for rgb, alpha in layers:
            colour = colour + rgb.clamp(0, 1) * (alpha * transmittance).unsqueeze(1)
            transmittance = transmittance * (1 - alpha)
        colour = colour + background * transmittance.unsqueeze(1)

        rgb = colour.clamp(0, 1).view(-1, 3, res, res)  # B×3×N -> B×3×H×W
        alpha = (1 - transmittance).clamp(0, 1).view(-1, 1, res, res)  # B×N -> B×1×H×W
        landmarks = project_landmarks(lay, motion, self.resolution)
        return HeadRender(rgb=rgb, alpha=alpha, landmarks=landmarks, identity=identity, motion=motion)

    # ---- pieces ---------------------------------------------------------------------------

    @staticmethod
    def _to_world(normal: Sequence[Tensor], r: list[list[Tensor]]) -> list[Tensor]:
        return [r[i][0] * normal[0] + r[i][1] * normal[1] + r[i][2] * normal[2] for i in range(3)]

    @staticmethod
    def _bump_gradient(x: Tensor, y: Tensor, lay: Layout) -> tuple[Tensor, Tensor]:
        """(∂h/∂x, ∂h/∂y) of a bump height field made of Gaussians (nose, cheeks, lips, sockets,
        brow ridge, chin), analytic so each bump costs one exp."""
        ax, side = x.abs(), torch.where(x > 0, 1.0, -1.0)
        grad_x, grad_y = torch.zeros_like(x), torch.zeros_like(x)

        def add(
            amplitude: Tensor | float,
            dx: Tensor,
            dy: Tensor,
            sx: Tensor | float,
            sy: Tensor | float,
            mirrored: bool,
        ) -> None:
            nonlocal grad_x, grad_y
            bump = amplitude * torch.exp(-((dx / sx) ** 2) - (dy / sy) ** 2)
            gx = -2 * dx / sx**2 * bump
            grad_x = grad_x + (gx * side if mirrored else gx)  # d|x|/dx = sign(x)
            grad_y = grad_y - 2 * dy / sy**2 * bump

        nose_mid = (lay.eye_y + lay.nose_tip_y) / 2
        nose_half = (lay.eye_y - lay.nose_tip_y) / 2
        smile = pick_side(x, lay.smile)
        add(0.04 * lay.nose_h, x, y - nose_mid, 0.045, nose_half, False)  # bridge
        add(0.07 * lay.nose_h, x, y - lay.nose_tip_y, 0.055, 0.05, False)  # tip
        add(0.045 * lay.nose_h, ax - 0.8 * lay.nose_w, y - lay.nose_tip_y + 0.015, 0.04, 0.035, True)
        add(0.03 + 0.04 * smile, ax - 0.36, y - lay.mouth_y - 0.26 - 0.04 * smile, 0.13, 0.11, True)
        add(0.12 * lay.cheek_puff, ax - 0.38, y - lay.mouth_y - 0.06, 0.17, 0.17, True)
        add(0.03, x - lay.mouth_x, y - lay.mouth_y, lay.mouth_hw[0], 0.07, False)  # lips
        add(0.02, x, y - lay.brow_y + 0.02, 0.45, 0.1, False)  # brow ridge
        add(-0.035, ax - lay.eye_x, y - lay.eye_y, 0.15, 0.09, True)  # eye sockets
        add(0.03, x, y + 0.85 * lay.b_low, 0.13, 0.08, False)  # chin
        return grad_x, grad_y

    @staticmethod
    def _paint_face(x: Tensor, y: Tensor, normal: list[Tensor], lay: Layout, identity: Identity, edge: Tensor) -> Tensor:
        """Skin, brows, nose, mouth and eyes on the skull surface: B×3×N."""
        eye = eye_curves(x, y, lay)
        mouth = mouth_curves(x, lay)
        inside_x = _soft((1 - mouth["t"].abs()) * mouth["half_width"], edge)  # within the mouth's width
        skin = SyntheticHeads._paint_skin(x, y, lay, identity, eye, edge)
        skin = SyntheticHeads._paint_lips(skin, y, mouth, inside_x, identity, edge)
        shade, sheen = SyntheticHeads._face_shading(normal, identity)
        colour = skin * shade.unsqueeze(1) * _rgb(identity.light_rgb) + sheen.unsqueeze(1)
        colour = SyntheticHeads._paint_mouth_interior(colour, x, y, lay, mouth, inside_x, shade, edge)
        return SyntheticHeads._paint_eyes(colour, x, lay, identity, eye, shade, edge)

    @staticmethod
    def _paint_skin(x: Tensor, y: Tensor, lay: Layout, identity: Identity, eye: dict[str, Tensor], edge: Tensor) -> Tensor:
        """Unlit skin albedo: texture, blush, eye sockets, brows, nostrils: B×3×N."""
        ax = x.abs()
        phase = identity.skin_noise_phase.unsqueeze(2)  # B×6×1
        # Skin texture: a few oblique sinusoids (blotches and pores) with per-identity phases.
        noise = (
            torch.sin(3.1 * x + 2.3 * y + phase[:, 0]) * 0.5
            + torch.sin(-2.2 * x + 3.7 * y + phase[:, 1]) * 0.5
            + torch.sin(23.0 * x + 7.0 * y + phase[:, 2]) * 0.4
            + torch.sin(-11.0 * x + 19.0 * y + phase[:, 3]) * 0.4
            + torch.sin(31.0 * x - 13.0 * y + phase[:, 4]) * 0.3
            + torch.sin(5.0 * x + 37.0 * y + phase[:, 5]) * 0.3
        )
        skin = _rgb(identity.skin_rgb) * (1 + identity.skin_texture.view(-1, 1, 1) * noise.unsqueeze(1))
        cheek = torch.exp(-(((ax - 0.36) / 0.12) ** 2) - ((y - lay.mouth_y - 0.24) / 0.1) ** 2)
        blush = identity.blush.unsqueeze(1) * cheek * 0.08
        skin = skin + torch.stack([blush, -0.6 * blush, -0.5 * blush], dim=1)
        socket = torch.exp(-((eye["dx"] / (lay.eye_w * 1.5)) ** 2) - ((eye["ye"] - 0.02) / (lay.eye_hu * 1.8)) ** 2)
        skin = skin * (1 - 0.1 * socket).unsqueeze(1)

        # Brows.
        brow = brow_curve(x, lay)
        brow_mask = _soft(brow["thickness"] / 2 - (y - brow["centre"]).abs(), edge) * _soft(
            (1 - brow["bt"].abs()) * brow["half_length"], edge
        )
        brow_rgb = _rgb(identity.hair_rgb) * 0.6 + 0.04
        skin = _mix(skin, brow_rgb, brow_mask * 0.92)

        # Nostrils and the shadow under the nose tip.
        nostril_d = 1 - torch.sqrt(((ax - 0.42 * lay.nose_w) / 0.028) ** 2 + ((y - lay.nose_tip_y + 0.045) / 0.014) ** 2)
        nostril = _soft(nostril_d * 0.014, edge)
        under_nose = torch.exp(-((x / 0.07) ** 2) - ((y - lay.nose_tip_y + 0.075) / 0.03) ** 2)
        return skin * (1 - 0.65 * nostril - 0.12 * under_nose).unsqueeze(1)

    @staticmethod
    def _paint_lips(skin: Tensor, y: Tensor, mouth: dict[str, Tensor], inside_x: Tensor, identity: Identity, edge: Tensor) -> Tensor:
        """Lip colour between the outer lip lines, darkened along the mouth line: B×3×N."""
        lips = _soft(mouth["outer_upper"] - y, edge) * _soft(y - mouth["outer_lower"], edge) * inside_x
        skin = _mix(skin, _rgb(identity.lip_rgb), lips)
        seam = torch.exp(-(((y - mouth["line"]) / (1.5 * edge)) ** 2)) * lips
        return skin * (1 - 0.45 * seam).unsqueeze(1)

    @staticmethod
    def _face_shading(normal: list[Tensor], identity: Identity) -> tuple[Tensor, Tensor]:
        """Lighting: Lambert + ambient shade and a weak sheen, both B×N."""
        light = identity.light_direction
        lambert = (normal[0] * light[:, 0:1] + normal[1] * light[:, 1:2] + normal[2] * light[:, 2:3]).clamp(min=0)
        ambient = identity.light_ambient.unsqueeze(1)
        shade = ambient + (1 - ambient) * lambert  # B×N
        half_z = light[:, 2:3] + 1
        half_norm = torch.sqrt(light[:, 0:1] ** 2 + light[:, 1:2] ** 2 + half_z**2)
        spec_dot = (normal[0] * light[:, 0:1] + normal[1] * light[:, 1:2] + normal[2] * half_z) / half_norm
        sheen = 0.06 * spec_dot.clamp(min=0) ** 24
        return shade, sheen

    @staticmethod
    def _paint_mouth_interior(
        colour: Tensor, x: Tensor, y: Tensor, lay: Layout, mouth: dict[str, Tensor], inside_x: Tensor, shade: Tensor, edge: Tensor
    ) -> Tensor:
        """Mouth interior (dark), teeth under the upper lip, tongue: B×3×N."""
        gap_weight = ((mouth["inner_upper"] - mouth["inner_lower"]) / (1.5 * edge)).clamp(0, 1)
        interior = _soft(mouth["inner_upper"] - y, edge) * _soft(y - mouth["inner_lower"], edge) * inside_x * gap_weight
        depth = ((y - mouth["inner_lower"]) / (mouth["inner_upper"] - mouth["inner_lower"] + 1e-4)).clamp(0, 1)
        inner_rgb = torch.stack([0.08 + 0.14 * depth, 0.02 + 0.03 * depth, 0.03 + 0.03 * depth], 1)
        teeth_line = mouth["inner_upper"] - 0.035 * mouth["q"].sqrt()
        teeth = _soft(y - teeth_line, edge) * _soft(0.7 - mouth["t"].abs(), 0.05)
        inner_rgb = _mix(inner_rgb, torch.tensor([0.8, 0.78, 0.72], device=x.device).view(1, 3, 1), teeth)
        tongue_d = 1 - torch.sqrt(((x - lay.mouth_x) / 0.09) ** 2 + ((y - mouth["inner_lower"] - 0.01) / (0.02 + 0.08 * lay.tongue)) ** 2)
        tongue = _soft(tongue_d * 0.05, edge) * (0.3 + 0.7 * lay.tongue)
        inner_rgb = _mix(
            inner_rgb,
            torch.tensor([0.75, 0.35, 0.38], device=x.device).view(1, 3, 1),
            tongue * (y < mouth["inner_upper"]),
        )
        colour = _mix(colour, inner_rgb * (0.5 + 0.5 * shade).unsqueeze(1), interior)
        tongue_out = _soft(tongue_d * 0.05, edge) * (lay.tongue > 0.05) * (1 - interior) * _soft(mouth["inner_lower"] + 0.02 - y, edge)
        return _mix(
            colour,
            torch.tensor([0.75, 0.35, 0.38], device=x.device).view(1, 3, 1) * shade.unsqueeze(1),
            tongue_out,
        )

    @staticmethod
    def _paint_eyes(
        colour: Tensor, x: Tensor, lay: Layout, identity: Identity, eye: dict[str, Tensor], shade: Tensor, edge: Tensor
    ) -> Tensor:
        """Eyes: sclera, iris, pupil, highlight, then lashes on the lid line: B×3×N."""
        open_mask = _soft(eye["upper"] - eye["ye"], edge) * _soft(eye["ye"] - eye["lower"], edge)
        open_mask = open_mask * (eye["gap"] / (1.5 * edge)).clamp(0, 1)
        below_lid = (eye["upper"] - eye["ye"]).clamp(min=0)  # shadow of the upper lid on the eyeball
        sclera = (0.72 + 0.25 * eye["q"]) * (1 - 0.25 * torch.exp(-below_lid / 0.025))
        eye_rgb = torch.tensor([0.95, 0.93, 0.9], device=x.device).view(1, 3, 1) * sclera.unsqueeze(1)
        iris_centre_y = (lay.eye_hu - lay.eye_hl) * 0.3 + pick_side(x, lay.look_up)
        ix, iy = eye["dx"] - pick_side(x, lay.look_out), eye["ye"] - iris_centre_y
        radius = torch.sqrt(ix * ix + iy * iy)
        iris = _soft(lay.iris_r - radius, edge)
        limbus = torch.exp(-(((radius - lay.iris_r) / (0.3 * lay.iris_r)) ** 2))
        iris_rgb = _rgb(identity.iris_rgb) * (0.65 + 0.55 * (radius / lay.iris_r).clamp(0, 1) * (iy < 0) + 0.2 * (1 - limbus)).unsqueeze(1)
        eye_rgb = _mix(eye_rgb, iris_rgb * (1 - 0.5 * limbus).unsqueeze(1), iris)
        pupil = _soft(0.42 * lay.iris_r - radius, edge)
        eye_rgb = _mix(eye_rgb, torch.full((1, 3, 1), 0.03, device=x.device), pupil)
        glint_x = ix * torch.sign(x) + 0.35 * lay.iris_r
        glint = _soft(0.2 * lay.iris_r - torch.sqrt(glint_x**2 + (iy - 0.35 * lay.iris_r) ** 2), edge)
        eye_rgb = _mix(eye_rgb, torch.ones(1, 3, 1, device=x.device), glint * 0.9)
        eye_light = (0.75 + 0.25 * shade).unsqueeze(1) * _rgb(identity.light_rgb)
        colour = _mix(colour, eye_rgb * eye_light, open_mask)
        outline = _soft(lay.eye_w * 1.06 - eye["dx"].abs(), edge)
        lash_top = _soft(eye["ye"] - eye["upper"] + 0.5 * edge, edge) * _soft(
            eye["upper"] + 0.022 + 0.01 * (eye["dx"] / lay.eye_w).clamp(min=0) - eye["ye"], edge
        )
        lash_low = _soft(eye["lower"] - eye["ye"] + 0.5 * edge, edge) * _soft(eye["ye"] - eye["lower"] + 0.01, edge)
        crease_y = (lay.eye_hu + 0.035) * eye["q"]
        crease = torch.exp(-(((eye["ye"] - crease_y) / 0.01) ** 2)) * eye["q"]
        darkness = (0.85 * lash_top + 0.35 * lash_low) * outline + 0.18 * crease
        lash_rgb = _rgb(identity.hair_rgb) * 0.3 + 0.02
        colour = _mix(colour, lash_rgb, darkness.clamp(0, 1))
        return colour

    @staticmethod
    def _hair_keep(around: Tensor, y: Tensor, lay: Layout, identity: Identity, edge: Tensor) -> Tensor:
        """Where the hair ellipsoid carries hair: above a hairline that drops from the forehead
        over the temples to the nape. around: azimuth (0 = front); y relative to the hair centre."""
        f = around.abs() / math.pi
        length = identity.hair_length.unsqueeze(1)
        front = identity.hairline.unsqueeze(1) * lay.b_up + identity.hair_part.unsqueeze(1) * 0.08 * torch.sin(around)
        side = (0.3 - 0.5 * length) * lay.b_up
        back = (0.1 - 1.5 * length) * lay.b_up

        def smooth(low: float, high: float) -> Tensor:  # smoothstep of f over [low, high]
            ramp = ((f - low) / (high - low)).clamp(0, 1)
            return ramp * ramp * (3 - 2 * ramp)

        cut = front + (side - front) * smooth(0.08, 0.42) + (back - side) * smooth(0.5, 0.85)
        return _soft(y - cut, edge)

    @staticmethod
    def _paint_hair(
        x: Tensor, y: Tensor, z: Tensor, around: Tensor, inner: bool, identity: Identity,
        r: list[list[Tensor]],
    ) -> Tensor:  # fmt: skip
        """Hair colour with strands and a highlight band; the inner (far) side is in shadow."""
        part = identity.hair_part.unsqueeze(1)
        strands = 0.5 + 0.5 * torch.sin(38 * around + 5 * torch.sin(2.5 * y + 3 * part) + 9 * part)
        base = _rgb(identity.hair_rgb) * (0.72 + 0.28 * strands).unsqueeze(1)
        if inner:
            return base * (identity.light_ambient.unsqueeze(1) * 0.7).view(-1, 1, 1)
        length = torch.sqrt(x * x + y * y + z * z) + 1e-6
        normal = SyntheticHeads._to_world([x / length, y / length, z / length], r)
        light = identity.light_direction
        lambert = (normal[0] * light[:, 0:1] + normal[1] * light[:, 1:2] + normal[2] * light[:, 2:3]).clamp(min=0)
        ambient = identity.light_ambient.unsqueeze(1)
        shade = ambient + (1 - ambient) * lambert
        highlight = 0.18 * torch.exp(-(((normal[1] - 0.55) / 0.12) ** 2)) * strands
        return base * shade.unsqueeze(1) * _rgb(identity.light_rgb) + highlight.unsqueeze(1)

    @staticmethod
    def _paint_ears(
        world_x: Tensor, world_y: Tensor, lay: Layout, identity: Identity, motion: HeadMotion,
        r: list[list[Tensor]], edge: Tensor,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        """Two flat ear discs beside the skull (drawn behind it, so only the rims show)."""
        scale = motion.scale.unsqueeze(1)
        ear_y = lay.eye_y - 0.12
        alpha = torch.zeros_like(world_x * scale)
        shade = torch.zeros_like(alpha)
        for sign in (-1.0, 1.0):
            hx = sign * lay.a * face_width(ear_y, lay) * 0.97
            hz = -0.08 * lay.c
            cx = scale * (r[0][0] * hx + r[0][1] * ear_y + r[0][2] * hz) + motion.tx.unsqueeze(1)
            cy = scale * (r[1][0] * hx + r[1][1] * ear_y + r[1][2] * hz) + motion.ty.unsqueeze(1)
            ex_, ey_ = (world_x - cx) / scale, (world_y - cy) / scale  # head units
            d = 1 - torch.sqrt((ex_ / 0.09) ** 2 + (ey_ / 0.17) ** 2)
            ear = _soft(d * 0.09, edge)
            inner = torch.exp(-(((ex_ - sign * 0.02) / 0.04) ** 2) - (ey_ / 0.09) ** 2)
            alpha = torch.maximum(alpha, ear)
            shade = shade + ear * (0.85 - 0.3 * inner)
        ambient = identity.light_ambient.view(-1, 1, 1)
        colour = _rgb(identity.skin_rgb) * shade.unsqueeze(1) * (ambient + 0.35) * _rgb(identity.light_rgb)
        return colour, alpha

    @staticmethod
    def _paint_body(
        world_x: Tensor,
        world_y: Tensor,
        lay: Layout,
        identity: Identity,
        motion: HeadMotion,
        pixel: float,
    ) -> tuple[Tensor, Tensor]:
        """Neck (skin cylinder) in front of shoulders (clothes ellipse), screen space."""
        scale, tx, ty = motion.scale.unsqueeze(1), motion.tx.unsqueeze(1), motion.ty.unsqueeze(1)
        soft = 0.6 * pixel
        neck_half = 0.46 * lay.a * scale
        neck_u = (world_x - tx) / neck_half  # -1..1 across the neck
        neck = _soft((1 - neck_u.abs()) * neck_half, soft) * _soft(ty - 0.2 * scale - world_y, soft)
        light = identity.light_direction
        neck_normal_z = (1 - neck_u.clamp(-1, 1) ** 2).sqrt()
        lambert = (neck_u.clamp(-1, 1) * light[:, 0:1] + neck_normal_z * light[:, 2:3]).clamp(min=0)
        ambient = identity.light_ambient.unsqueeze(1)
        under_chin = 1 - 0.35 * torch.exp(-(((world_y - ty + lay.b_low * scale * 0.9) / (0.12 * scale)) ** 2))
        neck_shade = (ambient + (1 - ambient) * lambert) * 0.85 * under_chin
        neck_rgb = _rgb(identity.skin_rgb) * neck_shade.unsqueeze(1) * _rgb(identity.light_rgb)

        body_cx, body_cy = tx * 0.5, ty - 1.75 * scale
        bu, bv = (world_x - body_cx) / (1.75 * scale), (world_y - body_cy) / (0.8 * scale)
        body = _soft((1 - torch.sqrt(bu * bu + bv * bv)) * 0.8 * scale, soft)
        body_lambert = (bu.clamp(-1, 1) * light[:, 0:1] + bv.clamp(-1, 1) * light[:, 1:2] + 0.6 * light[:, 2:3]).clamp(min=0)
        body_rgb = _rgb(identity.clothes_rgb) * (ambient + (1 - ambient) * body_lambert).unsqueeze(1)
        colour = _mix(body_rgb, neck_rgb, neck)
        alpha = 1 - (1 - neck) * (1 - body)
        return colour, alpha

    @staticmethod
    def _paint_background(world_x: Tensor, world_y: Tensor, identity: Identity) -> Tensor:
        """Gradient, stripes or soft blobs (one-hot style per identity): B×3×N."""
        palette = identity.background_rgb  # B×3×3 (colour × rgb)
        angle = identity.background_angle.unsqueeze(1)
        along = world_x * angle.cos() + world_y * angle.sin()  # B×N
        across = -world_x * angle.sin() + world_y * angle.cos()
        gradient = _mix(palette[:, 0].unsqueeze(2), palette[:, 1].unsqueeze(2), (0.5 + 0.35 * along).clamp(0, 1))
        stripe_wave = torch.sigmoid(4 * torch.sin(identity.background_frequency.unsqueeze(1) * across))
        stripes = _mix(gradient, palette[:, 2].unsqueeze(2), 0.6 * stripe_wave)
        blobs = palette[:, 0].unsqueeze(2).expand_as(gradient)
        for k in range(3):
            centre = identity.background_blobs[:, k]  # B×3: x, y, radius
            d2 = (world_x - centre[:, 0:1]) ** 2 + (world_y - centre[:, 1:2]) ** 2
            blobs = _mix(blobs, palette[:, (k + 1) % 3].unsqueeze(2), torch.exp(-d2 / centre[:, 2:3] ** 2))
        style = identity.background_style.unsqueeze(2).unsqueeze(3)  # B×3 -> B×3×1×1
        stacked = torch.stack([gradient, stripes, blobs], dim=1)  # B×3(style)×3(rgb)×N
        vignette = 1 - 0.18 * (world_x**2 + world_y**2)
        return (stacked * style).sum(dim=1) * vignette.unsqueeze(1)


# --------------------------------------------------------------------------------------------
# Looking at it
# --------------------------------------------------------------------------------------------


def draw_landmarks(images: Tensor, landmarks: Tensor, *, colour: Sequence[float] = (0.0, 1.0, 0.2)) -> Tensor:
    """Copies of images (N×3×H×W) with each landmark (N×68×2 pixel x, y) marked by one pixel."""
    out = images.clone()
    n, _, height, width = images.shape
    cols = landmarks[..., 0].floor().long().clamp(0, width - 1)  # N×68
    rows = landmarks[..., 1].floor().long().clamp(0, height - 1)
    batch = torch.arange(n, device=images.device).unsqueeze(1).expand_as(cols)
    for channel, value in enumerate(colour):
        out[batch, channel, rows, cols] = value
    return out


def contact_sheet(images: Tensor, *, columns: int, padding: int = 2) -> Tensor:
    """Tile N×3×H×W images (in [0, 1]) into one 3×H'×W' image, row-major, white padding."""
    n, channels, height, width = images.shape
    rows = math.ceil(n / columns)
    sheet = torch.ones(channels, rows * (height + padding) + padding, columns * (width + padding) + padding)
    for index in range(n):
        row, col = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        sheet[:, top : top + height, left : left + width] = images[index].detach().cpu()
    return sheet
