"""Training: what every trainer shares and, over time, one trainer per model (DESIGN.md §1).

- ``common``: the shared skeleton of a training run: ``TrainingError`` (one line for the user),
  ``TrainSummary``, the Adam + cosine optimiser, endless seeded batches.

Checkpoint files (writing, reading, rebuilding a model from one) live in ``models/checkpoints.py``,
so that loading a trained model never imports a trainer.
"""
