"""The training curves of a run as a PNG (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path


def plot_history(history: list[dict], path) -> Path:
    """Loss and accuracy per epoch, training and validation, side by side, saved at ``path``."""
    # A bare Figure renders PNG through Agg without touching pyplot's global backend.
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [record["epoch"] for record in history]
    figure = Figure(figsize=(9, 3.6), layout="constrained")
    for axes, metric, title in zip(figure.subplots(1, 2), ("loss", "accuracy"),
                                   ("loss", "accuracy"), strict=True):
        for split, label in (("train", "train"), ("val", "validation")):
            values = [record.get(f"{split}_{metric}") for record in history]
            if any(v is not None for v in values):
                axes.plot(epochs, values, marker="o", label=label)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path
