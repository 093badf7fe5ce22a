"""Training data: procedural synthetic heads (heads/: parameters, geometry, renderer), paired student data
(paired.py), on-the-fly reenactment pairs for the teacher (synthetic_pairs.py), and real video prepared with
mediapipe (prepare.py) read back by VideoFolder (video_folder.py). synthetic.py only re-exports the
renderer for importers outside models/."""
