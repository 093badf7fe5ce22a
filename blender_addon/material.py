"""The output image (a reused float RGBA Image the live loop writes into) and the MegaLive material
that shows it, or the baked image sequence, on an object.
"""

from __future__ import annotations

import bpy

MATERIAL_NODE_NAME = "MegaLive Texture"


def output_image(name: str, width: int, height: int) -> bpy.types.Image:
    """The reused float RGBA image, created or resized to width×height (materials keep pointing at it)."""
    image = bpy.data.images.get(name)
    if image is None:
        image = bpy.data.images.new(name, width, height, alpha=True, float_buffer=True)
        # The texture's values are sRGB-encoded 8-bit; tag them so rather than as linear.
        image.colorspace_settings.name = "sRGB"
    elif tuple(image.size) != (width, height):
        image.scale(width, height)
    return image


def ensure_material(obj: bpy.types.Object, image: bpy.types.Image) -> bpy.types.ShaderNodeTexImage:
    """The object's MegaLive material (emission of the image, transparent where alpha is 0)."""
    material = next(
        (
            slot.material
            for slot in obj.material_slots
            if slot.material is not None and slot.material.node_tree is not None and MATERIAL_NODE_NAME in slot.material.node_tree.nodes
        ),
        None,
    )
    if material is None:
        material = bpy.data.materials.new(f"MegaLive {image.name}")
        if material.node_tree is None:  # Blender < 5.0 creates materials without nodes
            material.use_nodes = True
        nodes, links = material.node_tree.nodes, material.node_tree.links
        nodes.clear()
        texture = nodes.new("ShaderNodeTexImage")
        texture.name = MATERIAL_NODE_NAME
        emission = nodes.new("ShaderNodeEmission")
        transparent = nodes.new("ShaderNodeBsdfTransparent")
        mix = nodes.new("ShaderNodeMixShader")
        output = nodes.new("ShaderNodeOutputMaterial")
        links.new(texture.outputs["Color"], emission.inputs["Color"])
        links.new(texture.outputs["Alpha"], mix.inputs["Fac"])
        links.new(transparent.outputs["BSDF"], mix.inputs[1])
        links.new(emission.outputs["Emission"], mix.inputs[2])
        links.new(mix.outputs["Shader"], output.inputs["Surface"])
        obj.data.materials.append(material)
    node = material.node_tree.nodes[MATERIAL_NODE_NAME]
    node.image = image
    return node
