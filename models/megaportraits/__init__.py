"""MegaPortraits (Drobyshev et al. 2022): the teacher base model's components (appearance, motion with its
frozen head-pose network ``head_pose.py``, warping, volume, decoder, base), the real-time student that the
server runs (``student.py``), its capture drivers through a puppet (``puppet.py``), distillation, and the
high-resolution enhancer (``enhancer.py``: the teacher's output at twice its side)."""
