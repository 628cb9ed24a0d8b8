"""The feature browser: its pages exist, parse, show what they promise, and reach nothing
outside the folder."""

from __future__ import annotations

import time
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

from conftest import TRICKY_TOKEN, build_report

from sae_gated_plugin.inspect.data import InspectReport
from sae_gated_plugin.inspect.site import visible, write_site

VOID = {"meta", "link", "input", "br", "img", "hr"}


class Page(HTMLParser):
    """Every start tag with its attributes and the text inside it; checks tags are balanced."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.open: list[str] = []
        self.texts: list[str] = []
        self.feed(text)
        self.close()
        assert self.open == [], f"unclosed tags: {self.open}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [
            a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())
        ]

    @property
    def text(self) -> str:
        return "".join(self.texts)


def load(path: Path) -> tuple[str, Page]:
    text = path.read_text(encoding="utf-8")
    return text, Page(text)


def test_the_index_lists_live_latents_in_a_table_and_dead_ones_apart(
    report: InspectReport, tmp_path: Path
) -> None:
    index = write_site(report, tmp_path)
    assert index == tmp_path / "index.html"
    text, page = load(index)
    rows = page.find("tr")
    live = [row for row in rows if "data-index" in row]
    assert [row["data-index"] for row in live] == ["0", "3", "5"]
    assert {row["data-freq"] for row in live} == {"0.01", "0.13", "0.21"}
    assert page.find("section", id="dead")
    dead_part = text[text.index('id="dead"') :]
    assert 'href="latents/7.html"' in dead_part
    assert 'data-index="7"' not in text
    for header in ("SmolLM2-135M", "blocks.4.hook_resid_post", "wiki", "1,000", "16"):
        assert header in page.text
    assert page.find("script") and page.find("input", id="search")
    assert "hidden" in page.find("p", id="tools")[0]  # shown only by the script


def test_every_latent_has_a_page_linked_from_the_index(
    report: InspectReport, tmp_path: Path
) -> None:
    _, page = load(write_site(report, tmp_path))
    hrefs = {a["href"] for a in page.find("a")}
    for latent in report.latents:
        assert f"latents/{latent.index}.html" in hrefs
        assert (tmp_path / "latents" / f"{latent.index}.html").is_file()


def test_a_latent_page_highlights_tokens_and_draws_histograms(
    report: InspectReport, tmp_path: Path
) -> None:
    write_site(report, tmp_path)
    _, page = load(tmp_path / "latents" / "3.html")
    spans = [a for a in page.find("span") if "title" in a]
    assert len(spans) == sum(len(c.tokens) for g in report.latents[1].groups for c in g.contexts)
    assert {"4", "0", "1"} <= {span["title"] for span in spans}
    peak = [s for s in spans if s["title"] == "4"]
    assert peak and "rgba(255,102,0,1.00)" in (peak[0]["style"] or "")
    assert all("style" not in s for s in spans if s["title"] == "0")
    assert len(page.find("span", **{"class": "q"})) == 3  # one qualifying token per context
    assert len(page.find("svg")) == 2
    assert len(page.find("rect")) == 8
    assert page.find("tr", **{"class": "gate"})
    assert "Top activations" in page.text and "25.0%" in page.text


def test_latent_pages_link_back_prev_next_and_to_inspected_neighbours(
    report: InspectReport, tmp_path: Path
) -> None:
    write_site(report, tmp_path)
    _, first = load(tmp_path / "latents" / "0.html")
    hrefs = [a["href"] for a in first.find("a")]
    assert "../index.html" in hrefs and "3.html" in hrefs
    assert not first.find("a", rel="prev") and first.find("a", rel="next")[0]["href"] == "3.html"
    assert "9.html" not in hrefs  # latent 9 is a neighbour but was not inspected
    assert "9" in first.text
    _, dead = load(tmp_path / "latents" / "7.html")
    assert dead.find("a", rel="prev")[0]["href"] == "5.html" and not dead.find("a", rel="next")
    assert "never fired" in dead.text
    assert not dead.find("tr", **{"class": "gate"})


def test_token_text_is_escaped_and_whitespace_made_visible(
    report: InspectReport, tmp_path: Path
) -> None:
    write_site(report, tmp_path)
    for path in (tmp_path / "index.html", tmp_path / "latents" / "0.html"):
        text, page = load(path)
        assert TRICKY_TOKEN not in text
        assert "&lt;b&gt;&amp;" in text
        assert TRICKY_TOKEN in page.text  # the parser unescapes it back to the token
        assert "↵" in page.text and "·cat" in page.text
    assert visible(" a\tb\n") == "·a⇥b↵" and visible("") == "∅"


def test_the_site_reaches_nothing_outside_its_folder(report: InspectReport, tmp_path: Path) -> None:
    write_site(report, tmp_path)
    files = list(tmp_path.rglob("*"))
    assert (tmp_path / "style.css").is_file()
    for path in files:
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert "http://" not in text and "https://" not in text, path
        if path.suffix == ".html":
            for _, attrs in Page(path.read_text(encoding="utf-8")).tags:
                for name in ("href", "src"):
                    target = attrs.get(name) or ""
                    assert ":" not in target and not target.startswith("/"), (path, target)


def test_a_large_site_is_written_quickly(tmp_path: Path) -> None:
    small = build_report()
    template = small.latents[0]
    latents = [replace(template, index=i, nearest=[(i + 1, 0.5)]) for i in range(2304)]
    big = replace(small, latents=latents, d_sae=2304)
    start = time.perf_counter()
    write_site(big, tmp_path)
    assert time.perf_counter() - start < 20
    assert len(list((tmp_path / "latents").iterdir())) == 2304
