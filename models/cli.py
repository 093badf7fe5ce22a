"""`megalive-train`: the model factory (filled in by the model issues)."""
