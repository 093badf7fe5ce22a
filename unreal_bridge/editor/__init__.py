"""Unreal editor side of the bridge. Everything here except ``unreal_host`` is unreal-free."""
