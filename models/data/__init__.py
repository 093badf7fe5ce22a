"""Training data: procedural synthetic heads (synthetic.py), paired student data (paired.py),
on-the-fly reenactment pairs for the teacher (synthetic_pairs.py), and real video prepared with
mediapipe (prepare.py) read back by VideoFolder (video_folder.py)."""
