"""The commands of `megalive-train` (assembled in models/cli.py), one module per group."""
