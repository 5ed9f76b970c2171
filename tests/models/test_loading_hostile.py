"""Crafted model folders: nothing outside the folder is opened, absurd configs are refused early."""

import json
import shutil
import time

import pytest
import torch
from doubles import hf_cache_snapshot

from op4ksr.models.loading import ModelLoadError, from_pretrained, meta_pipeline_from_dir

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture
def model_dir(tmp_path, tiny_pipeline):
    path = tmp_path / "model"
    tiny_pipeline.save_pretrained(path)
    return path


def _shard(model_dir, target: str):
    """Turn the prompt part into a one-shard index whose weight_map points at ``target``."""
    prompt = model_dir / "prompt"
    from safetensors.torch import load_file

    keys = list(load_file(str(prompt / WEIGHTS)))
    (prompt / f"{WEIGHTS}.index.json").write_text(json.dumps({"weight_map": {k: target for k in keys}}))
    return prompt / WEIGHTS


def test_shard_with_an_absolute_path_is_refused(model_dir, tmp_path):
    outside = tmp_path / "outside.safetensors"
    weights = _shard(model_dir, str(outside))
    shutil.move(weights, outside)
    with pytest.raises(ModelLoadError, match="is not a file name inside the folder; refused"):
        from_pretrained(model_dir)


def test_shard_that_climbs_out_of_the_folder_is_refused(model_dir, tmp_path):
    (tmp_path / "outside").mkdir()
    weights = _shard(model_dir, "../../outside/x.safetensors")
    shutil.move(weights, tmp_path / "outside" / "x.safetensors")
    with pytest.raises(ModelLoadError, match="resolves outside the model folder"):
        from_pretrained(model_dir)


def test_weights_symlinked_to_outside_are_refused(model_dir, tmp_path):
    weights = model_dir / "vae" / WEIGHTS
    shutil.move(weights, tmp_path / "elsewhere.safetensors")
    weights.symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(ModelLoadError, match="the vae weights file resolves outside the model folder"):
        from_pretrained(model_dir)


def test_symlink_inside_the_folder_is_fine(model_dir):
    weights = model_dir / "vae" / WEIGHTS
    shutil.move(weights, model_dir / "vae" / "real.safetensors")
    weights.symlink_to("real.safetensors")
    assert from_pretrained(model_dir).vae is not None


def test_crafted_config_is_refused_before_building(model_dir):
    config_file = model_dir / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["num_layers"] = 200_000
    config_file.write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises(ModelLoadError, match="num_layers = 200000, outside 0–512"):
        from_pretrained(model_dir)
    with pytest.raises(ModelLoadError, match="num_layers"):
        meta_pipeline_from_dir(model_dir)
    assert time.perf_counter() - start < 5


def test_bad_files_are_named_with_their_part(model_dir):
    (model_dir / "vae" / WEIGHTS).write_bytes(b"not safetensors at all")
    with pytest.raises(ModelLoadError, match=r"vae.*diffusion_pytorch_model.safetensors: the vae weights are not"):
        from_pretrained(model_dir)


def test_bad_model_index_is_one_line(model_dir):
    (model_dir / "model_index.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="model_index.json: not valid JSON"):
        from_pretrained(model_dir)
    (model_dir / "model_index.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="expected a JSON object"):
        from_pretrained(model_dir)


def test_bad_config_json_names_the_part(model_dir):
    (model_dir / "prompt" / "config.json").write_text("{")
    with pytest.raises(ModelLoadError, match="prompt.*config.json: not a valid prompt config.json"):
        from_pretrained(model_dir)


# ------------------------------------------------------------------ the Hugging Face cache layout


def test_hf_cache_snapshot_with_links_into_its_own_blobs_loads(model_dir, tmp_path, tiny_pipeline):
    snapshot = hf_cache_snapshot(model_dir, tmp_path / "hub", "Owen777/UltraFlux-v1")
    weights = snapshot / "vae" / WEIGHTS
    assert weights.is_symlink() and weights.resolve().parent.name == "blobs"
    pipe = from_pretrained(snapshot)
    for k, v in tiny_pipeline.vae.state_dict().items():
        assert torch.equal(pipe.vae.state_dict()[k], v)


def test_hf_cache_link_into_another_repos_blobs_is_refused(model_dir, tmp_path):
    snapshot = hf_cache_snapshot(model_dir, tmp_path / "hub", "Owen777/UltraFlux-v1")
    other = hf_cache_snapshot(model_dir, tmp_path / "hub", "someone/other")
    weights = snapshot / "vae" / WEIGHTS
    weights.unlink()
    weights.symlink_to((other / "vae" / WEIGHTS).resolve())
    with pytest.raises(ModelLoadError, match="the vae weights file resolves outside the model folder"):
        from_pretrained(snapshot)


def test_hf_cache_link_to_etc_is_refused(model_dir, tmp_path):
    snapshot = hf_cache_snapshot(model_dir, tmp_path / "hub", "Owen777/UltraFlux-v1")
    config = snapshot / "vae" / "config.json"
    config.unlink()
    config.symlink_to("/etc/passwd")
    with pytest.raises(ModelLoadError, match="the vae config resolves outside the model folder"):
        from_pretrained(snapshot)


def test_folder_named_blobs_outside_a_cache_repo_gives_no_exemption(model_dir, tmp_path):
    # a plain folder (not models--*/snapshots/<rev>) with a sibling blobs/: still refused
    (tmp_path / "blobs").mkdir()
    weights = model_dir / "vae" / WEIGHTS
    shutil.move(weights, tmp_path / "blobs" / "x")
    weights.symlink_to(tmp_path / "blobs" / "x")
    with pytest.raises(ModelLoadError, match="resolves outside the model folder"):
        from_pretrained(model_dir)
