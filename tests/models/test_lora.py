import torch

from op4ksr.models.lora import (
    DIT_TARGETS,
    VAE_ENCODER_TARGETS,
    LoraSettings,
    add_lora,
    load_lora,
    merge_lora,
    save_lora,
)


def test_vae_lora_touches_only_the_encoder(tiny_pipeline):
    names = add_lora(tiny_pipeline.vae, VAE_ENCODER_TARGETS, LoraSettings(rank=4, alpha=4))
    assert names and all(n.startswith("encoder.") for n in names)
    assert any(n == "encoder.conv_in" for n in names)
    assert any(n.endswith("attentions.0.to_q") for n in names)
    trainable = [n for n, p in tiny_pipeline.vae.named_parameters() if "lora_" in n]
    assert trainable and not any(n.startswith("decoder.") for n in trainable)


def test_dit_lora_targets(tiny_pipeline):
    names = add_lora(tiny_pipeline.transformer, DIT_TARGETS, LoraSettings(rank=4, alpha=4))
    assert "x_embedder" in names
    assert "transformer_blocks.0.attn.add_q_proj" in names
    assert "transformer_blocks.0.ff_context.net.2" in names


def test_lora_save_load_and_merge(tiny_pipeline, tmp_path):
    from op4ksr.models.presets import build_pipeline

    settings = LoraSettings(rank=4, alpha=8)
    add_lora(tiny_pipeline.transformer, DIT_TARGETS, settings)
    with torch.no_grad():
        for n, p in tiny_pipeline.transformer.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)  # B starts at zero: make the adapter do something
    x = torch.rand(1, 3, 32, 32)
    adapted = tiny_pipeline(x)
    save_lora(tiny_pipeline.transformer, tmp_path / "dit_lora.safetensors")

    other = build_pipeline("tiny", seed=0)
    assert not torch.allclose(other(x), adapted)
    adapted_modules = add_lora(other.transformer, DIT_TARGETS, settings)
    load_lora(other.transformer, tmp_path / "dit_lora.safetensors")
    torch.testing.assert_close(other(x), adapted)
    assert merge_lora(other.transformer) == len(adapted_modules)
    assert not any("lora_" in n for n, _ in other.transformer.named_parameters())
    torch.testing.assert_close(other(x), adapted, rtol=1e-5, atol=1e-5)
