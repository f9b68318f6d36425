"""`denoise-plugin install|uninstall krita|gimp`: put a host plugin in place for this Python."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

HOSTS = {"krita": "install_krita", "gimp": "install_gimp"}


def _installer(host: str):
    return importlib.import_module(f"{__package__}.{HOSTS[host]}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Install the denoiser into Krita or GIMP 3."""


@main.command()
@click.argument("host", type=click.Choice(sorted(HOSTS)))
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              help="Profile/resource folder to install into instead of the user's default.")
@click.option("--python", "python", default=sys.executable, show_default=True,
              help="Interpreter the plugin starts the denoiser with (must import denoise_core).")
def install(host: str, dest: Path | None, python: str) -> None:
    """Copy the HOST plugin, enable it and record the worker's interpreter."""
    for line in _installer(host).install(dest=dest, python=python):
        click.echo(line)


@main.command()
@click.argument("host", type=click.Choice(sorted(HOSTS)))
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path))
def uninstall(host: str, dest: Path | None) -> None:
    """Remove the HOST plugin."""
    for line in _installer(host).uninstall(dest=dest):
        click.echo(line)


if __name__ == "__main__":
    main()
