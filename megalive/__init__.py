"""The `megalive` command: one command line that assembles the runtime's commands (server/), the
Blender extension's packager and the Unreal bridge's commands (unreal_bridge/), so that the server
itself never imports the host packages. It may import server, client, contract and the hosts."""
