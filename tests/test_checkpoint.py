"""Checkpoints: complete, atomic, pickle-free; and a scan of the source for unsafe loading."""

from __future__ import annotations

import ast
import json
import pathlib
import random

import numpy as np
import pytest
import torch
from safetensors import safe_open

import multiturbo
from multiturbo.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    read_checkpoint_loop_state,
    restore_checkpoint,
    save_checkpoint,
    save_weights,
)
from multiturbo.errors import MultiturboError

ROOT = pathlib.Path(multiturbo.__file__).resolve().parents[1]


def _trained():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.95))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
        sched.step()
    return model, opt, sched


def test_checkpoint_round_trips_model_optimizer_scheduler_and_rngs(tmp_path):
    model, opt, sched = _trained()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, opt, {"epoch": 2, "batch": 3, "sums": {"loss": 0.1 + 0.2}}, scheduler=sched)
    expected = (random.random(), np.random.rand(), torch.rand(3))

    other, opt2, sched2 = _trained()
    for p in other.parameters():
        p.data.zero_()
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    loop = restore_checkpoint(load_checkpoint(path), other, opt2, scheduler=sched2)
    assert loop == {"epoch": 2, "batch": 3, "sums": {"loss": 0.1 + 0.2}}  # floats exact through JSON
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"] and s2["param_groups"][0]["betas"] == (0.8, 0.95)
    for k in s1["state"]:
        assert all(torch.equal(s1["state"][k][n], s2["state"][k][n]) for n in s1["state"][k])
    assert sched2.state_dict() == sched.state_dict()
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])
    assert read_checkpoint_loop_state(path)["batch"] == 3


def test_checkpoint_is_plain_safetensors_with_json_metadata(tmp_path):
    model, opt, _ = _trained()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, opt, {"epoch": 1})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == CHECKPOINT_FORMAT and json.loads(meta["loop"]) == {"epoch": 1}
    json.loads(meta["structure"])
    assert {"model.0.weight", "rng.torch"} <= keys and any(k.startswith("optimizer.") for k in keys)
    assert b"\x80\x04" not in path.read_bytes()[:64]  # no pickle protocol header


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path, monkeypatch):
    model, opt, _ = _trained()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, opt, {"epoch": 1})
    before = path.read_bytes()

    import multiturbo.checkpoint as ck

    def dies_half_way(tensors, filename, metadata=None):
        pathlib.Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(ck, "save_file", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, opt, {"epoch": 2})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_unreadable_or_foreign_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(MultiturboError, match="cannot be read"):
        load_checkpoint(bad)
    weights = tmp_path / "w.safetensors"
    save_weights(torch.nn.Linear(2, 2), weights)
    with pytest.raises(MultiturboError, match="not a multiturbo training checkpoint"):
        load_checkpoint(weights)


# -- safe loading: a scan of the source ----------------------------------------------------------

def _sources():
    for folder in ("multiturbo", "plugins"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def test_source_has_no_unsafe_deserialisation_or_dynamic_imports():
    """No pickle, no torch.load without weights_only=True, no yaml.load/unsafe_load, no
    eval/exec, and importlib.import_module only on the built-in plugin list."""
    problems = []
    for path in _sources():
        rel = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    if name.split(".")[0] in ("pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"):
                        problems.append(f"{rel}:{node.lineno} imports {name}")
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            kwargs = {k.arg: k.value for k in node.keywords}
            if name.endswith("torch.load"):
                wo = kwargs.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    problems.append(f"{rel}:{node.lineno} torch.load without weights_only=True")
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
                problems.append(f"{rel}:{node.lineno} {name} (use yaml.safe_load)")
            if name in ("eval", "exec", "__import__", "pickle.loads", "pickle.load"):
                problems.append(f"{rel}:{node.lineno} {name}()")
            if name.endswith("import_module"):
                arg = node.args[0] if node.args else None
                allowed = rel.as_posix() == "multiturbo/plugins.py" and isinstance(arg, ast.Name) and arg.id == "module_name"
                if not allowed and not isinstance(arg, ast.Constant):
                    problems.append(f"{rel}:{node.lineno} import_module on a computed name")
            if kwargs.get("trust_remote_code") is not None:
                value = kwargs["trust_remote_code"]
                if not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{rel}:{node.lineno} trust_remote_code not False")
    assert problems == []


def test_plugins_py_imports_only_the_first_party_list():
    tree = ast.parse((ROOT / "multiturbo" / "plugins.py").read_text(encoding="utf-8"))
    loops = [n for n in ast.walk(tree) if isinstance(n, ast.For) and _dotted(n.iter) == "FIRST_PARTY_PLUGINS"]
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _dotted(n.func).endswith("import_module")]
    assert calls and all(any(c in ast.walk(loop) for loop in loops) for c in calls)
