"""Training: the skeleton every trainer shares, and one trainer per model (DESIGN.md §1).

- ``common``: ``TrainingError`` (one line for the user), ``TrainSummary``, Adam + cosine, endless seeded batches.
- ``run_folder``: the run folder (config.json, log.jsonl trimmed on resume, checkpoint.pt, samples.png), the
  progress bar and the optimiser's resumable state.
- ``distributed``: one process or torchrun's N: devices, ranks, shards, per-step seeds, the worker's exit.
- ``augment``: the one colour jitter, thin-plate-spline warp, affine warp and blur.
- ``objective_weights`` / ``student_objective``: the student's loss terms and their weights.
- ``train_base``, ``train_head_pose``, ``train_student``, ``train_landmark_solver``, ``train_regressor``,
  ``train_enhancer`` (its settings in ``enhancer_settings``): one trainer per model.
- ``refine_identity`` (with ``teacher_reenactments``: the teacher's targets): few-shot refinement of an enrolled avatar.

Checkpoint files (writing, reading, rebuilding a model from one) live in ``models/checkpoints.py``,
so that loading a trained model never imports a trainer.
"""
