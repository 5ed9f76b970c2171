"""A small patch discriminator and hinge losses (the adversarial term L_ADV).

OMGSR uses a frozen-backbone discriminator; without hub weights here, a spectrally normalised
PatchGAN trained from scratch plays that role. Off by default on CPU (it doubles the cost).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from op4ksr.losses.base import Loss, register_loss


class PatchDiscriminator(nn.Module):
    """Strided convs → one logit per patch. Input images in [0, 1]."""

    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        mods: list[nn.Module] = [spectral_norm(nn.Conv2d(3, channels, 4, 2, 1)), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(layers - 1):
            mods += [spectral_norm(nn.Conv2d(c, c * 2, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(spectral_norm(nn.Conv2d(c, 1, 3, 1, 1)))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def generator_hinge_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


@register_loss("adversarial")
class AdversarialLoss(Loss):
    """L_ADV for the generator: the hinge term on the discriminator's logits of the fakes.

    With weight > 0 the stage owns a :class:`PatchDiscriminator` (``Stage.discriminator``); the
    trainer adds this term and steps the discriminator from step ``adversarial_start`` on.
    """

    kind = "adversarial"
    options: ClassVar[Mapping[str, Any]] = {"start": 0}

    def __init__(self, start: int = 0) -> None:
        super().__init__()
        self.start = int(start)

    def forward(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return generator_hinge_loss(fake_logits)
