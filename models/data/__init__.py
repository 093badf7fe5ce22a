"""Training data: procedural synthetic heads (synthetic.py); video folders and augmentations come later."""
