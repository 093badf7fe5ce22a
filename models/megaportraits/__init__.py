"""MegaPortraits (DESIGN.md §4.1-4.3): the teacher base model, the high-resolution enhancer and the
real-time student that the server runs (``student.py``)."""
