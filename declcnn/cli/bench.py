"""``declcnn bench``: forward and backward time of every layer, as ``caffe time`` reports it."""

from __future__ import annotations

import json

import click

from ..errors import DeclcnnError
from . import main
from ._common import user_errors
from .rf import _input_size


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


_PASS_NAMES = {"forward": "forward", "input_grad": "input gradient",
               "weight_grad": "weight gradient"}


def _algorithms(layer) -> str:
    """forward / input gradient / weight gradient algorithms of a conv layer, or ''."""
    return " / ".join(layer.algorithms[p][0] for p in _PASS_NAMES) if layer.algorithms else ""


def _table(profile) -> str:
    header = ("layer", "type", "output", "forward ms", "backward ms", "share",
              "algorithms (fwd / dx / dw)")
    rows = [header]
    for layer in profile.layers:
        rows.append((layer.name, layer.type, "×".join(map(str, layer.output_shape)),
                     _ms(layer.forward_ms), _ms(layer.backward_ms), f"{layer.share:.1%}",
                     _algorithms(layer)))
    rows.append(("sum of layers", "", "", _ms(sum(r.forward_ms for r in profile.layers)),
                 _ms(sum(r.backward_ms or 0.0 for r in profile.layers)), "100.0%", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) if i < 3 or i == 6 else cell.rjust(width)
                       for i, (cell, width) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def _reasons(profile) -> str:
    """Why the conv plan chose each conv layer's algorithms."""
    lines = []
    for layer in profile.layers:
        for name, label in _PASS_NAMES.items():
            if name in layer.algorithms:
                algorithm, why = layer.algorithms[name]
                lines.append(f"  {layer.name} {label}: {algorithm} ({why})")
    return "\n".join(["why (the conv plan, declcnn/ops/conv_plan.py):", *lines]) if lines else ""


@main.command()
@click.argument("spec", type=click.Path())
@click.option("--batch-size", "-b", type=click.IntRange(min=1), default=64, show_default=True,
              help="Samples per batch.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Kernel threads (default: DECLCNN_NUM_THREADS or the cores available).")
@click.option("--repeats", type=click.IntRange(min=1), default=10, show_default=True,
              help="Timed runs; each time is their median.")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True,
              help="Untimed runs first.")
@click.option("--input", "input_size", metavar="HxW", callback=_input_size,
              help="Input height and width replacing the spec's (e.g. 224x224).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the parameters, the random input and the output gradient.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@user_errors
def bench(spec, batch_size, threads, repeats, warmup, input_size, seed, as_json):
    """Time every layer of SPEC forward and backward on a random batch, in training mode with
    training's backward (the input gets no gradient): per layer its type, output shape, median
    forward and backward ms and share of the time, and for conv layers the algorithm of each
    pass (why: below the table); then whole passes and images/s."""
    from ..graph import load_graph
    from ..runtime import Network
    from ..runtime.profile import profile_network
    from ..threads import set_num_threads

    if threads is not None:
        set_num_threads(threads)
    graph = load_graph(spec)
    if input_size is not None:
        if len(graph.input_shape) != 3:
            raise DeclcnnError(f"--input: network '{graph.name}' takes flat input of "
                               f"{graph.input_shape[0]} features, which has no height and "
                               f"width; leave --input out.")
        graph = load_graph(spec, (graph.input_shape[0], *input_size))
    profile = profile_network(Network(graph, seed=seed), batch_size, repeats, warmup, seed)
    if as_json:
        click.echo(json.dumps(profile.as_json(), indent=1))
        return
    threads_text = f"{profile.threads} thread{'s' if profile.threads > 1 else ''}"
    click.echo(f"{profile.network}: input {'×'.join(map(str, profile.input_shape))}, batch "
               f"{profile.batch_size}, {threads_text}; median of {profile.repeats} runs after "
               f"{profile.warmup} warm-up runs (training mode; the input gets no gradient)")
    click.echo(_table(profile))
    click.echo(f"whole forward:            {profile.forward_ms:10.3f} ms "
               f"({profile.forward_images_per_second:,.0f} images/s)")
    click.echo(f"whole forward + backward: {profile.forward_backward_ms:10.3f} ms "
               f"({profile.images_per_second:,.0f} images/s)")
    click.echo("share: a layer's forward + backward over the sum of all layers'; backward '-':\n"
               "no gradient passes through the layer.  Whole passes run without the per-layer\n"
               "clock and include the work between layers.")
    reasons = _reasons(profile)
    if reasons:
        click.echo(reasons)
