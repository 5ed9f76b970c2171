import pytest

from op4ksr.train.config import ConfigError, load_config


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path, photo_dir):
    cfg = load_config(write(tmp_path, 'stage = "vae"\n[model]\npreset = "tiny"\n'),
                      [f'data.train=["{photo_dir}"]', "optim.lr=1e-3", "run.output_dir=out/x", "loss.wavelet=2"])
    assert cfg.stage == "vae" and cfg.optim.lr == 1e-3 and cfg.run.output_dir == "out/x"
    assert cfg.loss.wavelet == 2.0 and isinstance(cfg.loss.wavelet, float)
    assert cfg.sr.rope_theta == 100.0 and cfg.loss.vae_align == 5.0 and cfg.sr.lora_rank == 64


@pytest.mark.parametrize("text,message", [
    ('stage = "vae"\n[optim]\nlearning_rate = 1\n', "unknown key 'learning_rate'"),
    ('stage = "vae"\n[optim]\nbatch_size = "four"\n', "optim.batch_size: expected an integer"),
    ('stage = "vae"\nbogus = 1\n', "unknown key 'bogus'"),
    ('stage = "dance"\n', "stage: 'dance' is not one of"),
    ('stage = "vae"\n[model]\npreset = "huge"\n', "unknown preset 'huge'"),
    ('stage = "vae"\n[data]\ntrain = ["/no/such/folder"]\n', "data.train: /no/such/folder: no such file"),
    ('stage = "sr"\n[data]\ntrain = ["."]\n', "model.init"),
    ('stage = "sr"\n[model]\ninit = "/nope"\n[data]\ntrain = ["."]\n', "/nope: no such model directory"),
    ('stage = "vae"\n[data]\ncrop_size = 100\ntrain = ["."]\n', "multiple of 32"),
    ('stage = "vae"\n[loss]\nperiodicity = 1.0\n[data]\ncrop_size = 64\ntrain = ["."]\n', "too small for the periodicity loss"),
    ("stage = \n", "not valid TOML"),
])
def test_bad_configs_fail_before_any_work(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_shipped_configs_parse():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("*.toml"))
    assert files
    for file in files:
        cfg = load_config(file, check_paths=False)
        assert cfg.stage in ("vae", "prior", "sr")


def test_missing_perceptual_asset_stops_training_with_the_fetch_command(tmp_path, photo_dir, monkeypatch):
    from op4ksr.assets import AssetMissingError
    from op4ksr.train.trainer import train

    monkeypatch.setenv("OP4KSR_CACHE", str(tmp_path / "empty-cache"))
    cfg = load_config(None, ['stage="vae"', 'model.preset="tiny"', f'data.train=["{photo_dir}"]', "loss.lpips=1.0",
                             'loss.lpips_net="vgg16"', f'run.output_dir="{tmp_path / "run"}"'])
    with pytest.raises(AssetMissingError, match="op4ksr assets fetch vgg16"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # nothing started


# --- hostile configs (issue 24): each refused before any model is built or any file written
@pytest.mark.parametrize("override,message", [
    ("model.overrides={vae={block_out_channels=[100000,100000,100000,100000]}}",
     r"model.overrides.vae: the vae config has block_out_channels = \[100000"),
    ("model.overrides={transformer={num_layers=200000}}", "num_layers = 200000, outside 0–512"),
    ("model.overrides={transformer={num_layers=nan}}", "num_layers = nan"),
    ("model.overrides={decoder={x=1}}", "model.overrides.decoder: not a part"),
    ("data.crop_size=0", "data.crop_size: 0 must be positive"),
    ("data.crop_size=-64", "data.crop_size: -64 must be positive"),
    ("optim.lr=inf", "optim.lr: inf is not a finite number"),
    ("optim.lr=nan", "optim.lr: nan is not a finite number"),
    ("optim.lr=0", "optim.lr: must be positive"),
    ("optim.beta2=1.5", "beta1/beta2 in"),
    ("optim.max_grad_norm=-1", "optim.max_grad_norm: must be 0 \\(no clipping\\) or positive"),
    ("loss.mse=nan", "loss.mse: nan is not a finite number"),
    ('run.device="quantum"', "run.device: 'quantum' is not one of auto, cpu, cuda, mps"),
    ("run.max_minutes=nan", "run.max_minutes: nan is not a finite number"),
    ("run.keep_checkpoints=-1", "run.keep_checkpoints: must be 0 or positive"),
    ("data.val_images=-2", "data.val_images: must be 0 or positive"),
    ("optim.warmup_steps=-5", "optim.warmup_steps: must be 0 or positive"),
])
def test_hostile_training_settings_are_refused_up_front(tmp_path, photo_dir, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ['stage="vae"', 'model.preset="tiny"', f'data.train=["{photo_dir}"]',
                           f'run.output_dir="{tmp_path / "run"}"', override])
    assert not (tmp_path / "run").exists()


def test_zero_means_off_where_the_trainer_says_so(photo_dir):
    cfg = load_config(None, ['stage="vae"', 'model.preset="tiny"', f'data.train=["{photo_dir}"]',
                             "optim.max_grad_norm=0", "optim.warmup_steps=0", "run.keep_checkpoints=0",
                             "data.val_images=0", "run.max_minutes=0"])
    assert cfg.optim.max_grad_norm == 0 and cfg.run.keep_checkpoints == 0


def test_output_dir_naming_a_file_is_refused(tmp_path, photo_dir):
    (tmp_path / "run").write_text("notes")
    with pytest.raises(ConfigError, match=f"run.output_dir: {tmp_path / 'run'} exists and is not a folder"):
        load_config(None, ['stage="vae"', 'model.preset="tiny"', f'data.train=["{photo_dir}"]',
                           f'run.output_dir="{tmp_path / "run"}"'])
    assert (tmp_path / "run").read_text() == "notes"


def test_build_pipeline_applies_the_model_folder_bounds_to_overrides():
    from op4ksr.models.presets import build_pipeline
    from op4ksr.utils.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="num_layers = 200000"):
        build_pipeline("tiny", device="meta", seed=None, overrides={"transformer": {"num_layers": 200000}})
