"""The ``multiturbo`` command line: run, compare, plugins, schema, config."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from .errors import MultiturboError

out_console = Console()
err_console = Console(stderr=True)


class _Group(click.Group):
    """Shows a MultiturboError as one paragraph on stderr (exit status 2), never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MultiturboError as exc:
            err_console.print(f"Error: {exc}", markup=False, highlight=False, soft_wrap=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            err_console.print("Interrupted.", markup=False)
            ctx.exit(130)


set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config value, e.g. --set turbo.passes=3 (repeatable; values are YAML).",
)
out_option = click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory (default: runs/<name>-<time>).")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress bars or per-epoch lines.")
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace the contents of an existing run directory.")


@click.group(cls=_Group)
@click.version_option(package_name="multiturbo")
def cli() -> None:
    """Multi-modal classification with Turbo contrastive learning."""


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@out_option
@set_option
@overwrite_option
@quiet_option
def run(config: Path, out: Path | None, overrides: tuple[str, ...], overwrite: bool, quiet: bool) -> None:
    """Train and test the experiment in CONFIG; write a run directory."""
    from .config import load_config
    from .progress import ProgressReporter
    from .run import default_run_dir, run_experiment

    cfg = load_config(config, overrides)
    out = out or default_run_dir(cfg)
    with ProgressReporter(quiet=quiet) as progress:
        metrics = run_experiment(cfg, out, overwrite=overwrite, progress=progress)
    shown = {k: round(v, 4) for k, v in metrics.items() if k in ("wa", "ua", "f1", "eer") and isinstance(v, float)}
    out_console.print(f"test {json.dumps(shown)}  (run directory: {out})", markup=False, highlight=False)


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@out_option
@set_option
@click.option("--methods", default="vanilla,cross,turbo", show_default=True, help="Comma-separated methods to compare.")
@overwrite_option
@quiet_option
def compare(config: Path, out: Path | None, overrides: tuple[str, ...], methods: str, overwrite: bool, quiet: bool) -> None:
    """Train and test each method (vanilla, cross, turbo) on CONFIG; print the table."""
    from .compare import compare_methods, method_configs, to_rich_table
    from .progress import ProgressReporter

    configs = method_configs(config, overrides, [m.strip() for m in methods.split(",") if m.strip()])
    with ProgressReporter(quiet=quiet) as progress:
        rows = compare_methods(configs, out, overwrite=overwrite, progress=progress)
    out_console.print(to_rich_table(rows, title=f"{next(iter(configs.values())).name}: test metrics"))


@cli.command()
def plugins() -> None:
    """List every registered encoder, data set and head, with the plugin that provides it."""
    from .plugins import get_registries, plugin_source

    regs = get_registries()
    table = Table(title="multiturbo plugins")
    for col in ("kind", "name", "plugin", "source"):
        table.add_column(col, no_wrap=True)
    table.add_column("description", overflow="fold")
    for kind, registry in (("encoder", regs.encoders), ("dataset", regs.datasets), ("head", regs.heads)):
        for entry in registry:
            doc = (entry.cls.__doc__ or "").strip().splitlines()
            table.add_row(kind, entry.name, entry.plugin, plugin_source(entry.plugin), doc[0] if doc else "")
    out_console.print(table)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of experiment configs (for editor validation)."""
    from .config import ExperimentConfig

    click.echo(json.dumps(ExperimentConfig.model_json_schema(), indent=2))


@cli.command("config")
@click.argument("config", type=click.Path(path_type=Path))
@set_option
def show_config(config: Path, overrides: tuple[str, ...]) -> None:
    """Validate CONFIG and print it resolved (presets applied, plugin defaults filled)."""
    from .config import config_to_yaml, load_config

    click.echo(config_to_yaml(load_config(config, overrides)), nl=False)


def main() -> None:
    cli(prog_name="multiturbo")


if __name__ == "__main__":
    main()
