"""``declcnn train``, ``declcnn eval`` and ``declcnn predict``: training and using a network."""

from __future__ import annotations

import json
import shlex
import sys

import click

from ..errors import DeclcnnError
from . import main
from ._common import user_errors

INTERRUPTED_EXIT = 130  # the shell's code for a process ended by SIGINT
DATA_HELP = ("Data to use whatever the spec's dataset says, its format detected: an IDX folder "
             "(MNIST / Fashion-MNIST), a CIFAR-10 binary folder, an image folder (a sub-folder "
             "per class) or an .npz (x, y).")


def _size(context, parameter, value):
    """``HxW`` (or one number for a square) as ``(height, width)``."""
    if value is None:
        return None
    parts = value.lower().split("x")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise click.BadParameter(f"must be HEIGHTxWIDTH, e.g. 32x32; got {value!r}.")
    return int(parts[0]), int(parts[1])


@main.command("train")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--epochs", type=click.IntRange(min=1), help="Override [training] epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Override [training] batch_size.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Override [training] lr.")
@click.option("--seed", type=click.IntRange(min=0), help="Override [training] seed.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Kernel threads (a run is reproducible bit for bit for a thread count).")
@click.option("--data", "data_dir", type=click.Path(), help=DATA_HELP)
@click.option("--input", "input_size", callback=_size, metavar="HxW",
              help="Build the network at this image size instead of the spec's input (where "
                   "every layer allows it, e.g. global pooling); checkpoints remember it.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run folder (default runs/<spec name>/).")
@click.option("--resume", is_flag=False, flag_value="", default=None, metavar="[CKPT]",
              help="Continue from CKPT, or from the run folder's last.npz when none is given.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=200, show_default=True,
              help="Steps between checkpoints (one is also written at each epoch's end).")
@click.option("--quiet", is_flag=True, help="Print only the final summary.")
@user_errors
def train_command(spec, epochs, batch_size, lr, seed, threads, data_dir, input_size, out,
                  resume, checkpoint_every, quiet):
    """Train the network of SPEC on the data set its [training] table names."""
    from ..threads import check_thread_count, get_num_threads
    from ..train import Trainer, TrainingInterrupted
    from ..train.checkpoint import RunFolderLock, repair_best

    _check_overrides(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    if threads is not None:
        check_thread_count(threads, "--threads")
    trainer = Trainer(spec, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      threads=threads, data_dir=data_dir, out=out,
                      checkpoint_every=checkpoint_every, verbose=not quiet,
                      input_size=input_size)
    try:
        with RunFolderLock(trainer.run_dir) as lock:
            if lock.removed and not quiet:
                click.echo(f"note: removed {len(lock.removed)} temporary file(s) left in "
                           f"{trainer.run_dir} by an interrupted write.")
            repaired = repair_best(trainer.run_dir) if resume is not None else None
            if repaired and not quiet:
                click.echo(f"note: {repaired}")
            result = trainer.fit(resume=True if resume == "" else resume)
    except OSError as err:
        raise DeclcnnError(f"{trainer.run_dir}: cannot write the run folder "
                           f"({err.strerror or err}{_which(err)}); choose another --out, or "
                           f"check its permissions and free space.") from None
    except TrainingInterrupted as stop:
        again = ["declcnn", "train", spec, "--resume", str(stop.checkpoint)]
        if out:
            again += ["--out", out]
        if data_dir:
            again += ["--data", data_dir]
        # The bits of a run depend on its thread count: resume with the same one.
        again += ["--threads", str(threads or get_num_threads())]
        if input_size:
            again += ["--input", f"{input_size[0]}x{input_size[1]}"]
        click.echo(f"interrupted after step {stop.step}; the run is saved in {stop.checkpoint}. "
                   f"Resume with: {shlex.join(again)}", err=True)
        sys.exit(INTERRUPTED_EXIT)
    last = result["history"][-1] if result["history"] else {}
    test = result["test"]
    segmentation = "mean_iou" in test
    name, key = ("mean IoU", "mean_iou") if segmentation else ("accuracy", "accuracy")
    if f"val_{key}" in last and result["best"] is None:
        chosen = ("no epoch gave a finite validation result, so no best.npz was written (lower "
                  "the learning rate or add warm-up; the test score is of the last epoch)")
    elif f"val_{key}" in last:
        shown = "nan" if last[f"val_{key}"] is None else f"{last[f'val_{key}']:.4f}"
        chosen = (f"validation {name} {shown} (best {result['best']:.4f} at epoch "
                  f"{result['best_epoch']})")
    else:
        chosen = "no validation split"
    click.echo(f"done: {last.get('epoch', 0)} epochs; {chosen}; test {name} {test[key]:.4f}; "
               f"weights in {test['weights']}")


def _check_overrides(**given) -> None:
    """The command line's settings obey the rules of the [training] keys they replace."""
    from ..spec.training import check_training

    problems = []
    values = {k: v for k, v in given.items() if v is not None}
    check_training(values, None, lambda message, key: problems.append((key, message)))
    if problems:
        key, message = problems[0]
        raise DeclcnnError(f"--{key.replace('_', '-')}: {message} It replaces [training] {key}, "
                           f"so the same rule applies.")


def _which(err: OSError) -> str:
    return f": {err.filename}" if err.filename else ""


def _matrix_text(matrix, classes) -> str:
    width = max(5, *(len(str(v)) for row in matrix for v in row))
    header = " " * 14 + " ".join(f"{i:>{width}}" for i in range(len(classes)))
    rows = [f"{i:>2} {name[:11]:<11}" + " ".join(f"{v:>{width}}" for v in row)
            for i, (name, row) in enumerate(zip(classes, matrix, strict=True))]
    return "\n".join([header, *rows])


@main.command("eval")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--weights", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint (.npz) written by declcnn train.")
@click.option("--data", "data_dir", type=click.Path(), help=DATA_HELP)
@click.option("--split", type=click.Choice(["test", "validation", "train"]), default="test",
              show_default=True, help="Which split to score: the test split, or the validation "
              "or training part of the training set as the run divided it.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@user_errors
def eval_command(spec, weights, data_dir, split, as_json):
    """Evaluate a checkpoint of SPEC on the test split of its data set (or another --split)."""
    from ..train import evaluate

    result = evaluate(spec, weights, data_dir=data_dir, split=split)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"{result['split']} split: {result['dataset']}")
    click.echo(f"accuracy {result['accuracy']:.4f} ({result['samples']} "
               f"{'pixels' if 'mean_iou' in result else 'samples'}), loss {result['loss']:.4f}")
    if "mean_iou" in result:
        click.echo(f"mean IoU {result['mean_iou']:.4f}")
        for name, iou in result["per_class_iou"].items():
            click.echo(f"  IoU {name:<14} {'-' if iou is None else f'{iou:.4f}'}")
    click.echo("per-class accuracy:")
    for name, accuracy in result["per_class_accuracy"].items():
        click.echo(f"  {name:<14} {'-' if accuracy is None else f'{accuracy:.4f}'}")
    click.echo("confusion matrix (rows: true class, columns: predicted):")
    click.echo(_matrix_text(result["confusion_matrix"], result["classes"]))


@main.command("predict")
@click.argument("spec", type=click.Path(dir_okay=False))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--weights", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint (.npz) written by declcnn train.")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Most probable classes to show.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for segmentation masks (default: beside each input).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per input.")
@user_errors
def predict_command(spec, inputs, weights, top_k, out, as_json):
    """Classify (or segment) INPUT images (PNG, JPEG) or .npy arrays with a checkpoint of
    SPEC."""
    from ..train import predict

    for result in predict(spec, weights, inputs, top_k=top_k, out=out):
        if as_json:
            click.echo(json.dumps(result))
        elif "top" in result:
            ranked = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in result["top"])
            click.echo(f"{result['input']}: {ranked}")
        else:
            shares = ", ".join(f"{name} {share:.1%}" for name, share in result["classes"].items())
            click.echo(f"{result['input']}: mask {result['mask']} ({shares})")
