"""Rebuild ``fortunes.jsonl`` from Debian's fortune cookie files (see README.md next to this file).

Run: ``apt-get install fortunes fortunes-min && python examples/data/fortunes/build_fortunes.py``.
Every cookie of the chosen category files becomes one ``{"text", "label"}`` line, label = the file name;
whitespace is collapsed to single spaces, cookies shorter than 20 or longer than 600 characters are skipped
and at most 300 per category are kept (a seeded sample), so class counts stay real and uneven.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

SOURCE = Path("/usr/share/games/fortunes")
CATEGORIES = ("computers", "drugs", "education", "food", "law", "love", "medicine", "pets", "politics",
              "science", "sports", "startrek")
MAX_PER_CATEGORY, MIN_CHARS, MAX_CHARS = 300, 20, 600


def cookies(path: Path) -> list[str]:
    """The cookies of one strfile source file: entries separated by lines holding a single ``%``."""
    raw = path.read_text(encoding="utf-8", errors="replace")
    texts = (" ".join(entry.split()) for entry in re.split(r"^%$", raw, flags=re.M))
    return [t for t in texts if MIN_CHARS <= len(t) <= MAX_CHARS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("fortunes.jsonl"))
    args = parser.parse_args()
    rng = random.Random(0)
    rows = []
    for category in CATEGORIES:
        texts = sorted(set(cookies(args.source / category)))
        rows += [{"text": t, "label": category} for t in sorted(rng.sample(texts, min(len(texts), MAX_PER_CATEGORY)))]
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    counts = {c: sum(r["label"] == c for r in rows) for c in CATEGORIES}
    print(f"{len(rows)} cookies written to {args.out}: {counts}")


if __name__ == "__main__":
    main()
