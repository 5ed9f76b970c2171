"""`--ray`: the same outputs, skips and failure report as the local run (Ray local mode)."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from doubles import InterpolationPipeline, write_bad_files
from PIL import Image

from op4ksr.api import Upscaler
from op4ksr.batch.plan import BatchOptions, plan_batch
from op4ksr.batch.run import process_item, run_batch

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def ray_local():
    # The workers import the test double (tests/doubles.py) as pytest does: tests/ on their path.
    path = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def _inputs(src: Path) -> dict[str, str]:
    reasons = write_bad_files(src)
    rng = np.random.default_rng(3)
    for name in ("a.png", "b.jpg", "sub/c.png"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(src / name)
    (src / "Thumbs.db").write_bytes(b"\xd0\xcf")
    return reasons


@pytest.mark.slow
def test_ray_matches_local_run(tmp_path: Path, ray_local) -> None:
    from op4ksr.batch.cluster import run_batch_ray

    src = tmp_path / "src"
    _inputs(src)
    local_opts = BatchOptions(out_dir=tmp_path / "local", recursive=True)
    ray_opts = BatchOptions(out_dir=tmp_path / "ray", recursive=True)
    (tmp_path / "ray").mkdir()
    fd, name = tempfile.mkstemp(prefix=".a_x4.", suffix=".part.png", dir=tmp_path / "ray")  # as a killed write leaves it
    os.write(fd, b"left by a killed run")
    os.close(fd)
    stale = Path(name)

    upscaler = Upscaler(InterpolationPipeline())
    local = run_batch(plan_batch([src], local_opts), lambda item: process_item(upscaler, item, local_opts))
    seen: list[str] = []
    remote = run_batch_ray(
        plan_batch([src], ray_opts),
        ray_opts,
        model=functools.partial(InterpolationPipeline, 4),
        address="auto",
        on_result=lambda r: seen.append(r.input),
    )

    def comparable(report, out: Path) -> list[tuple]:
        return [
            (r.input, r.status, r.reason, r.output_size, r.output and str(Path(r.output).relative_to(out)))
            for r in report.results
        ]

    assert comparable(remote, tmp_path / "ray") == comparable(local, tmp_path / "local")
    assert remote.summary()["done"] == 3 and remote.summary()["failed"] == 5
    assert remote.stale_temps_removed == 1 and not stale.exists()
    # Progress callbacks arrive for every file sent to the cluster (preflight skips are not sent).
    assert sorted(seen) == sorted(r.input for r in remote.results if r.status != "skipped")
    for name in ("a_x4.png", "b_x4.png", "sub/c_x4.png"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    json.dumps(remote.to_json_dict())  # the report serialises like the local one


@pytest.mark.slow
def test_cli_ray_with_a_saved_tiny_model(tmp_path: Path, ray_local) -> None:
    from typer.testing import CliRunner

    from op4ksr.cli import app

    presets = pytest.importorskip("op4ksr.models.presets")
    presets.build_pipeline("tiny", seed=0).save_pretrained(tmp_path / "tiny")
    src = tmp_path / "src"
    reasons = _inputs(src)
    args = [str(src), "-r", "--model", str(tmp_path / "tiny"), "--device", "cpu", "--json"]
    result = CliRunner().invoke(app, ["upscale", *args, "-o", str(tmp_path / "out"), "--ray", "auto"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["ray"] == "auto"
    files = {Path(f["input"]).name: f for f in report["files"]}
    assert {n: f["status"] for n, f in files.items() if f["status"] != "failed"} == {
        "Thumbs.db": "skipped", "a.png": "done", "b.jpg": "done", "c.png": "done"
    }
    assert all(fragment in files[name]["reason"] for name, fragment in reasons.items())
    assert Image.open(tmp_path / "out" / "sub" / "c_x4.png").size == (56, 40)
