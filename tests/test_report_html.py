"""report.html: assembled from what the report folder holds, offline, and working in a real headless Chromium (no
console errors, no failed or outside requests, every image displayed, the gallery's filters)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from support.browser import Browser, find_chromium

from eval.html_report import write_html_report

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (.ci/run installs "
                                    "Debian's chromium package; `apt-get install -y chromium`)")

# (level, rank, probability, label, expected outcome) at thresholds L4-5 0.5, L5-S1 0.7
CARDS = [("L4-5", 1, 0.9, 1, "TP"), ("L4-5", 2, 0.8, 0, "FP"), ("L4-5", 3, 0.4, 1, "FN"), ("L4-5", 4, 0.3, 0, "TN"),
         ("L5-S1", 1, 0.75, 1, "TP"), ("L5-S1", 2, 0.72, 0, "FP")]
REPORT_MD = """# Evaluation of run demo

## Test set (paper Table 5 layout)

Per patient.

| Level | ROC AUC |
|---|---|
| L4-5 | 0.910 |

![ROC curves](roc.png)

## Pointing game (phantom ground truth)

Share of peaks in the level's region: **80.0%**.
"""


def _png(path: Path, seed: int, size: tuple[int, int] = (64, 50)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    path.write_bytes(cv2.imencode(".png", picture)[1].tobytes())


def _report_folder(root: Path) -> Path:
    """A report folder as `hnp eval` leaves it, as far as report.html reads it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "report.md").write_text(REPORT_MD)
    _png(root / "roc.png", 0, (120, 120))
    (root / "metrics.json").write_text(json.dumps({"metrics": {"L4-5": {"threshold": 0.5},
                                                               "L5-S1": {"threshold": 0.7}}}))
    rows = []
    for level, rank, probability, label, _ in CARDS:
        file = f"{level}/{rank:04d}_r{rank:07d}.png"
        _png(root / "gradcam" / file, rank)
        rows.append({"key": f"r{rank:07d}", "patient": "pseudo", "level": level, "rank": rank,
                     "probability": probability, "label": label, "file": file, "heatmap": file[:-4] + ".npy"})
    pd.DataFrame(rows).to_csv(root / "gradcam" / "index.csv", index=False)
    return root


def test_page_holds_each_report_section_then_the_gallery(tmp_path: Path) -> None:
    page = write_html_report(_report_folder(tmp_path / "r")).read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings == ["Test set (paper Table 5 layout)", "Pointing game (phantom ground truth)", "Grad-CAM gallery"]
    assert "<td>0.910</td>" in page and "<strong>80.0%</strong>" in page
    assert re.findall(r'href="#([^"]+)"', page) == ["test-set-paper-table-5-layout",
                                                     "pointing-game-phantom-ground-truth", "gradcam-gallery"]
    cards = re.findall(r'data-level="([^"]+)" data-outcome="([^"]+)"', page)
    assert cards == [(level, outcome) for level, _, _, _, outcome in CARDS]
    assert 'width="50" height="64"' in page  # the overlay's size, read from its header


def test_a_new_report_section_appears_without_code_changes(tmp_path: Path) -> None:
    folder = _report_folder(tmp_path / "r")
    _png(folder / "faithfulness.png", 9)
    added = "\n## Faithfulness\n\nDeletion curves.\n\n![curves](faithfulness.png)\n"
    (folder / "report.md").write_text(REPORT_MD + added)
    page = write_html_report(folder).read_text()
    assert re.findall(r"<h2>(.*?)</h2>", page)[2] == "Faithfulness" and 'src="faithfulness.png"' in page


def test_nothing_outside_the_folder_is_linked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _report_folder(tmp_path / "r")
    (folder / "report.md").write_text(REPORT_MD + "\n![remote](https://example.org/x.png)\n![gone](nothere.png)\n")
    (folder / "gradcam" / "L5-S1" / "0002_r0000002.png").unlink()
    with caplog.at_level(logging.WARNING, logger="hnp.eval"):
        page = write_html_report(folder).read_text()
    assert "example.org" not in page and "nothere.png" not in page and "L5-S1/0002_r0000002" not in page
    assert "leaving out image 'https://example.org/x.png'" in caplog.text and "1 Grad-CAM overlays" in caplog.text
    sources = re.findall(r'(?:src|href)="([^"#][^"]*)"', page)
    assert sources and all((folder / source).is_file() for source in sources)
    assert "<link" not in page and "<script src" not in page


def _load_cleanly(browser: Browser, page_path: Path) -> object:
    page = browser.open(page_path.resolve().as_uri())
    shown = page.evaluate("""(async () => {
        const images = [...document.images];
        for (const img of images) {  // scroll each into view, as a reader would: lazy overlays load then
            img.scrollIntoView();
            if (!img.complete) await new Promise(done => {
                img.addEventListener("load", done, {once: true}); img.addEventListener("error", done, {once: true}); });
        }
        return images.map(img => [img.getAttribute("src"), img.naturalWidth, img.getBoundingClientRect().width]);
    })()""")
    assert shown and all(natural > 0 and width > 0 for _, natural, width in shown), shown
    assert page.errors() == [] and page.failed_requests() == []
    assert all(url.startswith("file://") for url in page.requests()), page.requests()
    return page, shown


def _visible_cards(page: object, level: str, outcome: str) -> list[str]:
    return page.evaluate(f"""(() => {{
        for (const [id, value] of [["filter-level", "{level}"], ["filter-outcome", "{outcome}"]]) {{
            const select = document.getElementById(id);
            select.value = value;
            select.dispatchEvent(new Event("change"));
        }}
        return [...document.querySelectorAll(".card")].filter(card => card.offsetParent !== null)
            .map(card => card.dataset.level + ":" + card.dataset.outcome);
    }})()""")


@needs_chromium
def test_page_in_chromium_loads_cleanly_shows_every_image_and_filters(tmp_path: Path) -> None:
    folder = _report_folder(tmp_path / "r")
    write_html_report(folder)
    with Browser() as browser:
        page, shown = _load_cleanly(browser, folder / "report.html")
        assert len(shown) == 1 + len(CARDS)
        assert _visible_cards(page, "L4-5", "all") == ["L4-5:TP", "L4-5:FP", "L4-5:FN", "L4-5:TN"]
        assert _visible_cards(page, "L4-5", "FP") == ["L4-5:FP"]
        assert _visible_cards(page, "all", "FP") == ["L4-5:FP", "L5-S1:FP"]
        assert page.evaluate('document.getElementById("gallery-count").textContent') == "2 of 6 overlays shown"
        assert _visible_cards(page, "L5-S1", "TN") == []
        assert page.evaluate('document.querySelector(".level-group[data-level=\\"L5-S1\\"]").hidden') is True
        assert len(_visible_cards(page, "all", "all")) == len(CARDS)
        shot = page.screenshot(tmp_path / "page.png")
    picture = cv2.imread(str(shot))
    assert picture.shape[1] > 1000 and picture.shape[0] > 600 and picture.std() > 10  # not a blank page


@needs_chromium
def test_a_missing_image_would_be_caught_by_the_browser_check(tmp_path: Path) -> None:
    """The check itself can fail: an overlay deleted after the page was written shows as a failed request."""
    folder = _report_folder(tmp_path / "r")
    write_html_report(folder)
    (folder / "gradcam" / "L4-5" / "0003_r0000003.png").unlink()
    with Browser() as browser, pytest.raises(AssertionError):
        _load_cleanly(browser, folder / "report.html")


@pytest.mark.slow
@needs_chromium
def test_hnp_eval_report_html_in_chromium(clinical_reports: dict[str, Path]) -> None:
    report = clinical_reports["levels"]
    index = pd.read_csv(report / "gradcam" / "index.csv")
    with Browser() as browser:
        page, shown = _load_cleanly(browser, report / "report.html")
        sources = {source for source, _, _ in shown}
        assert {"roc.png", "pr.png", "calibration.png"} <= sources
        assert {f"gradcam/{file}" for file in index["file"]} <= sources
        headings = page.evaluate('[...document.querySelectorAll("h2")].map(h => h.textContent)')
        for heading in ("Calibration", "Operating points", "Precision-recall", "Pointing game (phantom ground truth)",
                        "Grad-CAM gallery"):
            assert heading in headings
        assert len(_visible_cards(page, "L4-5", "all")) == int((index["level"] == "L4-5").sum())
