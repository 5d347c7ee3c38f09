"""Segment procedural shapes (circle, square, triangle) with the small U-Net.

    python examples/unet_shapes.py [--epochs N] [--threads N] [--out DIR]

Trains ``specs/unet_small.toml`` on generated 64×64 images, reports the mean intersection over
union on held-out images (another seed), and saves a figure of images, true and predicted masks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from declcnn.train import Trainer, evaluate, load_checkpoint, load_dataset
from declcnn.train.data import Normalizer

SPEC = Path(__file__).resolve().parent.parent / "specs" / "unet_small.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default="runs/unet-shapes-example")
    args = parser.parse_args()

    trainer = Trainer(SPEC, epochs=args.epochs, threads=args.threads, out=args.out)
    result = trainer.fit()
    metrics = evaluate(SPEC, result["best_path"])
    print(f"held-out mean IoU {metrics['mean_iou']:.4f}, pixel accuracy "
          f"{metrics['pixel_accuracy']:.4f}")
    for name, iou in metrics["per_class_iou"].items():
        print(f"  {name:<10} IoU {iou:.4f}")

    # Predict a few held-out images with the trained network and draw them.
    best = load_checkpoint(result["best_path"])
    network = trainer.network
    best.restore(network)
    network.eval()
    _, test = load_dataset("shapes", network.graph.input_shape, seed=trainer.settings["seed"])
    predicted = network.forward(Normalizer(best.mean, best.std)(test.x[:6])).argmax(axis=1)
    figure = Figure(figsize=(12, 6), layout="constrained")
    axes = figure.subplots(3, 6)
    for column in range(6):
        for row, (image, title) in enumerate([(test.x[column, 0], "image"),
                                              (test.y[column], "truth"),
                                              (predicted[column], "prediction")]):
            axes[row, column].imshow(image, cmap="gray" if row == 0 else "viridis",
                                     vmin=0, vmax=255 if row == 0 else 3)
            axes[row, column].set_title(title)
            axes[row, column].axis("off")
    path = Path(args.out) / "predictions.png"
    figure.savefig(path, dpi=80)
    print(f"saved {path}; masks agree on {np.mean(predicted == test.y[:6]):.1%} of pixels")


if __name__ == "__main__":
    main()
