"""What runs inside Blender and Unreal (DESIGN §1): the wire protocol (protocol.py), AvatarClient (client.py) and the
live controller both hosts drive from their UI tick (live.py).

May import only contract (ours), pyzmq, msgpack and the standard library; numpy only lazily. The hosts ship
byte-identical copies of this package beside a copy of contract/ (client/vendor.py), so the modules reach each
other by relative imports (``from . import protocol``) that work in the repository and in the copies alike.
"""
