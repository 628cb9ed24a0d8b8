"""Fuzzed configs and command lines: every one ends in exit 0 or 2, never a traceback.

Configs are generated near-valid (an example config from the repository with one to a few
fields replaced by junk, deleted, or added) and entirely random, written as YAML or JSON, and
run through what the CLI runs before anything loads: ``load_config`` (train, cache) and
``load_sweep_config`` + ``expand`` (sweep). A ``GatedPluginError`` is exit 2, as in the CLI;
any other exception is a crash. Command lines of the light verbs run ``cli.main`` itself, with
every model loader replaced by one that fails the test.

``FUZZ_EXAMPLES`` cases per test (``SAE_GATED_FUZZ_EXAMPLES`` to change it); with ``CI`` set
the runs are derandomized (tests/conftest.py), so CI sees the same cases every time.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sae_gated_plugin.cli import main
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.run.config import load_config
from sae_gated_plugin.sweep.config import expand, load_sweep_config

FUZZ_EXAMPLES = int(os.environ.get("SAE_GATED_FUZZ_EXAMPLES", "300"))
"""Cases each fuzz test generates (FUZZ_TESTS tests, so FUZZ_EXAMPLES * FUZZ_TESTS in all)."""
FUZZ_TESTS = 9
"""The number of ``@given`` tests below: the docs state FUZZ_EXAMPLES * FUZZ_TESTS cases."""
ROOT = Path(__file__).resolve().parents[1]
EXIT_OK, EXIT_INVALID = 0, 2

fuzz = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def example_configs(pattern: str, field: str) -> list[dict[str, Any]]:
    """The repository's example configs matching ``pattern`` that have ``field``."""
    found = []
    for path in sorted(ROOT.glob(pattern)):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and field in data:
            found.append(data)
    return found


TRAIN_EXAMPLES = example_configs("examples/*.yaml", "output_path")
SWEEP_EXAMPLES = example_configs("benchmarks/*.yaml", "grids")

# --- values: junk of every kind, and plausible-but-wrong numbers
EXTREME_NUMBERS = st.sampled_from(
    [
        0,
        -1,
        1,
        2**31,
        2**63,
        10**30,
        -(10**30),
        0.0,
        -0.0,
        1e-300,
        1e308,
        -1e308,
        math.inf,
        -math.inf,
        math.nan,
        0.5,
        -0.5,
        1.0,
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    EXTREME_NUMBERS,
    st.text(max_size=20),
    st.sampled_from(["", " ", "null", "1e999", "nan", "gated_paper", "frozen", "unit", "𝔊\u0000"]),
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.one_of(st.text(max_size=12), st.sampled_from(["sae", "eval", "saelens", "run", "grids"]))


def paths_of(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and list indices) to a value inside ``node``."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += paths_of(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += paths_of(value, (*prefix, index))
    return found


@st.composite
def mutated(draw: st.DrawFn, bases: list[dict[str, Any]]) -> dict[str, Any]:
    """A base config with one to three fields replaced, deleted, or added (junk values)."""
    config = json.loads(json.dumps(draw(st.sampled_from(bases))))
    for _ in range(draw(st.integers(1, 3))):
        paths = paths_of(config)
        path = draw(st.sampled_from(paths))
        parent: Any = config
        for step in path[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        leaf = path[-1]
        if action == "delete":
            del parent[leaf]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(KEYS)] = draw(JUNK)
        else:
            parent[leaf] = draw(JUNK)
    return config


def write_config(folder: Path, config: Any, as_json: bool) -> Path:
    """``config`` as YAML or JSON (NaN/Infinity as Python's json writes them)."""
    path = folder / ("cfg.json" if as_json else "cfg.yaml")
    if as_json:
        path.write_text(json.dumps(config), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def exit_status(check: Callable[[], Any]) -> int:
    """What the CLI would exit with: 0, or 2 on ``GatedPluginError``; anything else escapes."""
    try:
        check()
    except GatedPluginError as exc:
        assert str(exc).strip(), "an error without a message"
        return EXIT_INVALID
    return EXIT_OK


def check_train(path: Path, overrides: tuple[str, ...] = ()) -> None:
    load_config(path, overrides)


def check_cache(path: Path) -> None:
    load_config(path).cached_activations_path  # noqa: B018 - the cache verb's first check


def check_sweep(path: Path) -> None:
    expand(load_sweep_config(path))


def run_config(check: Callable[[Path], Any], config: Any, as_json: bool) -> int:
    with tempfile.TemporaryDirectory() as folder:
        return exit_status(lambda: check(write_config(Path(folder), config, as_json)))


DEEP = {"output_path": "x", "sae": json.loads("[" * 60 + "]" * 60)}


@fuzz
@given(config=mutated(TRAIN_EXAMPLES), as_json=st.booleans())
@example(config=DEEP, as_json=False)
def test_fuzzed_train_configs(config: dict[str, Any], as_json: bool) -> None:
    assert run_config(check_train, config, as_json) in (EXIT_OK, EXIT_INVALID)


@fuzz
@given(config=mutated(TRAIN_EXAMPLES), as_json=st.booleans())
@example(config={"output_path": "x", "saelens": {"cached_activations_path": [None]}}, as_json=False)
def test_fuzzed_cache_configs(config: dict[str, Any], as_json: bool) -> None:
    assert run_config(check_cache, config, as_json) in (EXIT_OK, EXIT_INVALID)


@fuzz
@given(config=mutated(SWEEP_EXAMPLES), as_json=st.booleans())
def test_fuzzed_sweep_configs(config: dict[str, Any], as_json: bool) -> None:
    assert run_config(check_sweep, config, as_json) in (EXIT_OK, EXIT_INVALID)


@fuzz
@given(config=JUNK, as_json=st.booleans(), sweep=st.booleans())
def test_random_configs(config: Any, as_json: bool, sweep: bool) -> None:
    check = check_sweep if sweep else check_train
    assert run_config(check, config, as_json) in (EXIT_OK, EXIT_INVALID)


@fuzz
@given(text=st.text(max_size=200), as_json=st.booleans())
@example(text="[" * 100_000, as_json=True)
@example(text="[" * 100_000, as_json=False)
@example(text="output_path: 2024-01-01\n", as_json=False)
@example(text="output_path: x\nsaelens: {when: 2024-01-01 10:00:00}\n", as_json=False)
@example(text="output_path: x\n? [a, b]\n: 1\n", as_json=False)
def test_random_config_text(text: str, as_json: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("cfg.json" if as_json else "cfg.yaml")
        path.write_text(text, encoding="utf-8")
        assert exit_status(lambda: check_train(path)) in (EXIT_OK, EXIT_INVALID)


OVERRIDE_KEYS = st.one_of(
    st.sampled_from(
        [
            "lr",
            "sae.l1_coefficient",
            "sae.d_sae",
            "context_size",
            "seqpos_slice",
            "eval.n_sequences",
            "saelens.device",
            "training_tokens",
            "sae",
            "output_path",
            "a.b.c",
        ]
    ),
    st.text(max_size=10),
)


@fuzz
@given(
    config=st.sampled_from(TRAIN_EXAMPLES),
    overrides=st.lists(
        st.one_of(
            st.builds(lambda k, v: f"{k}={v}", OVERRIDE_KEYS, st.text(max_size=12)),
            st.builds(lambda k, v: f"{k}={json.dumps(v)}", OVERRIDE_KEYS, JUNK),
            st.text(max_size=16),
        ),
        max_size=4,
    ),
)
def test_fuzzed_set_overrides(config: dict[str, Any], overrides: list[str]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = write_config(Path(folder), config, as_json=False)
        assert exit_status(lambda: check_train(path, tuple(overrides))) in (EXIT_OK, EXIT_INVALID)


# --- command lines of the light verbs, through cli.main itself
RESULT_LINE = {
    "architecture": "gated_paper",
    "variant": "paper",
    "coefficient": 1.0,
    "lr": 3e-4,
    "seed": 0,
    "resampling": False,
    "l0": 5.0,
    "loss_recovered": 0.9,
}
ARGUMENT_WORDS = st.one_of(
    st.sampled_from(
        [
            "--select",
            "--grid",
            "--sweep",
            "--envelope",
            "--y",
            "--reference",
            "--at",
            "--title",
            "--output",
            "--model",
            "--dataset",
            "--split",
            "--n-sequences",
            "--batch-size",
            "--device",
            "--overwrite",
            "--sae-id",
            "--revision",
            "--private",
            "--portable",
            "--token",
            "--to",
            "--from",
            "--metadata",
            "gated",
            "gated_paper",
            "jumprelu",
            "dictionary_learning",
            "l0",
            "mcc",
            "loss_recovered",
            "grids=frontier",
            "lr=1e-3",
            "nan",
            "-1",
            "0",
            "1e999",
            "me/repo",
            "a/b/c",
            "hook_name=x",
            "--",
            "-",
            "@RESULTS",
            "@MISSING",
            "@FOLDER",
            "@TEXT",
        ]
    ),
    st.text(max_size=10),
)


def argv_for(words: list[str], folder: Path) -> list[str]:
    """``words`` with the @ placeholders made into paths under ``folder``."""
    results = folder / "results.jsonl"
    results.write_text(json.dumps(RESULT_LINE) + "\n", encoding="utf-8")
    (folder / "empty").mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("not an SAE\n", encoding="utf-8")
    places = {
        "@RESULTS": str(results),
        "@MISSING": str(folder / "missing"),
        "@FOLDER": str(folder / "empty"),
        "@TEXT": str(folder / "notes.txt"),
    }
    return [places.get(word, word) for word in words]


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model loader replaced by one that fails the test."""

    def reached(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a fuzzed command line went on to load a model")

    monkeypatch.setattr("sae_gated_plugin.eval.saved.load_language_model", reached)
    monkeypatch.setattr("sae_gated_plugin.inspect.api.load_language_model", reached)


LIGHT_VERBS = ("schema", "compare", "eval", "inspect", "convert", "push", "directory-entry", "plot")


@pytest.mark.usefixtures("no_model_loads")
@fuzz
@given(
    verb=st.sampled_from(LIGHT_VERBS),
    words=st.lists(ARGUMENT_WORDS, max_size=6),
    first=st.sampled_from(["@RESULTS", "@MISSING", "@FOLDER", "@TEXT"]),
)
def test_fuzzed_command_lines(
    verb: str, words: list[str], first: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        argv = [verb, *argv_for([first, *words], Path(folder))]
        if verb == "plot" and first == "@RESULTS":
            argv[1] = str(Path(folder) / "missing")  # drawing figures is slow: refuse early
        os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
        status = main(argv)
    captured = capsys.readouterr()
    assert status in (EXIT_OK, EXIT_INVALID), (argv, captured.err)
    assert "Traceback" not in captured.err


@pytest.mark.usefixtures("no_model_loads")
@fuzz
@given(
    levels=st.lists(st.one_of(st.floats(), EXTREME_NUMBERS, st.text(max_size=5)), max_size=4),
    select=st.lists(st.text(max_size=12), max_size=2),
    y=st.sampled_from(["l0", "mcc", "loss_recovered", "nope"]),
    reference=st.one_of(st.none(), st.text(max_size=10), st.just("gated_paper")),
    envelope=st.booleans(),
)
def test_fuzzed_compare_options(
    levels: list[Any],
    select: list[str],
    y: str,
    reference: str | None,
    envelope: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        argv = ["compare", *argv_for(["@RESULTS"], Path(folder)), "--y", y]
        argv += [a for s in select for a in ("--select", s)]
        argv += ["--at", *map(str, levels)] if levels else []
        argv += ["--reference", reference] if reference is not None else []
        argv += ["--envelope"] if envelope else []
        status = main(argv)
    captured = capsys.readouterr()
    assert status in (EXIT_OK, EXIT_INVALID), (argv, captured.err)


@fuzz
@given(words=st.lists(ARGUMENT_WORDS, max_size=5))
def test_fuzzed_schema_and_unknown_verbs(
    words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["schema", *words]) if words else main(["schema"])
    capsys.readouterr()
    assert status in (EXIT_OK, EXIT_INVALID)


def test_the_fuzz_tests_are_counted() -> None:
    """FUZZ_TESTS is what the docs multiply by: it must match the ``@given`` tests here."""
    given_tests = [
        f for name, f in globals().items() if name.startswith("test_") and hasattr(f, "hypothesis")
    ]
    assert len(given_tests) == FUZZ_TESTS
    print(f"fuzz: {FUZZ_TESTS} tests x {FUZZ_EXAMPLES} examples = {FUZZ_TESTS * FUZZ_EXAMPLES}")
