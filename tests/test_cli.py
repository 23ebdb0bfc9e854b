"""The command line end to end on a tiny config: run, compare, plugins, schema, config, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from multiturbo.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_run_writes_a_complete_run_directory(tiny_config_path, tmp_path):
    out = tmp_path / "run"
    res = invoke("run", tiny_config_path, "--out", out, "--quiet")
    assert res.exit_code == 0, res.output
    assert "test {" in res.output and str(out) in res.output
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["turbo"]["passes"] == 2 and resolved["modalities"]["audio"]["options"]["n_mels"] == 16
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["classes"] == ["class0", "class1", "class2"]
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert set(epochs[0]["terms"]) == {"audio1~audio2", "text1~text2", "audio1~text1", "audio1~text2", "audio2~text1", "audio2~text2"}
    assert {"loss", "ce", "contrastive", "temperature"} <= set(epochs[0]["train"])
    assert {"wa", "ua", "f1", "loss", "confusion"} <= set(epochs[0]["val"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("wa", "ua", "f1"))
    assert sum(map(sum, metrics["confusion"])) == info["split_sizes"]["test"]
    for name in ("best.safetensors", "last.safetensors"):
        tensors = load_file(out / name)
        assert any(k.startswith("encoders.audio.") for k in tensors) and any(k.startswith("head.") for k in tensors)
    # the analysis of the test split and the report come with every finished run
    analysis = json.loads((out / "analysis" / "analysis.json").read_text())
    assert set(analysis["alignment"]) == {"audio~text"} and set(analysis["uniformity"]) == {"audio", "text"}
    assert analysis["n_items"] == info["split_sizes"]["test"]
    for figure in ("confusion", "learning_curves", "embeddings", "align_uniform"):
        assert (out / "analysis" / f"{figure}.png").stat().st_size > 0, figure
    assert "analysis/confusion.png" in (out / "report.md").read_text()
    assert "warning" not in res.output


def test_a_finished_run_is_not_overwritten_silently(tiny_config_path, tmp_path):
    out = tmp_path / "run"
    assert invoke("run", tiny_config_path, "--out", out, "-q", "--set", "train.epochs=1").exit_code == 0
    res = invoke("run", tiny_config_path, "--out", out, "-q", "--set", "train.epochs=1")
    assert res.exit_code == 2 and "already exists and is not empty" in res.output
    assert invoke("run", tiny_config_path, "--out", out, "-q", "--set", "train.epochs=1", "--overwrite").exit_code == 0


def test_two_class_runs_report_eer(tiny_config_path, tmp_path):
    out = tmp_path / "run"
    res = invoke("run", tiny_config_path, "--out", out, "-q", "--set", "data.options.num_classes=2", "--set", "train.epochs=1")
    assert res.exit_code == 0, res.output
    assert "eer" in json.loads((out / "metrics.json").read_text())


def test_same_seed_same_metrics(tiny_config_path, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert invoke("run", tiny_config_path, "--out", out, "-q", "--set", "train.epochs=1").exit_code == 0
    assert json.loads((a / "metrics.json").read_text()) == json.loads((b / "metrics.json").read_text())


def test_compare_writes_table_and_one_run_per_method(tiny_config_path, tmp_path):
    out = tmp_path / "cmp"
    res = invoke("compare", tiny_config_path, "--out", out, "-q", "--set", "train.epochs=1")
    assert res.exit_code == 0, res.output
    for label in ("Vanilla", "+ CL_cross", "+ Turbo"):
        assert label in res.output
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert [r["method"] for r in rows] == ["vanilla", "cross", "turbo"]
    assert [(r["K"], r["in_terms"], r["cross_terms"]) for r in rows] == [("1", "0", "0"), ("1", "0", "1"), ("2", "2", "4")]
    for r in rows:
        assert json.loads((out / r["method"] / "metrics.json").read_text())["wa"] == pytest.approx(float(r["wa"]))
    assert (out / "comparison.md").read_text().startswith("| Method | K |")


def test_compare_validates_every_method_before_training(tiny_config_path, tmp_path):
    res = invoke("compare", tiny_config_path, "--out", tmp_path / "c", "--methods", "vanilla,fancy")
    assert res.exit_code == 2 and "Unknown method(s) fancy" in res.output
    assert not (tmp_path / "c").exists()
    # batch size 1 is fine for vanilla, not for cross/turbo: fails before vanilla trains
    res = invoke("compare", tiny_config_path, "--out", tmp_path / "c", "--set", "train.batch_size=1")
    assert res.exit_code == 2 and "train.batch_size: a contrastive term needs batch_size >= 2" in res.output
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("turbo.passes=0", "turbo.passes: Input should be greater than or equal to 1"),
        ("turbo.temperature=0", "turbo.temperature: Input should be greater than 0"),
        ("turbo.ce_weight=1.5", "turbo.ce_weight: Input should be less than or equal to 1"),
        ("train.bacth_size=4", "train.bacth_size: unknown key. Did you mean 'batch_size'?"),
        ("train.epochs=many", "train.epochs: Input should be a valid integer"),
        ("data.name=iemocapp", "data.name: Unknown dataset 'iemocapp'."),
        ("modalities.image.encoder=small_cnn", "modalities.image: the data set 'synthetic' does not provide 'image'"),
    ],
)
def test_bad_input_is_one_clear_error_without_traceback(tiny_config_path, tmp_path, override, message):
    out = tmp_path / "r"
    res = invoke("run", tiny_config_path, "--out", out, "--set", override)
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output
    assert not (out / "metrics.jsonl").exists()  # nothing trained


def test_plugins_lists_every_name_with_its_plugin():
    res = invoke("plugins")
    assert res.exit_code == 0
    for name, plugin in [("logmel_cnn", "multiturbo_basic_encoders"), ("synthetic", "multiturbo_synthetic"), ("concat_linear", "multiturbo_heads")]:
        line = next(line for line in res.output.splitlines() if f" {name} " in line)
        assert plugin in line and "built-in" in line


def test_schema_is_json_schema():
    schema = json.loads(invoke("schema").output)
    assert schema["title"] == "ExperimentConfig" and "turbo" in schema["properties"]


def test_config_prints_resolved_yaml(tiny_config_path):
    res = invoke("config", tiny_config_path, "--set", "method=cross")
    resolved = yaml.safe_load(res.output)
    assert resolved["method"] == "cross" and resolved["turbo"]["passes"] == 1 and resolved["turbo"]["in_modal"] is False


def test_config_shows_the_parameter_groups(tiny_config_path):
    res = invoke("config", tiny_config_path, "--set", "train.lr_groups={audio: 0.0001}", "--set", "train.weight_decay=0.1")
    assert res.exit_code == 0, res.output
    groups = [line.split()[1:] for line in res.output.splitlines() if line.startswith("#   ")]
    audio = [g for g in groups if g[0] == "audio"]
    assert [g[1:5] for g in audio] == [["lr", "0.0001", "weight_decay", "0.1"], ["lr", "0.0001", "weight_decay", "0"]]
    assert {g[0] for g in groups} == {"audio", "text", "projections", "head"}
    assert yaml.safe_load(res.output)["train"]["lr_groups"] == {"audio": 0.0001}  # still YAML
    assert not any(line.startswith("#") for line in invoke("config", tiny_config_path, "--no-groups").output.splitlines())


def test_config_runs_every_check_that_run_makes_before_training(tmp_path, tiny_raw):
    """A modality the data set lacks, a device this machine lacks, data that cannot be used: config fails as run would (issue 15)."""
    path = tmp_path / "c.yaml"
    tiny_raw["modalities"]["image"] = {"encoder": "small_cnn"}
    tiny_raw["data"]["options"]["modalities"] = ["audio", "text"]
    path.write_text(yaml.safe_dump(tiny_raw))
    res = CliRunner().invoke(cli, ["config", str(path)])
    assert res.exit_code == 2 and "does not provide 'image'" in res.output, res.output
    del tiny_raw["modalities"]["image"], tiny_raw["data"]["options"]["modalities"]
    path.write_text(yaml.safe_dump(tiny_raw))
    if not __import__("torch").cuda.is_available():
        res = CliRunner().invoke(cli, ["config", str(path), "--set", "train.device=cuda"])
        assert res.exit_code == 2 and "no CUDA device is available" in res.output
    res = CliRunner().invoke(cli, ["config", str(path), "--set", "data.options.size=4"])  # too few items for 3 splits of 3 classes
    assert res.exit_code == 2, res.output
    assert CliRunner().invoke(cli, ["config", str(path), "--no-groups", "--set", "data.options.size=4"]).exit_code == 0  # the config alone


def test_python_dash_m_and_console_script_work(tiny_config_path):
    res = subprocess.run([sys.executable, "-m", "multiturbo", "config", str(tiny_config_path), "--set", "turbo.pases=2"], capture_output=True, text=True)
    assert res.returncode == 2
    assert "turbo.pases: unknown key" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize("command", ["run", "cv", "tune"])
def test_a_config_error_shows_before_torch_is_imported(tmp_path, tiny_raw, command):
    """Fast failure: a schema error of `multiturbo run` / `cv` / `tune` needs neither the plugins nor torch (issue 19)."""
    tiny_raw["train"]["lrr"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    code = ("import sys; from click.testing import CliRunner; from multiturbo.cli import cli; "
            f"r = CliRunner().invoke(cli, [{command!r}, {str(path)!r}, '--out', {str(tmp_path / 'o')!r}]); "
            "print(r.exit_code, 'torch' in sys.modules); print(r.output)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    first, output = proc.stdout.split("\n", 1)
    assert first == "2 False", proc.stdout + proc.stderr
    assert "train.lrr: unknown key. Did you mean 'lr'?" in output and not (tmp_path / "o").exists()


def test_a_system_exit_raised_inside_training_is_reported_and_the_run_marked_failed(tiny_config_path, tmp_path, monkeypatch):
    """E.g. an encoder's forward calling sys.exit: the command says so instead of ending silently."""
    import multiturbo.train

    def exits(*args, **kwargs):
        raise SystemExit(7)

    monkeypatch.setattr(multiturbo.train, "train_step", exits)
    res = CliRunner().invoke(cli, ["run", str(tiny_config_path), "--out", str(tmp_path / "run"), "-q"])
    assert res.exit_code == 1
    assert "raised SystemExit(7): a plugin or a library asked Python to exit" in res.output
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == "SystemExit: 7"
