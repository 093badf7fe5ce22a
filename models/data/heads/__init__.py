"""SyntheticHeads: procedural cartoon heads rendered in torch, with exact parameters and landmarks.

What lives where:
    params.py    who a head is (``Identity``) and how it moves (``HeadMotion``: pose and the 52 ARKit
                 blendshapes, named as in ``contract.arkit``), their sampling (``sample_identities``,
                 ``sample_motions``, ``sample_clip``, ``sample_clip_frames``, ``sample_motion_pool``, ``neutral_motion``),
                 ``MODELLED_BLENDSHAPES`` and the loss weights per control (``control_weights``);
    geometry.py  the face layout (identity + expression -> feature geometry), the skull surface, the
                 lid, brow and lip curves, the 68 landmarks (and ``mean_feature_points``, where neutral faces
                 have their eyes and mouth), pose rotation, ray casting and projection (``project_head_points``);
    render.py    the renderer ``SyntheticHeads`` and its output ``HeadRender``, plus ``draw_landmarks``
                 and ``contact_sheet`` for looking at renders.

``HeadMotion`` is the renderer's input; the motion encoder's output is
``models.megaportraits.motion.Motion``, a different thing.
"""

from models.data.heads.geometry import mean_feature_points, project_head_points
from models.data.heads.params import (
    DEFAULT_SCALE,
    MODELLED_BLENDSHAPES,
    HeadMotion,
    Identity,
    control_weights,
    neutral_motion,
    sample_clip,
    sample_clip_frames,
    sample_identities,
    sample_motion_pool,
    sample_motions,
)
from models.data.heads.render import HeadRender, SyntheticHeads, contact_sheet, draw_landmarks

__all__ = [
    "DEFAULT_SCALE",
    "MODELLED_BLENDSHAPES",
    "HeadMotion",
    "HeadRender",
    "Identity",
    "SyntheticHeads",
    "contact_sheet",
    "control_weights",
    "draw_landmarks",
    "mean_feature_points",
    "neutral_motion",
    "project_head_points",
    "sample_clip",
    "sample_clip_frames",
    "sample_identities",
    "sample_motion_pool",
    "sample_motions",
]
