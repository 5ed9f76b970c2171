"""Loss base class and registry, pyiqa style like the metrics: one loss, one class, one name.

    @register_loss("wavelet")
    class WaveletLoss(Loss):
        order = 30  # place in the weighted sum

        def forward(self, pred, target):
            return wavelet_loss(pred, target)

That class, in its own module of ``op4ksr.losses``, is all a new loss needs: the package's
modules are found by :mod:`op4ksr.losses.registry`, and the training config weighs the loss by
its name in the ``[loss]`` table (``wavelet = 1.0``; 0, the default unless ``default_weight``
says otherwise, means the loss is not even built). Constructor options are declared with their
defaults in ``options`` and set in the same table as ``NAME_OPTION`` (``lpips_net = "alexnet"``).

This module imports nothing from op4ksr: loss modules import it, the registry imports them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from torch import nn

# What a loss's forward takes, i.e. where a training stage calls it:
# image: (prediction, target) images [B,3,H,W] in [0,1] — every stage's image terms;
# latent: (prediction, target) latents — the sr stage's alignment of E_LoRA(LR) with the noised z_HR;
# posterior: the VAE's posterior distribution — the vae stage;
# adversarial: the discriminator's logits of the fakes — the trainer, which owns the discriminator's step.
KINDS = ("image", "latent", "posterior", "adversarial")


class Loss(nn.Module):
    """Base class. ``@register_loss(NAME)`` sets ``name``; subclasses implement ``forward``.

    ``kind``: see ``KINDS``. ``default_weight``: the weight when the config does not give one.
    ``options``: constructor keyword arguments settable from the config, with their defaults (the
    default's type is the option's type). ``order``: position in the weighted sum (a fixed order
    keeps totals and gradients bit-reproducible whatever the config's key order).
    """

    name: ClassVar[str]
    kind: ClassVar[str] = "image"
    default_weight: ClassVar[float] = 0.0
    options: ClassVar[Mapping[str, Any]] = {}
    order: ClassVar[int] = 100

    @classmethod
    def check(cls, options: Mapping[str, Any], *, weight: float, crop_size: int) -> None:
        """Raise ``ValueError`` (one line, naming the ``loss.`` key) if the config cannot work."""

    @classmethod
    def required_assets(cls, options: Mapping[str, Any]) -> list[str]:
        """Offline assets this loss loads when built (checked before training starts)."""
        return []


_REGISTRY: dict[str, type[Loss]] = {}
_L = TypeVar("_L", bound=type[Loss])


def register_loss(name: str) -> Callable[[_L], _L]:
    """Class decorator: register a :class:`Loss` subclass as ``name`` (a ``[loss]`` key)."""

    def decorate(cls: _L) -> _L:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"loss {name!r} registered twice")
        if not name.isidentifier() or hasattr(nn.Module, name):
            raise ValueError(f"loss name {name!r} must be an identifier that is not an nn.Module attribute")
        if cls.kind not in KINDS:
            raise ValueError(f"loss {name!r}: kind {cls.kind!r} is not one of {', '.join(KINDS)}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate
