"""Plugin manager and registries: loading, unknown and duplicate names, test plugins."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

import multiturbo
from multiturbo import Encoder, EncoderOptions, PluginError, hookimpl
from multiturbo.plugins import FIRST_PARTY_PLUGINS, get_plugin_manager, get_registries, plugin_registered
from multiturbo.registry import Registry


class _TinyEncoder(Encoder):
    """A test encoder."""

    def __init__(self, options: EncoderOptions):
        super().__init__(options)
        self.output_dim = 3


class _TestPlugin:
    @hookimpl
    def register_encoders(self, register):
        register("tiny_test_encoder", _TinyEncoder)


def test_first_party_plugins_register_everything_the_demo_needs():
    regs = get_registries()
    assert {"logmel_cnn", "hashed_transformer", "small_cnn"} <= set(regs.encoders.names())
    assert "synthetic" in regs.datasets
    assert {"concat_linear", "mean_linear"} <= set(regs.heads.names())
    assert regs.encoders.entry("logmel_cnn").plugin == "multiturbo_basic_encoders"


def test_a_plugin_registered_in_a_test_is_found_and_removed_after():
    with plugin_registered(_TestPlugin(), "test-plugin"):
        entry = get_registries().encoders.entry("tiny_test_encoder")
        assert entry.cls is _TinyEncoder and entry.plugin == "test-plugin"
    assert "tiny_test_encoder" not in get_registries().encoders


def test_duplicate_names_fail_naming_both_plugins():
    class Dup:
        @hookimpl
        def register_encoders(self, register):
            register("logmel_cnn", _TinyEncoder)

    with plugin_registered(Dup(), "dup-plugin"), pytest.raises(PluginError) as info:
        get_registries()
    assert "Duplicate encoder name 'logmel_cnn'" in str(info.value)
    assert "'multiturbo_basic_encoders'" in str(info.value) and "'dup-plugin'" in str(info.value)


def test_registering_a_non_encoder_fails():
    class Wrong:
        @hookimpl
        def register_encoders(self, register):
            register("not_an_encoder", dict)

    with plugin_registered(Wrong(), "wrong-plugin"), pytest.raises(PluginError, match="not a subclass of multiturbo.encoder.Encoder"):
        get_registries()


def test_a_hook_that_raises_is_reported_by_plugin_name():
    class Broken:
        @hookimpl
        def register_heads(self, register):
            raise RuntimeError("boom")

    with plugin_registered(Broken(), "broken-plugin"), pytest.raises(PluginError, match="Plugin 'broken-plugin' failed in its register_heads hook: RuntimeError: boom"):
        get_registries()


def test_misspelt_hook_fails_at_registration():
    class Misspelt:
        @hookimpl
        def register_encoderz(self, register):
            pass

    with pytest.raises(Exception, match="unknown hook"):
        with plugin_registered(Misspelt(), "misspelt"):
            pass
    assert get_plugin_manager().get_plugin("misspelt") is None


def test_unknown_name_lists_known_names_and_suggests():
    reg = Registry("encoder", Encoder)
    reg.add("logmel_cnn", _TinyEncoder, "p")
    reg.add("small_cnn", _TinyEncoder, "p")
    with pytest.raises(PluginError) as info:
        reg.get("logmel_cn")
    assert "Unknown encoder 'logmel_cn'. Did you mean 'logmel_cnn'? Known encoders: logmel_cnn, small_cnn." in str(info.value)


FAKE_PLUGIN = """
from multiturbo import hookimpl
from multiturbo_heads import ConcatLinearHead

class FakeHead(ConcatLinearHead):
    \"\"\"A head from an installed distribution.\"\"\"

@hookimpl
def register_heads(register):
    register("fake_head", FakeHead)
"""


def _fake_distribution(root: pathlib.Path, dist: str = "fakeplugin", entry: str = "fake", code: str = FAKE_PLUGIN, module: str = "fakeplugin") -> None:
    """An installed distribution ``dist 0.3`` whose entry point ``entry`` in the multiturbo group is ``module``."""
    (root / f"{module}.py").write_text(code)
    info = root / f"{dist}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[multiturbo]\n{entry} = {module}\n")


BROKEN = {
    # entry point name: (distribution, module code)
    "badimport": ("bad-import-dist", "raise ImportError('needs libfoo 9')\n"),
    "badhook": ("badhookdist", (
        "from multiturbo import hookimpl\nfrom multiturbo_heads import ConcatLinearHead\n"
        "@hookimpl\ndef register_heads(register):\n    register('half_head', ConcatLinearHead)\n    raise RuntimeError('boom')\n"
    )),
    "dupname": ("dupdist", (
        "from multiturbo import hookimpl\nfrom multiturbo_heads import ConcatLinearHead\n"
        "@hookimpl\ndef register_heads(register):\n    register('concat_linear', ConcatLinearHead)\n"
    )),
    "misspelt": ("misspeltdist", "from multiturbo import hookimpl\n@hookimpl\ndef register_headz(register):\n    pass\n"),
}

REPORT = (
    "import json\nfrom multiturbo.plugins import get_registries, broken_plugins, blocked_plugins\n"
    "regs = get_registries()\n"
    "print(json.dumps({'heads': regs.heads.names(), 'broken': sorted(broken_plugins()), 'blocked': sorted(blocked_plugins()),"
    " 'owner': regs.heads.entry('concat_linear').plugin}))\n"
)


def _report(env: dict) -> tuple[dict, str]:
    res = subprocess.run([sys.executable, "-c", REPORT], env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout), res.stderr


def _broken_env(tmp_path, block: str | None = None) -> dict:
    _fake_distribution(tmp_path)
    for entry, (dist, code) in BROKEN.items():
        _fake_distribution(tmp_path, dist, entry, code, module=f"mod_{entry}")
    env = {k: v for k, v in os.environ.items() if k not in ("MULTITURBO_NO_EXTERNAL_PLUGINS", "MULTITURBO_BLOCK_PLUGINS")}
    env["PYTHONPATH"] = str(tmp_path)
    if block is not None:
        env["MULTITURBO_BLOCK_PLUGINS"] = block
    return env


def test_broken_third_party_plugins_are_reported_by_name_and_skipped(tmp_path):
    env = _broken_env(tmp_path)
    report, err = _report(env)
    assert "fake_head" in report["heads"] and "half_head" not in report["heads"]  # the good one works; nothing of a broken one
    assert report["owner"] == "multiturbo_heads"  # a third-party plugin never takes a built-in name
    assert report["broken"] == sorted(BROKEN) and report["blocked"] == []
    assert "plugin 'badimport' (bad-import-dist 0.3) is broken and was skipped: importing mod_badimport failed: ImportError: needs libfoo 9" in err
    assert "plugin 'badhook' (badhookdist 0.3) is broken and was skipped: its register_heads hook raised RuntimeError: boom" in err
    assert "plugin 'dupname' (dupdist 0.3) is broken" in err and "Duplicate head name 'concat_linear'" in err
    assert "plugin 'misspelt' (misspeltdist 0.3) is broken" in err and "register_headz" in err
    assert err.count("badhook'") == 1  # one line per problem, not one per registry build
    assert "MULTITURBO_BLOCK_PLUGINS=badimport" in err

    cli = subprocess.run([sys.executable, "-m", "multiturbo", "plugins"], env=env, capture_output=True, text=True)
    assert cli.returncode == 0 and "fake_head" in cli.stdout and "logmel_cnn" in cli.stdout
    assert "'badimport'" in cli.stderr


def test_blocked_plugins_are_not_loaded(tmp_path):
    env = _broken_env(tmp_path, block="fake, bad_import_dist,badhook,dupdist,misspelt")  # entry point or distribution names
    report, err = _report(env)
    assert err == "" and "fake_head" not in report["heads"]
    assert report["broken"] == [] and report["blocked"] == ["badhook", "badimport", "dupname", "fake", "misspelt"]


@pytest.mark.parametrize("disabled", [False, True])
def test_entry_point_plugins_load_unless_the_env_var_turns_them_off(tmp_path, disabled):
    _fake_distribution(tmp_path)
    code = (
        "from multiturbo.plugins import get_registries, plugin_source\n"
        "regs = get_registries()\n"
        "print('fake_head' in regs.heads, plugin_source('fake') if 'fake_head' in regs.heads else '-')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MULTITURBO_NO_EXTERNAL_PLUGINS"}
    env["PYTHONPATH"] = str(tmp_path)
    if disabled:
        env["MULTITURBO_NO_EXTERNAL_PLUGINS"] = "1"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == (["False", "-"] if disabled else ["True", "fakeplugin", "0.3"])


def test_registering_the_plugins_imports_no_heavy_optional_library():
    """Every command registers every plugin: the Hugging Face and timm plugins import their libraries
    only when one of their parts is built (transformers alone cost every command about 0.7 s)."""
    heavy = ("transformers", "timm", "datasets", "huggingface_hub", "mlflow", "optuna", "onnx", "onnxruntime")
    code = ("import sys; from multiturbo.plugins import get_registries; r = get_registries(); "
            "assert 'hf_whisper' in r.encoders.names() and 'whisper' in r.transcribers.names(); "
            f"print(sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["[]"], out.stdout + out.stderr


def test_core_imports_no_concrete_plugin():
    """The core package must not import first-party plugin modules (only by name, via importlib)."""
    root = pathlib.Path(multiturbo.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FIRST_PARTY_PLUGINS, f"{path} imports {name}"
                assert name.split(".")[0] not in ("transformers", "timm"), f"{path} imports {name}"


def test_core_names_no_concrete_plugin():
    """Nor reaches into a plugin through sys.modules, nor names a first-party encoder, data set or
    head (or plugin module) in a string: the plugin list of plugins.py is the one exception.
    (Input kinds such as "audio" are left out: they are also generic words, e.g. file-format keys.)"""
    regs = get_registries()
    names = {e.name for reg in (regs.encoders, regs.datasets, regs.heads) for e in reg if e.plugin in FIRST_PARTY_PLUGINS}
    assert {"manifest", "concat_linear", "hf_audio"} <= names
    root = pathlib.Path(multiturbo.__file__).parent
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        allowed = set()
        if path.name == "plugins.py" and path.parent == root:
            allowed = {id(c) for node in ast.walk(tree) if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "FIRST_PARTY_PLUGINS" for t in node.targets) for c in ast.walk(node.value)}
            allowed |= {id(c) for node in ast.walk(tree) if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "FIRST_PARTY_PLUGINS"
                        for c in ast.walk(node.value)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "modules" and getattr(node.value, "id", None) == "sys":
                raise AssertionError(f"{path}:{node.lineno} looks a module up in sys.modules")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in allowed:
                assert node.value not in names and node.value not in FIRST_PARTY_PLUGINS, f"{path}:{node.lineno} names {node.value!r}"


def test_a_config_without_a_head_gets_the_registered_default(tiny_raw):
    from multiturbo.config import check_config, validate_config
    from multiturbo.head import Head

    raw = {**tiny_raw, "model": {k: v for k, v in tiny_raw.get("model", {}).items() if k != "head"}}
    assert check_config(validate_config(raw)).model.head == "concat_linear"  # the first-party head marked default
    reg = Registry("head", Head)
    with pytest.raises(PluginError, match="no registered head set default = True"):
        reg.default()
    reg.add("a", type("A", (Head,), {"default": True}), "p")
    reg.add("b", type("B", (Head,), {"default": True}), "q")
    with pytest.raises(PluginError, match=r"several heads \(a, b\)"):
        reg.default()


FATAL = {
    # a plugin's own SystemExit / KeyboardInterrupt (issue 15): reported and skipped like any error
    "exitimport": ("exitdist", "raise SystemExit(3)\n"),
    "kbimport": ("kbdist", "raise KeyboardInterrupt\n"),
    "exithook": ("exithookdist", "from multiturbo import hookimpl\n@hookimpl\ndef register_heads(register):\n    raise SystemExit('bye')\n"),
    "kbhook": ("kbhookdist", "from multiturbo import hookimpl\n@hookimpl\ndef register_encoders(register):\n    raise KeyboardInterrupt\n"),
}


def test_plugins_raising_system_exit_or_keyboard_interrupt_are_skipped(tmp_path):
    _fake_distribution(tmp_path)
    for entry, (dist, code) in FATAL.items():
        _fake_distribution(tmp_path, dist, entry, code, module=f"mod_{entry}")
    env = {k: v for k, v in os.environ.items() if k not in ("MULTITURBO_NO_EXTERNAL_PLUGINS", "MULTITURBO_BLOCK_PLUGINS")}
    env["PYTHONPATH"] = str(tmp_path)
    report, err = _report(env)
    assert "fake_head" in report["heads"] and report["broken"] == sorted(FATAL)
    assert "plugin 'exitimport' (exitdist 0.3) is broken and was skipped: importing mod_exitimport failed: SystemExit: 3" in err
    assert "plugin 'kbimport' (kbdist 0.3) is broken and was skipped: importing mod_kbimport failed: KeyboardInterrupt" in err
    assert "plugin 'exithook' (exithookdist 0.3) is broken and was skipped: its register_heads hook raised SystemExit: bye" in err
    assert "plugin 'kbhook' (kbhookdist 0.3) is broken and was skipped: its register_encoders hook raised KeyboardInterrupt" in err


def test_the_users_own_ctrl_c_during_plugin_loading_still_stops(tmp_path):
    """A real SIGINT while a plugin imports (here sent by the plugin itself) is the user's: it stops the program."""
    _fake_distribution(tmp_path, "sigintdist", "sigint", "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n",
                       module="mod_sigint")
    env = {k: v for k, v in os.environ.items() if k not in ("MULTITURBO_NO_EXTERNAL_PLUGINS", "MULTITURBO_BLOCK_PLUGINS")}
    env["PYTHONPATH"] = str(tmp_path)
    res = subprocess.run([sys.executable, "-c", REPORT], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "KeyboardInterrupt" in res.stderr and "is broken" not in res.stderr
