"""The feature browser: a static site of one :class:`InspectReport`, readable without a server,
a network or JavaScript (``index.html``, one ``latents/<index>.html`` per latent, ``style.css``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from html import escape
from importlib import resources
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from sae_gated_plugin.inspect.data import Context, InspectReport, LatentReport

TOP_TOKENS = 5
PREVIEW_BEFORE = 8
PREVIEW_AFTER = 4
SVG_WIDTH = 360
SVG_HEIGHT = 120


@dataclass(frozen=True)
class Bar:
    """One bar of an inline-SVG histogram, in SVG user units."""

    x: float
    y: float
    width: float
    height: float
    label: str


def visible(token: str) -> str:
    """A token with its whitespace made visible: spaces as ``·``, newlines as ``↵``."""
    if not token:
        return "∅"
    return token.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")


def in_context(token: str) -> str:
    """A token as shown inside running text: spaces kept (the page preserves them),
    line breaks and tabs shown as symbols."""
    return token.replace("\n", "↵").replace("\t", "⇥").replace("\r", "␍")


def alpha(value: float, maximum: float) -> str:
    """The highlight opacity of an activation: ``value / maximum`` clipped to [0, 1]."""
    if maximum <= 0 or value <= 0:
        return "0"
    return f"{min(value / maximum, 1.0):.2f}"


@lru_cache(maxsize=1 << 16)
def token_html(token: str) -> str:
    """A token escaped for HTML text, as shown inside running text (tokens repeat: cached)."""
    return escape(in_context(token), quote=False)


def highlighted(
    context: Context, maximum: float, start: int = 0, stop: int | None = None
) -> Markup:
    """The tokens ``start:stop`` of a context as escaped spans shaded by activation, the value
    in each ``title``, the qualifying token of class ``q``.

    Built here rather than in a template: the spans are most of every page and a template
    loop per token makes a large site slow to write.
    """
    parts = []
    tokens, values = context.tokens, context.values
    for i in range(start, min(len(tokens), len(tokens) if stop is None else stop)):
        value = values[i]
        if value == 0:
            attrs = ' title="0"'
        else:
            attrs = (
                f' title="{value:.3g}" style="background:rgba(255,102,0,{alpha(value, maximum)})"'
            )
        if i == context.qualifying_index:
            attrs += ' class="q"'
        parts.append(f"<span{attrs}>{token_html(tokens[i])}</span>")
    return Markup("".join(parts))


def histogram_bars(edges: list[float], counts: list[int]) -> list[Bar]:
    """The bars of a histogram scaled into a ``SVG_WIDTH`` x ``SVG_HEIGHT`` box."""
    if not counts or len(edges) != len(counts) + 1:
        return []
    tallest = max(max(counts), 1)
    width = SVG_WIDTH / len(counts)
    bars = []
    for i, count in enumerate(counts):
        height = SVG_HEIGHT * count / tallest
        label = f"{edges[i]:.3g} to {edges[i + 1]:.3g}: {count}"
        bars.append(Bar(i * width, SVG_HEIGHT - height, width, height, label))
    return bars


def preview(latent: LatentReport) -> tuple[Context, int, int] | None:
    """The top context of a latent and the slice of it shown in the index."""
    for group in latent.groups:
        if group.contexts:
            context = group.contexts[0]
            start = max(context.qualifying_index - PREVIEW_BEFORE, 0)
            return context, start, context.qualifying_index + PREVIEW_AFTER + 1
    return None


def search_text(latent: LatentReport) -> str:
    """The lower-cased tokens the index's search box matches a latent against."""
    tokens = [token for token, _ in latent.promoted[:TOP_TOKENS]]
    tokens += [c.tokens[c.qualifying_index] for g in latent.groups for c in g.contexts]
    return " ".join(sorted({token.strip().lower() for token in tokens if token.strip()}))


def environment() -> Environment:
    """The Jinja environment of the site's templates (autoescaped)."""
    env = Environment(
        loader=PackageLoader("sae_gated_plugin.inspect", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(visible=visible)
    env.globals.update(
        highlighted=highlighted,
        histogram_bars=histogram_bars,
        svg_width=SVG_WIDTH,
        svg_height=SVG_HEIGHT,
    )
    return env


def write_site(report: InspectReport, folder: Path) -> Path:
    """Write the browser of ``report`` into ``folder`` and return its ``index.html``.

    ``folder`` is expected to be a fresh staging folder the caller moves into place, so the
    files are written directly rather than one by one atomically.
    """
    env = environment()
    latents = sorted(report.latents, key=lambda latent: latent.index)
    inspected = {latent.index for latent in latents}
    (folder / "latents").mkdir(parents=True, exist_ok=True)
    css = resources.files("sae_gated_plugin.inspect").joinpath("templates/style.css")
    (folder / "style.css").write_text(css.read_text(encoding="utf-8"), encoding="utf-8")

    page = env.get_template("latent.html")
    for position, latent in enumerate(latents):
        previous = latents[position - 1].index if position > 0 else None
        following = latents[position + 1].index if position + 1 < len(latents) else None
        html = page.render(
            report=report,
            latent=latent,
            previous=previous,
            following=following,
            inspected=inspected,
            root="../",
        )
        (folder / "latents" / f"{latent.index}.html").write_text(html, encoding="utf-8")

    rows = [(latent, preview(latent), search_text(latent)) for latent in latents if not latent.dead]
    index = env.get_template("index.html").render(
        report=report,
        rows=rows,
        dead=[latent for latent in latents if latent.dead],
        top_tokens=TOP_TOKENS,
        root="",
    )
    path = folder / "index.html"
    path.write_text(index, encoding="utf-8")
    return path
