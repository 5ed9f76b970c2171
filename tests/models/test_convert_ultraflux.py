"""`op4ksr convert ultraflux` on a tiny UltraFlux snapshot in the real layout, built offline.

The snapshot has every part UltraFlux ships, saved by their real classes: diffusers'
``AutoencoderKL`` (plus UltraFlux's ``stride`` and EMA keys) and ``FluxTransformer2DModel`` in bf16,
sharded with its index (plus UltraFlux's ``method``/``ntk_factor``), transformers' CLIP and T5 text
encoders built from configs, tokenizers generated with the ``tokenizers`` library, the pipeline's
``model_index.json`` and scheduler config; laid out as the Hugging Face cache stores it
(``models--Owen777--UltraFlux-v1/snapshots/<rev>/…`` symlinks into ``blobs/``).
"""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest
import torch
from doubles import hf_cache_snapshot
from PIL import Image
from typer.testing import CliRunner

from op4ksr.cli import app
from op4ksr.models.loading import from_pretrained, meta_pipeline_from_dir
from op4ksr.models.prompt import S3DIFF_PROMPT
from op4ksr.models.rope import ULTRAFLUX_ROPE_SCALING

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

T5_WIDTH, CLIP_WIDTH = 24, 12
CORPUS = [S3DIFF_PROMPT.lower(), "a photo of a cat on a mat", "sharp focus, vibrant colors and natural lighting"]


def _tokenizers(root: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    t5 = Tokenizer(models.Unigram())
    t5.normalizer = normalizers.NFKC()
    t5.pre_tokenizer = pre_tokenizers.Metaspace()
    t5.decoder = decoders.Metaspace()
    t5.train_from_iterator(CORPUS, trainers.UnigramTrainer(vocab_size=80, special_tokens=["<pad>", "</s>", "<unk>"],
                                                          unk_token="<unk>"))
    t5.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", t5.token_to_id("</s>"))])
    transformers.T5Tokenizer(tokenizer_object=t5, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                             extra_ids=0).save_pretrained(root / "tokenizer_2")
    clip = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    clip.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    clip.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    transformers.CLIPTokenizer(tokenizer_object=clip, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                               pad_token="<|endoftext|>", unk_token="<|endoftext|>",
                               model_max_length=77).save_pretrained(root / "tokenizer")


def _add_keys(config_file: Path, **extra) -> None:
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **extra}, indent=2))


def build_ultraflux_snapshot(folder: Path) -> dict:
    """The tiny UltraFlux pipeline folder; returns the reference modules."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4,
                                  layers_per_block=1, use_quant_conv=False, use_post_quant_conv=False,
                                  scaling_factor=0.3611, shift_factor=0.1159)
    vae.save_pretrained(folder / "vae")
    _add_keys(folder / "vae" / "config.json", stride=2, decay=0.9999, inv_gamma=1.0, min_decay=0.0,
              optimization_step=1000, power=0.6667, update_after_step=0, use_ema_warmup=False)
    dit = diffusers.FluxTransformer2DModel(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                           num_attention_heads=2, joint_attention_dim=T5_WIDTH,
                                           pooled_projection_dim=CLIP_WIDTH, guidance_embeds=True,
                                           axes_dims_rope=(4, 6, 6)).to(torch.bfloat16)
    dit.save_pretrained(folder / "transformer", max_shard_size="20KB")
    _add_keys(folder / "transformer" / "config.json", method="yarn", ntk_factor=4)
    assert (folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    clip = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        vocab_size=300, hidden_size=CLIP_WIDTH, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=77, projection_dim=CLIP_WIDTH, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    clip.save_pretrained(folder / "text_encoder")
    t5 = transformers.T5EncoderModel(transformers.T5Config(vocab_size=80, d_model=T5_WIDTH, d_kv=8, d_ff=32,
                                                           num_layers=1, num_heads=2, pad_token_id=0, eos_token_id=1))
    t5.save_pretrained(folder / "text_encoder_2")
    _tokenizers(folder)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0, "use_dynamic_shifting": True}))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "_diffusers_version": "0.36.0.dev0",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"]}))
    return {"vae": vae, "transformer": dit, "clip": clip, "t5": t5}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A Hugging Face cache with the tiny UltraFlux-v1 and a v1.1-style transformer repository."""
    work = tmp_path_factory.mktemp("ultraflux")
    refs = build_ultraflux_snapshot(work / "UltraFlux-v1")
    cache = work / "hub"
    snapshot = hf_cache_snapshot(work / "UltraFlux-v1", cache, "Owen777/UltraFlux-v1", revision="a" * 40)
    torch.manual_seed(5)  # v1.1: another transformer, its files at the repository's root
    v11 = diffusers.FluxTransformer2DModel(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                           num_attention_heads=2, joint_attention_dim=T5_WIDTH,
                                           pooled_projection_dim=CLIP_WIDTH, guidance_embeds=True,
                                           axes_dims_rope=(4, 6, 6)).to(torch.bfloat16)
    v11.save_pretrained(work / "v1.1", max_shard_size="20KB")
    v11_snapshot = hf_cache_snapshot(work / "v1.1", cache, "Owen777/UltraFlux-v1.1-Transformer", revision="b" * 40)
    return {"snapshot": snapshot, "repo": snapshot.parent.parent, "v11": v11_snapshot, "v11_ref": v11, **refs}


def _convert(*args: str):
    return CliRunner().invoke(app, ["convert", "ultraflux", *args])


def _expected_prompt(hub, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flux's prompt encoding, done here by hand with the snapshot's own encoders."""
    snap = hub["snapshot"]
    t5_ids = transformers.T5Tokenizer.from_pretrained(str(snap / "tokenizer_2"))(
        prompt, padding="max_length", max_length=512, truncation=True, return_tensors="pt").input_ids
    clip_tok = transformers.CLIPTokenizer.from_pretrained(str(snap / "tokenizer"))
    clip_ids = clip_tok(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return hub["t5"].eval()(t5_ids).last_hidden_state, hub["clip"].eval()(clip_ids).pooler_output


def test_convert_hf_cache_snapshot_then_upscale_info_and_train_init(hub, tmp_path):
    out = tmp_path / "uf"
    result = _convert(str(hub["repo"]), "--out", str(out))  # the models--… folder: refs/main's snapshot
    assert result.exit_code == 0, result.output
    assert f"→ {out}" in result.output and S3DIFF_PROMPT in result.output

    # the weight files are the snapshot's blobs, byte for byte; the configs are op4ksr's, explicit
    assert filecmp.cmp(out / "vae" / "diffusion_pytorch_model.safetensors",
                       (hub["snapshot"] / "vae" / "diffusion_pytorch_model.safetensors").resolve(), shallow=False)
    shards = sorted((hub["snapshot"] / "transformer").glob("*-of-*.safetensors"))
    assert len(shards) >= 2 and all(filecmp.cmp(out / "transformer" / s.name, s.resolve(), shallow=False) for s in shards)
    vae_config = json.loads((out / "vae" / "config.json").read_text())
    assert vae_config["_class_name"] == "F16AutoencoderKL" and vae_config["partitioned_decode"] is True
    dit_config = json.loads((out / "transformer" / "config.json").read_text())
    assert dit_config["rope_theta"] == 10000.0 and dit_config["rope_scaling"] == ULTRAFLUX_ROPE_SCALING
    assert json.loads((out / "model_index.json").read_text())["sigma"] == 0.505  # the ultraflux preset's
    record = json.loads((out / "conversion.json").read_text())
    assert record["prompt"] == S3DIFF_PROMPT and record["truncated"] == {"clip": False, "t5": False}
    assert json.loads((out / "prompt" / "config.json").read_text())["prompt"] == S3DIFF_PROMPT
    assert not list(tmp_path.glob("*.partial"))

    # reloads bit-identically (bf16 → fp32 is exact), prompt embeddings as Flux computes them
    pipe = from_pretrained(out, dtype=torch.float32)
    for part, ref in (("vae", hub["vae"]), ("transformer", hub["transformer"])):
        theirs = ref.state_dict()
        ours = getattr(pipe, part).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k].float()) for k in theirs)
    embeds, pooled = _expected_prompt(hub, S3DIFF_PROMPT)
    assert pipe.prompt.prompt_embeds.shape == (1, 512, T5_WIDTH)
    assert torch.equal(pipe.prompt.prompt_embeds, embeds) and torch.equal(pipe.prompt.pooled_prompt_embeds, pooled)
    again = from_pretrained(out, dtype=torch.float32)
    assert all(torch.equal(v, again.transformer.state_dict()[k]) for k, v in pipe.transformer.state_dict().items())

    # upscale end to end on the CPU
    Image.new("RGB", (20, 12), (120, 60, 30)).save(tmp_path / "in.png")
    up = CliRunner().invoke(app, ["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / "o"), "--model", str(out),
                                  "--device", "cpu"])
    assert up.exit_code == 0, up.output
    with Image.open(tmp_path / "o" / "in_x4.png") as image:
        assert image.size == (80, 48)
    # info and train's model.init accept it
    info = CliRunner().invoke(app, ["info", str(out), "--size", "512x512", "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.output)["text_tokens"] == 512
    assert json.loads(info.output)["dtype"] == "bfloat16"  # its DiT is stored in bf16
    assert meta_pipeline_from_dir(out).vae.decoder.partitioned
    from op4ksr.train.config import load_config
    from op4ksr.train.stages import SRStage

    (tmp_path / "c.toml").write_text('stage = "sr"\n[model]\npreset = "tiny"\n[loss]\nmse = 1.0\nlpips = 0.0\n'
                                     "[sr]\nlora_rank = 2\nlora_alpha = 2\n")
    cfg = load_config(tmp_path / "c.toml", [f'data.train=["{tmp_path}"]', f'model.init="{out}"'])
    stage = SRStage(cfg)
    assert stage.transformer.pos_embed.theta == 100.0 and stage.transformer.pos_embed.scaling is None


def test_convert_with_the_v11_transformer_and_an_empty_prompt(hub, tmp_path):
    out = tmp_path / "uf11"
    result = _convert(str(hub["snapshot"]), "--out", str(out), "--transformer", str(hub["v11"]), "--prompt", "")
    assert result.exit_code == 0, result.output
    pipe = from_pretrained(out, dtype=torch.float32)
    theirs = hub["v11_ref"].state_dict()
    assert all(torch.equal(v, theirs[k].float()) for k, v in pipe.transformer.state_dict().items())
    assert json.loads((out / "conversion.json").read_text())["prompt"] == ""
    embeds, pooled = _expected_prompt(hub, "")
    assert torch.equal(pipe.prompt.prompt_embeds, embeds) and torch.equal(pipe.prompt.pooled_prompt_embeds, pooled)


def test_convert_refuses_existing_output_and_leaves_nothing_on_failure(hub, tmp_path):
    existing = tmp_path / "there"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    result = _convert(str(hub["snapshot"]), "--out", str(existing))
    assert result.exit_code != 0 and "exists" in result.output
    assert (existing / "keep.txt").read_text() == "mine"
    # a snapshot without its T5 encoder: one line naming the folder, no model folder written
    broken = tmp_path / "broken"
    for sub in ("vae", "transformer", "text_encoder", "tokenizer", "tokenizer_2"):
        (broken / sub).mkdir(parents=True)
        for file in (hub["snapshot"] / sub).iterdir():
            (broken / sub / file.name).write_bytes(file.resolve().read_bytes())
    out = tmp_path / "never"
    result = _convert(str(broken), "--out", str(out))
    assert result.exit_code != 0
    assert "text_encoder_2" in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists() and not list(tmp_path.glob("*.partial"))
    # a transformer whose shard does not match its config
    config = broken / "transformer" / "config.json"
    _add_keys(config, num_layers=2)
    result = _convert(str(broken), "--out", str(out))
    assert result.exit_code != 0 and "transformer weights do not match its config.json" in result.output
    assert not out.exists()


def test_a_prompt_longer_than_clip_takes_is_recorded_as_cut(hub, tmp_path):
    long_prompt = ", ".join(["a photo of a cat on a mat"] * 12)
    out = tmp_path / "long"
    result = _convert(str(hub["snapshot"]), "--out", str(out), "--prompt", long_prompt)
    assert result.exit_code == 0, result.output
    assert "the CLIP tokenizer cut it" in result.output and len(result.output.strip().splitlines()) == 1
    record = json.loads((out / "conversion.json").read_text())
    assert record["truncated"] == {"clip": True, "t5": False}
    assert record["prompt"] == long_prompt and len(record["encoded"]["clip"]) < len(long_prompt)


def test_a_failure_while_writing_leaves_no_folder_behind(hub, tmp_path, monkeypatch):
    import shutil

    from op4ksr.models import convert

    copies = []

    def failing_copy(src, dst):
        copies.append(dst)
        if len(copies) % 4 == 3:  # in the middle of the transformer's shards
            raise OSError(28, "No space left on device")
        return shutil.copyfile(src, dst)

    monkeypatch.setattr(convert.shutil, "copyfile", failing_copy)
    out = tmp_path / "models" / "uf"
    with pytest.raises(OSError, match="No space left"):
        convert.convert_ultraflux(hub["snapshot"], out)
    assert not out.exists() and list((tmp_path / "models").iterdir()) == []
    # the CLI: one line, non-zero exit
    result = _convert(str(hub["snapshot"]), "--out", str(out))
    assert result.exit_code != 0 and "No space left" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()
