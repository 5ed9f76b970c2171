"""op4ksr for ComfyUI: copy or link this folder into ComfyUI's ``custom_nodes/`` (docs/COMFYUI.md).

ComfyUI imports this file and reads the two mappings; the nodes live in :mod:`.nodes`.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, register_model_folder

register_model_folder()  # models/op4ksr/ becomes a ComfyUI model folder

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
