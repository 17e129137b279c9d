"""Learn a topic embedding on top of a frozen all-MiniLM-L6-v2 (the ``text`` extra), offline.

Writes a small ``.jsonl`` of sentences about four topics, trains a 32-d projection head with the
neighbourhood-softmax loss (the transformer stays frozen: its pooled outputs are computed once and
cached, so each epoch only trains the head), re-embeds the file from the saved run directory and
compares the held-out retrieval with that of the raw MiniLM sentence embeddings.

    python examples/text_topics.py            # writes runs/text_topics/
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never touch the network: the model ships in a package

import torch

from metriclearn.data import load_data
from metriclearn.encoders import SentenceEncoder
from metriclearn.metrics import retrieval_metrics
from metriclearn.runs import embed_from_run
from metriclearn.training.config import TrainConfig
from metriclearn.training.run import train_run

TOPICS = {
    "sport": (["The striker", "Our goalkeeper", "The coach", "The tennis player", "The team"],
              ["scored twice in the final", "trained hard before the match", "won the championship",
               "was injured during the game", "signed a new contract with the club"]),
    "cooking": (["The chef", "My grandmother", "The baker", "Our neighbour", "The cook"],
                ["baked fresh bread this morning", "added garlic to the sauce", "roasted the vegetables",
                 "simmered the soup for hours", "served a chocolate cake for dessert"]),
    "finance": (["The central bank", "Investors", "The stock market", "The company", "The fund manager"],
                ["raised interest rates again", "reported higher quarterly profits", "sold shares at a loss",
                 "worried about inflation", "bought government bonds"]),
    "weather": (["The forecast", "A heavy storm", "The morning fog", "The summer heat", "Strong wind"],
                ["brought rain to the coast", "warned of snow in the mountains", "kept temperatures high",
                 "cleared by the afternoon", "knocked down trees across the region"]),
}


def write_topics(path: Path, seed: int = 0) -> Path:
    """All subject × phrase sentences of each topic (25 per topic), shuffled, as text/label lines."""
    rows = [{"text": f"{s} {p}.", "label": topic} for topic, (subjects, phrases) in TOPICS.items()
            for s in subjects for p in phrases]
    random.Random(seed).shuffle(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def main(epochs: int = 10, out: str = "runs/text_topics") -> dict[str, float]:
    out_dir = Path(out)
    data = write_topics(out_dir / "topics.jsonl")
    config = TrainConfig(data=str(data), encoder="sentence", embedding_dim=32, epochs=epochs, batch_size=32,
                         samples_per_class=8, lr=1e-2, device="cpu", val_fraction=0.4)
    metrics = train_run(config, out_dir / "run", verbose=False, overwrite=True)  # re-running replaces the run
    embeddings, labels, classes = embed_from_run(out_dir / "run", data)
    raw = SentenceEncoder(embedding_dim=None).eval()  # the pooled MiniLM embedding itself, as a baseline
    with torch.no_grad():
        baseline = retrieval_metrics(raw.pool(load_data(data).X).numpy(), labels)
    trained = retrieval_metrics(embeddings, labels)
    print(f"classes {classes}; embedded {embeddings.shape[0]} texts -> {embeddings.shape[1]} dims")
    print(f"held-out MAP@R after training: {metrics['retrieval']['map_at_r']:.3f}")
    print(f"all texts MAP@R: raw MiniLM {baseline['map_at_r']:.3f}, trained head {trained['map_at_r']:.3f}")
    return {"held_out_map_at_r": metrics["retrieval"]["map_at_r"], "raw_map_at_r": baseline["map_at_r"],
            "trained_map_at_r": trained["map_at_r"]}


if __name__ == "__main__":
    main(out=sys.argv[1] if len(sys.argv) > 1 else "runs/text_topics")
