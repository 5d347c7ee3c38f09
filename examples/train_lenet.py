"""Train LeNet-5 on Fashion-MNIST through the library, evaluate it, and classify a few images.

    python examples/train_lenet.py [--epochs N] [--threads N] [--out DIR]

Uses the full Fashion-MNIST when it is found (--data, DECLCNN_DATA or the Debian package
dataset-fashion-mnist), otherwise the subset shipped with declcnn.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from declcnn.train import Trainer, evaluate, load_dataset, predict

SPEC = Path(__file__).resolve().parent.parent / "specs" / "lenet.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--data")
    parser.add_argument("--out", default="runs/lenet-example")
    args = parser.parse_args()

    trainer = Trainer(SPEC, epochs=args.epochs, threads=args.threads, data_dir=args.data,
                      out=args.out)
    result = trainer.fit()
    metrics = evaluate(SPEC, result["best_path"], data_dir=args.data)
    print(f"test accuracy {metrics['accuracy']:.4f}")
    worst = min(metrics["per_class_accuracy"].items(), key=lambda item: item[1])
    print(f"hardest class: {worst[0]} ({worst[1]:.4f})")

    # Save a few test images as PNG files and classify them as a user's files would be.
    _, test = load_dataset("fashion-mnist", (1, 28, 28), args.data)
    files = []
    for i in range(5):
        path = Path(args.out) / f"sample{i}_{test.classes[test.y[i]].replace('/', '-')}.png"
        Image.fromarray(test.x[i, 0]).save(path)
        files.append(path)
    for item in predict(SPEC, result["best_path"], files, top_k=2):
        guesses = ", ".join(f"{t['class']} {t['probability']:.2f}" for t in item["top"])
        print(f"{Path(item['input']).name}: {guesses}")


if __name__ == "__main__":
    main()
