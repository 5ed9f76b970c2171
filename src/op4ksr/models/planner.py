"""Memory and compute planner: estimate before allocating, refuse early with the numbers.

Estimates are analytic, from the model configs and the output size:
- DiT FLOPs: 2·(matmul parameters)·tokens for the linear layers plus 4·L²·hidden per block for
  attention (QKᵀ and AV), L = image + text tokens.
- VAE FLOPs: every 3×3/1×1 convolution at the resolution it runs at (walked from the config).
- Compensation FLOPs: every convolution of the high-frequency compensation at its level
  (:func:`op4ksr.models.compensation.compensation_flops`); zero without one or at fidelity 0.
- Pixel path (compact v2, :mod:`op4ksr.models.pixel_path`): SPAN's convolutions at the LR size
  and the fusion's at the latent size; the F16 decoder does not run (and without the latent
  branch, neither do the encoder and the DiT).
- Peak memory: weights + the largest stage's working set. A stage's working set is modelled as
  a few of its largest activations alive at once (input, output, a GroupNorm temporary); the
  constants are calibrated against measured peaks in ``benchmarks/speed.py`` (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


class MemoryPlanError(MemoryError):
    """The planned work does not fit the device; the message holds the estimate and the options."""


@dataclass(frozen=True)
class ResourceEstimate:
    height: int
    width: int
    batch: int
    dtype: str
    vae_params: int
    dit_params: int
    token_rows: int
    token_cols: int
    text_tokens: int
    dit_flops: float
    dit_attention_flops: float
    vae_flops: float
    weights_bytes: int
    encode_bytes: int
    dit_bytes: int
    decode_bytes: int
    compensation_params: int = 0
    compensation_flops: float = 0.0
    pixel_path_params: int = 0
    pixel_path_flops: float = 0.0

    @property
    def tokens(self) -> int:
        return self.token_rows * self.token_cols

    @property
    def total_flops(self) -> float:
        return self.dit_flops + self.vae_flops + self.compensation_flops + self.pixel_path_flops

    @property
    def peak_bytes(self) -> int:
        return self.weights_bytes + max(self.encode_bytes, self.dit_bytes, self.decode_bytes)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(tokens=self.tokens, total_flops=self.total_flops, peak_bytes=self.peak_bytes)
        return d


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _dit_linear_params(transformer: torch.nn.Module) -> tuple[int, int]:
    """(parameters applied per image token, per text token) in the DiT's matmuls."""
    cfg = transformer.config
    hidden = cfg.num_attention_heads * cfg.attention_head_dim
    # double block: per stream q,k,v,o (4h²) + MLP 4h→ (8h²); single block: qkv (3h²) + mlp (4h²) + out (5h²)
    double_stream = 4 * hidden * hidden + 8 * hidden * hidden
    single = 3 * hidden * hidden + 4 * hidden * hidden + 5 * hidden * hidden
    per_image = cfg.num_layers * double_stream + cfg.num_single_layers * single + cfg.in_channels * hidden * 2
    per_text = cfg.num_layers * double_stream + cfg.num_single_layers * single + cfg.joint_attention_dim * hidden
    return per_image, per_text


def _vae_conv_flops(vae_cfg, height: int, width: int) -> tuple[float, float, int, int]:
    """(encoder FLOPs, decoder FLOPs, largest encoder activation numel, largest decoder activation numel)."""
    ch = list(vae_cfg.block_out_channels)
    lpb = vae_cfg.layers_per_block
    stride = vae_cfg.stride
    conv = lambda cin, cout, px, k=9: 2.0 * cin * cout * k * px  # noqa: E731
    # encoder
    h, w = height // stride, width // stride
    enc = conv(3, ch[0], h * w)
    enc_max = ch[0] * h * w
    cin = ch[0]
    for i, c in enumerate(ch):
        for _ in range(lpb):
            enc += conv(cin, c, h * w) + conv(c, c, h * w) + (conv(cin, c, h * w, 1) if cin != c else 0)
            enc_max = max(enc_max, max(cin, c) * h * w)
            cin = c
        if i < len(ch) - 1:
            h, w = h // 2, w // 2
            enc += conv(c, c, h * w)
    enc += 2 * conv(ch[-1], ch[-1], h * w) * 2  # mid block resnets
    if vae_cfg.mid_block_add_attention:
        n = h * w
        enc += 4.0 * n * n * ch[-1] + 8.0 * n * ch[-1] ** 2
    enc += conv(ch[-1], 2 * vae_cfg.latent_channels, h * w)
    # decoder (mirror, layers_per_block + 1 resnets, final nearest ×2 conv at full size)
    lh, lw = h, w
    dec = conv(vae_cfg.latent_channels, ch[-1], lh * lw) + 2 * conv(ch[-1], ch[-1], lh * lw) * 2
    if vae_cfg.mid_block_add_attention:
        n = lh * lw
        dec += 4.0 * n * n * ch[-1] + 8.0 * n * ch[-1] ** 2
    dec_max = ch[-1] * lh * lw
    cin = ch[-1]
    for i, c in enumerate(reversed(ch)):
        for _ in range(lpb + 1):
            dec += conv(cin, c, lh * lw) + conv(c, c, lh * lw) + (conv(cin, c, lh * lw, 1) if cin != c else 0)
            dec_max = max(dec_max, max(cin, c) * lh * lw)
            cin = c
        if i < len(ch) - 1:
            lh, lw = lh * 2, lw * 2
            dec += conv(c, c, lh * lw)
            dec_max = max(dec_max, c * lh * lw)
    if stride == 2:
        dec += conv(ch[0], vae_cfg.out_channels, 4 * lh * lw)
    else:
        dec += conv(ch[0], vae_cfg.out_channels, lh * lw)
    return enc, dec, enc_max, dec_max


# Working-set multipliers (number of largest-activation-sized tensors alive at once), calibrated
# on CPU fp32 in benchmarks/speed.py; see docs/PERFORMANCE.md for measured vs estimated.
ENCODE_LIVE_TENSORS = 4.0
DECODE_LIVE_TENSORS = 4.0
DIT_LIVE_TENSORS = 12.0  # hidden-sized activations per token (residuals, q/k/v, MLP 4h, norms)
# Output-sized RGB fp32 tensors alive during the post-steps, beyond the output itself
# (calibrated with benchmarks/speed.py; docs/PERFORMANCE.md): the colour anchor's reference, low
# bands and result; the notch runs after them, in place, with a half-size blend buffer.
COLOR_FIX_TENSORS = 3.0
GRID_FIX_TENSORS = 0.5
# High-frequency compensation during decoding: the kept bicubic input (output-sized RGB) and this
# many of its widest half-size activations (guide level 0, the RGB head's input and layers).
COMPENSATION_LIVE_TENSORS = 3.0
# Pixel path: LR-sized activations alive at SPAN's peak, in units of its feature width (the stem,
# the running block output, the first block's output, the last block's activation, conv_2's
# output, the 4-wide concat, conv_cat's output and a conv temporary), calibrated in benchmarks/speed.py.
PIXEL_PATH_LIVE_CHANNELS = 11.0


def estimate_resources(pipe, height: int, width: int, *, batch: int = 1,
                       dtype: torch.dtype = torch.float32) -> ResourceEstimate:
    """Estimate parameters, FLOPs and peak memory for an output of ``height × width``."""
    m = pipe.pad_multiple
    ph, pw = math.ceil(height / m) * m, math.ceil(width / m) * m
    rows, cols = ph // m, pw // m
    tcfg = pipe.transformer.config
    text = pipe.prompt.config.sequence_length
    hidden = tcfg.num_attention_heads * tcfg.attention_head_dim
    per_image, per_text = _dit_linear_params(pipe.transformer)
    tokens = rows * cols
    seq = tokens + text
    blocks = tcfg.num_layers + tcfg.num_single_layers
    attention = 4.0 * seq * seq * hidden * blocks
    dit_flops = batch * (2.0 * (per_image * tokens + per_text * text) + attention)
    enc, dec, enc_max, dec_max = _vae_conv_flops(pipe.vae.config, ph, pw)
    elem = torch.tensor([], dtype=dtype).element_size()
    vae_params, dit_params = _numel(pipe.vae), _numel(pipe.transformer) + _numel(pipe.prompt)
    input_bytes = batch * 3 * ph * pw * elem
    encode_bytes = input_bytes + int(ENCODE_LIVE_TENSORS * batch * enc_max * elem)
    # SDPA (flash/efficient kernels on CPU and CUDA) keeps attention memory linear in L.
    dit_bytes = int(DIT_LIVE_TENSORS * batch * seq * max(hidden * 4, 1) * elem)
    # The output in fp32, plus the post-steps' full-size temporaries (see COLOR_FIX_TENSORS).
    color_on = getattr(pipe.config, "color_fix", "none") != "none"
    grid_on = getattr(pipe.config, "grid_fix", "none") != "none"
    output_tensors = 1 + (COLOR_FIX_TENSORS if color_on else GRID_FIX_TENSORS if grid_on else 0)
    decode_bytes = int(DECODE_LIVE_TENSORS * batch * dec_max * elem + output_tensors * batch * 3 * ph * pw * 4)
    pixel_path = getattr(pipe, "pixel_path", None)
    pp_flops, pp_params = 0.0, 0
    if pixel_path is not None:
        pp_flops, pp_params, pp_bytes = _pixel_path_cost(pipe, pixel_path, ph, pw, batch, elem)
        dec = 0.0  # the decoder does not run
        decode_bytes = pp_bytes + int(output_tensors * batch * 3 * ph * pw * 4)
        if not pixel_path.uses_latent:
            enc, encode_bytes, dit_bytes, dit_flops, attention = 0.0, 0, 0, 0.0, 0.0
    comp = getattr(pipe, "compensation", None)
    comp_flops, comp_params = 0.0, 0
    if comp is not None:
        from op4ksr.models.compensation import UNSHUFFLE, compensation_flops

        comp_params = _numel(comp)
        if getattr(pipe, "fidelity", 1.0) > 0:
            comp_flops = batch * compensation_flops(comp, ph, pw)
            ccfg = comp.config
            widest = max(ccfg.head_channels, 2 * 3 * UNSHUFFLE**2 + ccfg.guide_channels)
            half = batch * ph * pw // UNSHUFFLE**2
            decode_bytes += input_bytes + int((ccfg.guide_channels + COMPENSATION_LIVE_TENSORS * widest) * half * elem)
    return ResourceEstimate(
        height=height, width=width, batch=batch, dtype=str(dtype).replace("torch.", ""),
        vae_params=vae_params, dit_params=dit_params, token_rows=rows, token_cols=cols, text_tokens=text,
        dit_flops=dit_flops, dit_attention_flops=batch * attention, vae_flops=batch * (enc + dec),
        weights_bytes=(vae_params + dit_params + comp_params + pp_params) * elem,
        encode_bytes=encode_bytes, dit_bytes=dit_bytes, decode_bytes=decode_bytes,
        compensation_params=comp_params, compensation_flops=comp_flops,
        pixel_path_params=pp_params, pixel_path_flops=pp_flops,
    )


def _pixel_path_cost(pipe, pixel_path, ph: int, pw: int, batch: int, elem: int) -> tuple[float, int, int]:
    """(FLOPs, parameters incl. a blended copy at a fractional fidelity, working-set bytes) of the pixel path."""
    from op4ksr.models.compensation import conv_flops_per_pixel

    cfg = pixel_path.config
    lr_pixels = ph * pw / cfg.upscale**2
    branch = pixel_path.faithful
    flops = conv_flops_per_pixel(branch.span) * lr_pixels
    if branch.fusion is not None:
        flops += conv_flops_per_pixel(branch.fusion) * lr_pixels / cfg.latent_factor**2
    params = _numel(pixel_path)
    if 0.0 < getattr(pipe, "fidelity", 1.0) < 1.0:
        params += _numel(branch)  # the blended network is a third weight set
    working = int(PIXEL_PATH_LIVE_CHANNELS * cfg.feature_channels * batch * lr_pixels * elem)
    return batch * flops, params, working


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (CUDA: free device memory; else available system RAM)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "meta":
        return 1 << 62
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a core dependency
        pages = __import__("os").sysconf("SC_AVPHYS_PAGES")
        return int(pages * __import__("os").sysconf("SC_PAGE_SIZE"))


def check_fits(estimate: ResourceEstimate, device: torch.device, *, headroom: float = 0.9) -> None:
    """Raise :class:`MemoryPlanError` if the estimated peak exceeds ``headroom`` × free memory."""
    free = available_bytes(device)
    need = estimate.peak_bytes - estimate.weights_bytes  # weights are already resident
    if need > headroom * free:
        raise MemoryPlanError(
            f"{estimate.width}×{estimate.height} output needs ~{need / 2**30:.1f} GiB on {device} "
            f"but ~{free / 2**30:.1f} GiB is free; use a smaller input, a smaller --scale, or another device"
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


# ------------------------------------------------------------------ the sr stage's training memory

ADAMW_BYTES_PER_TRAINABLE = 4 + 4 + 8  # fp32 parameter, gradient, two AdamW moments
# Activations kept for backward per DiT block and token, in hidden-sized tensors: without
# checkpointing the block's residual streams, norms, q/k/v/attention output and the 4h MLP;
# with per-block checkpointing only each block's input stays, plus one block being recomputed.
DIT_BLOCK_SAVED_TENSORS = 14.0
DIT_CHECKPOINT_SAVED_TENSORS = 1.0
# VAE activations kept for backward, in largest-activation-sized tensors (encoder with LoRA, and the
# frozen decoder the image losses backpropagate through); checkpointing keeps block inputs only.
VAE_SAVED_TENSORS = 12.0
VAE_CHECKPOINT_SAVED_TENSORS = 4.0


@dataclass(frozen=True)
class TrainingEstimate:
    """Per-GPU memory of the ``sr`` stage (LoRA on the VAE encoder and the DiT, frozen DiT and
    decoder, a frozen encoder copy for L_vae) for one crop size, batch and process count."""

    crop: int
    batch: int
    processes: int
    fsdp: bool
    gradient_checkpointing: bool
    dit_dtype: str
    lora_params: int
    frozen_bytes: int  # frozen DiT (sharded with FSDP, plus the blocks gathered at a time) + VAEs
    trainable_bytes: int  # LoRA parameters, gradients, AdamW moments (sharded with FSDP)
    activation_bytes: int

    @property
    def per_gpu_bytes(self) -> int:
        return self.frozen_bytes + self.trainable_bytes + self.activation_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "per_gpu_bytes": self.per_gpu_bytes}


def lora_parameter_count(module: torch.nn.Module, targets, rank: int) -> int:
    """Parameters peft's LoRA adds to ``module`` for ``targets`` (a regex string or name suffixes,
    as peft matches them): rank·(in + out) per Linear, rank·(in·k² + out) per convolution."""
    import re

    def matches(name: str) -> bool:
        if isinstance(targets, str):
            return re.fullmatch(targets, name) is not None
        return any(name == t or name.endswith("." + t) for t in targets)

    total = 0
    for name, sub in module.named_modules():
        if not name or not matches(name):
            continue
        if isinstance(sub, torch.nn.Linear):
            total += rank * (sub.in_features + sub.out_features)
        elif isinstance(sub, torch.nn.Conv2d):
            total += rank * (sub.in_channels * sub.kernel_size[0] * sub.kernel_size[1] + sub.out_channels)
    return total


def estimate_sr_training(pipe, crop: int, *, batch: int = 1, processes: int = 1, fsdp: bool = False,
                         lora_rank: int = 64, dit_dtype: torch.dtype = torch.bfloat16,
                         gradient_checkpointing: bool = True) -> TrainingEstimate:
    """Per-GPU memory of a ``sr`` training step on ``crop``² HR crops (the pipeline may be on the
    meta device). With FSDP2 (train/sharding.py) every DiT block is its own unit: the frozen DiT
    and the trainable state are divided by ``processes``, and about two blocks are whole at a time
    (the one running and the one prefetched); without it every process holds all of it."""
    from op4ksr.models.lora import DIT_TARGETS, VAE_ENCODER_TARGETS

    if crop <= 0 or batch <= 0 or processes <= 0:
        raise ValueError("crop, batch and processes must be positive")
    shards = processes if fsdp else 1
    dit_elem = torch.tensor([], dtype=dit_dtype).element_size()
    transformer = pipe.transformer
    dit_params = _numel(transformer)
    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    largest_block = max((_numel(b) for b in blocks), default=0)
    gathered = 2 * largest_block * dit_elem if fsdp and processes > 1 else 0
    vae_bytes = 2 * _numel(pipe.vae) * 4  # the VAE and the frozen encoder copy, fp32
    frozen = dit_params * dit_elem // shards + gathered + vae_bytes + _numel(pipe.prompt) * 4
    lora = (lora_parameter_count(transformer, DIT_TARGETS, lora_rank)
            + lora_parameter_count(pipe.vae, VAE_ENCODER_TARGETS, lora_rank))
    trainable = lora * ADAMW_BYTES_PER_TRAINABLE // shards

    m = pipe.pad_multiple
    side = math.ceil(crop / m) * m
    tcfg = transformer.config
    hidden = tcfg.num_attention_heads * tcfg.attention_head_dim
    seq = (side // m) ** 2 + pipe.prompt.config.sequence_length
    per_block = DIT_CHECKPOINT_SAVED_TENSORS if gradient_checkpointing else DIT_BLOCK_SAVED_TENSORS
    dit_act = batch * seq * hidden * dit_elem * (len(blocks) * per_block
                                                 + (DIT_BLOCK_SAVED_TENSORS if gradient_checkpointing else 0))
    _enc, _dec, enc_max, dec_max = _vae_conv_flops(pipe.vae.config, side, side)
    vae_saved = VAE_CHECKPOINT_SAVED_TENSORS if gradient_checkpointing else VAE_SAVED_TENSORS
    vae_act = batch * (enc_max + dec_max) * 4 * vae_saved
    return TrainingEstimate(
        crop=crop, batch=batch, processes=processes, fsdp=fsdp, gradient_checkpointing=gradient_checkpointing,
        dit_dtype=str(dit_dtype).replace("torch.", ""), lora_params=lora, frozen_bytes=int(frozen),
        trainable_bytes=int(trainable), activation_bytes=int(dit_act + vae_act),
    )
