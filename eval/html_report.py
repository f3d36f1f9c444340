"""report.html: the report folder as one page a browser opens offline.

The page is assembled from what the evaluation produced: every `## ` section of report.md becomes a section of the
page (its tables, figures and text rendered from Markdown), so a new section there (an explanation metric, a
figure) appears here without a change to this module; and when `gradcam/index.csv` exists, a Grad-CAM gallery
follows: every overlay of the index, grouped by level, with its rank, bagged probability, label and outcome (true
or false positive, or negative, from the image's probability against the level's threshold in metrics.json, the
rule of the pointing game), filtered by level and by outcome.

Nothing is fetched from a network: the style sheet and the script are inline and written here, figures and
overlays are the files beside the page (relative links; keep the folder together). Every image the page shows is
checked to exist.

    write_html_report(Path("reports/paper"))   # reports/paper/report.html
"""

from __future__ import annotations

import html
import json
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import markdown
import pandas as pd

from hnp.errors import HnpError
from hnp.files import atomic_write_text

log = logging.getLogger("hnp.eval")
GALLERY_ID = "gradcam-gallery"
OUTCOMES = {"TP": "true positive", "FP": "false positive", "FN": "false negative", "TN": "true negative"}
_SRC = re.compile(r'<img\b[^>]*?\bsrc="([^"]*)"[^>]*>')


@dataclass(frozen=True)
class Section:
    """One section of the page: an anchor, its heading and its HTML body."""

    anchor: str
    heading: str
    body: str


def split_markdown(text: str) -> tuple[str, list[tuple[str, str]]]:
    """report.md's title (`# `) and its `## ` sections as (heading, Markdown body), in order."""
    title, sections, heading, lines = "Evaluation report", [], None, []
    for line in text.splitlines():
        if line.startswith("# ") and heading is None and not sections:
            title = line[2:].strip()
        elif line.startswith("## "):
            if heading is not None:
                sections.append((heading, "\n".join(lines)))
            heading, lines = line[3:].strip(), []
        elif heading is not None:
            lines.append(line)
    if heading is not None:
        sections.append((heading, "\n".join(lines)))
    return title, sections


def anchor_of(heading: str, taken: set[str]) -> str:
    """A unique, URL-safe id for a heading."""
    base = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") or "section"
    anchor, n = base, 2
    while anchor in taken:
        anchor, n = f"{base}-{n}", n + 1
    taken.add(anchor)
    return anchor


def markdown_sections(report_dir: Path, text: str) -> tuple[str, list[Section]]:
    """The page title and report.md's sections rendered to HTML, images checked against the folder."""
    title, parts = split_markdown(text)
    taken: set[str] = {GALLERY_ID}
    sections = []
    for heading, body in parts:
        rendered = markdown.markdown(body, extensions=["tables"], output_format="html")
        sections.append(Section(anchor_of(heading, taken), heading, _checked_images(rendered, report_dir)))
    return title, sections


def _checked_images(rendered: str, report_dir: Path) -> str:
    """Drop (with a warning) any <img> that is not a file in the report folder: the page must not reach out."""

    def check(match: re.Match[str]) -> str:
        source = html.unescape(match.group(1))
        if _local_file(report_dir, source) is None:
            log.warning("report.html: leaving out image %r (not a file in %s)", source, report_dir)
            return ""
        return match.group(0).replace("<img ", '<img class="figure" ', 1)

    return _SRC.sub(check, rendered)


def _local_file(report_dir: Path, source: str) -> Path | None:
    """The file a relative link names inside the report folder, or None (absolute, a URL, missing, outside)."""
    if not source or "://" in source or source.startswith(("/", "data:", "//")):
        return None
    path = (report_dir / source).resolve()
    inside = path.is_relative_to(report_dir.resolve())
    return path if inside and path.is_file() else None


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, or None if it is not a PNG; lets the page reserve the space."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    if len(head) < 24 or not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return struct.unpack(">II", head[16:24])


def outcome(label: int, probability: float, threshold: float) -> str:
    """TP / FP / FN / TN of one image at its level: positive when `probability >= threshold`."""
    called = probability >= threshold
    return ("TP" if called else "FN") if label == 1 else ("FP" if called else "TN")


def gallery_cards(report_dir: Path, thresholds: dict[str, float]) -> pd.DataFrame:
    """gradcam/index.csv with each row's outcome and overlay size; rows whose overlay is missing are left out
    with a warning.

    Args:
        report_dir: the report folder.
        thresholds: the decision threshold per target (metrics.json's).
    """
    index_path = report_dir / "gradcam" / "index.csv"
    index = pd.read_csv(index_path)
    needed = {"key", "level", "rank", "probability", "label", "file"}
    if needed - set(index.columns):
        raise HnpError(f"{index_path}: missing columns {', '.join(sorted(needed - set(index.columns)))}")
    unknown = sorted(set(index["level"]) - set(thresholds))
    if unknown:
        raise HnpError(f"{index_path}: level {unknown[0]} has no threshold in the report (it has "
                       f"{', '.join(thresholds)})")
    sources = [f"gradcam/{file}" for file in index["file"]]
    files = [_local_file(report_dir, source) for source in sources]
    missing = [source for source, file in zip(sources, files, strict=True) if file is None]
    if missing:
        log.warning("report.html: %d Grad-CAM overlays listed in %s are missing (e.g. %s); left out of the gallery",
                    len(missing), index_path, missing[0])
    cards = index.assign(source=sources, size=[png_size(f) if f else None for f in files],
                         outcome=[outcome(int(r.label), float(r.probability), thresholds[r.level])
                                  for r in index.itertuples()])
    return cards[[f is not None for f in files]].sort_values(["level", "rank"], kind="stable")


def gallery_section(cards: pd.DataFrame, levels: list[str]) -> Section:
    """The gallery: filters (level, outcome), a count, and per level a grid of overlay cards."""
    level_options = "".join(f'<option value="{html.escape(lv)}">{html.escape(lv)}</option>' for lv in levels)
    outcome_options = "".join(f'<option value="{code}">{name}</option>' for code, name in OUTCOMES.items())
    groups = []
    for level in levels:
        part = cards[cards["level"] == level]
        if part.empty:
            continue
        figures = "".join(_card(row) for row in part.itertuples())
        groups.append(f'<section class="level-group" data-level="{html.escape(level)}"><h3>{html.escape(level)}'
                      f'</h3><div class="grid">{figures}</div></section>')
    body = (
        "<p>Grad-CAM overlays of the test images the models were most confident about, per level (rank 1 = highest "
        "bagged probability). Outcome: the image's probability against the level's threshold (metrics.json), as in "
        "the pointing game. Click an overlay for the full picture.</p>"
        '<div class="filters"><label>Level <select id="filter-level"><option value="all">all</option>'
        f'{level_options}</select></label> <label>Outcome <select id="filter-outcome"><option value="all">all'
        f'</option>{outcome_options}</select></label> <span id="gallery-count" aria-live="polite"></span></div>'
        + "".join(groups)
    )
    return Section(GALLERY_ID, "Grad-CAM gallery", body)


def _card(row: Any) -> str:
    source = html.escape(row.source)
    size = f' width="{row.size[0]}" height="{row.size[1]}"' if row.size else ""
    label = "HNP" if int(row.label) == 1 else "no HNP"
    view = getattr(row, "view", None)  # a fusion run maps each film of a study: its view tells them apart
    film = f" · {html.escape(view)}" if isinstance(view, str) else ""
    caption = (f"#{int(row.rank)} · {html.escape(str(row.key))}{film}<br>p = {float(row.probability):.3f} · label "
               f"{label}<br><b>{OUTCOMES[row.outcome]}</b>")
    level = html.escape(row.level)
    return (f'<figure class="card {row.outcome}" data-level="{level}" data-outcome="{row.outcome}">'
            f'<a href="{source}"><img src="{source}"{size} loading="lazy" alt="Grad-CAM overlay, {level} rank '
            f'{int(row.rank)}"></a><figcaption>{caption}</figcaption></figure>')


def render_page(title: str, sections: list[Section]) -> str:
    """The whole page: inline style and script, a table of contents, the sections in order."""
    toc = "".join(f'<li><a href="#{s.anchor}">{html.escape(s.heading)}</a></li>' for s in sections)
    body = "".join(f'<section id="{s.anchor}"><h2>{html.escape(s.heading)}</h2>{s.body}</section>' for s in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
            f"<header><h1>{html.escape(title)}</h1><nav><ul>{toc}</ul></nav></header><main>{body}</main>"
            f"<script>{_SCRIPT}</script></body></html>\n")


def write_html_report(report_dir: Path, thresholds: dict[str, float] | None = None) -> Path:
    """Write `report_dir/report.html` from report.md and gradcam/index.csv (those present).

    Args:
        report_dir: a report folder written by `hnp eval` (report.md at least).
        thresholds: the decision threshold per target, in the report's order, for the gallery's outcomes; read
            from the folder's metrics.json when not given (`hnp eval` gives them: it writes metrics.json last).
    """
    report_md = report_dir / "report.md"
    if not report_md.is_file():
        raise HnpError(f"{report_md}: not found; report.html is built from it")
    title, sections = markdown_sections(report_dir, report_md.read_text(encoding="utf-8"))
    if (report_dir / "gradcam" / "index.csv").is_file():
        if thresholds is None:
            metrics = json.loads((report_dir / "metrics.json").read_text())["metrics"]
            thresholds = {target: row["threshold"] for target, row in metrics.items()}
        cards = gallery_cards(report_dir, thresholds)
        sections.append(gallery_section(cards, [target for target in thresholds if target in set(cards["level"])]))
    return atomic_write_text(report_dir / "report.html", render_page(title, sections))


_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#1f3a5f;color:#fff;padding:12px 24px}header h1{font-size:20px;margin:0 0 6px}
nav ul{list-style:none;margin:0;padding:0;display:flex;flex-wrap:wrap;gap:4px 16px}nav a{color:#cfe3ff}
main{padding:8px 24px 48px;max-width:1500px}section{margin-top:20px}h2{border-bottom:1px solid #ccd;padding-bottom:4px}
table{border-collapse:collapse;font-size:13px;margin:8px 0;background:#fff}
th,td{border:1px solid #d6d6de;padding:3px 7px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{background:#eef1f6}tbody tr:nth-child(even){background:#f6f7fa}
.figure{max-width:100%;height:auto;background:#fff;border:1px solid #ddd}
.filters{position:sticky;top:0;background:#fafafa;padding:8px 0;z-index:1}select{font:inherit}
#gallery-count{margin-left:12px;color:#555}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:10px}
.card{margin:0;background:#fff;border:1px solid #ddd;border-top:4px solid #999;padding:6px;font-size:12px}
.card img{width:100%;height:auto;display:block}.card.TP{border-top-color:#1a7f37}.card.FP{border-top-color:#cf222e}
.card.FN{border-top-color:#bf8700}.card.TN{border-top-color:#57606a}[hidden]{display:none!important}
"""

_SCRIPT = """
(function () {
  var level = document.getElementById("filter-level"), outcome = document.getElementById("filter-outcome");
  if (!level || !outcome) return;
  var cards = document.querySelectorAll(".card"), groups = document.querySelectorAll(".level-group");
  function apply() {
    var shown = 0;
    cards.forEach(function (card) {
      var keep = (level.value === "all" || card.dataset.level === level.value) &&
                 (outcome.value === "all" || card.dataset.outcome === outcome.value);
      card.hidden = !keep;
      if (keep) shown += 1;
    });
    groups.forEach(function (group) { group.hidden = !group.querySelector(".card:not([hidden])"); });
    document.getElementById("gallery-count").textContent = shown + " of " + cards.length + " overlays shown";
  }
  level.addEventListener("change", apply);
  outcome.addEventListener("change", apply);
  apply();
})();
"""
