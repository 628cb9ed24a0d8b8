"""README.md and docs/*.md stay true: the README's Python runs, every quoted `sae-gated` command
line runs (when quick and offline) or parses against the real CLI, and every link, anchor,
repository path and `sae_gated_plugin` name they mention exists."""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sae_gated_plugin.cli import build_parser
from sae_gated_plugin.errors import GatedPluginError

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
# Paths under these folders name files of this repository; anything else is the reader's own.
REPO_FOLDER_NAMES = ("benchmarks", "docs", "examples", "src", "tests")
REPO_FOLDERS = tuple(f"{name}/" for name in REPO_FOLDER_NAMES)
SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<", "2>", "2>&1"}
# Verbs that are quick, offline and write nothing: quoted command lines with them are run.
READ_ONLY_VERBS = {"schema", "compare"}
SNIPPET_TIMEOUT_S = 600
COMMAND_TIMEOUT_S = 120

FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
PLACEHOLDER = re.compile(r"<[\w.-]+>")  # e.g. checkpoints/<tokens>
# A usage synopsis rather than a command line: [optional], {choices}, "...", or CAPITALS.
SYNOPSIS = re.compile(r"[\[\]{}]|\.\.\.|\b[A-Z][A-Z0-9_]+\b")
PACKAGE_NAME = re.compile(r"(?<![\w.])sae_gated_plugin(?:\.[A-Za-z_]\w*)+")
REPO_PATH = re.compile(r"(?<![\w./-])(?:" + "|".join(REPO_FOLDER_NAMES) + r")/[\w./*-]+")
TRACKER_TALK = re.compile(r"\b(issues?|tracker)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    """A fenced code block of a page."""

    page: Path
    line: int
    language: str
    text: str


@dataclass(frozen=True)
class Page:
    """A page split into its fenced blocks and its prose (paragraphs, fences removed)."""

    path: Path
    blocks: list[Block]
    paragraphs: list[tuple[int, str]]
    headings: list[str]


def read_page(path: Path) -> Page:
    """Split a Markdown page into fenced blocks, prose paragraphs and headings."""
    blocks: list[Block] = []
    paragraphs: list[tuple[int, str]] = []
    headings: list[str] = []
    fence: str | None = None
    language = ""
    body: list[str] = []
    start = 0
    paragraph: list[str] = []
    paragraph_start = 0
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate([*lines, ""], start=1):
        match = FENCE.match(line)
        if fence is not None:
            if match and match.group(1).startswith(fence) and not match.group(2):
                blocks.append(Block(path, start, language, "\n".join(body)))
                fence = None
            else:
                body.append(line)
            continue
        if match:
            fence, language, body, start = match.group(1), match.group(2).lower(), [], number
        heading = HEADING.match(line)
        if heading and fence is None:
            headings.append(heading.group(1))
        if match or not line.strip():
            if paragraph:
                paragraphs.append((paragraph_start, " ".join(paragraph)))
            paragraph = []
            continue
        if not paragraph:
            paragraph_start = number
        paragraph.append(line.strip())
    assert fence is None, f"{path.name}:{start}: a code fence is never closed"
    return Page(path, blocks, paragraphs, headings)


PARSED = [read_page(path) for path in PAGES]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def shell_lines(text: str) -> Iterator[str]:
    """The logical lines of a shell block: continuations joined, prompts removed."""
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        yield line[2:] if line.startswith("$ ") else line


def split_command(line: str) -> list[str] | None:
    """The arguments after `sae-gated` (or `-m sae_gated_plugin.cli`) up to any shell
    operator, or None when the line does not run the CLI."""
    lexer = shlex.shlex(PLACEHOLDER.sub("placeholder", line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    for index, token in enumerate(tokens):
        if token == "sae-gated" or token == "sae_gated_plugin.cli":
            arguments = tokens[index + 1 :]
            ends = [i for i, t in enumerate(arguments) if t in SHELL_OPERATORS]
            return arguments[: ends[0]] if ends else arguments
    return None


@dataclass(frozen=True)
class Quote:
    """A `sae-gated` command line quoted by a page, as a fenced line or an inline code span."""

    where: str
    text: str
    inline: bool


def quoted_commands() -> list[Quote]:
    quotes = []
    for page in PARSED:
        for block in page.blocks:
            if block.language in SHELL_LANGUAGES:
                for line in shell_lines(block.text):
                    if split_command(line) is not None:
                        quotes.append(Quote(f"{page.path.name}:{block.line}", line, False))
        for number, paragraph in page.paragraphs:
            for span in CODE_SPAN.finditer(paragraph):
                text = span.group(2).strip()
                if text.startswith("sae-gated "):
                    quotes.append(Quote(f"{page.path.name}:{number}", text, True))
    return quotes


QUOTES = quoted_commands()


def verb_parsers() -> dict[str, argparse.ArgumentParser]:
    """Each verb's sub-parser (argparse has no public accessor for them)."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("sae-gated has no verbs")


VERBS = verb_parsers()


def run_cli(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sae_gated_plugin.cli", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def check_repo_paths(arguments: list[str], where: str) -> None:
    """Every argument (or `key=value` value) naming a file of this repository must exist."""
    for argument in arguments:
        for value in (argument, argument.partition("=")[2]):
            if value.startswith(REPO_FOLDERS):
                assert list(REPO.glob(value)), f"{where}: {value} does not exist in the repository"


def check_synopsis(text: str, where: str) -> None:
    """A usage synopsis: its verb exists, and so does each option it names, with its choices."""
    words = text.split()
    verb = words[1]
    if SYNOPSIS.fullmatch(verb):  # `sae-gated VERB ...`
        return
    assert verb in VERBS, f"{where}: `{text}` names no verb of sae-gated ({', '.join(VERBS)})"
    actions = {
        option: action for action in VERBS[verb]._actions for option in action.option_strings
    }
    for option in re.findall(r"(?<![\w-])--?[a-z][\w-]*", text):
        assert option in actions, f"{where}: `sae-gated {verb}` has no option {option}"
    for option, listed in re.findall(r"(--[\w-]+)\s+\{([^}]*)\}", text):
        choices = set(actions[option].choices or ())
        assert set(listed.split(",")) == choices, f"{where}: {option} takes {sorted(choices)}"


@pytest.mark.parametrize("quote", QUOTES, ids=[f"{q.where} {q.text}" for q in QUOTES])
def test_quoted_command_runs_or_parses(quote: Quote) -> None:
    arguments = split_command(quote.text)
    assert arguments is not None
    if quote.inline and SYNOPSIS.search(quote.text):
        check_synopsis(quote.text, quote.where)
        return
    if quote.inline and len(arguments) == 1 and not arguments[0].startswith("-"):
        assert arguments[0] in VERBS, f"{quote.where}: sae-gated has no verb {arguments[0]}"
        if any(action.required for action in VERBS[arguments[0]]._actions):
            return  # a verb named in prose (`sae-gated train`), not a command line
    check_repo_paths(arguments, quote.where)
    if {"-h", "--help"} & set(arguments) or (arguments and arguments[0] in READ_ONLY_VERBS):
        result = run_cli(arguments)
        assert result.returncode == 0, f"{quote.where}: `{quote.text}` failed:\n{result.stderr}"
        if arguments[0] == "schema":
            assert json.loads(result.stdout)["properties"]
        return
    try:
        build_parser().parse_args(arguments)
    except (GatedPluginError, SystemExit) as exc:
        pytest.fail(f"{quote.where}: `{quote.text}` does not parse: {exc}")


def test_pages_quote_commands_of_every_verb() -> None:
    """The collection above finds the pages' commands (a broken extractor would pass vacuously)."""
    named = {split_command(quote.text)[0] for quote in QUOTES}  # type: ignore[index]
    assert set(VERBS) <= named


def python_blocks(pages: list[Page]) -> list[Block]:
    return [block for page in pages for block in page.blocks if block.language == "python"]


README_SNIPPETS = python_blocks(PARSED[:1])


@pytest.mark.parametrize(
    "block", README_SNIPPETS, ids=[f"README.md:{b.line}" for b in README_SNIPPETS]
)
def test_readme_python_snippet_runs(block: Block, tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(block.text, encoding="utf-8")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    environment.pop("SAE_GATED_PLUGIN_AUTOLOAD", None)  # the snippet relies on the autoload
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=SNIPPET_TIMEOUT_S,
    )
    assert result.returncode == 0, f"README.md:{block.line} failed:\n{result.stderr[-3000:]}"


def test_readme_has_a_python_snippet_and_stays_a_front_page() -> None:
    assert README_SNIPPETS
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def resolve(name: str) -> Any:
    """Import the longest module prefix of a dotted name, then look up the rest on it."""
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[split:]:
            value = getattr(value, attribute)
        return value
    raise ModuleNotFoundError(name)


def test_python_in_the_pages_compiles_and_its_plugin_imports_exist() -> None:
    for block in python_blocks(PARSED):
        where = f"{block.page.name}:{block.line}"
        tree = ast.parse(block.text, filename=where)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "sae_gated_plugin"
            ):
                for alias in node.names:
                    resolve(f"{node.module}.{alias.name}")


def test_named_plugin_modules_and_objects_exist() -> None:
    names = set()
    for page in PARSED:
        texts = [paragraph for _, paragraph in page.paragraphs]
        names |= {
            (page.path.name, n)
            for t in texts + [b.text for b in page.blocks]
            for n in PACKAGE_NAME.findall(t)
        }
    assert names
    missing = []
    for page_name, name in sorted(names):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(f"{page_name}: {name}")
    assert not missing, "names that do not exist:\n" + "\n".join(missing)


def test_links_and_anchors_resolve() -> None:
    headings = {page.path: {slug(h) for h in page.headings} for page in PARSED}
    broken = []
    for page in PARSED:
        for number, paragraph in page.paragraphs:
            for target in LINK.findall(CODE_SPAN.sub("", paragraph)):
                if re.match(r"[a-z][a-z+.-]*:", target):
                    continue  # https:, mailto:
                path_part, _, anchor = target.partition("#")
                path = (page.path.parent / path_part).resolve() if path_part else page.path
                where = f"{page.path.name}:{number}: {target}"
                if not path.exists():
                    broken.append(f"{where} (no such file)")
                elif anchor and path.suffix == ".md":
                    known = headings.get(path) or {slug(h) for h in read_page(path).headings}
                    if anchor not in known:
                        broken.append(f"{where} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_repository_paths_in_code_exist() -> None:
    missing = []
    for page in PARSED:
        texts = [span.group(2) for _, p in page.paragraphs for span in CODE_SPAN.finditer(p)]
        texts += [block.text for block in page.blocks]
        for text in texts:
            for word in REPO_PATH.findall(text):
                word = word.rstrip(".")
                if not list(REPO.glob(word)):
                    missing.append(f"{page.path.name}: {word}")
    assert not missing, "paths that are not in the repository:\n" + "\n".join(missing)


def test_no_page_speaks_of_issues_or_trackers() -> None:
    talk = [
        f"{page.path.name}:{number}"
        for page in PARSED
        for number, paragraph in page.paragraphs
        if TRACKER_TALK.search(paragraph)
    ]
    assert not talk, f"tracker talk in {talk}"
