"""The HTML report: effective length, ATC summary, and a headless-Chromium screenshot showing the figures."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from longreach.bench.report import by_family, effective_length, family_markdown, markdown, render, summarize
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
    # every family of the run has its section, with its paper
    assert "Tasks by family" in page
    for family, paper in (("InfiniteBench", "Landmark Attention"), ("NeedleBench", "arXiv 2407.11963"),
                          ("language modelling", "YaRN")):
        assert f"<h3>{family}</h3>" in page and paper in page


def test_by_family_groups_cells_under_their_family_and_paper():
    cells = [
        {"task": "passkey", "task_spec": "passkey", "method": "none", "length": 1024, "score": 1.0,
         "status": "done", "higher_is_better": True, "seconds_per_sample": 2.0},
        {"task": "passkey", "task_spec": "passkey", "method": "none", "length": 2048, "score": 0.5,
         "status": "done", "higher_is_better": True, "seconds_per_sample": 4.0},
        {"task": "vt", "task_spec": "vt", "method": "yarn", "length": 1024, "score": None, "status": "refused",
         "higher_is_better": True},
        {"task": "ppl", "task_spec": "ppl", "method": "none", "length": 1024, "score": 9.5, "status": "done",
         "higher_is_better": False},
        {"task": "my-own", "task_spec": "my-own", "method": "none", "length": 1024, "score": 0.0, "status": "done",
         "higher_is_better": True},
    ]
    groups = by_family(cells)
    assert [g["family"] for g in groups] == ["InfiniteBench", "language modelling", "other", "RULER"]
    inf = groups[0]
    assert "2305.16300" in inf["paper"] and inf["lengths"] == [1024, 2048]
    assert inf["rows"] == [{"task": "passkey", "method": "none", "scores": {1024: "1.00", 2048: "0.50"},
                            "seconds": 3.0}]
    assert groups[1]["rows"][0]["scores"] == {1024: "ppl 9.50"}
    assert groups[3]["rows"][0]["scores"] == {1024: "refused"} and groups[3]["rows"][0]["seconds"] is None
    md = family_markdown(cells)
    assert "### RULER" in md and "| passkey | none | 1.00 | 0.50 | 3.0 |" in md and "| vt | yarn | refused |  |" in md


def test_markdown_report_lists_families(results):
    md = markdown(results)
    assert "## Tasks by family" in md and "### NeedleBench" in md and md.index("## Tasks by family") < md.index("## Cells")


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
