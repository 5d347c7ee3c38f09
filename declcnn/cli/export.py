"""``declcnn export`` and ``declcnn import-weights``: networks out to ONNX or safetensors,
PyTorch state dicts in."""

from __future__ import annotations

from pathlib import Path

import click

from . import main
from ._common import user_errors
from .rf import _input_size

_RENAME_HELP = ("OLD=NEW: replace every OLD in each tensor name by NEW (repeatable, applied in "
                "order).")


@main.command("export")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Checkpoint (.npz) from declcnn train or import-weights; without it, the "
                   "initial parameters (seed 0).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="File to write (model.onnx, or weights.safetensors).")
@click.option("--format", "file_format", type=click.Choice(["onnx", "safetensors"]),
              help="What to write; default from the output's extension (onnx otherwise).")
@click.option("--opset", type=int, default=None,
              help="ONNX opset (default 17, the lowest 13).")
@click.option("--input", "input_size", metavar="HxW", callback=_input_size,
              help="Height and width to export at instead of the spec's (ONNX).")
@click.option("--dynamic-batch", is_flag=True,
              help="A symbolic batch axis (ONNX); otherwise the batch is --batch-size.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True,
              help="The fixed batch size without --dynamic-batch (ONNX).")
@click.option("--rename", multiple=True, metavar="OLD=NEW", help=_RENAME_HELP + " (safetensors)")
@click.option("--prefix", default=None, help="Put before every tensor name (safetensors).")
@user_errors
def export_command(spec, weights, output, file_format, opset, input_size, dynamic_batch,
                   batch_size, rename, prefix):
    """Write the network of SPEC as an ONNX model, or its state dict as safetensors for
    PyTorch's load_state_dict."""
    from ..errors import DeclcnnError
    from ..interchange import DEFAULT_OPSET, export_onnx, export_safetensors
    from ..interchange.weights import parse_renames

    if file_format is None:
        file_format = "safetensors" if Path(output).suffix == ".safetensors" else "onnx"
    if file_format == "onnx":
        if rename or prefix:
            raise DeclcnnError("--rename and --prefix name the tensors of a safetensors file; "
                               "an ONNX model's initializers keep the spec's names. Drop them, "
                               "or add --format safetensors.")
        path = export_onnx(spec, output, weights=weights, opset=opset or DEFAULT_OPSET,
                           input_size=input_size, dynamic_batch=dynamic_batch,
                           batch_size=batch_size)
        click.echo(f"wrote {path} (ONNX opset {opset or DEFAULT_OPSET}, "
                   f"{path.stat().st_size / 1e6:.1f} MB)")
    else:
        if opset or input_size or dynamic_batch:
            raise DeclcnnError("--opset, --input and --dynamic-batch shape an ONNX model; a "
                               "safetensors file holds only the tensors. Drop them, or write "
                               "ONNX (--format onnx).")
        path = export_safetensors(spec, output, weights=weights, rename=parse_renames(rename),
                                  prefix=prefix)
        click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); load it in PyTorch "
                   f"with module.load_state_dict(safetensors.torch.load_file('{path}'))")
    if weights is None:
        click.echo("note: no --weights, so these are the initial parameters (seed 0).",
                   err=True)


@main.command("import-weights")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint (.npz) to write, for --weights of eval, predict and export.")
@click.option("--rename", multiple=True, metavar="OLD=NEW", help=_RENAME_HELP)
@click.option("--prefix", default=None,
              help="Read only the tensors whose names start with this, without it (e.g. "
                   "'module.' or 'backbone.').")
@click.option("--strict/--no-strict", default=True, show_default=True,
              help="Refuse any missing, unexpected or mis-shaped tensor; --no-strict loads "
                   "those that fit and keeps the initial values (seed 0) of the rest.")
@user_errors
def import_weights_command(spec, file, output, rename, prefix, strict):
    """Read a PyTorch state dict from FILE (.safetensors, or .npz) into a declcnn checkpoint
    for SPEC.  Pickles (.pt, .pth) are refused: convert them to safetensors in PyTorch."""
    from ..interchange import import_weights
    from ..interchange.weights import parse_renames

    checkpoint, report = import_weights(spec, file, output, rename=parse_renames(rename),
                                        prefix=prefix, strict=strict)
    count = len(checkpoint.params) + len(checkpoint.buffers)
    if report["dropped"]:
        click.echo(f"note: left out {len(report['dropped'])} num_batches_tracked entr"
                   f"{'y' if len(report['dropped']) == 1 else 'ies'} (declcnn's batch norm "
                   f"keeps no such count).", err=True)
    if not strict:
        for key, what in (("skipped", "file tensors that did not fit, skipped"),
                          ("initial", "network tensors left at their initial values")):
            if report[key]:
                click.echo(f"note: {len(report[key])} {what}: {', '.join(report[key])}",
                           err=True)
        count -= len(report["initial"])
    click.echo(f"wrote {output}: {count} tensors from {file}")
