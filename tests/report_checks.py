"""Checks of a written report shared by the report and demo tests: every image the HTML references
exists and is a non-blank PNG, and every number it shows equals evaluation.json's."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import image as mpimg

from dawnchorus.report.figures import format_metric

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class ParsedReport:
    """What a report page shows: image sources, tagged metric cells, section ids, notes."""

    images: list[str] = field(default_factory=list)
    metrics: dict[str, str] = field(default_factory=dict)
    sections: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)


class _ReportParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parsed = ParsedReport()
        self._metric: str | None = None
        self._in_note = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "img":
            self.parsed.images.append(attributes.get("src") or "")
        if tag in {"link", "script"} or (tag == "img" and "://" in (attributes.get("src") or "")):
            self.parsed.external.append(f"<{tag} {attributes}>")
        if tag == "section":
            self.parsed.sections.append(attributes.get("id") or "")
        if "data-metric" in attributes:
            self._metric = attributes["data-metric"]
            self.parsed.metrics[self._metric] = ""
        if tag == "p" and "note" in (attributes.get("class") or ""):
            self._in_note = True
            self.parsed.notes.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._metric = None
        if tag == "p":
            self._in_note = False

    def handle_data(self, data: str) -> None:
        if self._metric is not None:
            self.parsed.metrics[self._metric] += data.strip()
        if self._in_note:
            self.parsed.notes[-1] += data


def parse_report(report: Path) -> ParsedReport:
    parser = _ReportParser()
    parser.feed(report.read_text(encoding="utf-8"))
    return parser.parsed


def assert_images_are_non_blank_pngs(report: Path, parsed: ParsedReport) -> None:
    """Every <img> is a relative path to an existing PNG with more than one colour in it."""
    assert parsed.images, f"{report}: no images"
    for source in parsed.images:
        assert not Path(source).is_absolute() and "://" not in source, f"{source}: not a relative path"
        path = report.parent / source
        assert path.is_file(), f"{report}: image {source} does not exist"
        assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path}: not a PNG file"
        pixels = mpimg.imread(path)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 50, f"{path}: shape {pixels.shape}"
        assert float(np.std(pixels[..., :3])) > 0, f"{path}: blank image"


def value_at(evaluation: dict[str, Any], dotted: str) -> Any:
    """``evaluation["noisy"]["per_class"][3]["f1"]`` for ``"noisy.per_class.3.f1"``."""
    node: Any = evaluation
    for part in dotted.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def assert_metrics_match(parsed: ParsedReport, evaluation: dict[str, Any]) -> None:
    """Every number tagged in the page equals evaluation.json's at the precision shown."""
    assert parsed.metrics, "the report shows no evaluation numbers"
    for dotted, shown in parsed.metrics.items():
        assert shown == format_metric(value_at(evaluation, dotted)), f"{dotted}: shows {shown}"


def check_report(report: Path, evaluation_path: Path | None = None) -> ParsedReport:
    """All static checks of one report; returns what it shows."""
    assert report.is_file(), f"{report} was not written"
    parsed = parse_report(report)
    assert not parsed.external, f"references outside the report folder: {parsed.external}"
    assert_images_are_non_blank_pngs(report, parsed)
    if evaluation_path is not None:
        assert_metrics_match(parsed, json.loads(evaluation_path.read_text()))
    return parsed
