"""Pluggable scorers for curation stage (ii).

A scorer is any picklable callable ``(rgb: HxWx3 float32 in [0,1]) -> dict[str, float]``; it is
named in a :class:`ScorerSpec` (``"package.module:factory"`` plus keyword arguments) so process
pools and Ray workers can rebuild it. Two are provided:

* :class:`LaionAesthetic` — the LAION "improved aesthetic predictor" MLP head on CLIP ViT-L/14
  image embeddings, when the user supplies both weights locally (nothing is downloaded).
* any learned degradation scorer (e.g. a DEResNet port) can be plugged the same way.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

Scorer = Callable[[np.ndarray], dict[str, float]]


@dataclass(frozen=True)
class ScorerSpec:
    target: str  # "package.module:callable" returning a Scorer when called with kwargs
    kwargs: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, text: str) -> ScorerSpec:
        """``module:factory`` or ``module:factory?key=value&key=value`` (values are strings)."""
        target, _, query = text.partition("?")
        if ":" not in target:
            raise ValueError(f"scorer {text!r}: expected 'package.module:callable'")
        pairs = tuple(tuple(p.split("=", 1)) for p in query.split("&") if p) if query else ()
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"scorer {text!r}: options must be key=value")
        return cls(target, pairs)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=8)
def build_scorer(spec: ScorerSpec) -> Scorer:
    """Import and construct once per process (models are expensive to load)."""
    module_name, _, attr = spec.target.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"scorer {spec.target!r}: cannot import ({exc})") from None
    return factory(**dict(spec.kwargs))


class AestheticMLP(nn.Module):
    """The LAION improved-aesthetic-predictor head (768 → 1024 → 128 → 64 → 16 → 1).

    Dropout layers sit at indices 1, 3, 5 so the state-dict keys (``layers.0``, ``layers.2``,
    ``layers.4``, ``layers.6``, ``layers.7``) match the published checkpoint.
    """

    def __init__(self, in_dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)


class LaionAesthetic:
    """Aesthetic score (about 1–10) from a local CLIP ViT-L/14 folder and the MLP head weights.

    ``mlp``: a ``.safetensors`` file with the head's state dict (convert the published ``.pth``
    once with a trusted tool: op4ksr never unpickles). ``clip``: a local ``transformers`` CLIP
    folder, or pass ``embed`` (a callable image → L2-normalised embedding) directly.
    """

    def __init__(self, mlp: str | Path, clip: str | Path | None = None,
                 embed: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        from safetensors.torch import load_file

        self.head = AestheticMLP()
        self.head.load_state_dict(load_file(str(mlp)))
        self.head.eval()
        if embed is None:
            if clip is None:
                raise ValueError("LaionAesthetic needs a local CLIP folder (clip=...) or an embed callable")
            embed = _clip_embedder(Path(clip))
        self.embed = embed

    def __call__(self, rgb: np.ndarray) -> dict[str, float]:
        emb = np.asarray(self.embed(rgb), dtype=np.float32).reshape(1, -1)
        emb = emb / max(float(np.linalg.norm(emb)), 1e-12)
        with torch.no_grad():
            return {"aesthetic": float(self.head(torch.from_numpy(emb))[0, 0])}


def _clip_embedder(folder: Path) -> Callable[[np.ndarray], np.ndarray]:
    try:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
    except ImportError:
        raise ImportError("the LAION aesthetic scorer needs `transformers` (pip install transformers)") from None
    processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
    model = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True, use_safetensors=True).eval()

    def embed(rgb: np.ndarray) -> np.ndarray:
        inputs = processor(images=(rgb * 255).round().astype(np.uint8), return_tensors="pt")
        with torch.no_grad():
            return model(**inputs).image_embeds[0].numpy()

    return embed
