"""Atomic file writes: a reader (or a crash) never sees a partial file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; rename it onto ``path`` on success.

    The temporary file keeps ``path``'s suffix (so format sniffing by extension works) and is
    removed on any error, including KeyboardInterrupt. With ``overwrite=False`` an existing
    destination raises ``FileExistsError`` instead of being replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=path.parent)
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
