"""op4ksr nodes for ComfyUI: load an op4ksr model, upscale whole images through it (no tiles).

ComfyUI's own ``ImageUpscaleWithModel`` cuts every image into 512-px tiles; op4ksr's DiT must
see the whole image (docs/ARCHITECTURE.md), so these nodes hand each image to op4ksr's public
API in one piece: :func:`op4ksr.api.load_model` loads, :class:`op4ksr.api.Upscaler` upscales
(alpha, resize to ×2/×3, NaN fallback), the pipeline's planner decides before anything runs.

ComfyUI's modules (``folder_paths``, ``comfy.utils``, ``comfy.model_management``) are used when
they are importable and skipped otherwise, so the nodes also run (and are tested) without
ComfyUI. op4ksr itself is imported when a node first needs it, not when ComfyUI starts.
"""

from __future__ import annotations

import gc
import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

MODEL_TYPE = "OP4KSR_MODEL"  # what the loader hands to the upscale node: a loaded op4ksr pipeline
CATEGORY = "image/upscaling"
# ComfyUI model folders (``folder_paths`` names) searched for op4ksr model folders; "op4ksr" is
# registered under ComfyUI's models/ when the pack loads, "diffusers" is ComfyUI's own.
MODEL_FOLDER_NAMES = ("op4ksr", "diffusers")
# A model folder may sit directly in a root or one level deeper (models/diffusers/<org>/<name>).
MAX_SEARCH_DEPTH = 2
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "fp32", "bf16", "fp16")
MODEL_DEFAULT = "model default"  # a post-step choice that keeps the model's own setting
# fidelity below zero keeps the model's own strength (a FLOAT widget cannot be left empty)
FIDELITY_MODEL_DEFAULT = -1.0


class OP4KSRNodeError(RuntimeError):
    """A one-line reason ComfyUI shows on the node (bad choice, bad input, would not fit)."""


def comfy_module(name: str) -> ModuleType | None:
    """ComfyUI's module ``name``, or ``None`` outside ComfyUI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def register_model_folder() -> None:
    """Make ``models/op4ksr/`` a ComfyUI model folder (``extra_model_paths.yaml`` may add more)."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        return
    default = str(Path(folder_paths.models_dir) / "op4ksr")
    try:
        known = folder_paths.get_folder_paths("op4ksr")  # extra_model_paths.yaml may have named some
    except KeyError:
        known = []
    if default not in known:
        folder_paths.add_model_folder_path("op4ksr", default)


def model_roots() -> dict[str, list[Path]]:
    """{folder name: its roots} from ComfyUI's ``folder_paths``; empty outside ComfyUI."""
    folder_paths = comfy_module("folder_paths")
    roots: dict[str, list[Path]] = {}
    for name in MODEL_FOLDER_NAMES:
        try:
            roots[name] = [Path(p) for p in folder_paths.get_folder_paths(name)] if folder_paths else []
        except KeyError:  # a ComfyUI without this folder name
            roots[name] = []
    return roots


def is_op4ksr_model(folder: Path) -> bool:
    """True when ``folder/model_index.json`` describes an op4ksr pipeline (not some other diffusers model)."""
    from op4ksr.models.modeling import read_config_file
    from op4ksr.models.pipeline import OP4KSRPipeline

    try:
        return read_config_file(folder / "model_index.json").get("_class_name") == OP4KSRPipeline.__name__
    except (OSError, ValueError):
        return False


def inside_root(root: Path, path: Path) -> Path:
    """``path`` resolved (symlinks followed), or OP4KSRNodeError when it leaves ``root``."""
    from op4ksr.models.loading import contained_file
    from op4ksr.utils.errors import ModelLoadError

    try:
        return contained_file(root, path, "the chosen model folder")
    except ModelLoadError as exc:
        raise OP4KSRNodeError(str(exc)) from None


def model_choices() -> list[str]:
    """The loader's choices: the bundled model, then ``<folder name>/<path>`` of every op4ksr
    model folder under the roots (a converted UltraFlux model is one of them)."""
    from op4ksr.models.loading import DEFAULT_MODEL

    choices = [DEFAULT_MODEL]
    for name, roots in model_roots().items():
        for root in roots:
            for depth in range(1, MAX_SEARCH_DEPTH + 1):
                for index in sorted(root.glob("/".join(["*"] * depth) + "/model_index.json")):
                    folder = index.parent
                    try:
                        inside_root(root, folder)
                    except OP4KSRNodeError:  # a symlink out of the models folder: never offered
                        continue
                    label = f"{name}/{folder.relative_to(root).as_posix()}"
                    if label not in choices and is_op4ksr_model(folder):
                        choices.append(label)
    return choices


def resolve_model_choice(choice: str) -> Path | None:
    """The model folder a choice names (``None``: the bundled model); refuses anything that
    resolves outside ComfyUI's model roots (``..``, symlinks, absolute paths)."""
    from op4ksr.models.loading import DEFAULT_MODEL

    if choice == DEFAULT_MODEL:
        return None
    name, _, relative = choice.partition("/")
    roots = model_roots()
    if name not in roots or not relative:
        raise OP4KSRNodeError(f"model {choice!r}: expected {DEFAULT_MODEL!r} or "
                              f"{' or '.join(n + '/<folder>' for n in MODEL_FOLDER_NAMES)}")
    if Path(relative).is_absolute():
        raise OP4KSRNodeError(f"model {choice!r}: an absolute path; choose a folder under models/{name}/")
    for root in roots[name]:
        folder = inside_root(root, root / relative)
        if (folder / "model_index.json").is_file():
            return folder
    searched = ", ".join(str(r) for r in roots[name]) or f"no models/{name}/ folder is configured"
    raise OP4KSRNodeError(f"model {choice!r}: no folder with model_index.json there ({searched})")


def resolve_node_device(name: str):
    """``auto``: ComfyUI's device when running in ComfyUI (it honours --cpu and friends), else op4ksr's."""
    from op4ksr.utils.device import resolve_device

    model_management = comfy_module("comfy.model_management")
    if name == "auto" and model_management is not None:
        return model_management.get_torch_device()
    try:
        return resolve_device(name)
    except ValueError as exc:
        raise OP4KSRNodeError(str(exc)) from None


def release_memory(device) -> None:
    """Give cached accelerator memory back between batch items (ComfyUI's way when present)."""
    import torch

    gc.collect()
    model_management = comfy_module("comfy.model_management")
    if model_management is not None:
        model_management.soft_empty_cache()
    elif device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


class OP4KSRModelLoader:
    """Load the bundled op4ksr model or an op4ksr model folder from ComfyUI's model folders."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # ComfyUI reads this name
        choices = model_choices()
        return {"required": {
            "model": (choices, {"default": choices[0], "tooltip": (
                "compact: the model bundled with op4ksr. Others: folders with model_index.json under "
                "models/op4ksr/ or models/diffusers/ (op4ksr models only, e.g. a converted UltraFlux).")}),
            "device": (list(DEVICES), {"default": "auto", "tooltip": "auto: ComfyUI's device."}),
            "dtype": (list(DTYPES), {"default": "auto", "tooltip": (
                "auto: bf16 (fp16 where bf16 is missing) on GPUs, fp16 on MPS. Always fp32 on CPU.")}),
        }}

    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("op4ksr_model",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads an op4ksr model (one-step, patch-free 4K super-resolution)."

    def load(self, model: str, device: str, dtype: str) -> tuple[Any]:
        from op4ksr.api import load_model
        from op4ksr.utils.errors import ModelLoadError

        folder = resolve_model_choice(model)
        torch_device = resolve_node_device(device)
        # half precision on a CPU is slow or unsupported: fp32 there whatever was asked
        run_dtype = "fp32" if torch_device.type == "cpu" else None if dtype == "auto" else dtype
        try:
            return (load_model(folder, device=torch_device, dtype=run_dtype),)
        except ModelLoadError as exc:
            raise OP4KSRNodeError(str(exc)) from None


class OP4KSRUpscale:
    """Upscale each image of a batch whole (no tiles), with the options of ``op4ksr upscale``."""

    @classmethod
    def INPUT_TYPES(cls) -> dict:  # ComfyUI reads this name
        from op4ksr.models.color import COLOR_FIXES
        from op4ksr.models.grid_fix import GRID_FIXES

        return {
            "required": {
                "op4ksr_model": (MODEL_TYPE,),
                "image": ("IMAGE",),
                "scale": ("INT", {"default": 4, "min": 2, "max": 4, "step": 1, "tooltip": (
                    "Upscaling factor (--scale): the output is scale × the input. The model runs at its "
                    "native ×4; ×2 and ×3 are a high-quality resize of that.")}),
                "fidelity": ("FLOAT", {
                    "default": FIDELITY_MODEL_DEFAULT, "min": FIDELITY_MODEL_DEFAULT, "max": 1.0, "step": 0.05,
                    "tooltip": ("--fidelity: high-frequency compensation from the input, 0 = the decoder alone "
                                "(more generative) to 1 = full (most faithful). Negative: the model's own.")}),
                "color_fix": ([MODEL_DEFAULT, *COLOR_FIXES], {"default": MODEL_DEFAULT, "tooltip": (
                    "--color-fix: anchor colours to the input.")}),
                "grid_fix": ([MODEL_DEFAULT, *GRID_FIXES], {"default": MODEL_DEFAULT, "tooltip": (
                    "--grid-fix: shrink what stands out at the 32-px token harmonics.")}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": (
                    "Transparency as LoadImage gives it (1 = transparent, i.e. 1 − alpha); upscaled "
                    "separately. An all-zero mask (LoadImage's for opaque images) means none. An RGBA "
                    "image's 4th channel works the same way.")}),
            },
        }

    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    FUNCTION = "upscale"
    CATEGORY = CATEGORY
    DESCRIPTION = "Upscales whole images with op4ksr (no 512-px tiles); alpha is upscaled separately."

    def upscale(self, op4ksr_model: Any, image, scale: int, fidelity: float, color_fix: str, grid_fix: str,
                mask=None) -> tuple[Any, Any]:
        import numpy as np
        import torch

        from op4ksr.api import Upscaler
        from op4ksr.io.images import ImageError, load_image
        from op4ksr.models.post_steps import check_post_steps

        options = {
            "color_fix": None if color_fix == MODEL_DEFAULT else color_fix,
            "grid_fix": None if grid_fix == MODEL_DEFAULT else grid_fix,
            "fidelity": None if fidelity < 0 else float(fidelity),
        }
        try:
            check_post_steps(**options)
            upscaler = Upscaler(op4ksr_model, **options)
            scale = upscaler.check_scale(scale)
        except ValueError as exc:
            raise OP4KSRNodeError(str(exc)) from None
        arrays = batch_arrays(image, mask)
        height, width = arrays[0].shape[:2]
        check_memory(upscaler, len(arrays), height, width)
        progress = comfy_module("comfy.utils")
        bar = progress.ProgressBar(len(arrays)) if progress is not None else None
        model_management = comfy_module("comfy.model_management")
        pixels, alphas = [], []
        for i, array in enumerate(arrays):
            if model_management is not None:
                model_management.throw_exception_if_processing_interrupted()
            try:
                result = upscaler.upscale_data(load_image(array), scale)
            except ImageError as exc:
                raise OP4KSRNodeError(f"image {i + 1} of {len(arrays)}: {exc}") from None
            for note in result.notes:
                log.warning("op4ksr, image %d of %d: %s", i + 1, len(arrays), note)
            pixels.append(result.pixels)
            alphas.append(result.alpha)
            del result
            release_memory(upscaler.pipe.device)
            if bar is not None:
                bar.update(1)
        out = torch.from_numpy(np.stack(pixels))
        if image.shape[-1] in (2, 4):  # the alpha goes back where it came from
            out = torch.cat([out, torch.from_numpy(np.stack(alphas))[..., None]], dim=-1)
        if alphas[0] is None:
            out_mask = torch.zeros(out.shape[:3], dtype=torch.float32)  # opaque, as LoadImage says
        else:
            out_mask = 1.0 - torch.from_numpy(np.stack(alphas))
        return out, out_mask


def batch_arrays(image, mask=None) -> list:
    """A ComfyUI IMAGE [B, H, W, C] (and MASK [B|1, H, W] = 1 − alpha) → one float32 array
    [H, W, C(+alpha)] per item, the layout ``op4ksr.io.images.load_image`` reads."""
    import numpy as np

    if image.ndim != 4 or image.shape[-1] not in (1, 2, 3, 4) or 0 in image.shape:
        raise OP4KSRNodeError(f"image: expected a [B, H, W, C] batch with C 1–4, got shape {tuple(image.shape)}")
    values = image.detach().float().cpu().numpy()
    # LoadImage gives an opaque image a 64×64 all-zero mask: no transparency, whatever its size
    if mask is None or not bool(mask.any()):
        return list(values)
    if image.shape[-1] in (2, 4):
        raise OP4KSRNodeError("image has an alpha channel and a mask is connected too: give the alpha one way")
    alpha = 1.0 - mask.detach().float().cpu().numpy()
    if alpha.ndim == 2:
        alpha = alpha[None]
    if alpha.ndim != 3 or alpha.shape[1:] != values.shape[1:3] or alpha.shape[0] not in (1, values.shape[0]):
        raise OP4KSRNodeError(f"mask of shape {tuple(mask.shape)} does not match image of shape "
                              f"{tuple(image.shape)} (expected [{values.shape[0]} or 1, H, W])")
    alpha = np.broadcast_to(alpha, values.shape[:3])
    return [np.concatenate([v, a[..., None]], axis=-1) for v, a in zip(values, alpha, strict=True)]


def check_memory(upscaler: Any, batch: int, height: int, width: int) -> None:
    """Before any model call: ask ComfyUI to make room, then the planner; refuse with the
    estimate and the node's options when an image will not fit."""
    from op4ksr.api import memory_plan_error
    from op4ksr.models.planner import available_bytes, human_bytes

    pipe = upscaler.pipe
    out_h, out_w = height * upscaler.native_scale, width * upscaler.native_scale
    estimate = pipe.estimate(out_h, out_w)
    model_management = comfy_module("comfy.model_management")
    if model_management is not None:  # unload other models ComfyUI keeps on this device
        model_management.free_memory(estimate.peak_bytes - estimate.weights_bytes, pipe.device)
    try:
        upscaler.check_fits(width, height)  # the planner decides; the message below explains
    except memory_plan_error():
        working = estimate.peak_bytes - estimate.weights_bytes
        raise OP4KSRNodeError(
            f"op4ksr: {batch} image(s) of {width}×{height} → {out_w}×{out_h} (the model's native "
            f"×{upscaler.native_scale}) will not fit on {pipe.device}: each needs ~{human_bytes(working)} "
            f"beyond the loaded weights but ~{human_bytes(available_bytes(pipe.device))} is free (estimate: "
            f"peak {human_bytes(estimate.peak_bytes)} in {estimate.dtype}, weights {human_bytes(estimate.weights_bytes)}, "
            f"encode {human_bytes(estimate.encode_bytes)}, DiT {human_bytes(estimate.dit_bytes)}, "
            f"decode {human_bytes(estimate.decode_bytes)}). Options: {'; '.join(memory_options(pipe.device, pipe.dtype))}"
        ) from None


def memory_options(device, dtype) -> list[str]:
    """What a user can change in the workflow when an image does not fit (a smaller ``scale``
    is not one: the model always runs at its native scale)."""
    import torch

    options = ["a smaller input image"]
    if device.type != "cpu":
        if dtype == torch.float32:
            options.append("dtype fp16 or bf16 in the op4ksr loader (half the memory)")
        options.append("device cpu in the op4ksr loader (system memory, slower)")
    options.append("fewer other programs on the device")
    return options


NODE_CLASS_MAPPINGS = {
    "OP4KSRModelLoader": OP4KSRModelLoader,
    "OP4KSRUpscale": OP4KSRUpscale,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "OP4KSRModelLoader": "Load op4ksr Model",
    "OP4KSRUpscale": "Upscale Image (op4ksr, whole image)",
}
