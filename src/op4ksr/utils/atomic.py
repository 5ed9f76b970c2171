"""Atomic file writes: a reader (or a crash) never sees a partial file."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

# tempfile.mkstemp's random part: 8 characters of [a-z0-9_] (CPython's _RandomNameSequence)
_MKSTEMP_RANDOM = "[a-z0-9_]{8}"


def _temp_prefix(path: Path) -> str:
    return f".{path.stem}."


def _temp_suffix(path: Path) -> str:
    return f".part{path.suffix}"


def is_temp_of(candidate: Path, path: Path) -> bool:
    """Whether ``candidate`` is exactly a temporary :func:`atomic_path` made for ``path``
    (``.<stem>.<8 random>.part<ext>``), not a user's file that merely looks alike."""
    pattern = re.escape(_temp_prefix(path)) + _MKSTEMP_RANDOM + re.escape(_temp_suffix(path))
    return candidate.parent == path.parent and re.fullmatch(pattern, candidate.name) is not None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; rename it onto ``path`` on success.

    The temporary file keeps ``path``'s suffix (so format sniffing by extension works) and is
    removed on any error, including KeyboardInterrupt. With ``overwrite=False`` an existing
    destination raises ``FileExistsError`` instead of being replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=_temp_suffix(path), dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; outputs get the usual permissions (0666 minus the umask).
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            # link() fails if the destination exists, so a racing writer can't be clobbered.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path}: exists (use --overwrite to replace it)") from None
            except OSError:
                if path.exists():
                    raise FileExistsError(f"{path}: exists (use --overwrite to replace it)") from None
                os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def current_umask() -> int:
    """The process umask, read without changing it (os.umask() can only set it, racing other
    threads); 0o022 where /proc is not available."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)
