"""A downloaded UltraFlux snapshot → an op4ksr model folder (``op4ksr convert ultraflux``).

UltraFlux ships as a diffusers pipeline (reference.md): ``vae/`` (its own ``AutoencoderKL`` with
``stride`` 2), ``transformer/`` (three bf16 shards and their index; the recommended v1.1
transformer is a separate repository with the same files at its root), ``text_encoder/`` (CLIP)
and ``text_encoder_2/`` (T5-XXL) with their tokenizers. Usually it lies in the Hugging Face cache
(``models--Owen777--UltraFlux-v1/snapshots/<rev>/…``, every file a symlink into ``blobs/``).

The conversion

* copies the VAE and transformer weight files byte for byte (no tensor is loaded: their names
  and shapes are checked from the safetensors headers against the configs, so converting needs
  no memory for the 12 B-parameter DiT and the result reloads bit-identically),
* writes op4ksr's configs for them: every key explicit (the VAE's ``partitioned_decode``, the
  transformer's ``rope_theta`` and ``rope_scaling``, i.e. what an unmodified UltraFlux computes),
* encodes the fixed prompt once with the snapshot's own T5 and CLIP (as diffusers' Flux
  pipeline does: T5's last hidden state padded to ``max_sequence_length``, CLIP's pooled output),
  one encoder in memory at a time; the text encoders are not needed afterwards,
* records the prompt actually encoded (and whether a tokenizer cut it) in the prompt part's
  config and in ``conversion.json``.

The result is what ``upscale --model``, ``train`` (``model.init``) and ``info`` accept. It needs
the ``transformers`` package (``pip install 'op4ksr[convert]'``), imported only here.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from op4ksr.models.constants import FLUX_ROPE_THETA
from op4ksr.models.loading import (
    WEIGHTS_NAME,
    check_weights_match,
    read_part_config,
    refuse_pickles,
    weight_files,
)
from op4ksr.models.pipeline import OP4KSRPipeline
from op4ksr.models.presets import get_preset
from op4ksr.models.prompt import S3DIFF_PROMPT, FixedPromptEmbeddings
from op4ksr.models.rope import ultraflux_rope_scaling
from op4ksr.models.transformer import OP4KSRTransformer
from op4ksr.models.vae import F16AutoencoderKL
from op4ksr.utils.errors import ModelLoadError, one_line

T5_MAX_SEQUENCE_LENGTH = 512  # diffusers' Flux pipeline default (and the ultraflux preset's)
CONVERSION_RECORD = "conversion.json"
# Where the parts sit in a Flux/UltraFlux snapshot (diffusers' pipeline layout).
TEXT_PARTS = {"clip": ("text_encoder", "tokenizer"), "t5": ("text_encoder_2", "tokenizer_2")}


def snapshot_folder(path: str | Path) -> Path:
    """``path`` itself, or for a Hugging Face cache repository folder (``models--…``) the snapshot
    its ``refs/main`` names."""
    path = Path(path)
    ref = path / "refs" / "main"
    if (path / "snapshots").is_dir() and ref.is_file():
        revision = ref.read_text().strip()
        snapshot = path / "snapshots" / revision
        if not revision or "/" in revision or not snapshot.is_dir():
            raise ModelLoadError(f"{ref}: names snapshot {revision!r}, which is not in {path / 'snapshots'}")
        return snapshot
    if not path.is_dir():
        raise ModelLoadError(f"{path}: not a folder (expected an UltraFlux snapshot with vae/ and transformer/)")
    return path


def _header_shapes(files: list[Path], part: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from safetensors headers (no tensor is read)."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            with safe_open(str(file.resolve()), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise ModelLoadError(f"{file}: the {part} weights are not a readable safetensors file ({one_line(exc)})") from None
    return shapes


def _checked_part(part: str, part_dir: Path, root: Path, cls, overrides: dict | None = None):
    """(module on the meta device with the op4ksr config, its weight files, their index)."""
    if not part_dir.is_dir():
        raise ModelLoadError(f"{part_dir}: the {part} folder is missing (is {root} an UltraFlux snapshot?)")
    refuse_pickles(part_dir)
    config = read_part_config(part, part_dir, cls, root)
    with torch.device("meta"):
        module = cls.from_config({**config, **(overrides or {})})
    files, index = weight_files(part_dir, root, part)
    check_weights_match(part_dir, part, {k: tuple(v.shape) for k, v in module.state_dict().items()},
                        _header_shapes(files, part))
    return module, files, index


def _copy_part(module, files: list[Path], index: Path | None, target: Path) -> None:
    """op4ksr's config.json and the weight files, copied byte for byte (symlinks followed)."""
    module.save_config(target)
    if index is None:
        shutil.copyfile(files[0].resolve(), target / WEIGHTS_NAME)
        return
    shutil.copyfile(index.resolve(), target / index.name)
    for file in files:
        shutil.copyfile(file.resolve(), target / file.name)


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ModelLoadError("op4ksr convert needs the transformers package to encode the prompt: "
                             "pip install 'op4ksr[convert]'") from None
    return transformers


def encode_prompt(snapshot: Path, prompt: str, *, max_sequence_length: int = T5_MAX_SEQUENCE_LENGTH,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Flux's fixed-prompt embeddings from the snapshot's own text encoders.

    Returns ``prompt_embeds`` [1, max_sequence_length, T5 width], ``pooled_prompt_embeds``
    [1, CLIP width] (float32) and, per encoder, whether its tokenizer cut the prompt
    (``truncated``) and the text its kept tokens decode to (``encoded``).
    """
    for name, folders in TEXT_PARTS.items():  # all present before anything is loaded
        for folder in (snapshot / sub for sub in folders):
            if not folder.is_dir():
                raise ModelLoadError(f"{folder}: missing; the fixed prompt is encoded with the snapshot's own "
                                     f"{name.upper()} text encoder and tokenizer")
    # The text encoders are read with use_safetensors=True (a pickle beside them is never opened)
    # and local_files_only=True (no hub access); nothing of them is copied into the model folder.
    transformers = _transformers()
    hf_logging = transformers.utils.logging
    progress_bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()  # the library never prints: no bars, no "sequence too long" warning
    hf_logging.set_verbosity_error()  # (a cut prompt is reported in the result instead)
    try:
        return _encode_prompt(transformers, snapshot, prompt, max_sequence_length, device, dtype)
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress_bars:
            hf_logging.enable_progress_bar()


def _encode_prompt(transformers, snapshot: Path, prompt: str, max_sequence_length: int, device, dtype) -> dict:
    out: dict = {"truncated": {}}
    for name, (model_class, tokenizer_class, length) in {
        "clip": (transformers.CLIPTextModel, transformers.CLIPTokenizer, None),
        "t5": (transformers.T5EncoderModel, transformers.T5Tokenizer, max_sequence_length),
    }.items():
        encoder_dir, tokenizer_dir = (snapshot / sub for sub in TEXT_PARTS[name])
        try:
            tokenizer = tokenizer_class.from_pretrained(str(tokenizer_dir), local_files_only=True)
            model = model_class.from_pretrained(str(encoder_dir), local_files_only=True, use_safetensors=True,
                                                dtype=dtype).to(device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{encoder_dir}: cannot load the {name.upper()} text encoder ({one_line(exc)})") from None
        length = length or tokenizer.model_max_length
        ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
        out["truncated"][name] = len(tokenizer(prompt, truncation=False).input_ids) > length
        out.setdefault("encoded", {})[name] = tokenizer.decode(ids[0], skip_special_tokens=True)
        with torch.inference_mode():
            result = model(ids.to(device), output_hidden_states=False)
        if name == "clip":
            out["pooled_prompt_embeds"] = result.pooler_output.float().cpu()
        else:
            out["prompt_embeds"] = result[0].float().cpu()
        del model, result  # one text encoder in memory at a time (T5-XXL alone is ~9.5 GB in bf16)
    return out


def convert_ultraflux(snapshot: str | Path, out: str | Path, *, transformer: str | Path | None = None,
                      prompt: str = S3DIFF_PROMPT, max_sequence_length: int = T5_MAX_SEQUENCE_LENGTH,
                      device: torch.device | str = "cpu", text_dtype: torch.dtype = torch.float32) -> Path:
    """Write an op4ksr model folder at ``out`` (which must not exist) from an UltraFlux snapshot.

    ``transformer``: another transformer folder (e.g. the v1.1 repository's snapshot, files at
    its root) instead of the snapshot's ``transformer/``. The pipeline options (σ, scale,
    guidance) are the ``ultraflux`` preset's. Everything is written to a staging folder beside
    ``out`` and renamed at the end: a failed conversion leaves no model folder behind.
    """
    snapshot = snapshot_folder(snapshot)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: exists; choose a new folder")
    transformer_root = snapshot_folder(transformer) if transformer is not None else snapshot
    transformer_dir = snapshot / "transformer"
    if transformer is not None:  # the v1.1 repository keeps its files at the root; accept a transformer/ too
        nested = transformer_root / "transformer"
        transformer_dir = nested if not (transformer_root / "config.json").is_file() and nested.is_dir() \
            else transformer_root

    vae, vae_files, vae_index = _checked_part("vae", snapshot / "vae", snapshot, F16AutoencoderKL)
    dit_config = read_part_config("transformer", transformer_dir, OP4KSRTransformer, transformer_root) \
        if transformer_dir.is_dir() else {}
    # UltraFlux as it runs: Flux's θ with its extension beyond 2048 px (the sr stage sets RFR's θ)
    dit_overrides = {"rope_theta": FLUX_ROPE_THETA, "rope_scaling": ultraflux_rope_scaling(dit_config)}
    dit, dit_files, dit_index = _checked_part("transformer", transformer_dir, transformer_root, OP4KSRTransformer,
                                              dit_overrides)
    embeds = encode_prompt(snapshot, prompt, max_sequence_length=max_sequence_length, device=device,
                           dtype=text_dtype)
    prompt_embeds, pooled = embeds["prompt_embeds"], embeds["pooled_prompt_embeds"]
    if prompt_embeds.shape[-1] != dit.config.joint_attention_dim or pooled.shape[-1] != dit.config.pooled_projection_dim:
        raise ModelLoadError(
            f"{snapshot}: the text encoders give widths {prompt_embeds.shape[-1]} (T5) and {pooled.shape[-1]} "
            f"(CLIP), the transformer expects {dit.config.joint_attention_dim} and {dit.config.pooled_projection_dim}")
    fixed = FixedPromptEmbeddings(sequence_length=prompt_embeds.shape[1], joint_attention_dim=prompt_embeds.shape[2],
                                  pooled_projection_dim=pooled.shape[-1], prompt=prompt)
    fixed.load_state_dict({"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled})

    out.parent.mkdir(parents=True, exist_ok=True)
    # a fresh staging folder beside the target (same file system for the final rename; nothing
    # that already exists is touched)
    staging = Path(tempfile.mkdtemp(prefix=f"{out.name}.", suffix=".partial", dir=out.parent))
    try:
        _copy_part(vae, vae_files, vae_index, staging / "vae")
        _copy_part(dit, dit_files, dit_index, staging / "transformer")
        # the index as OP4KSRPipeline.save_pretrained writes it, with the ultraflux preset's options
        pipe = OP4KSRPipeline(vae=vae, transformer=dit, prompt=fixed, **get_preset("ultraflux").pipeline)
        fixed.save_pretrained(staging / "prompt")
        pipe.save_index(staging)
        record = {
            "source": str(snapshot), "transformer": str(transformer_dir), "prompt": prompt,
            "truncated": embeds["truncated"], "encoded": embeds["encoded"], "max_sequence_length": max_sequence_length,
            "text_encoders": {name: parts[0] for name, parts in TEXT_PARTS.items()},
        }
        (staging / CONVERSION_RECORD).write_text(json.dumps(record, indent=1) + "\n")
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out

