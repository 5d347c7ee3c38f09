"""The ``declcnn`` command: one click group, one module per command family."""

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="declcnn")
def main():
    """Declarative CNNs: TOML specs checked, trained and inspected from one command."""


# Each module registers its commands on ``main``.
from . import bench, check, export, info, rf, train  # noqa: E402,F401
