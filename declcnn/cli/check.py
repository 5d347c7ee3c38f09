"""``declcnn check`` and ``declcnn summary``: is a spec valid, and what does it build."""

from __future__ import annotations

import re
import sys

import click

from ..errors import DeclcnnError
from . import main
from ._common import user_errors

_SHAPE = re.compile(r"[1-9][0-9]*(x[1-9][0-9]*x[1-9][0-9]*)?")


@main.command()
@click.argument("specs", nargs=-1, required=True, type=click.Path())
def check(specs):
    """Check each SPEC completely: structure, keys, shapes, memory; report every problem."""
    from ..graph import load_graph
    from ..graph.summary import parameter_count

    failed = False
    for path in specs:
        try:
            graph = load_graph(path)
        except DeclcnnError as err:
            failed = True
            click.echo(f"error: {err}", err=True)
            continue
        click.echo(f"{path}: ok ({len(graph.nodes)} layers, {parameter_count(graph):,} "
                   f"parameters)")
    sys.exit(1 if failed else 0)


def _input_shape(ctx, param, value):
    if value is None:
        return None
    text = value.strip().lower().replace("×", "x")
    if not _SHAPE.fullmatch(text):
        raise click.BadParameter(f"must be CxHxW (e.g. 3x224x224) or F for flat input, each a "
                                 f"whole number ≥ 1; got {value!r}.")
    return tuple(int(d) for d in text.split("x"))


@main.command()
@click.argument("spec", type=click.Path())
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=1, show_default=True,
              help="Samples per batch for the activation memory.")
@click.option("--input", "input_shape", metavar="CxHxW", callback=_input_shape,
              help="Input shape replacing the spec's (e.g. 3x224x224).")
@user_errors
def summary(spec, batch_size, input_shape):
    """Per layer of SPEC: output shape, parameters, multiply-adds; totals and memory."""
    from ..graph import load_graph
    from ..graph.summary import format_summary

    click.echo(format_summary(load_graph(spec, input_shape), batch_size))
