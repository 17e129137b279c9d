"""explorer.html at 100k points in headless Chromium: file size, load time, redraw, hover and zoom, side by side
with Plotly's offline bundle (``scattergl``, the WebGL scatter Plotly recommends for large point counts).

Both pages hold the same 2-D points and colours and are driven in one browser in one run:

- explorer: the time from navigation to ``explorer.ready`` (JSON parsed, arrays decoded, hover grid built),
  one full redraw (``explorer.paint()``, median of 30), one hover (a ``mousemove`` handled: nearest point found
  and tooltip filled, median of 300 at random places) and one zoom step (a ``wheel`` event and the redraw it
  asks for, median of 30);
- Plotly (only with ``--plotly PATH/plotly.min.js``, e.g. from the ``plotly`` wheel's ``package_data``): the
  time to ``Plotly.newPlot`` resolving, and one zoom (``Plotly.relayout`` of both axes, median of 10).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_explorer.py [--points 100000 --classes 100 --dim 8
--plotly /tmp/plotly.min.js --json out.json]``. Needs playwright and Chromium (``METRICLEARN_CHROMIUM`` or
``chromium`` on PATH). Results: BENCHMARKS.md, "Explorer", and docs/reports.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from metriclearn._atomic import write_json
from metriclearn._progress import set_quiet
from metriclearn.reports.explorer import write_explorer

PLOTLY_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><script>{js}</script></head><body>
<div id="plot" style="width:900px;height:650px"></div><script>
const t0 = performance.now(), d = {data};
Plotly.newPlot("plot", [{{type: "scattergl", mode: "markers", x: d.x, y: d.y, text: d.text,
  hoverinfo: "text", marker: {{size: 4, color: d.c, colorscale: "Portland"}}}}])
  .then(() => {{ window.readyMs = performance.now() - t0; }});
</script></body></html>"""


def data(points: int, classes: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Uneven Gaussian classes in ``dim`` dimensions and a 2-D layout (their first two coordinates)."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(0.5, 1.5, classes)
    y = rng.choice(classes, size=points, p=weights / weights.sum())
    x = (rng.normal(0, 4, (classes, dim))[y] + rng.normal(size=(points, dim))).astype(np.float32)
    return x, y, x[:, :2].copy()


def median_ms(page, script: str) -> float:
    return float(page.evaluate(script))


def measure_explorer(browser, path: Path) -> dict[str, float]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    start = time.perf_counter()
    page.goto(path.resolve().as_uri())
    page.wait_for_function("window.explorer && window.explorer.ready && window.explorer.draws > 0", timeout=120_000)
    load_s = time.perf_counter() - start
    paint = median_ms(page, """() => { const t = []; for (let r = 0; r < 30; r++) { const s = performance.now();
        explorer.paint(); t.push(performance.now() - s); } t.sort((a, b) => a - b); return t[15]; }""")
    hover = median_ms(page, """() => { const c = document.getElementById('map'), b = c.getBoundingClientRect();
        const t = []; for (let r = 0; r < 300; r++) { const e = new MouseEvent('mousemove', {bubbles: true,
          clientX: b.left + Math.random() * b.width, clientY: b.top + Math.random() * b.height});
          const s = performance.now(); c.dispatchEvent(e); t.push(performance.now() - s); }
        t.sort((a, b) => a - b); return t[150]; }""")
    zoom = median_ms(page, """() => { const c = document.getElementById('map'), b = c.getBoundingClientRect();
        const t = []; for (let r = 0; r < 30; r++) { const s = performance.now();
          c.dispatchEvent(new WheelEvent('wheel', {deltaY: r % 2 ? 120 : -120, bubbles: true, cancelable: true,
            clientX: b.left + b.width / 2, clientY: b.top + b.height / 2})); explorer.paint();
          t.push(performance.now() - s); } t.sort((a, b) => a - b); return t[15]; }""")
    page.close()
    if errors:
        raise RuntimeError(f"explorer page errors: {errors}")
    return {"load_s": load_s, "redraw_ms": paint, "hover_ms": hover, "zoom_ms": zoom}


def measure_plotly(browser, plotly_js: Path, layout: np.ndarray, y: np.ndarray, work: Path) -> dict[str, float]:
    payload = {"x": layout[:, 0].round(4).tolist(), "y": layout[:, 1].round(4).tolist(), "c": y.tolist(),
               "text": [f"row {i}" for i in range(len(y))]}
    page_path = work / "plotly.html"
    page_path.write_text(PLOTLY_PAGE.format(js=plotly_js.read_text(encoding="utf-8"), data=json.dumps(payload)))
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    start = time.perf_counter()
    page.goto(page_path.as_uri())
    page.wait_for_function("window.readyMs !== undefined", timeout=300_000)
    load_s = time.perf_counter() - start
    zoom = page.evaluate("""async () => { const t = [], d = document.getElementById('plot');
        for (let r = 0; r < 10; r++) { const s = performance.now(), f = r % 2 ? 1 : 0.5;
          await Plotly.relayout(d, {'xaxis.range': [-10 * f, 10 * f], 'yaxis.range': [-10 * f, 10 * f]});
          t.push(performance.now() - s); } t.sort((a, b) => a - b); return t[5]; }""")
    page.close()
    return {"load_s": load_s, "zoom_ms": float(zoom), "file_mb": page_path.stat().st_size / 1e6,
            "bundle_mb": plotly_js.stat().st_size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument("--plotly", type=Path, default=None, help="plotly.min.js for the side-by-side run")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--page", type=Path, default=None,
                        help="keep explorer.html here; when it exists, measure it instead of writing it again")
    args = parser.parse_args()
    set_quiet(True)
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("METRICLEARN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no Chromium: apt-get install chromium, or set METRICLEARN_CHROMIUM")
    x, y, layout = data(args.points, args.classes, args.dim)
    results: dict[str, object] = {"points": args.points, "classes": args.classes, "dim": args.dim}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        work = Path(tmp)
        page = args.page or work / "explorer.html"
        if not page.exists():
            start = time.perf_counter()
            write_explorer(page, x, y, {"layout": layout}, classes=[f"c{i}" for i in range(args.classes)])
            results["write_s"] = time.perf_counter() - start
        results["file_mb"] = page.stat().st_size / 1e6
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        results["browser"] = browser.version
        results["explorer"] = measure_explorer(browser, page)
        if args.plotly is not None:
            results["plotly"] = measure_plotly(browser, args.plotly, layout, y, work)
        browser.close()
    print(json.dumps(results, indent=2))
    if args.json is not None:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
