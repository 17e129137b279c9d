"""Fixed text data for the fine-tuning benchmarks (issue #18 part 3): fortunes classes and WordNet pairs.

**Classes**: Debian's fortune cookies shipped in ``examples/data/fortunes/fortunes.jsonl`` (12 classes, 2265
texts, 38 to 480 per class). :func:`fortunes` gives the stratified 50 / 20 / 30 % train / val / test split of
``examples/second_opinion_huggingface.py`` (``sklearn.model_selection.train_test_split``, ``random_state=0``):
1132 / 453 / 680 texts. The benchmarks train on train and measure the test texts against the train texts.

**Pairs**: WordNet 3.0 from Debian's ``wordnet-base`` (``apt-get install -y wordnet-base``), files
``/usr/share/wordnet/data.{noun,verb,adj,adv}``: a synset's gloss is ``definition; "usage example"; ...``.
Each synset with at least one usage example gives one pair: ``anchor`` = its first usage example,
``positive`` = its definition (the retrieval task "which sense is this sentence using?"; the many senses of one
word are each other's hard negatives). Pairs whose example or definition repeats another pair's are dropped
(kept once, in file order). A seeded permutation (``numpy.random.default_rng(0)``) of the pairs gives the
first ``TRAIN`` = 4096 to train and the next ``HELD_OUT`` = 1000 held out (each held-out anchor is searched
against the 1000 held-out definitions). Written once to the cache folder (``$METRICLEARN_BENCH_CACHE`` or
``~/.cache/metriclearn-bench``) as ``wordnet_pairs_{train,test}.jsonl`` with ``wordnet_pairs.json``
(provenance, SHA-256 of the source files); nothing is committed as data.

**Sense pairs** (:func:`wordnet_sense_pairs`, where a detached cache should pay): the bi-encoder word-sense task
of Blevins & Zettlemoyer (2020, "Moving Down the Long Tail of Word Sense Disambiguation with Gloss Informed
Bi-encoders"): ``anchor`` = a synset's first usage example, ``positive`` = ``"headword: definition"``, the
dictionary entry of the sense it uses, where the headword is the first of the synset's words that the example
contains (as a word, with any ending: "banks" for *bank*). Only headwords with at least ``MIN_SENSES`` = 3 such
senses are kept (11 042 pairs of 2225 headwords). The split is by headword (a seeded permutation of the headwords,
``default_rng(1)``): whole headwords go to the held-out part until it holds ``HELD_OUT`` pairs or more, the rest
train, grouped by headword and cut at ``TRAIN`` pairs. So every held-out sentence must find its entry among all
held-out entries, its headword's other senses included (3–55 per word), for words never trained on; and a random
batch of 16 pairs rarely holds two senses of one word, so its negatives are easy — a cache of earlier batches
holds many of the hard ones.

Usage: python benchmarks/_text_data.py   (prints the sizes and a few pairs)
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from _wordnet_minilm import PARTS, WORDNET, cache_dir

ROOT = Path(__file__).resolve().parents[1]
FORTUNES = ROOT / "examples" / "data" / "fortunes" / "fortunes.jsonl"
TRAIN, HELD_OUT, PAIR_SEED = 4096, 1000, 0
MIN_SENSES, SENSE_SEED = 3, 1
_QUOTED = re.compile(r'"([^"]+)"')


def fortunes(seed: int = 0) -> dict[str, tuple[list[str], list[str]]]:
    """``{"train" | "val" | "test": (texts, labels)}``, the stratified 50 / 20 / 30 % split."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    rows = [json.loads(line) for line in FORTUNES.read_text(encoding="utf-8").splitlines() if line.strip()]
    y = [r["label"] for r in rows]
    train, rest = train_test_split(np.arange(len(rows)), test_size=0.5, stratify=y, random_state=seed)
    val, test = train_test_split(rest, test_size=0.6, stratify=[y[i] for i in rest], random_state=seed)
    return {name: ([rows[i]["text"] for i in part], [rows[i]["label"] for i in part])
            for name, part in (("train", train), ("val", val), ("test", test))}


def _all_pairs() -> list[dict[str, str]]:
    """(first usage example, definition) of every WordNet synset that has an example, deduplicated."""
    pairs, seen = [], set()
    for part in PARTS:
        for line in (WORDNET / f"data.{part}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            gloss = line.split(" | ", 1)[1].strip()
            definition = gloss.split('; "', 1)[0].strip().rstrip(";").strip()
            examples = _QUOTED.findall(gloss[len(definition):])
            if not definition or not examples:
                continue
            example = examples[0].strip()
            if len(example) < 8 or example in seen or definition in seen:
                continue
            seen.update((example, definition))
            pairs.append({"anchor": example, "positive": definition})
    return pairs


def _synsets() -> list[tuple[list[str], str, str]]:
    """(words, definition, first usage example) of every WordNet synset that has an example, in file order."""
    out = []
    for part in PARTS:
        for line in (WORDNET / f"data.{part}").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            head, gloss = line.split(" | ", 1)
            fields = head.split()
            count = int(fields[3], 16)  # w_cnt is hexadecimal; then (word, lex_id) pairs
            words = [re.sub(r"\(.*\)$", "", fields[4 + 2 * i]).replace("_", " ").lower() for i in range(count)]
            gloss = gloss.strip()
            definition = gloss.split('; "', 1)[0].strip().rstrip(";").strip()
            examples = _QUOTED.findall(gloss[len(definition):])
            if definition and examples:
                out.append((words, definition, examples[0].strip()))
    return out


def _uses(word: str, sentence: str) -> bool:
    """Whether ``sentence`` contains ``word`` as a word, with any ending ("banks", "banking"; "carried" for carry)."""
    stem = word[:-1] if len(word) >= 5 and word[-1] in "ey" else word
    return re.search(r"\b" + re.escape(stem) + r"[a-z]*\b", sentence.lower()) is not None


def _sense_pairs() -> dict[str, list[dict[str, str]]]:
    """Sentence -> "headword: definition" pairs, grouped by headword (see the module's docstring)."""
    import numpy as np

    groups: dict[str, list[dict[str, str]]] = {}
    seen: set[str] = set()
    for words, definition, example in _synsets():
        used = [w for w in words if _uses(w, example)]
        if not used or len(example) < 8 or example in seen or definition in seen:
            continue
        seen.update((example, definition))
        groups.setdefault(used[0], []).append({"anchor": example, "positive": f"{used[0]}: {definition}",
                                               "headword": used[0]})
    words = sorted(w for w, rows in groups.items() if len(rows) >= MIN_SENSES)
    order = np.random.default_rng(SENSE_SEED).permutation(len(words))
    test: list[dict[str, str]] = []
    train: list[dict[str, str]] = []
    for i in order:
        (test if len(test) < HELD_OUT else train).extend(groups[words[i]])
    return {"train": train[:TRAIN], "test": test}


def _read(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def wordnet_sense_pairs() -> dict[str, list[dict[str, str]]]:
    """``{"train": 4096 pairs, "test": ~1000 pairs}`` of ``{"anchor", "positive", "headword"}``, built on first use."""
    files = {name: cache_dir() / f"wordnet_senses_{name}.jsonl" for name in ("train", "test")}
    meta = cache_dir() / "wordnet_senses.json"
    if not (meta.exists() and all(f.exists() for f in files.values())):
        parts = _sense_pairs()
        cache_dir().mkdir(parents=True, exist_ok=True)
        for name, rows in parts.items():
            files[name].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        provenance = {
            "source": "WordNet 3.0 (Debian package wordnet-base): anchor = a synset's first usage example, "
                      "positive = 'headword: definition', headword = the first synset word the example uses",
            "min_senses": MIN_SENSES,
            "split": f"by headword, numpy.random.default_rng({SENSE_SEED}).permutation of the sorted headwords: "
                     f"held out until >= {HELD_OUT} pairs, the rest train (first {TRAIN} pairs, grouped by headword)",
            "sizes": {name: len(rows) for name, rows in parts.items()},
            "headwords": {name: len({r["headword"] for r in rows}) for name, rows in parts.items()},
            "files_sha256": _sources_sha256(),
        }
        meta.write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return {name: _read(path) for name, path in files.items()}


def _sources_sha256() -> dict[str, str]:
    return {str(WORDNET / f"data.{p}"): hashlib.sha256((WORDNET / f"data.{p}").read_bytes()).hexdigest()
            for p in PARTS}


def wordnet_pairs() -> dict[str, list[dict[str, str]]]:
    """``{"train": 4096 pairs, "test": 1000 pairs}`` of ``{"anchor", "positive"}``, built on first use."""
    import numpy as np

    files = {name: cache_dir() / f"wordnet_pairs_{name}.jsonl" for name in ("train", "test")}
    meta = cache_dir() / "wordnet_pairs.json"
    if not (meta.exists() and all(f.exists() for f in files.values())):
        everything = _all_pairs()
        order = np.random.default_rng(PAIR_SEED).permutation(len(everything))
        parts = {"train": order[:TRAIN], "test": order[TRAIN : TRAIN + HELD_OUT]}
        cache_dir().mkdir(parents=True, exist_ok=True)
        for name, idx in parts.items():
            lines = "".join(json.dumps(everything[i], ensure_ascii=False) + "\n" for i in idx)
            files[name].write_text(lines, encoding="utf-8")
        provenance = {
            "source": "WordNet 3.0 (Debian package wordnet-base): anchor = a synset's first usage example, "
                      "positive = its definition",
            "pairs_available": len(everything),
            "split": f"numpy.random.default_rng({PAIR_SEED}).permutation: first {TRAIN} train, next {HELD_OUT} test",
            "files_sha256": _sources_sha256(),
        }
        meta.write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return {name: _read(path) for name, path in files.items()}


if __name__ == "__main__":
    f = fortunes()
    print({k: len(v[0]) for k, v in f.items()}, "fortunes texts")
    p = wordnet_pairs()
    print({k: len(v) for k, v in p.items()}, "WordNet pairs;", (cache_dir() / "wordnet_pairs.json").read_text())
    for row in p["test"][:5]:
        print(row)
    s = wordnet_sense_pairs()
    print({k: len(v) for k, v in s.items()}, "sense pairs;", (cache_dir() / "wordnet_senses.json").read_text())
    for row in s["test"][:5]:
        print(row)
