"""Images end to end: a folder of class subfolders, a pretrained vision backbone fine-tuned, then search.

1. writes scikit-learn's digits 0-5 as 16x16 PNG files, one subfolder per class (uneven classes);
2. builds a small Hugging Face ResNet offline and saves it with save_pretrained: it stands in for a
   downloaded checkpoint folder such as microsoft/resnet-18 (``hf-vision:DIR`` reads any local one);
3. fine-tunes its top stage and a projection head with light augmentation (``metriclearn train``'s settings);
4. embeds the folder with the run, and queries a FAISS index with a few images.

Run: ``python examples/image_folder.py --out image-demo`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def write_digit_folder(folder: Path, classes: int = 6, per_class: tuple[int, ...] = (40, 34, 28, 40, 22, 30)) -> None:
    """digits 0..classes-1 as PNGs: folder/<digit>/<n>.png, 16x16 grey, uneven class sizes."""
    digits = load_digits()
    for label in range(classes):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        rows = np.flatnonzero(digits.target == label)[: per_class[label]]
        for n, row in enumerate(rows):
            pixels = (digits.images[row] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels).resize((16, 16), Image.Resampling.BILINEAR).save(folder / str(label) / f"{n}.png")


def save_small_resnet(folder: Path) -> None:
    """A 2-stage ResNet built from its config (random weights) in Hugging Face's folder format."""
    import torch
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1])).save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("image-demo"))
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()

    from metriclearn.indexes import EmbeddingIndex
    from metriclearn.training import TrainConfig, load_run, train_run

    write_digit_folder(args.out / "digits")
    save_small_resnet(args.out / "resnet")
    config = TrainConfig(data=str(args.out / "digits"), encoder=f"hf-vision:{args.out / 'resnet'}", finetune=True,
                         unfreeze=1, encoder_lr=1e-3, augment="light", image_size=16, embedding_dim=32,
                         epochs=args.epochs, batch_size=24, samples_per_class=4, device="cpu", seed=0)
    metrics = train_run(config, args.out / "run", overwrite=True, verbose=False)
    print(f"held-out precision@1 {metrics['retrieval']['precision_at_1']:.3f} "
          f"MAP@R {metrics['retrieval']['map_at_r']:.3f}")

    run = load_run(args.out / "run")
    embedded = run.embed(str(args.out / "digits"))  # decoded at the run's 16x16, no augmentation
    labels = embedded.label_values()
    index = EmbeddingIndex(embedded.embeddings.shape[1], metric="cosine")
    index.add(embedded.embeddings, labels)
    _, neighbours = index.search(embedded.embeddings[::50], k=4)  # ids are row numbers here
    for query, row in zip(range(0, len(labels), 50), neighbours):
        print(f"image {query} (digit {labels[query]}): neighbours are digits {labels[row[1:]].tolist()}")


if __name__ == "__main__":
    main()
