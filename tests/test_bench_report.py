"""The HTML report: effective length, ATC summary, and a headless-Chromium screenshot showing the figures."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from longreach.bench.report import effective_length, render, summarize
from longreach.bench.runner import load_config, run_bench


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    import os

    os.environ["LONGREACH_CACHE"] = str(out / "cache")
    cfg = load_config(None, dict(backend="oracle:fail_above=2500", methods="none", tasks="passkey,atc,ppl",
                                 lengths="1k,2k,4k", depths=3, out=str(out)))
    run_bench(cfg, progress=False)
    return out


def test_effective_length_is_the_last_length_before_the_first_failure():
    assert effective_length({1024: 95, 2048: 90, 4096: 80, 8192: 99}, 85.6) == 2048
    assert effective_length({1024: 50, 2048: 90}, 85.6) is None
    assert effective_length({1024: 90, 2048: None}, 85.6) == 1024  # refused counts as failure


def test_summary_table_and_relative_threshold():
    cells = [
        {"method": "none", "length": 1024, "score": 0.6, "status": "done", "higher_is_better": True},
        {"method": "none", "length": 2048, "score": 0.55, "status": "done", "higher_is_better": True},
        {"method": "none", "length": 4096, "score": None, "status": "refused", "higher_is_better": True},
        {"method": "yarn", "length": 1024, "score": 0.6, "status": "done", "higher_is_better": True},
        {"method": "yarn", "length": 2048, "score": 0.58, "status": "done", "higher_is_better": True},
        {"method": "yarn", "length": 4096, "score": 0.53, "status": "done", "higher_is_better": True},
        {"method": "none", "length": 1024, "score": 9.0, "status": "done", "higher_is_better": False},  # ppl
    ]
    s = summarize(cells, threshold=85.6)
    assert s["table"]["none"] == pytest.approx({1024: 60.0, 2048: 55.0, 4096: 0.0})
    assert s["effective"] == {"none": None, "yarn": None}  # a small model starts below 85.6
    assert s["relative_threshold"] == pytest.approx(0.856 * 60)  # 51.36
    assert s["effective_relative"] == {"none": 2048, "yarn": 4096}


def test_report_html_is_self_contained(results):
    page = render(results).read_text()
    assert page.count("data:image/png;base64,") >= 2  # curves + one heatmap
    assert "Effective length" in page and "Ancestral Trace Challenge" in page and "Perplexity" in page
    assert "http://" not in page and "https://" not in page  # nothing to fetch


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(results, tmp_path):
    import numpy as np
    from PIL import Image

    html = render(results)
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1280,2400", "--hide-scrollbars", f"file://{html}"]
    subprocess.run(cmd, capture_output=True, timeout=120)
    assert shot.exists(), "chromium wrote no screenshot"
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)  # (H, W, 3)

    def share(hex_color: str) -> float:
        rgb = np.array([int(hex_color[i:i + 2], 16) for i in (1, 3, 5)])
        return float((np.abs(px - rgb).sum(-1) < 40).mean())

    # the heatmap shows green (passed at 1k-2k) and red (failed at 4k) cells
    assert share("#0CD79F") > 0.001 and share("#F0496E") > 0.001
    assert (px.sum(-1) < 600).mean() > 0.01  # text and figure lines, not a blank page
