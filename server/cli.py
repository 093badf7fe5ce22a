"""`megalive`: the runtime CLI."""
