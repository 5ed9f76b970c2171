"""Batch planning for ``op4ksr upscale``: inputs → work items, before any model is loaded.

Inputs are collected (files, folders, globs), output names chosen
(``<out>/<mirrored subfolder>/<stem><suffix>.<ext>``), and collisions or outputs that would
land on an input are refused as a whole. Existing outputs are skipped or reported according to
the policy; nothing is ever overwritten unless asked. No pixel is decoded here; running the
plan is :mod:`op4ksr.batch.run` (locally) or :mod:`op4ksr.batch.cluster` (on Ray).
"""

from __future__ import annotations

import glob
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from op4ksr.io.images import (
    DEFAULT_MAX_PIXELS,
    FORMAT_SUFFIX,
    check_max_pixels,
    check_png_compression,
    image_suffixes,
    normalise_format,
)

EXISTING_POLICIES = ("fail", "skip", "overwrite")


class PlanError(ValueError):
    """The batch cannot start; ``problems`` are one line each (nothing has been done)."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class BatchOptions:
    """Everything ``op4ksr upscale`` decides per run (the CLI flags, one to one)."""

    out_dir: Path = Path("upscaled")
    scale: int = 4
    fmt: str = "png"
    quality: int | None = None
    png_compression: int | None = None  # None → io.images.PNG_COMPRESS_LEVEL
    suffix: str | None = None  # None → "_x<scale>"
    recursive: bool = False
    existing: str = "fail"  # "fail" | "skip" | "overwrite"
    max_pixels: int = DEFAULT_MAX_PIXELS
    tiled: bool = False
    color_fix: str | None = None  # None → the model's own setting
    grid_fix: str | None = None  # None → the model's own setting
    fidelity: float | None = None  # None → the model's own setting (compensation strength, 0–1)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.color_fix is not None or self.grid_fix is not None or self.fidelity is not None:
            # the pipeline's own lists; imported only when asked (they pull in torch)
            from op4ksr.models.post_steps import check_post_steps

            check_post_steps(self.color_fix, self.grid_fix, self.fidelity)
        self.fmt = normalise_format(self.fmt)
        if self.existing not in EXISTING_POLICIES:
            raise ValueError(f"existing must be one of {EXISTING_POLICIES}, got {self.existing!r}")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be 1–100, got {self.quality}")
        check_png_compression(self.png_compression)
        check_max_pixels(self.max_pixels)
        if self.suffix is not None and (any(c in self.suffix for c in "/\\\0") or ".." in self.suffix):
            raise ValueError(f"--suffix {self.suffix!r}: a name suffix cannot hold '/', '\\', '..' or NUL")

    @property
    def name_suffix(self) -> str:
        return f"_x{self.scale}" if self.suffix is None else self.suffix


@dataclass(frozen=True)
class WorkItem:
    source: Path
    output: Path
    label: str  # the input as the user would recognise it


@dataclass
class FileResult:
    """One line of the report (see docs/UPSCALE.md for the JSON schema)."""

    input: str
    output: str | None
    status: str  # "done" | "skipped" | "failed"
    reason: str | None = None
    input_size: tuple[int, int] | None = None
    output_size: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] | None = None  # read_s, compute_s, write_s of a done file

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_size"] = list(self.input_size) if self.input_size else None
        out["output_size"] = list(self.output_size) if self.output_size else None
        out["seconds"] = round(self.seconds, 3)
        out["timings"] = {k: round(v, 4) for k, v in self.timings.items()} if self.timings else None
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FileResult:
        sizes = {k: tuple(raw[k]) if raw.get(k) else None for k in ("input_size", "output_size")}
        return cls(**{**raw, **sizes, "notes": list(raw.get("notes") or [])})


@dataclass
class BatchPlan:
    items: list[WorkItem]
    preflight: list[FileResult]  # skipped/failed during planning, before any work
    stale_temps: list[Path]  # leftovers of an interrupted earlier run, for our outputs only


# ----------------------------------------------------------------------------- collecting


def _key(path: Path) -> str:
    return os.path.normcase(str(path.resolve()))


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _glob_base(pattern: str) -> Path:
    """The folder part of ``pattern`` before the first wildcard (kept out of mirrored names)."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


@dataclass(frozen=True)
class _Found:
    source: Path
    subdir: Path  # mirrored below the output folder
    label: str


def collect_inputs(
    inputs: Sequence[str | os.PathLike], *, recursive: bool, exclude: Path | None = None
) -> tuple[list[_Found], list[FileResult]]:
    """Expand files, folders and globs; returns (found, results for missing/non-image entries).

    In folders and globs, hidden entries (``.DS_Store``, our own ``.*.part.*`` temps) are
    ignored, files with a non-image extension are reported as skipped, and ``exclude`` (the
    output folder) is never entered. A file named explicitly is always tried.
    """
    suffixes = image_suffixes()
    exclude_key = _key(exclude) if exclude is not None else None
    found: list[_Found] = []
    results: list[FileResult] = []
    seen: set[str] = set()

    def add(path: Path, base: Path | None, label: str, explicit: bool) -> None:
        key = _key(path)
        if key in seen:
            return
        if not explicit:
            if exclude_key is not None and (key == exclude_key or key.startswith(exclude_key + os.sep)):
                return
            rel = path.relative_to(base) if base is not None else Path(path.name)
            if _is_hidden(rel):
                return
            if path.suffix.lower() not in suffixes:
                results.append(FileResult(label, None, "skipped", "not an image file type"))
                seen.add(key)
                return
        seen.add(key)
        subdir = path.parent.relative_to(base) if base is not None else Path()
        found.append(_Found(path, subdir, label))

    for raw in inputs:
        arg = os.fspath(raw)
        path = Path(arg)
        if path.is_dir():
            entries = path.rglob("*") if recursive else path.iterdir()
            for entry in sorted(entries):
                if entry.is_file():
                    add(entry, path, str(entry), explicit=False)
                elif entry.is_symlink() and not _is_hidden(entry.relative_to(path)):
                    # said, not dropped: a dangling link, or a linked folder rglob does not follow
                    reason = "broken symbolic link" if not entry.exists() else "symbolic link to a folder (not followed)"
                    results.append(FileResult(str(entry), None, "failed" if not entry.exists() else "skipped", reason))
        elif path.is_file():
            add(path, None, arg, explicit=True)
        elif glob.has_magic(arg):
            base = _glob_base(arg)
            matches = [Path(m) for m in sorted(glob.glob(arg, recursive=True)) if Path(m).is_file()]
            if not matches:
                results.append(FileResult(arg, None, "failed", "no files match this pattern"))
            for match in matches:
                add(match, base, str(match), explicit=False)
        else:
            results.append(FileResult(arg, None, "failed", "no such file or folder"))
    return found, results


# ----------------------------------------------------------------------------- planning


def output_path(found_source: Path, subdir: Path, options: BatchOptions) -> Path:
    """``<out_dir>/<subdir>/<stem><suffix>.<ext>``."""
    name = f"{found_source.stem}{options.name_suffix}{FORMAT_SUFFIX[options.fmt]}"
    return options.out_dir / subdir / name


def stale_temps_for(output: Path) -> list[Path]:
    """Temporaries ``atomic_path`` left for ``output`` (``.<stem>.*.part<ext>``) after a kill."""
    if not output.parent.is_dir():
        return []
    from op4ksr.utils.atomic import is_temp_of

    pattern = f".{glob.escape(output.stem)}.*.part{glob.escape(output.suffix)}"  # a superset, filtered exactly
    return sorted(p for p in output.parent.glob(pattern) if is_temp_of(p, output) and p.is_file())


def check_out_dir(out_dir: Path) -> Path:
    """``-o`` as a resolved folder path; PlanError if it cannot be one (an existing file, a
    symlink loop, a path through a file). Nothing is created here."""
    try:
        resolved = out_dir.resolve(strict=False)
        if out_dir.exists() and not out_dir.is_dir():
            raise PlanError([f"-o {out_dir}: exists and is not a folder; choose a folder"])
    except RuntimeError:  # Path.resolve on a symlink loop (Python < 3.13)
        raise PlanError([f"-o {out_dir}: symbolic link loop; choose another folder"]) from None
    except OSError as exc:
        raise PlanError([f"-o {out_dir}: cannot be used as the output folder ({exc.strerror or exc})"]) from None
    for parent in resolved.parents:
        if parent.exists() and not parent.is_dir():
            raise PlanError([f"-o {out_dir}: {parent} is a file, not a folder"])
    return resolved


def _file_in_the_way(output: Path, out_dir: Path) -> Path | None:
    """A mirrored subfolder of ``output`` under ``out_dir`` that exists as a file, if any."""
    folder = output.parent
    while folder != out_dir and out_dir in folder.parents:
        if folder.exists() and not folder.is_dir():
            return folder
        folder = folder.parent
    return None


def _folded_key(path: Path) -> str:
    """What a case-insensitive, normalising file system (APFS, exFAT, SMB, NTFS) sees as the name."""
    return unicodedata.normalize("NFC", str(path)).casefold()


def _folded_collisions(outputs: dict[str, Path]) -> list[str]:
    """Distinct outputs that differ only in case or Unicode form (``A.png``/``a.png``, NFC/NFD
    ``café``): one file on such a file system, so one would silently replace the other."""
    groups: dict[str, list[Path]] = {}
    for out in outputs.values():
        groups.setdefault(_folded_key(out), []).append(out)
    return [f"{', '.join(str(p) for p in paths)}: outputs that differ only in letter case or Unicode form "
            "are one file on case-insensitive file systems (APFS, exFAT, SMB); use --suffix or separate runs"
            for paths in groups.values() if len(paths) > 1]


def plan_batch(inputs: Sequence[str | os.PathLike], options: BatchOptions) -> BatchPlan:
    """Collect inputs and choose outputs; raise :class:`PlanError` before any work on conflicts."""
    out_root = check_out_dir(options.out_dir)
    found, preflight = collect_inputs(inputs, recursive=options.recursive, exclude=options.out_dir)
    input_keys = {_key(f.source): f.label for f in found}
    by_output: dict[str, list[_Found]] = {}
    outputs: dict[str, Path] = {}
    for f in found:
        out = output_path(f.source, f.subdir, options)
        key = _key(out)
        by_output.setdefault(key, []).append(f)
        outputs[key] = out
    problems: list[str] = []
    for key, out in outputs.items():
        if not out.resolve(strict=False).is_relative_to(out_root):  # e.g. a folder inside -o linked elsewhere
            problems.append(f"{out}: would be written outside -o {options.out_dir}; refused")
    out_key = _key(options.out_dir)
    for raw in inputs:
        if Path(raw).is_dir() and _key(Path(raw)) == out_key:
            problems.append(f"{raw}: the output folder is this input folder; choose another -o")
    for key, group in by_output.items():
        if len(group) > 1:
            names = ", ".join(g.label for g in group)
            problems.append(f"{outputs[key]}: {len(group)} inputs would write this output ({names}); use --suffix or separate runs")
        if key in input_keys:
            problems.append(f"{outputs[key]}: output would overwrite the input {input_keys[key]}")
    problems.extend(_folded_collisions(outputs))
    if problems:
        raise PlanError(problems)

    items: list[WorkItem] = []
    stale: list[Path] = []
    for key, group in by_output.items():
        f, out = group[0], outputs[key]
        blocking_file = _file_in_the_way(out, options.out_dir)
        if blocking_file is not None:  # decided here, not after the model ran ("output exists")
            preflight.append(FileResult(f.label, str(out), "failed",
                                        f"cannot write: {blocking_file} is a file, not a folder"))
            continue
        stale.extend(stale_temps_for(out))
        if out.is_dir():
            preflight.append(FileResult(f.label, str(out), "failed", "output path is a folder"))
        elif out.exists() and options.existing == "skip":
            preflight.append(FileResult(f.label, str(out), "skipped", "output exists"))
        elif out.exists() and options.existing == "fail":
            preflight.append(
                FileResult(f.label, str(out), "failed", "output exists (use --overwrite or --skip-existing)")
            )
        else:
            items.append(WorkItem(f.source, out, f.label))
    return BatchPlan(items, preflight, stale)
