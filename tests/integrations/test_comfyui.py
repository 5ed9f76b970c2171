"""The ComfyUI node pack (integrations/comfyui), tested without ComfyUI (issue 25).

ComfyUI is not on PyPI: its ``folder_paths``, ``comfy.utils`` and ``comfy.model_management``
are stubbed in ``sys.modules`` with the few functions the pack calls (their signatures as in
ComfyUI), and the pack is imported from its folder the way ComfyUI loads a custom node.
The model is the ``tiny`` preset with random weights, saved with ``save_pretrained``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

from op4ksr import upscale
from op4ksr.api import Upscaler
from op4ksr.io.images import from_tensor, load_image

PACK = Path(__file__).resolve().parents[2] / "integrations" / "comfyui"
PACK_MODULE = "comfyui-op4ksr"  # ComfyUI names a pack's module after its folder (docs/COMFYUI.md's name)

# The ComfyUI core nodes the example workflow uses, as ComfyUI's nodes.py and
# comfy_extras/nodes_compositing.py declare them: connection inputs, outputs, widget count.
COMFY_CORE_NODES = {
    "LoadImage": {"inputs": {}, "outputs": ["IMAGE", "MASK"], "widgets": 2},  # image + upload
    "JoinImageWithAlpha": {"inputs": {"image": "IMAGE", "alpha": "MASK"}, "outputs": ["IMAGE"], "widgets": 0},
    "SaveImage": {"inputs": {"images": "IMAGE"}, "outputs": [], "widgets": 1},
}
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


class ComfyRecord:
    """What the stubbed ComfyUI saw, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    """Stub ComfyUI modules over a models/ folder in tmp_path; yields (record, models dir)."""
    models = tmp_path / "ComfyUI" / "models"
    (models / "diffusers").mkdir(parents=True)
    record = ComfyRecord()

    folder_paths = ModuleType("folder_paths")
    folder_paths.models_dir = str(models)
    folder_paths.folder_names_and_paths = {"diffusers": ([str(models / "diffusers")], {"folder"})}

    def get_folder_paths(folder_name: str) -> list[str]:
        return folder_paths.folder_names_and_paths[folder_name][0][:]

    def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        folder_paths.folder_names_and_paths.setdefault(folder_name, ([], set()))[0].append(full_folder_path)

    folder_paths.get_folder_paths = get_folder_paths
    folder_paths.add_model_folder_path = add_model_folder_path

    class ProgressBar:
        def __init__(self, total: int) -> None:
            record.events.append(("progress_total", total))

        def update(self, value: int) -> None:
            record.events.append(("progress", value))

    comfy_pkg = ModuleType("comfy")
    comfy_pkg.__path__ = []
    utils = ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    mm = ModuleType("comfy.model_management")
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.soft_empty_cache = lambda force=False: record.events.append(("empty_cache",))
    mm.free_memory = lambda memory_required, device, keep_loaded=(): record.events.append(
        ("free_memory", memory_required, device))
    mm.throw_exception_if_processing_interrupted = lambda: record.events.append(("interrupt_check",))
    comfy_pkg.utils, comfy_pkg.model_management = utils, mm
    for name, module in (("folder_paths", folder_paths), ("comfy", comfy_pkg), ("comfy.utils", utils),
                         ("comfy.model_management", mm)):
        monkeypatch.setitem(sys.modules, name, module)
    return record, models


@contextlib.contextmanager
def imported_pack(monkeypatch):
    """The node pack imported from its folder as ComfyUI loads a custom node (spec from the
    folder's ``__init__.py``, registered in ``sys.modules`` under the folder's name)."""
    spec = importlib.util.spec_from_file_location(PACK_MODULE, PACK / "__init__.py",
                                                  submodule_search_locations=[str(PACK)])
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, PACK_MODULE, module)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(f"{PACK_MODULE}.nodes", None)


@pytest.fixture
def pack(comfy, monkeypatch):
    """The node pack, imported after the ComfyUI stubs exist."""
    with imported_pack(monkeypatch) as module:
        yield module


def save_tiny(folder: Path, seed: int = 0):
    """A tiny random pipeline saved to ``folder``; its compensation gets random weights too
    (it starts at zero), so that ``fidelity`` changes the output."""
    from op4ksr.models.presets import build_pipeline

    pipe = build_pipeline("tiny", seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in pipe.compensation.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.05)
    pipe.save_pretrained(folder)
    return pipe


def convert_tiny_ultraflux(work: Path, folder: Path) -> None:
    """docs/COMFYUI.md's conversion on tiny parts: UltraFlux-layout ``vae/``, ``transformer/`` and
    prompt embeddings → ``load_ultraflux_parts`` → ``export_pipeline`` into a ComfyUI model folder."""
    from safetensors.torch import save_file

    from op4ksr.models.loading import export_pipeline, load_ultraflux_parts
    from op4ksr.models.presets import build_pipeline

    parts = build_pipeline("tiny", seed=2, overrides={"compensation": {"enabled": False}})
    parts.vae.save_pretrained(work / "vae")
    parts.transformer.save_pretrained(work / "transformer")
    save_file({k: v.contiguous() for k, v in parts.prompt.state_dict().items()}, str(work / "prompt.safetensors"))
    converted = load_ultraflux_parts(work / "vae", work / "transformer", work / "prompt.safetensors")
    export_pipeline(converted, folder, dtype=torch.bfloat16)


def images_u8(batch: int, height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, channels), dtype=np.uint8)


def as_comfy_image(u8: np.ndarray) -> torch.Tensor:
    """uint8 → the float32 [B, H, W, C] in [0, 1] ComfyUI passes (the value op4ksr reads from uint8)."""
    return torch.from_numpy(u8.astype(np.float32) / 255.0)


def quantised(values: torch.Tensor) -> np.ndarray:
    """One [H, W, C] node output in 8 bits, rounded as op4ksr rounds when it writes or returns PIL."""
    return from_tensor(values.permute(2, 0, 1), np.uint8)


@pytest.fixture
def tiny_in_comfy(comfy, pack):
    """The tiny model under models/op4ksr/tiny, loaded through the loader node on CPU."""
    _record, models = comfy
    save_tiny(models / "op4ksr" / "tiny")
    (model,) = pack.NODE_CLASS_MAPPINGS["OP4KSRModelLoader"]().load("op4ksr/tiny", "auto", "auto")
    return model


def run_upscale(pack, model, image, scale=4, fidelity=-1.0, color_fix="model default", grid_fix="model default",
                mask=None):
    node = pack.NODE_CLASS_MAPPINGS["OP4KSRUpscale"]()
    return node.upscale(model, image, scale, fidelity, color_fix, grid_fix, mask=mask)


# ----------------------------------------------------------------------------- the pack itself
def test_pack_exports_the_classic_node_interface(pack, comfy):
    _record, models = comfy
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS) == {
        "OP4KSRModelLoader", "OP4KSRUpscale"}
    for cls in pack.NODE_CLASS_MAPPINGS.values():
        inputs = cls.INPUT_TYPES()
        assert set(inputs) <= {"required", "optional"} and inputs["required"]
        assert isinstance(cls.RETURN_TYPES, tuple) and len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES)
        assert callable(getattr(cls(), cls.FUNCTION)) and cls.CATEGORY
    # importing the pack made models/op4ksr/ a ComfyUI model folder, once
    assert sys.modules["folder_paths"].get_folder_paths("op4ksr") == [str(models / "op4ksr")]
    pack.nodes.register_model_folder()
    assert sys.modules["folder_paths"].get_folder_paths("op4ksr") == [str(models / "op4ksr")]


def test_models_op4ksr_joins_folders_from_extra_model_paths(comfy, tmp_path, monkeypatch):
    """ComfyUI reads extra_model_paths.yaml before custom nodes: its op4ksr folders stay, models/op4ksr/ joins."""
    _record, models = comfy
    folder_paths = sys.modules["folder_paths"]
    folder_paths.add_model_folder_path("op4ksr", str(tmp_path / "big-disk" / "op4ksr"))
    save_tiny(tmp_path / "big-disk" / "op4ksr" / "elsewhere")
    with imported_pack(monkeypatch) as module:
        assert folder_paths.get_folder_paths("op4ksr") == [str(tmp_path / "big-disk" / "op4ksr"),
                                                           str(models / "op4ksr")]
        loader = module.NODE_CLASS_MAPPINGS["OP4KSRModelLoader"]
        assert loader.INPUT_TYPES()["required"]["model"][0] == ["compact", "op4ksr/elsewhere"]
        (model,) = loader().load("op4ksr/elsewhere", "cpu", "auto")
        assert model.scale == 4


def test_pack_metadata_names_op4ksr_once(pack):
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((PACK / "pyproject.toml").read_text())
    requirements = [line.strip() for line in (PACK / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert requirements == project["project"]["dependencies"]
    assert [r.split(">")[0].split("=")[0] for r in requirements] == ["op4ksr"]
    assert {"PublisherId", "DisplayName", "Icon"} <= set(project["tool"]["comfy"])


def test_the_pack_works_without_comfyui(monkeypatch, tiny_pipeline):
    """Outside ComfyUI only the bundled model is offered, and upscaling needs no ComfyUI module."""
    for name in ("folder_paths", "comfy", "comfy.utils", "comfy.model_management"):
        monkeypatch.setitem(sys.modules, name, None)  # import → ImportError
    with imported_pack(monkeypatch) as module:
        choices = module.NODE_CLASS_MAPPINGS["OP4KSRModelLoader"].INPUT_TYPES()["required"]["model"][0]
        image, mask = run_upscale(module, tiny_pipeline, as_comfy_image(images_u8(1, 16, 24)))
    assert choices == ["compact"]
    assert image.shape == (1, 64, 96, 3) and mask.shape == (1, 64, 96)


# ----------------------------------------------------------------------------- loader
def test_loader_offers_saved_op4ksr_folders_only(pack, comfy):
    _record, models = comfy
    save_tiny(models / "op4ksr" / "tiny")
    convert_tiny_ultraflux(models.parent / "download", models / "diffusers" / "someone" / "ultraflux-op4ksr")
    flux = models / "diffusers" / "FLUX.1-dev"  # another diffusers model: not op4ksr's
    flux.mkdir()
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    (models / "diffusers" / "broken").mkdir()
    (models / "diffusers" / "broken" / "model_index.json").write_text("{not json")
    choices = pack.NODE_CLASS_MAPPINGS["OP4KSRModelLoader"].INPUT_TYPES()["required"]["model"][0]
    assert choices == ["compact", "op4ksr/tiny", "diffusers/someone/ultraflux-op4ksr"]
    (converted,) = pack.NODE_CLASS_MAPPINGS["OP4KSRModelLoader"]().load(choices[-1], "cpu", "auto")
    assert converted.dtype == torch.float32 and converted.compensation is None  # bf16 on disk, fp32 on a CPU


def test_loader_loads_the_chosen_folder_fp32_on_cpu(pack, comfy):
    _record, models = comfy
    saved = save_tiny(models / "op4ksr" / "tiny")
    loader = pack.NODE_CLASS_MAPPINGS["OP4KSRModelLoader"]()
    (model,) = loader.load("op4ksr/tiny", "cpu", "fp16")  # half asked for on a CPU: fp32 there
    assert (model.scale, model.device.type, model.dtype) == (4, "cpu", torch.float32)
    loaded, original = model.transformer.state_dict(), saved.transformer.state_dict()
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], original[k]) for k in original)
    # auto goes through ComfyUI's device
    (model,) = loader.load("op4ksr/tiny", "auto", "auto")
    assert (model.device.type, model.dtype) == ("cpu", torch.float32)


def test_loader_refuses_paths_outside_the_model_roots(pack, comfy, tmp_path):
    _record, models = comfy
    outside = tmp_path / "outside" / "model"
    save_tiny(outside)
    link = models / "op4ksr" / "linked"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    loader_cls = pack.NODE_CLASS_MAPPINGS["OP4KSRModelLoader"]
    assert loader_cls.INPUT_TYPES()["required"]["model"][0] == ["compact"]  # the symlink is not offered
    loader = loader_cls()
    for choice, reason in (
        ("op4ksr/../../../outside/model", "outside"),
        ("diffusers/../../../outside/model", "outside"),
        ("op4ksr/linked", "outside"),
        (f"op4ksr/{outside}", "absolute"),
        ("checkpoints/model", "expected 'compact'"),
        ("op4ksr/missing", "no folder with model_index.json"),
    ):
        with pytest.raises(pack.nodes.OP4KSRNodeError, match=reason) as info:
            loader.load(choice, "cpu", "auto")
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- upscale
def test_upscale_batch_equals_the_api_on_the_same_images(pack, comfy, tiny_in_comfy):
    record, _models = comfy
    u8 = images_u8(2, 32, 48)
    record.events.clear()
    image, mask = run_upscale(pack, tiny_in_comfy, as_comfy_image(u8))
    assert image.shape == (2, 128, 192, 3) and image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0 and float(image.std()) > 0.01
    assert mask.shape == (2, 128, 192) and not mask.any()  # opaque
    for i in range(2):
        expected = np.asarray(upscale(u8[i], 4, model=tiny_in_comfy))  # 8-bit PIL, as the API returns
        np.testing.assert_array_equal(quantised(image[i]), expected)
        # and no precision lost on the way: the API's float result, bit for bit
        floats = Upscaler(tiny_in_comfy).upscale_data(load_image(u8[i]), 4).pixels
        np.testing.assert_array_equal(image[i].numpy(), floats)
    # one progress step and one cache release per batch item, after the memory check
    kinds = [e[0] for e in record.events]
    assert kinds == ["free_memory", "progress_total", "interrupt_check", "empty_cache", "progress",
                     "interrupt_check", "empty_cache", "progress"]
    assert record.events[0][1] > 0 and record.events[0][2] == tiny_in_comfy.device
    assert record.events[1] == ("progress_total", 2)


def test_upscale_options_mean_what_the_cli_options_mean(pack, tiny_in_comfy):
    u8 = images_u8(1, 32, 48, seed=3)
    image = as_comfy_image(u8)
    half, _ = run_upscale(pack, tiny_in_comfy, image, scale=2)
    assert half.shape == (1, 64, 96, 3)
    np.testing.assert_array_equal(quantised(half[0]), np.asarray(upscale(u8[0], 2, model=tiny_in_comfy)))
    raw, _ = run_upscale(pack, tiny_in_comfy, image, fidelity=0.0, color_fix="none", grid_fix="none")
    api = Upscaler(tiny_in_comfy, color_fix="none", grid_fix="none", fidelity=0.0)(u8[0], 4)
    np.testing.assert_array_equal(quantised(raw[0]), np.asarray(api))
    full, _ = run_upscale(pack, tiny_in_comfy, image, fidelity=1.0, color_fix="none", grid_fix="none")
    assert float((full - raw).abs().max()) > 1e-3  # the compensation strength reached the model


def test_alpha_round_trips_as_a_channel_or_a_mask(pack, tiny_in_comfy):
    u8 = images_u8(1, 32, 48, channels=4, seed=5)
    u8[..., 3] = 255
    u8[:, :, 24:, 3] = 0  # left half opaque, right half transparent
    rgba, mask = run_upscale(pack, tiny_in_comfy, as_comfy_image(u8))
    assert rgba.shape == (1, 128, 192, 4) and mask.shape == (1, 128, 192)
    expected = np.asarray(upscale(u8[0], 4, model=tiny_in_comfy))  # RGBA, as the CLI writes it
    assert expected.shape == (128, 192, 4)
    np.testing.assert_array_equal(quantised(rgba[0]), expected)
    alpha = rgba[0, ..., 3]
    assert torch.all(alpha[:, :88] == 1.0) and torch.all(alpha[:, 104:] == 0.0)  # away from the edge
    torch.testing.assert_close(mask[0], 1.0 - alpha, rtol=0, atol=0)
    # the same transparency as a MASK (1 = transparent, as LoadImage gives it)
    rgb, mask_again = run_upscale(pack, tiny_in_comfy, as_comfy_image(u8[..., :3]),
                                  mask=1.0 - as_comfy_image(u8[..., 3]))
    assert rgb.shape == (1, 128, 192, 3)
    torch.testing.assert_close(rgb, rgba[..., :3], rtol=0, atol=0)
    torch.testing.assert_close(mask_again, mask, rtol=0, atol=0)
    # LoadImage's 64×64 all-zero mask of an opaque image means "no transparency"
    plain, _ = run_upscale(pack, tiny_in_comfy, as_comfy_image(u8[..., :3]))
    with_zero_mask, zero_out = run_upscale(pack, tiny_in_comfy, as_comfy_image(u8[..., :3]),
                                           mask=torch.zeros(64, 64))
    torch.testing.assert_close(with_zero_mask, plain, rtol=0, atol=0)
    assert not zero_out.any()


def test_over_budget_size_is_a_node_error_before_any_model_call(pack, comfy, tiny_in_comfy, monkeypatch):
    from op4ksr.models import planner
    from op4ksr.models.pipeline import OP4KSRPipeline

    record, _models = comfy
    model_calls = []
    monkeypatch.setattr(OP4KSRPipeline, "lr_latent", lambda self, images: model_calls.append(images.shape))
    monkeypatch.setattr(planner, "available_bytes", lambda device: 1024)  # 1 KiB free
    record.events.clear()
    with pytest.raises(pack.nodes.OP4KSRNodeError) as info:
        run_upscale(pack, tiny_in_comfy, as_comfy_image(images_u8(2, 32, 48)))
    message = str(info.value)
    assert "\n" not in message and model_calls == []
    expected_need = tiny_in_comfy.estimate(128, 192)
    assert message.startswith("op4ksr: 2 image(s) of 48×32 → 192×128 (the model's native ×4) will not fit on cpu: "
                              f"each needs ~{planner.human_bytes(expected_need.peak_bytes - expected_need.weights_bytes)} "
                              "beyond the loaded weights but ~1.0 KiB is free (estimate: peak "
                              f"{planner.human_bytes(expected_need.peak_bytes)} in float32")
    assert message.endswith("Options: a smaller input image; fewer other programs on the device")  # on a CPU
    assert [e[0] for e in record.events] == ["free_memory"]  # asked ComfyUI to make room, nothing ran
    assert record.events[0][1] == expected_need.peak_bytes - expected_need.weights_bytes


def test_memory_options_fit_the_device_and_dtype(pack):
    options = pack.nodes.memory_options
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")  # only compared, never allocated on
    assert options(cuda, torch.float32) == [
        "a smaller input image", "dtype fp16 or bf16 in the op4ksr loader (half the memory)",
        "device cpu in the op4ksr loader (system memory, slower)", "fewer other programs on the device"]
    assert options(cuda, torch.bfloat16) == [
        "a smaller input image", "device cpu in the op4ksr loader (system memory, slower)",
        "fewer other programs on the device"]
    assert options(cpu, torch.float32) == ["a smaller input image", "fewer other programs on the device"]


@pytest.mark.parametrize("change, reason", [
    ({"scale": 5}, "scale must be an integer from 2"),
    ({"color_fix": "sepia"}, "--color-fix 'sepia'"),
    ({"fidelity": 1.5}, "--fidelity 1.5"),
    ({"image": torch.full((1, 8, 8, 3), float("nan"))}, "image 1 of 1: array holds NaN or Inf"),
    ({"image": torch.zeros(8, 8, 3)}, r"expected a \[B, H, W, C\] batch"),
    ({"mask": torch.ones(1, 9, 8)}, "does not match image"),
    ({"image": torch.zeros(1, 8, 8, 4), "mask": torch.ones(1, 8, 8)}, "alpha channel and a mask"),
])
def test_bad_input_is_a_one_line_node_error(pack, tiny_in_comfy, change, reason):
    arguments = {"image": torch.zeros(1, 8, 8, 3), **change}
    with pytest.raises(pack.nodes.OP4KSRNodeError, match=reason) as info:
        run_upscale(pack, tiny_in_comfy, **arguments)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- example workflow
def test_example_workflow_names_only_nodes_that_exist(pack):
    workflows = sorted((PACK / "example_workflows").glob("*.json"))
    assert workflows
    for file in workflows:
        preview = file.with_suffix(".jpg")
        from PIL import Image

        with Image.open(preview) as thumbnail:
            assert thumbnail.format == "JPEG"
        workflow = json.loads(file.read_text())
        nodes = {node["id"]: node for node in workflow["nodes"]}
        signatures = {node_id: node_signature(pack, node["type"]) for node_id, node in nodes.items()}
        for node_id, node in nodes.items():
            signature = signatures[node_id]
            assert [i["name"] for i in node["inputs"]] == list(signature["inputs"]), node["type"]
            assert [o["type"] for o in node["outputs"]] == signature["outputs"], node["type"]
            assert len(node["widgets_values"]) == len(signature["widgets"]), node["type"]
            for value, choices in zip(node["widgets_values"], signature["widgets"], strict=True):
                assert choices is None or value in choices, (node["type"], value)
        for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
            assert signatures[origin]["outputs"][origin_slot] == kind
            target_input = nodes[target]["inputs"][target_slot]
            assert target_input["link"] == link_id and signatures[target]["inputs"][target_input["name"]] == kind
        assert workflow["last_node_id"] == max(nodes) and workflow["last_link_id"] == len(workflow["links"])


def node_signature(pack, node_type: str) -> dict:
    """Connection inputs {name: type}, output types and widget choices (None: any value) of a node."""
    if node_type in COMFY_CORE_NODES:
        core = COMFY_CORE_NODES[node_type]
        return {"inputs": core["inputs"], "outputs": core["outputs"], "widgets": [None] * core["widgets"]}
    cls = pack.NODE_CLASS_MAPPINGS[node_type]  # KeyError: a node id that does not exist
    declared = cls.INPUT_TYPES()
    inputs, widgets = {}, []
    for section in ("required", "optional"):
        for name, (kind, *_options) in declared.get(section, {}).items():
            if isinstance(kind, list):
                widgets.append(kind)
            elif kind in WIDGET_TYPES:
                widgets.append(None)
            else:
                inputs[name] = kind
    return {"inputs": inputs, "outputs": list(cls.RETURN_TYPES), "widgets": widgets}


def test_node_signature_rejects_unknown_node_ids(pack):
    with pytest.raises(KeyError):
        node_signature(pack, "ImageUpscaleWithModelOP4KSR")
    assert node_signature(pack, "OP4KSRUpscale")["inputs"] == {
        "op4ksr_model": "OP4KSR_MODEL", "image": "IMAGE", "mask": "MASK"}


def test_mask_becomes_the_alpha_channel_per_item(pack):
    """batch_arrays: IMAGE [B, H, W, 3] + MASK [1, H, W] → per item [H, W, 4] with alpha = 1 − mask."""
    image = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).reshape(2, 2, 3, 3) / 36.0
    mask = torch.tensor([[[0.0, 0.25, 1.0], [0.5, 0.0, 0.75]]])
    arrays = pack.nodes.batch_arrays(image, mask)
    assert [a.shape for a in arrays] == [(2, 3, 4), (2, 3, 4)]
    np.testing.assert_array_equal(arrays[1][..., :3], image[1].numpy())
    np.testing.assert_array_equal(arrays[0][..., 3], np.array([[1.0, 0.75, 0.0], [0.5, 1.0, 0.25]]))
