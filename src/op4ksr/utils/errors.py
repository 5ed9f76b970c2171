"""An exception as the one line users see."""

from __future__ import annotations


class ModelLoadError(ValueError):
    """A model cannot be loaded; the message is one line naming the model (or its part and file)
    and the problem. The one class for it: raised by ``models.loading`` and, wrapping anything
    else that went wrong, by ``api.load_model``."""


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
