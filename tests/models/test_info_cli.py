import json

from typer.testing import CliRunner

from op4ksr.cli import app


def test_info_ultraflux_reports_params_tokens_memory_without_allocating():
    result = CliRunner().invoke(app, ["info", "ultraflux", "--size", "4096x4096", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert abs(data["dit_params"] - 11.9e9) / 11.9e9 < 0.01
    assert data["token_rows"] == data["token_cols"] == 128 and data["tokens"] == 16384
    assert data["peak_bytes"] > data["weights_bytes"] > 0
    table = CliRunner().invoke(app, ["info", "ultraflux", "--size", "4096x4096"])
    assert table.exit_code == 0 and "16,384 tokens" in table.output


def test_info_on_a_model_directory_and_bad_input(tiny_model_dir):
    result = CliRunner().invoke(app, ["info", str(tiny_model_dir), "--size", "512x256", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["token_cols"] == 16
    bad = CliRunner().invoke(app, ["info", "no-such-model"])
    assert bad.exit_code != 0 and "neither a preset" in bad.output
    bad_size = CliRunner().invoke(app, ["info", "tiny", "--size", "big"])
    assert bad_size.exit_code != 0 and "WIDTHxHEIGHT" in bad_size.output
