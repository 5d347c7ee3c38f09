"""``declcnn rf``: theoretical receptive fields per layer, and the effective field by backprop."""

from __future__ import annotations

import json
import re
from fractions import Fraction

import click

from ..errors import DeclcnnError
from . import main
from ._common import user_errors

_SIZE = re.compile(r"([1-9][0-9]*)(?:x([1-9][0-9]*))?")


def _input_size(ctx, param, value):
    if value is None:
        return None
    match = _SIZE.fullmatch(value.strip().lower().replace("×", "x"))
    if not match:
        raise click.BadParameter(f"must be HxW (e.g. 224x224) or one size for both, each a "
                                 f"whole number ≥ 1; got {value!r}.")
    h = int(match.group(1))
    return h, int(match.group(2) or h)


def _number(value: Fraction | None) -> str:
    """Integers as integers, halves as decimals (15.5), other fractions as p/q."""
    if value is None:
        return "-"
    if value.denominator in (1, 2):
        return f"{float(value):g}"
    return str(value)


def _pair(h, w, show=str) -> str:
    return show(h) if h == w else f"{show(h)}×{show(w)}"


def _find_layer(graph, name: str) -> str:
    """A node name from a layer name: the node itself, or the last node of an expanded layer
    (``NAME.pointwise`` of a separable convolution, the last layer of a block use)."""
    from ..spec._values import closest

    names = [n.name for n in graph.nodes]
    if name in names:
        return name
    expanded = [n.name for n in graph.nodes
                if n.layer_name == name or n.name.startswith(name + ".")]
    if expanded:
        return expanded[-1]
    hint = closest(name, names)
    raise DeclcnnError(
        f"--layer: network '{graph.name}' has no layer '{name}'"
        + (f"; did you mean '{hint}'?" if hint else ".")
        + f" Its layers are listed by 'declcnn rf {graph.source or 'SPEC'}'.")


def _table(fields) -> str:
    header = ("layer", "type", "output", "rf", "rf min", "jump", "start", "begin")
    rows = [header]
    for f in fields:
        rows.append((f.name, f.type, "×".join(map(str, f.output)), _pair(*f.rf),
                     _pair(*f.rf_min), _pair(*f.jump, show=_number),
                     _pair(*f.start, show=_number), _pair(*f.begin, show=_number_or_dash)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i < 3 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _number_or_dash(value) -> str:
    return "-" if value is None else str(value)


_LEGEND = ("rf: field size in input pixels (largest over the layer's units; rf min the "
           "smallest); jump: input pixels between neighbouring units; start: centre of the "
           "first unit's field; begin: its first pixel (−begin is the effective padding).")


@main.command()
@click.argument("spec", type=click.Path())
@click.option("--layer", metavar="NAME", help="Only this layer (with --erf: its centre unit).")
@click.option("--input", "input_size", metavar="HxW", callback=_input_size,
              help="Input height and width replacing the spec's (e.g. 224x224).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--erf", is_flag=True,
              help="Measure the effective receptive field by backpropagation.")
@click.option("--samples", type=click.IntRange(min=1), default=16, show_default=True,
              help="Random inputs the effective field is averaged over.")
@click.option("--weights", metavar="CKPT", type=click.Path(),
              help="Checkpoint whose parameters to use (default: the spec's initialisation).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the initial parameters and of the random inputs.")
@click.option("--png", metavar="FILE", type=click.Path(dir_okay=False),
              help="Draw the effective field as a heat map with the theoretical one outlined.")
@user_errors
def rf(spec, layer, input_size, as_json, erf, samples, weights, seed, png):
    """Receptive field of every layer of SPEC: size, jump (effective stride), first unit's
    centre and effective padding, per axis; with --erf, the effective field of the output's
    centre unit (or of --layer's) measured through the network's backward pass."""
    from ..graph import load_graph
    from ..graph.receptive_field import receptive_field

    graph = load_graph(spec)
    if input_size is not None:
        graph = load_graph(spec, (graph.input_shape[0], *input_size))
    name = _find_layer(graph, layer) if layer else None
    if erf:
        _effective(graph, name, samples, weights, seed, png, as_json)
        return
    if png:
        raise DeclcnnError("--png draws the effective receptive field; add --erf.")
    fields = receptive_field(graph)
    if name is not None:
        fields = [f for f in fields if f.name == name]
    if as_json:
        click.echo(json.dumps([f.as_json() for f in fields], indent=1))
        return
    click.echo(f"{graph.name}: input {'×'.join(map(str, graph.input_shape))}")
    click.echo(_table(fields))
    click.echo(_LEGEND)
    for f in fields:
        for warning in f.warnings:
            click.echo(f"warning: layer '{f.name}': {warning}")


def _effective(graph, name, samples, weights, seed, png, as_json) -> None:
    from ..runtime import Network
    from ..runtime.effective_rf import effective_receptive_field, save_heat_map

    network = Network(graph, seed=seed)
    if weights:
        from ..train.checkpoint import load_checkpoint

        load_checkpoint(weights).restore(network)
    result = effective_receptive_field(network, name, samples, seed)
    (top, bottom), (left, right) = result.field
    if as_json:
        click.echo(json.dumps({
            "layer": result.layer, "unit": list(result.unit) if result.unit else None,
            "samples": result.samples, "rf": list(result.theory.rf),
            "field": [[top, bottom], [left, right]],
            "centre": [float(c) for c in result.centre],
            "extents": {f"{mass:g}": list(size) for mass, size in result.extents.items()},
            "notes": result.notes}, indent=1))
    else:
        unit = ("the mean of the outputs" if result.unit is None
                else f"centre unit {result.unit}")
        source = f"weights {weights}" if weights else f"initial weights of seed {seed}"
        click.echo(f"effective receptive field of '{result.layer}', {unit}, over "
                   f"{result.samples} random inputs ({source}):")
        click.echo(f"  theoretical: {_pair(*result.theory.rf)} (this unit: rows {top}..{bottom}, "
                   f"columns {left}..{right}, centre {_pair(*result.centre, show=_number)})")
        for mass, size in result.extents.items():
            click.echo(f"  {mass:.0%} of the gradient within {_pair(*size)} (centred)")
        for note in result.notes:
            click.echo(f"warning: {note}")
    if png:
        save_heat_map(result, png)
        if not as_json:
            click.echo(f"wrote {png}")
