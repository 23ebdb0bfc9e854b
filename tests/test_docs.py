"""The docs match the code: every hook is documented, the plugin example runs."""

from __future__ import annotations

import inspect
import pathlib
import re
import types

import pytest

from multiturbo import hookspecs
from multiturbo.config import ExperimentConfig
from multiturbo.plugins import get_registries, plugin_registered

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
HOOKS = [name for name, fn in vars(hookspecs).items() if inspect.isfunction(fn) and hasattr(fn, "multiturbo_spec")]


def test_there_are_hooks():
    assert set(HOOKS) == {"register_encoders", "register_datasets", "register_heads", "register_input_readers", "register_transcribers"}


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_arguments(hook):
    text = (DOCS / "plugins.md").read_text()
    args = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"### `{hook}({args})`" in text


def test_plugin_example_in_docs_runs():
    text = (DOCS / "plugins.md").read_text()
    code = re.search(r"## A plugin in ten lines\n\n```python\n(.*?)```", text, re.S).group(1)
    module = types.ModuleType("docs_example_plugin")
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    with plugin_registered(module, "docs-example"):
        cls = get_registries().encoders.get("mean_pool")
        enc = cls(cls.Options(dim=5))
        assert enc(enc.collate([[1.0, 2.0], [3.0]])).shape == (2, 5)


def test_every_config_section_and_field_is_in_configuration_docs():
    text = (DOCS / "configuration.md").read_text()
    for section, field in ExperimentConfig.model_fields.items():
        assert f"`{section}`" in text, section
        annotation = field.annotation
        sub = getattr(annotation, "model_fields", None)
        for name in sub or {}:
            assert f"`{section}.{name}`" in text, f"{section}.{name}"


def test_ci_runs_the_readme_test_command():
    root = DOCS.parent
    readme_block = re.search(r"```bash\n(.*?)```", (root / "README.md").read_text(), re.S).group(1).strip().splitlines()
    assert len(readme_block) == 2 and "multiturbo compare configs/demo.yaml" in readme_block[0]
    assert readme_block[1] in (root / ".ci" / "run").read_text()


def test_every_core_module_is_in_the_architecture_table():
    root = DOCS.parent / "multiturbo"
    text = (DOCS / "architecture.md").read_text()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if path.name in ("__init__.py", "__main__.py"):
            continue
        assert f"`{rel}`" in text, f"docs/architecture.md does not describe {rel}"
