"""Hostile run folders (issue 24): another run in the output dir, tampered checkpoints, NaN losses.

Each case performs the attack on a real (tiny, two-step) run and expects one line naming the
file and the problem, a non-zero exit, and nothing of the earlier run lost."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from op4ksr.cli import app

runner = CliRunner()


def _args(config: Path, out: Path, photo_dir: Path, *extra: str) -> list[str]:
    return ["train", str(config), 'model.preset="tiny"', f'data.train=["{photo_dir / "astronaut.png"}"]',
            f'run.output_dir="{out}"', "data.crop_size=32", "run.checkpoint_every=1", "run.validate_every=1000",
            "run.log_every=1", "optim.warmup_steps=0", "optim.batch_size=1", "optim.lr=1e-3", "loss.lpips=0.0", *extra]


@pytest.fixture(scope="module")
def vae_config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "vae.toml"
    path.write_text('stage = "vae"\n')
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, vae_config, photo_dir) -> Path:
    """A finished two-step vae run with a checkpoint at each step (--resume from step 1 has work to do)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    result = runner.invoke(app, _args(vae_config, out, photo_dir, "run.max_steps=2", "run.keep_checkpoints=5"))
    assert result.exit_code == 0, result.output
    assert (out / "checkpoints" / "step-0000001").is_dir() and (out / "checkpoints" / "step-0000002").is_dir()
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_line(result) -> str:
    """The one error line (the progress bar may have drawn its line before)."""
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code != 0 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return lines[0]


def test_a_second_run_into_a_used_output_dir_is_refused(finished_run, vae_config, photo_dir, tmp_path):
    run = _copy(finished_run, tmp_path)
    before = _snapshot(run)
    line = _error_line(runner.invoke(app, _args(vae_config, run, photo_dir, "run.max_steps=1")))
    assert f"{run}: run.output_dir is not empty" in line and "--overwrite" in line
    assert _snapshot(run) == before  # config.json, log.jsonl, model/, checkpoints untouched


def test_resume_of_another_run_is_refused(finished_run, vae_config, photo_dir, tmp_path):
    run = _copy(finished_run, tmp_path)
    before = _snapshot(run)
    line = _error_line(runner.invoke(app, _args(vae_config, run, photo_dir, "run.max_steps=3",
                                                "model.overrides={transformer={rope_theta=50.0}}", "--resume")))
    assert f"{run / 'config.json'}" in line and "model differ" in line
    assert _snapshot(run) == before


def test_overwrite_replaces_the_earlier_run_and_keeps_other_files(finished_run, vae_config, photo_dir, tmp_path):
    run = _copy(finished_run, tmp_path)
    (run / "notes.txt").write_text("mine")
    result = runner.invoke(app, _args(vae_config, run, photo_dir, "run.max_steps=1", "--overwrite"))
    assert result.exit_code == 0, result.output
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-0000001"]  # the old step 2 is gone
    assert len((run / "log.jsonl").read_text().splitlines()) == 1
    assert (run / "notes.txt").read_text() == "mine"
    both = runner.invoke(app, _args(vae_config, run, photo_dir, "--overwrite", "--resume"))
    assert "give one of them" in _error_line(both)


def test_a_stray_step_folder_is_not_a_checkpoint(finished_run, vae_config, photo_dir, tmp_path):
    run = tmp_path / "fresh"
    (run / "checkpoints" / "step-best").mkdir(parents=True)
    (run / "checkpoints" / "step-best" / "state.json").write_text("{}")
    result = runner.invoke(app, _args(vae_config, run, photo_dir, "run.max_steps=1", "--overwrite"))
    assert result.exit_code == 0, result.output
    from op4ksr.train.checkpoint import list_checkpoints

    assert [p.name for p in list_checkpoints(run)] == ["step-0000001"]


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _drop_schedulers(file: Path) -> None:
    state = json.loads(file.read_text())
    del state["schedulers"]
    file.write_text(json.dumps(state))


def _drop_metadata(file: Path) -> None:
    save_file(load_file(str(file)), str(file))  # the tensors without the param-group metadata


def _reshape_first(file: Path) -> None:
    tensors = load_file(str(file))
    key = next(k for k, v in tensors.items() if v.ndim >= 2)
    tensors[key] = tensors[key].reshape(-1)
    with safe_open(str(file), "pt") as fh:
        metadata = fh.metadata()
    save_file(tensors, str(file), metadata=metadata)


def _short_rng(file: Path) -> None:
    tensors = load_file(str(file))
    tensors["torch_cpu"] = tensors["torch_cpu"][:100].clone()
    save_file(tensors, str(file))


TAMPERS = {
    "truncated model": ("model.safetensors", _truncate, "not a readable safetensors file"),
    "truncated state": ("state.safetensors", _truncate, "not a readable safetensors file"),
    "no schedulers": ("state.json", _drop_schedulers, "entry 'schedulers' is missing"),
    "optimizer without metadata": ("optimizer.safetensors", _drop_metadata, "metadata (param groups) is missing"),
    "reshaped weight": ("model.safetensors", _reshape_first, "has shape"),
    "reshaped moment": ("optimizer.safetensors", _reshape_first, "has shape"),
    "short rng": ("state.safetensors", _short_rng, "the RNG state 'torch_cpu' has 100"),
    "not json": ("state.json", lambda f: f.write_text("{"), "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_a_tampered_checkpoint_gives_one_line_on_resume(finished_run, vae_config, photo_dir, tmp_path, case):
    name, tamper, message = TAMPERS[case]
    run = _copy(finished_run, tmp_path)
    shutil.rmtree(run / "checkpoints" / "step-0000002")  # resume from step 1
    target = run / "checkpoints" / "step-0000001" / name
    tamper(target)
    line = _error_line(runner.invoke(app, _args(vae_config, run, photo_dir, "run.max_steps=2", "--resume")))
    assert str(target) in line and message in line, line


@pytest.mark.parametrize("case", ["truncated model", "reshaped weight", "not json"])
def test_a_tampered_checkpoint_gives_one_line_on_export(finished_run, tmp_path, case):
    name, tamper, message = TAMPERS[case]
    run = _copy(finished_run, tmp_path)
    checkpoint = run / "checkpoints" / "step-0000002"
    tamper(checkpoint / name)
    line = _error_line(runner.invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "out")]))
    assert str(checkpoint / name) in line and message in line, line
    assert not (tmp_path / "out").exists()


def test_export_applies_the_size_bounds_to_the_run_config(finished_run, tmp_path):
    run = _copy(finished_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["model"]["overrides"] = {"transformer": {"num_layers": 200000}}
    (run / "config.json").write_text(json.dumps(config))
    line = _error_line(runner.invoke(app, ["export", str(run / "checkpoints" / "step-0000002"),
                                           "--out", str(tmp_path / "out")]))
    assert str(run / "config.json") in line and "num_layers = 200000" in line
    assert not (tmp_path / "out").exists()


def test_a_loss_that_becomes_nan_stops_the_run_without_exporting(vae_config, photo_dir, tmp_path, monkeypatch):
    from op4ksr.train import stages

    original = stages.VAEStage.forward

    def poisoned(self, batch, generator):
        loss, logs = original(self, batch, generator)
        return loss * torch.tensor(float("nan")), logs

    monkeypatch.setattr(stages.VAEStage, "forward", poisoned)
    run = tmp_path / "run"
    line = _error_line(runner.invoke(app, _args(vae_config, run, photo_dir, "run.max_steps=2")))
    assert "step 1" in line and "not finite" in line
    assert not (run / "model").exists()
