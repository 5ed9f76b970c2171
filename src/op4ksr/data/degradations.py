"""Real-ESRGAN second-order degradation in plain torch (no ``basicsr``).

The pipeline turns HR crops ``[B,3,H,W]`` in ``[0,1]`` into LR images ``[B,3,H//s,W//s]``:

    round 1: blur (Gaussian family or sinc) → random resize → Gaussian/Poisson noise → JPEG
    round 2: blur (with probability) → random resize → noise → then, in random order,
             {resize to H//s + final sinc} and JPEG
    finally: quantise to 8 bit.

Every random choice of one image comes from that image's own seed, drawn from the caller's
generator, so the same seed gives byte-identical LR on the same device, and one image's
parameters never depend on the other images in the batch. Each image's parameters come back as
a :class:`DegradationRecord` so tests and logs can check the statistics.

JPEG is *real* JPEG (Pillow, per image): it forces a round trip through CPU memory and uint8,
which costs a device→host copy per image on GPU. That is deliberate: the differentiable JPEG
approximations in the Real-ESRGAN code base do not produce the blocking and ringing of real
encoders.

Presets live in ``op4ksr/data/presets/<name>.toml``: ``osediff``, ``s3diff`` (second order), and
``kind = "simple"`` ones (``mild``, ``light``: an antialiased downscale, then optional light
noise and JPEG, for people who upscale clean small images). A mixture is written
``"osediff:0.5,light:0.5"``: each image draws one preset with those weights.
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import tomllib
import torch
import torch.nn.functional as F
from PIL import Image

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
# ITU-R BT.601 luma weights, as torchvision's rgb_to_grayscale (used by Real-ESRGAN's grey noise).
_LUMA = (0.299, 0.587, 0.114)


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageConfig:
    """One degradation round. Ranges are ``(low, high)``; noise sigma is in 8-bit grey levels."""

    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    kernel_list: tuple[str, ...] = KERNEL_TYPES
    kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob: float = 0.1
    blur_prob: float = 1.0
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    betag_range: tuple[float, float] = (0.5, 4.0)
    betap_range: tuple[float, float] = (1.0, 2.0)
    resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple[float, float] = (1.0, 30.0)
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        if len(self.kernel_list) != len(self.kernel_prob):
            raise ValueError("kernel_list and kernel_prob must have the same length")
        unknown = set(self.kernel_list) - set(KERNEL_TYPES)
        if unknown:
            raise ValueError(f"unknown kernel types {sorted(unknown)}; choose from {KERNEL_TYPES}")
        if any(k % 2 == 0 or k < 3 for k in self.kernel_sizes):
            raise ValueError(f"kernel sizes must be odd and >= 3, got {self.kernel_sizes}")
        if len(self.resize_prob) != 3:
            raise ValueError("resize_prob is [up, down, keep]")
        lo, hi = self.jpeg_range
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"jpeg_range must lie in [1, 100], got {self.jpeg_range}")


@dataclass(frozen=True)
class FinalConfig:
    sinc_prob: float = 0.8
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)


@dataclass(frozen=True)
class DegradationConfig:
    name: str = "custom"
    description: str = ""
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=StageConfig)
    final: FinalConfig = field(default_factory=FinalConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DegradationConfig:
        def tupled(section: dict[str, Any]) -> dict[str, Any]:
            return {k: tuple(v) if isinstance(v, list) else v for k, v in section.items()}

        known = {f.name for f in dataclasses.fields(StageConfig)}
        for key in ("stage1", "stage2"):
            extra = set(data.get(key, {})) - known
            if extra:
                raise ValueError(f"[{key}]: unknown keys {sorted(extra)}")
        return cls(
            name=str(data.get("name", "custom")),
            description=str(data.get("description", "")),
            stage1=StageConfig(**tupled(data.get("stage1", {}))),
            stage2=StageConfig(**tupled(data.get("stage2", {}))),
            final=FinalConfig(**tupled(data.get("final", {}))),
        )

    @classmethod
    def from_toml(cls, path: str | Path) -> DegradationConfig:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: invalid TOML ({exc})") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class SimpleDegradationConfig:
    """A one-step degradation: antialiased downscale → optional noise → optional JPEG."""

    name: str = "simple"
    description: str = ""
    resize_modes: tuple[str, ...] = ("bicubic",)  # antialiased, like PIL's and MATLAB's imresize
    noise_prob: float = 0.0
    noise_range: tuple[float, float] = (1.0, 5.0)  # 8-bit grey levels
    gray_noise_prob: float = 0.4
    jpeg_prob: float = 0.0
    jpeg_range: tuple[int, int] = (60, 95)

    def __post_init__(self) -> None:
        unknown = set(self.resize_modes) - set(RESIZE_MODES)
        if unknown or not self.resize_modes:
            raise ValueError(f"resize_modes must be a non-empty subset of {RESIZE_MODES}, got {self.resize_modes}")
        lo, hi = self.jpeg_range
        if not 1 <= lo <= hi <= 100:
            raise ValueError(f"jpeg_range must lie in [1, 100], got {self.jpeg_range}")
        for name in ("noise_prob", "gray_noise_prob", "jpeg_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SimpleDegradationConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        extra = set(data) - known - {"kind"}
        if extra:
            raise ValueError(f"unknown keys {sorted(extra)} for a simple degradation")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "kind"})


def available_presets() -> list[str]:
    folder = resources.files("op4ksr.data") / "presets"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name_or_path: str | Path) -> DegradationConfig | SimpleDegradationConfig:
    """A bundled preset by name (``osediff``, ``s3diff``, ``mild``, ``light``) or a TOML file path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" and candidate.exists():
        data = tomllib.loads(candidate.read_text(encoding="utf-8"))
        if data.get("kind") == "simple":
            try:
                return SimpleDegradationConfig.from_dict(data)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{candidate}: {exc}") from None
        return DegradationConfig.from_toml(candidate)
    name = str(name_or_path)
    if name not in available_presets():
        raise ValueError(f"unknown degradation preset {name!r}; choose one of {available_presets()} or a .toml file")
    data = tomllib.loads((resources.files("op4ksr.data") / "presets" / f"{name}.toml").read_text(encoding="utf-8"))
    if data.get("kind") == "simple":
        return SimpleDegradationConfig.from_dict(data)
    return DegradationConfig.from_dict(data)


def parse_mixture(spec: str) -> list[tuple[str, float]]:
    """``"osediff:0.5,light:0.5"`` → ``[("osediff", 0.5), ("light", 0.5)]`` (weights default to 1)."""
    parts = []
    for item in str(spec).split(","):
        name, _, weight = item.strip().partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"degradation mixture {spec!r}: weight {weight!r} of {name!r} is not a number") from None
        if not name or w <= 0:
            raise ValueError(f"degradation mixture {spec!r}: each item is NAME[:WEIGHT] with a positive weight")
        parts.append((name, w))
    return parts


# --------------------------------------------------------------------------------------------
# Kernels (numpy float64, normalised to sum 1)
# --------------------------------------------------------------------------------------------
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2
    return np.meshgrid(ax, ax, indexing="xy")


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """x^T Σ^-1 x on a size×size grid, Σ = R diag(σx², σy²) Rᵀ with R the rotation by θ."""
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    cov = rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T
    inv = np.linalg.inv(cov)
    x, y = _grid(size)
    return inv[0, 0] * x * x + (inv[0, 1] + inv[1, 0]) * x * y + inv[1, 1] * y * y


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float = 0.0) -> np.ndarray:
    k = np.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta))
    return k / k.sum()


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    k = np.exp(-0.5 * np.power(_quadratic_form(size, sigma_x, sigma_y, theta), beta))
    return k / k.sum()


def plateau_kernel(size: int, sigma_x: float, sigma_y: float, theta: float, beta: float) -> np.ndarray:
    k = 1.0 / (np.power(_quadratic_form(size, sigma_x, sigma_y, theta), beta) + 1.0)
    return k / k.sum()


def sinc_kernel(size: int, omega_c: float) -> np.ndarray:
    """Circular low-pass (2-D sinc / Airy) kernel with cutoff ``omega_c`` in radians/pixel."""
    from scipy.special import j1

    x, y = _grid(size)
    r = np.hypot(x, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = omega_c * j1(omega_c * r) / (2 * np.pi * r)
    # The limit of ω·J1(ωr)/(2πr) at r → 0 is ω²/(4π).
    k[r == 0] = omega_c**2 / (4 * np.pi)
    return k / k.sum()


def _sample_beta(rng: np.random.Generator, lo: float, hi: float) -> float:
    # As Real-ESRGAN: half the draws below 1 (sharper than Gaussian), half above (flatter), so
    # both shapes are equally common whatever the range's asymmetry. With lo >= 1 the first
    # branch yields exactly lo.
    if rng.uniform() < 0.5:
        return float(rng.uniform(lo, max(lo, min(1.0, hi))))
    return float(rng.uniform(min(max(1.0, lo), hi), hi))


def _sample_sinc_omega(rng: np.random.Generator, size: int) -> float:
    # Small kernels cannot represent low cut-offs without strong truncation ringing.
    low = np.pi / 3 if size < 13 else np.pi / 5
    return float(rng.uniform(low, np.pi))


def sample_blur_kernel(rng: np.random.Generator, cfg: StageConfig) -> tuple[np.ndarray, dict[str, Any]]:
    size = int(rng.choice(cfg.kernel_sizes))
    if rng.uniform() < cfg.sinc_prob:
        omega = _sample_sinc_omega(rng, size)
        return sinc_kernel(size, omega), {"type": "sinc", "size": size, "omega_c": omega}
    probs = np.asarray(cfg.kernel_prob, dtype=np.float64)
    kind = str(cfg.kernel_list[int(rng.choice(len(probs), p=probs / probs.sum()))])
    lo, hi = cfg.blur_sigma
    if kind.endswith("iso") and not kind.endswith("aniso"):
        sx = sy = float(rng.uniform(lo, hi))
        theta = 0.0
    else:
        sx, sy = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
        theta = float(rng.uniform(-np.pi, np.pi))
    params: dict[str, Any] = {"type": kind, "size": size, "sigma_x": sx, "sigma_y": sy, "theta": theta}
    if kind.startswith("generalized"):
        params["beta"] = _sample_beta(rng, *cfg.betag_range)
        kernel = generalized_gaussian_kernel(size, sx, sy, theta, params["beta"])
    elif kind.startswith("plateau"):
        params["beta"] = _sample_beta(rng, *cfg.betap_range)
        kernel = plateau_kernel(size, sx, sy, theta, params["beta"])
    else:
        kernel = gaussian_kernel(size, sx, sy, theta)
    return kernel, params


# --------------------------------------------------------------------------------------------
# Tensor operations (one image, [1,3,H,W] float32 on any device)
# --------------------------------------------------------------------------------------------
def filter2d(img: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """Depthwise convolution with reflect padding (replicate when the image is smaller than the pad)."""
    k = kernel.shape[-1]
    pad = k // 2
    c = img.shape[1]
    mode = "reflect" if pad < min(img.shape[-2:]) else "replicate"
    padded = F.pad(img, (pad, pad, pad, pad), mode=mode)
    weight = torch.as_tensor(kernel, dtype=img.dtype, device=img.device).expand(c, 1, k, k)
    return F.conv2d(padded, weight, groups=c)


def resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if tuple(img.shape[-2:]) == size:
        return img
    if mode == "area":
        return F.interpolate(img, size=size, mode="area")
    return F.interpolate(img, size=size, mode=mode, align_corners=False)


def add_gaussian_noise(img: torch.Tensor, sigma: float, gray: bool, gen: torch.Generator) -> torch.Tensor:
    """``sigma`` in 8-bit grey levels; grey noise is one field shared by the three channels."""
    b, c, h, w = img.shape
    noise = torch.randn((b, 1 if gray else c, h, w), generator=gen, dtype=torch.float32)
    return (img + noise.to(img.device, img.dtype).expand(b, c, h, w) * (sigma / 255.0)).clamp(0, 1)


def _poisson_noise(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    # The photon count scale is the number of distinct 8-bit levels rounded up to a power of 2,
    # as in Real-ESRGAN, so a flat image gets little shot noise and a rich one more.
    img = (img * 255.0).round().clamp(0, 255) / 255.0
    vals = 2.0 ** math.ceil(math.log2(max(2, int(torch.unique(img).numel()))))
    out = torch.poisson((img * vals).cpu(), generator=gen) / vals
    return out.to(img.device, img.dtype) - img


def add_poisson_noise(img: torch.Tensor, scale: float, gray: bool, gen: torch.Generator) -> torch.Tensor:
    if gray:
        luma = sum(w * img[:, i : i + 1] for i, w in enumerate(_LUMA))
        noise = _poisson_noise(luma, gen).expand_as(img)
    else:
        noise = _poisson_noise(img, gen)
    return (img + noise * scale).clamp(0, 1)


def jpeg_roundtrip(img: torch.Tensor, quality: int) -> tuple[torch.Tensor, list[int]]:
    """Real JPEG encode/decode with Pillow (CPU). Returns the image and the luma quantisation table."""
    arr = (img[0].clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as decoded:
        qtable = list(decoded.quantization[0])
        out = np.asarray(decoded.convert("RGB"), dtype=np.uint8)
    tensor = torch.from_numpy(out.copy()).permute(2, 0, 1).unsqueeze(0)
    return tensor.to(img.device, img.dtype) / 255.0, qtable


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------
@dataclass
class DegradationRecord:
    """Everything that was drawn for one image, JSON-serialisable."""

    seed: int
    hr_size: tuple[int, int]
    lr_size: tuple[int, int]
    stage1: dict[str, Any] = field(default_factory=dict)
    stage2: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _pick(rng: np.random.Generator, options: tuple[str, ...], probs: tuple[float, ...] | None = None) -> str:
    p = None if probs is None else np.asarray(probs, dtype=np.float64) / sum(probs)
    return str(options[int(rng.choice(len(options), p=p))])


class DegradationPipeline:
    """``DegradationPipeline.from_preset("osediff", scale=4)(hr, generator) -> lr``.

    ``hr``: ``[B,3,H,W]`` float in ``[0,1]`` on any device. ``generator``: a CPU
    ``torch.Generator`` or an int seed. The output lies on ``hr``'s device, is ``float32``,
    ``[B,3,H//scale,W//scale]``, quantised to 8-bit levels.
    """

    def __init__(self, config: DegradationConfig, scale: int = 4) -> None:
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.config = config
        self.scale = int(scale)

    @classmethod
    def from_preset(cls, name_or_path: str | Path, scale: int = 4) -> DegradationPipeline:
        """A preset by name or TOML path, or a mixture ``"a:w,b:w"``; simple presets and mixtures
        return their own classes, with the same ``__call__``/``degrade``/``degrade_one``."""
        if "," in str(name_or_path) or ":" in Path(str(name_or_path)).name:
            return MixtureDegradation(  # type: ignore[return-value]
                [(cls.from_preset(n, scale), w) for n, w in parse_mixture(str(name_or_path))], scale=scale)
        config = load_preset(name_or_path)
        if isinstance(config, SimpleDegradationConfig):
            return SimpleDegradation(config, scale=scale)  # type: ignore[return-value]
        return cls(config, scale=scale)

    def __call__(self, hr: torch.Tensor, generator: torch.Generator | int | None = None) -> torch.Tensor:
        return self.degrade(hr, generator)[0]

    def degrade(
        self, hr: torch.Tensor, generator: torch.Generator | int | None = None
    ) -> tuple[torch.Tensor, list[DegradationRecord]]:
        """Like ``__call__`` but also returns one :class:`DegradationRecord` per image."""
        if hr.ndim != 4 or hr.shape[1] != 3:
            raise ValueError(f"expected HR of shape [B,3,H,W], got {tuple(hr.shape)}")
        h, w = hr.shape[-2:]
        if h < self.scale or w < self.scale:
            raise ValueError(f"HR {h}x{w} is smaller than the scale {self.scale}")
        if generator is None:
            generator = torch.Generator().manual_seed(torch.seed())
        elif isinstance(generator, int):
            generator = torch.Generator().manual_seed(generator)
        seeds = torch.randint(0, 2**62, (hr.shape[0],), generator=generator).tolist()
        outs, records = [], []
        for i, seed in enumerate(seeds):
            lr, record = self.degrade_one(hr[i : i + 1], int(seed))
            outs.append(lr)
            records.append(record)
        return torch.cat(outs, dim=0), records

    def degrade_one(self, hr: torch.Tensor, seed: int) -> tuple[torch.Tensor, DegradationRecord]:
        """One image ``[1,3,H,W]`` with all randomness from ``seed``."""
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        h, w = hr.shape[-2:]
        lr_size = (h // self.scale, w // self.scale)
        rec = DegradationRecord(seed=seed, hr_size=(h, w), lr_size=lr_size)
        img = hr.to(torch.float32)

        img = self._round(img, self.config.stage1, rng, gen, rec.stage1, base=(h, w), always_blur=True)
        img = self._round(
            img, self.config.stage2, rng, gen, rec.stage2, base=lr_size, always_blur=False, jpeg=False
        )

        # Final: sinc + resize to the LR size and JPEG, in random order (Real-ESRGAN), because
        # real pipelines compress before and after resampling.
        fin = self.config.final
        use_sinc = rng.uniform() < fin.sinc_prob
        if use_sinc:
            size = int(rng.choice(fin.kernel_sizes))
            omega = float(rng.uniform(np.pi / 3, np.pi))
            rec.final["sinc"] = {"size": size, "omega_c": omega}
        else:
            rec.final["sinc"] = None
        quality = int(rng.integers(self.config.stage2.jpeg_range[0], self.config.stage2.jpeg_range[1] + 1))
        mode = _pick(rng, RESIZE_MODES)
        jpeg_first = bool(rng.uniform() < 0.5)
        rec.final.update({"jpeg_first": jpeg_first, "resize_mode": mode, "jpeg_quality": quality})
        if jpeg_first:
            img, rec.final["jpeg_qtable"] = jpeg_roundtrip(img.clamp(0, 1), quality)
        img = resize(img, lr_size, mode)
        if use_sinc:
            img = filter2d(img, sinc_kernel(size, omega))
        if not jpeg_first:
            img, rec.final["jpeg_qtable"] = jpeg_roundtrip(img.clamp(0, 1), quality)
        lr = (img.clamp(0, 1) * 255.0).round() / 255.0
        return lr, rec

    def _round(
        self,
        img: torch.Tensor,
        cfg: StageConfig,
        rng: np.random.Generator,
        gen: torch.Generator,
        rec: dict[str, Any],
        *,
        base: tuple[int, int],
        always_blur: bool,
        jpeg: bool = True,
    ) -> torch.Tensor:
        """Blur → resize (relative to ``base``) → noise → (JPEG). Fills ``rec``."""
        blur = always_blur or rng.uniform() < cfg.blur_prob
        if blur and cfg.blur_prob > 0:
            kernel, rec["kernel"] = sample_blur_kernel(rng, cfg)
            img = filter2d(img, kernel)
        else:
            rec["kernel"] = None

        direction = _pick(rng, ("up", "down", "keep"), cfg.resize_prob)
        if direction == "up":
            factor = float(rng.uniform(1.0, cfg.resize_range[1]))
        elif direction == "down":
            factor = float(rng.uniform(cfg.resize_range[0], 1.0))
        else:
            factor = 1.0
        mode = _pick(rng, RESIZE_MODES)
        size = (int(base[0] * factor), int(base[1] * factor))
        img = resize(img, size, mode)
        rec["resize"] = {"direction": direction, "factor": factor, "mode": mode, "size": list(img.shape[-2:])}

        gray = bool(rng.uniform() < cfg.gray_noise_prob)
        if rng.uniform() < cfg.gaussian_noise_prob:
            sigma = float(rng.uniform(*cfg.noise_range))
            img = add_gaussian_noise(img, sigma, gray, gen)
            rec["noise"] = {"kind": "gaussian", "sigma": sigma, "gray": gray}
        else:
            scale = float(rng.uniform(*cfg.poisson_scale_range))
            img = add_poisson_noise(img, scale, gray, gen)
            rec["noise"] = {"kind": "poisson", "scale": scale, "gray": gray}

        if jpeg:
            quality = int(rng.integers(cfg.jpeg_range[0], cfg.jpeg_range[1] + 1))
            img, qtable = jpeg_roundtrip(img.clamp(0, 1), quality)
            rec["jpeg_quality"] = quality
            rec["jpeg_qtable"] = qtable
        return img


class SimpleDegradation(DegradationPipeline):
    """Antialiased downscale → optional noise → optional JPEG (:class:`SimpleDegradationConfig`)."""

    def __init__(self, config: SimpleDegradationConfig, scale: int = 4) -> None:  # type: ignore[override]
        super().__init__(config, scale=scale)  # type: ignore[arg-type]

    def degrade_one(self, hr: torch.Tensor, seed: int) -> tuple[torch.Tensor, DegradationRecord]:
        cfg: SimpleDegradationConfig = self.config  # type: ignore[assignment]
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        h, w = hr.shape[-2:]
        lr_size = (h // self.scale, w // self.scale)
        rec = DegradationRecord(seed=seed, hr_size=(h, w), lr_size=lr_size)
        mode = _pick(rng, cfg.resize_modes)
        img = hr.to(torch.float32)
        if mode == "area":
            img = F.interpolate(img, size=lr_size, mode="area")
        else:
            img = F.interpolate(img, size=lr_size, mode=mode, align_corners=False, antialias=True)
        rec.final = {"kind": "simple", "resize_mode": mode, "noise": None, "jpeg_quality": None}
        if rng.uniform() < cfg.noise_prob:
            sigma = float(rng.uniform(*cfg.noise_range))
            gray = bool(rng.uniform() < cfg.gray_noise_prob)
            img = add_gaussian_noise(img.clamp(0, 1), sigma, gray, gen)
            rec.final["noise"] = {"kind": "gaussian", "sigma": sigma, "gray": gray}
        if rng.uniform() < cfg.jpeg_prob:
            quality = int(rng.integers(cfg.jpeg_range[0], cfg.jpeg_range[1] + 1))
            img, rec.final["jpeg_qtable"] = jpeg_roundtrip(img.clamp(0, 1), quality)
            rec.final["jpeg_quality"] = quality
        return (img.clamp(0, 1) * 255.0).round() / 255.0, rec


class MixtureDegradation(DegradationPipeline):
    """Each image drawn from one of several pipelines, with the given weights (from its own seed)."""

    def __init__(self, members: list[tuple[DegradationPipeline, float]], scale: int = 4) -> None:  # type: ignore[override]
        if not members:
            raise ValueError("a degradation mixture needs at least one member")
        super().__init__(members[0][0].config, scale=scale)
        self.members = [m for m, _ in members]
        total = sum(w for _, w in members)
        self.weights = [w / total for _, w in members]

    def degrade_one(self, hr: torch.Tensor, seed: int) -> tuple[torch.Tensor, DegradationRecord]:
        rng = np.random.default_rng(seed)
        k = int(rng.choice(len(self.members), p=self.weights))
        lr, rec = self.members[k].degrade_one(hr, int(rng.integers(0, 2**62)))
        rec.final["member"] = getattr(self.members[k].config, "name", str(k))
        return lr, rec
