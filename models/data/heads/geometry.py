"""Head geometry: the face layout, the skull surface, the feature curves, landmarks, pose and projection.

Geometry (all "head units", the head is about 1.6 wide):
    * head space: x to the subject's left (image right at yaw 0), y up, z towards the camera;
    * the skull is an ellipsoid whose lower half is taller (jaw drop, chin) and whose width tapers
      towards the chin; features are painted as soft signed-distance shapes in the surface's (x, y)
      and shaded by a bump height field (nose, cheeks, lips, brow ridge, eye sockets);
    * hair is a second, larger ellipsoid cut below a hairline that runs from the forehead over the
      temples to the nape; the far (inner) side of it shows as long hair behind the head;
    * camera: orthographic along -z; image x in [-1, 1] left->right, y in [-1, 1] bottom->top;
      world = scale * R(yaw, pitch, roll) @ head + (tx, ty, 0).
Pose signs: +yaw turns the nose towards image right (subject's left), +pitch lifts the nose,
+roll turns the head counter-clockwise in the image.

Landmarks are points sampled on the very curves the painter draws (jaw outline, brow centre lines,
nose ridge, lid and lip curves), lifted onto the ellipsoid and projected with the same pose, in
pixel units with pixel centres at i + 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from contract.arkit import ARKIT_INDEX
from contract.landmarks import LEFT_EYE_POINTS, MOUTH_POINTS, RIGHT_EYE_POINTS
from models.data.heads.params import HeadMotion, Identity, neutral_motion

# --------------------------------------------------------------------------------------------
# Face layout: identity + expression -> per-sample feature geometry (all B×1, head units)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    a: Tensor  # head half-width
    b_up: Tensor
    b_low: Tensor  # lower half-height: chin and jaw drop
    c: Tensor
    jaw_taper: Tensor
    cheek_puff: Tensor
    eye_x: Tensor
    eye_y: Tensor
    eye_w: Tensor
    eye_hu: Tensor  # upper lid height when open
    eye_hl: Tensor  # lower lid depth
    eye_tilt: Tensor
    iris_r: Tensor
    open_upper: tuple[Tensor, Tensor]  # (left, right) 0 = closed
    open_lower: tuple[Tensor, Tensor]
    look_out: tuple[Tensor, Tensor]  # iris shift, + = away from the nose
    look_up: tuple[Tensor, Tensor]
    brow_y: Tensor
    brow_thick: Tensor
    brow_arch: Tensor
    brow_inner: tuple[Tensor, Tensor]  # inner-end lift
    brow_outer: tuple[Tensor, Tensor]
    brow_down: tuple[Tensor, Tensor]
    nose_tip_y: Tensor
    nose_w: Tensor
    nose_h: Tensor
    mouth_x: Tensor
    mouth_y: Tensor
    mouth_hw: tuple[Tensor, Tensor]  # half-width towards (left, right)
    corner_lift: tuple[Tensor, Tensor]
    gap_upper: Tensor  # inner upper lip above the mouth line
    gap_lower: Tensor
    lip_upper: Tensor
    lip_lower: Tensor
    tongue: Tensor
    smile: tuple[Tensor, Tensor]


def face_layout(identity: Identity, motion: HeadMotion) -> Layout:
    column = lambda value: value.unsqueeze(1)  # noqa: E731 - B -> B×1
    expression = motion.expression

    def ex(name: str) -> Tensor:  # B×1
        return expression[:, ARKIT_INDEX[name]].unsqueeze(1)

    def sided(stem: str) -> tuple[Tensor, Tensor]:
        return ex(stem + "Left"), ex(stem + "Right")

    blink, wide, squint = sided("eyeBlink"), sided("eyeWide"), sided("eyeSquint")
    look_in, look_out, look_up, look_down = (
        sided("eyeLookIn"), sided("eyeLookOut"), sided("eyeLookUp"), sided("eyeLookDown"),
    )  # fmt: skip
    cheek_squint, smile, frown = sided("cheekSquint"), sided("mouthSmile"), sided("mouthFrown")
    stretch, lower_down = sided("mouthStretch"), sided("mouthLowerDown")
    upper_up = sided("mouthUpperUp")
    brow_down, brow_outer = sided("browDown"), sided("browOuterUp")
    jaw_open, mouth_close = ex("jawOpen"), ex("mouthClose")
    funnel, pucker, puff = ex("mouthFunnel"), ex("mouthPucker"), ex("cheekPuff")

    eye_w, eye_hu = column(identity.eye_width), column(identity.eye_opening)
    open_upper = tuple(
        ((1 - blink[s]) * (1 + 0.5 * wide[s] - 0.3 * squint[s] - 0.35 * look_down[s]
                           + 0.15 * look_up[s] - 0.2 * cheek_squint[s])).clamp(0, 1.6)
        for s in (0, 1)
    )  # fmt: skip
    open_lower = tuple(
        (1 - 0.5 * squint[s] - 0.35 * cheek_squint[s] - 0.25 * smile[s] + 0.2 * wide[s])
        .clamp(0.15, 1.3)
        for s in (0, 1)
    )  # fmt: skip
    look_out_shift = tuple((look_out[s] - look_in[s]) * 0.55 * eye_w for s in (0, 1))
    look_up_shift = tuple((look_up[s] - look_down[s]) * 0.45 * eye_hu for s in (0, 1))

    width_scale = 1 - 0.35 * pucker - 0.25 * funnel
    mouth_w = column(identity.mouth_width) * width_scale
    mouth_hw = tuple(mouth_w * (1 + 0.1 * jaw_open + 0.22 * smile[s] + 0.25 * stretch[s] - 0.05 * frown[s]) for s in (0, 1))
    corner_lift = tuple(0.09 * smile[s] - 0.06 * frown[s] - 0.01 * stretch[s] for s in (0, 1))
    jaw_gap = 0.28 * jaw_open * (1 - 0.9 * mouth_close)
    lower_avg, upper_avg = (lower_down[0] + lower_down[1]) / 2, (upper_up[0] + upper_up[1]) / 2
    lip_scale = 1 + 0.5 * pucker + 0.3 * funnel
    b = column(identity.head_height)
    return Layout(
        a=column(identity.head_width),
        b_up=b,
        b_low=b * column(identity.chin_length) + 0.16 * jaw_open,
        c=column(identity.head_depth),
        jaw_taper=column(identity.jaw_taper),
        cheek_puff=puff,
        eye_x=column(identity.eye_spacing),
        eye_y=column(identity.eye_height),
        eye_w=eye_w,
        eye_hu=eye_hu,
        eye_hl=eye_hu * 0.55,
        eye_tilt=column(identity.eye_tilt),
        iris_r=column(identity.iris_size) * (1 + 0.08 * (wide[0] + wide[1]) / 2),
        open_upper=open_upper,
        open_lower=open_lower,
        look_out=look_out_shift,
        look_up=look_up_shift,
        brow_y=column(identity.eye_height + identity.brow_height),
        brow_thick=column(identity.brow_thickness),
        brow_arch=column(identity.brow_arch),
        brow_inner=(0.08 * ex("browInnerUp"),) * 2,
        brow_outer=tuple(0.08 * brow_outer[s] for s in (0, 1)),
        brow_down=tuple(0.06 * brow_down[s] for s in (0, 1)),
        nose_tip_y=column(identity.eye_height - identity.nose_length),
        nose_w=column(identity.nose_width),
        nose_h=column(identity.nose_prominence),
        mouth_x=0.07 * (ex("mouthLeft") - ex("mouthRight")) + 0.05 * (ex("jawLeft") - ex("jawRight")),
        mouth_y=column(identity.mouth_height) - 0.05 * jaw_open,
        mouth_hw=mouth_hw,
        corner_lift=corner_lift,
        gap_upper=0.25 * jaw_gap + 0.04 * upper_avg + 0.02 * funnel,
        gap_lower=0.75 * jaw_gap + 0.05 * lower_avg + 0.025 * funnel,
        lip_upper=column(identity.upper_lip) * lip_scale * (1 - 0.6 * ex("mouthRollUpper")),
        lip_lower=column(identity.lower_lip) * lip_scale * (1 - 0.6 * ex("mouthRollLower")),
        tongue=ex("tongueOut"),
        smile=smile,
    )


def pick_side(x: Tensor, pair: tuple[Tensor, Tensor]) -> Tensor:
    """Pick the subject's-left value where x > 0, else the right one (broadcast)."""
    return torch.where(x > 0, pair[0], pair[1])


def face_width(y: Tensor, lay: Layout) -> Tensor:
    """Width multiplier of the skull at height y: tapers to the chin, bulges with cheekPuff."""
    below = (-y / lay.b_low).clamp(0, 1)
    puff = lay.cheek_puff * 0.09 * torch.exp(-(((y - lay.mouth_y - 0.1) / 0.22) ** 2))
    return 1 - lay.jaw_taper * below * below + puff


def surface_z(x: Tensor, y: Tensor, lay: Layout) -> Tensor:
    """Front-surface depth of the skull at (x, y) (0 outside the outline)."""
    b = torch.where(y > 0, lay.b_up, lay.b_low)
    inside = 1 - (x / (lay.a * face_width(y, lay))) ** 2 - (y / b) ** 2
    return lay.c * inside.clamp(min=0).sqrt()


def eye_curves(x: Tensor, y: Tensor, lay: Layout) -> dict[str, Tensor]:
    """Lid curves of the eye on x's side, in eye-local coordinates (dx outward, ye up)."""
    dx = x.abs() - lay.eye_x  # + = towards the outer corner
    ye = y - lay.eye_y - lay.eye_tilt * dx / lay.eye_w
    q = (1 - (dx / lay.eye_w) ** 2).clamp(min=0)
    open_lower, open_upper = pick_side(x, lay.open_lower), pick_side(x, lay.open_upper)
    lower = -lay.eye_hl * open_lower * q
    gap = (lay.eye_hu + lay.eye_hl * open_lower) * open_upper * q * (1 - 0.15 * dx / lay.eye_w)
    return {"dx": dx, "ye": ye, "q": q, "lower": lower, "upper": lower + gap, "gap": gap}


def brow_curve(x: Tensor, lay: Layout) -> dict[str, Tensor]:
    """Brow centre line on x's side: bt in [-1 inner, 1 outer], centre y and thickness."""
    down = pick_side(x, lay.brow_down)
    half_length = lay.eye_w * 1.3
    bt = (x.abs() - (lay.eye_x + 0.01 - 0.3 * down)) / half_length
    lift = pick_side(x, lay.brow_inner) * (1 - bt) / 2 + pick_side(x, lay.brow_outer) * (1 + bt) / 2
    centre = lay.brow_y + lay.brow_arch * (1 - bt * bt) + lift - down * (0.7 * (1 - bt) / 2 + 0.3)
    thickness = lay.brow_thick * (1 - 0.45 * (bt + 1) / 2)
    return {"bt": bt, "centre": centre, "thickness": thickness, "half_length": half_length}


def mouth_curves(x: Tensor, lay: Layout) -> dict[str, Tensor]:
    """Lip curves as functions of x: outer/inner upper and lower lip lines and the mouth line."""
    xr = x - lay.mouth_x
    left = torch.sigmoid(xr / 0.03)  # blend the two sides smoothly through the middle
    half_width = left * lay.mouth_hw[0] + (1 - left) * lay.mouth_hw[1]
    lift = left * lay.corner_lift[0] + (1 - left) * lay.corner_lift[1]
    t = xr / half_width
    q = (1 - t * t).clamp(min=0)
    line = lay.mouth_y + lift * t * t
    opening = q.sqrt()
    inner_upper = line + lay.gap_upper * opening
    inner_lower = line - lay.gap_lower * opening
    lip_shape = q.pow(0.35)
    bow = lay.lip_upper * 0.35 * torch.exp(-((xr / 0.035) ** 2))  # cupid's bow dip
    return {
        "t": t, "q": q, "half_width": half_width, "line": line,
        "inner_upper": inner_upper, "inner_lower": inner_lower,
        "outer_upper": inner_upper + lay.lip_upper * lip_shape - bow * lip_shape,
        "outer_lower": inner_lower - lay.lip_lower * lip_shape,
    }  # fmt: skip


def _jaw_outline_points(lay: Layout) -> tuple[Tensor, Tensor]:
    """17 jaw points (image left -> chin -> image right) on the face outline: B×17 each."""
    theta = torch.linspace(0, math.pi, 17, device=lay.a.device).unsqueeze(0)  # 1×17
    top, chin = lay.eye_y - 0.03, -0.96 * lay.b_low
    y = top - (top - chin) * torch.sin(theta)  # B×17
    b = torch.where(y > 0, lay.b_up, lay.b_low)
    outline = lay.a * face_width(y, lay) * (1 - (y / b) ** 2).clamp(min=0).sqrt()
    side = -torch.cos(theta)
    side = torch.where(side.abs() < 1e-6, torch.zeros_like(side), side.sign())
    return side * outline * 0.96, y


def head_landmarks(lay: Layout) -> tuple[Tensor, Tensor]:
    """iBUG-68 landmarks in head-space (x, y): B×68 each, sampled from the painted curves."""
    device = lay.a.device
    jaw_x, jaw_y = _jaw_outline_points(lay)

    def row(values: Sequence[float]) -> Tensor:  # -> 1×K
        return torch.tensor(values, device=device, dtype=torch.float32).unsqueeze(0)

    # Brows: subject's right brow (x < 0) from outer to inner, then left brow inner to outer.
    brow_t = row([1.0, 0.5, 0.0, -0.5, -1.0])
    bt_scale = lay.eye_w * 1.3
    brow_x = []
    for sign, ts in ((-1.0, brow_t), (1.0, -brow_t)):
        down = lay.brow_down[0 if sign > 0 else 1]
        brow_x.append(sign * (lay.eye_x + 0.01 - 0.3 * down + ts * 0.92 * bt_scale))
    brow_x = torch.cat(brow_x, dim=1)  # B×10
    brow_y = brow_curve(brow_x, lay)["centre"]

    # Nose: bridge (27-30) then the nostril base (31-35).
    k = row([0.0, 1 / 3, 2 / 3, 1.0])
    bridge_y = lay.eye_y + (lay.nose_tip_y - lay.eye_y) * k  # B×4
    bridge_x = torch.zeros_like(bridge_y)
    base_x = lay.nose_w * row([-1.0, -0.5, 0.0, 0.5, 1.0])  # B×5
    base_y = lay.nose_tip_y - row([0.045, 0.055, 0.065, 0.055, 0.045])

    # Eyes: right eye 36 outer, 37-38 upper, 39 inner, 40-41 lower; left eye 42 inner .. 47.
    eye_dx = row([1.0, 1 / 3, -1 / 3, -1.0, -1 / 3, 1 / 3])  # outward offsets of the 6 points
    upper = row([0, 1, 1, 0, 0, 0]).bool()
    # Mirrored: the left eye's offsets are the right eye's negated (42 inner .. 45 outer .. 47).
    eye_x = torch.cat([-(lay.eye_x + eye_dx * lay.eye_w * 0.999), lay.eye_x - eye_dx * lay.eye_w * 0.999], dim=1)  # B×12
    eye_upper = torch.cat([upper, upper], dim=1)  # 1×12
    curves = eye_curves(eye_x, torch.zeros_like(eye_x), lay)
    lid = torch.where(eye_upper, torch.maximum(curves["upper"], curves["lower"]), curves["lower"])
    eye_y = lay.eye_y + lay.eye_tilt * curves["dx"] / lay.eye_w + lid

    # Lips: outer 48-59 then inner 60-67, image left to right along the top, back along the bottom.
    outer_t = row([-1.0, -2 / 3, -1 / 3, 0.0, 1 / 3, 2 / 3, 1.0, 2 / 3, 1 / 3, 0.0, -1 / 3, -2 / 3])
    inner_t = row([-0.95, -0.5, 0.0, 0.5, 0.95, 0.5, 0.0, -0.5])
    lip_t = torch.cat([outer_t, inner_t], dim=1)  # 1×20
    half_width = torch.where(lip_t > 0, lay.mouth_hw[0], lay.mouth_hw[1])
    lip_x = lay.mouth_x + lip_t * half_width * 0.999  # B×20
    m = mouth_curves(lip_x, lay)
    which = torch.tensor([2, 0, 0, 0, 0, 0, 2, 1, 1, 1, 1, 1, 2, 3, 3, 3, 2, 4, 4, 4], device=device)
    # 0 outer upper, 1 outer lower, 2 corner line, 3 inner upper, 4 inner lower; picked by a one-hot product (exact), which
    # broadcasts over the batch where a gather would need its size (an ONNX trace of the puppet keeps the batch dynamic).
    options = torch.stack([m["outer_upper"], m["outer_lower"], m["line"], m["inner_upper"], m["inner_lower"]], dim=2)  # B×20×5
    lip_y = (options * F.one_hot(which, 5).to(options)).sum(dim=2)  # B×20×5 · 20×5 -> B×20

    # The nose depends on the identity alone: 1×K when one identity is broadcast over B motions (SyntheticHeads.render).
    batch = jaw_y.shape[0]
    xs = torch.cat([p.expand(batch, -1) for p in (jaw_x, brow_x, bridge_x, base_x, eye_x, lip_x)], dim=1)  # B×68
    ys = torch.cat([p.expand(batch, -1) for p in (jaw_y, brow_y, bridge_y, base_y, eye_y, lip_y)], dim=1)  # B×68
    return xs, ys


# --------------------------------------------------------------------------------------------
# Pose, camera rays and projection
# --------------------------------------------------------------------------------------------


def rotation_matrix(yaw: Tensor, pitch: Tensor, roll: Tensor) -> Tensor:
    """R = Rz(roll) @ Ry(yaw) @ Rx(pitch): B×3×3, maps head space to camera space."""
    cy, sy, cp, sp, cr, sr = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin(), roll.cos(), roll.sin()
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)
    rx = torch.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], dim=1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], dim=1).view(-1, 3, 3)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], dim=1).view(-1, 3, 3)
    return rz @ ry @ rx


def intersect_ellipsoid(
    ox: Tensor, oy: Tensor, oz: Tensor, d: tuple[Tensor, Tensor, Tensor], *,
    a: Tensor, b_up: Tensor, b_low: Tensor, c: Tensor, width: Callable[[Tensor], Tensor],
    iterations: int = 3, far: bool = False,
) -> dict[str, Tensor]:  # fmt: skip
    """Ray / tapered ellipsoid x²/(a·w(y))² + y²/b(y)² + z²/c² = 1 (b = b_up above 0, b_low below).

    Rays o + t·d (o: B×N per component, d: B×1); w(y) is made exact by fixed-point iterations on
    the hit height (rays are near-horizontal in head space, so it converges in a few steps).
    Returns near (and, if asked, far) t, and `rim`: 1 - closest approach radius (> 0 on a hit).
    """
    dx, dy, dz = d
    y_near = y_far = oy
    out: dict[str, Tensor] = {}
    for _ in range(iterations):
        for which in ("near", "far") if far else ("near",):
            y_est = y_near if which == "near" else y_far
            ax = a * width(y_est)
            by = torch.where(y_est > 0, b_up, b_low)
            # Scaled space: the ellipsoid is the unit sphere.
            sx, sy, sz = ox / ax, oy / by, oz / c
            ex, ey, ez = dx / ax, dy / by, dz / c
            dd = ex * ex + ey * ey + ez * ez
            od = sx * ex + sy * ey + sz * ez
            oo = sx * sx + sy * sy + sz * sz
            closest = (oo - od * od / dd).clamp(min=0)
            root = ((1 - closest).clamp(min=0) * dd).sqrt() / dd
            t = -od / dd + (-root if which == "near" else root)
            if which == "near":
                y_near, out["near"], out["rim"] = oy + t * dy, t, 1 - closest.sqrt()
            else:
                y_far, out["far"] = oy + t * dy, t
    return out


def landmarks_3d(lay: Layout) -> Tensor:
    """iBUG-68 landmarks of a layout on the skull's front surface, in head space: B×3×68 (x, y, z)."""
    hx, hy = head_landmarks(lay)  # B×68 each
    return torch.stack([hx, hy, surface_z(hx, hy, lay)], dim=1)  # B×3×68


def project_head_points(head: Tensor, *, rotation: Tensor, translation: Tensor, scale: Tensor, resolution: int) -> Tensor:
    """Head-space points B×3×K posed and projected: B×K×2 pixel (x, y), pixel centres at i + 0.5. rotation: B×3 (yaw,
    pitch, roll), translation: B×2 (tx, ty), scale: B, as in HeadMotion."""
    matrix = rotation_matrix(rotation[:, 0], rotation[:, 1], rotation[:, 2]).to(head)  # B×3×3
    world = scale.to(head).view(-1, 1, 1) * (matrix @ head)  # B×3×K
    px = (world[:, 0] + translation[:, :1].to(head) + 1) / 2 * resolution  # B×K
    py = (1 - (world[:, 1] + translation[:, 1:].to(head))) / 2 * resolution
    return torch.stack([px, py], dim=2)  # B×K×2


def project_landmarks(lay: Layout, motion: HeadMotion, resolution: int) -> Tensor:
    """iBUG-68 landmarks of a layout, posed by motion and projected: B×68×2 pixel (x, y), pixel centres at i + 0.5."""
    rotation = torch.stack([motion.yaw, motion.pitch, motion.roll], dim=1)  # B×3
    translation = torch.stack([motion.tx, motion.ty], dim=1)  # B×2
    return project_head_points(landmarks_3d(lay), rotation=rotation, translation=translation, scale=motion.scale, resolution=resolution)


def mean_feature_points(identities: Identity) -> Tensor:
    """Where neutral faces have their features, averaged over ``identities``, in head space: 3×3, rows the
    image-left eye's centre, the image-right eye's and the mouth's (each the mean of its iBUG points), columns x, y, z."""
    points = landmarks_3d(face_layout(identities, neutral_motion(len(identities)))).mean(dim=0)  # B×3×68 -> 3×68
    groups = (LEFT_EYE_POINTS, RIGHT_EYE_POINTS, MOUTH_POINTS)
    return torch.stack([points[:, list(group)].mean(dim=1) for group in groups])  # 3 groups × (x, y, z)
