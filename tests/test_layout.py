"""The package layout: imports point one way (docs/architecture.md), and there are no cycles.

Every import of the package's own modules is read from the source with ``ast``, including
imports inside functions, so a lazy import cannot hide an upward dependency or a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

PACKAGE = "sae_gated_plugin"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Lower number = lower layer. A module may import its own layer or lower ones, never higher.
LAYERS: dict[str, int] = {
    "errors": 0,
    "io": 0,
    "arch": 1,
    "embedded": 2,
    "sources": 3,
    "eval": 4,
    "run": 5,
    "sweep": 6,
    "distributed": 6,
    "hub": 7,
    "convert": 7,
    "inspect": 7,
    "cli": 8,
    "demo": 8,
    "testing": 8,
    "__init__": 8,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in LAYERS, f"{module}: not placed in a layer of the layout (add it to LAYERS)"
    return LAYERS[top]


def own_imports(path: Path) -> set[str]:
    """The package's own modules that ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != PACKAGE:
                continue
            for alias in node.names:  # `from pkg.sub import module` imports a module
                candidate = f"{node.module}.{alias.name}"
                is_module = (SRC.parent / Path(*candidate.split("."))).with_suffix(".py").exists()
                is_package = (SRC.parent / Path(*candidate.split("."))).is_dir()
                found.add(candidate if is_module or is_package else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): own_imports(p) for p in SRC.rglob("*.py")}


def test_every_import_points_down_the_layers() -> None:
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_no_import_cycles() -> None:
    graph = import_graph()
    # A package's __init__ re-exporting its submodules is not a dependency of them.
    edges = {
        m: {t for t in ts if t != m and not m.startswith(t + ".") and t in graph}
        for m, ts in graph.items()
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert cycles == []


BRIDGE = SRC / "run" / "saelens_bridge.py"


def saelens_private_names() -> set[str]:
    """Every private name SAELens's source defines: modules, functions, classes, attributes."""
    import sae_lens

    names: set[str] = set()
    for path in Path(sae_lens.__file__).parent.rglob("*.py"):
        names.add(path.stem)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def saelens_private_uses(path: Path, private: set[str]) -> list[str]:
    """SAELens private names ``path`` imports, overrides or reads (its own aside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
    }
    uses: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sae_lens"):
            parts = [*(node.module or "").split("."), *(a.name for a in node.names)]
            uses += [f"import of {p}" for p in parts if p in private]
        elif isinstance(node, ast.ClassDef):
            methods = [b for b in node.body if isinstance(b, ast.FunctionDef)]
            uses += [f"{node.name}.{m.name}" for m in methods if m.name in private]
        elif isinstance(node, ast.Attribute) and node.attr in private and node.attr not in own:
            uses.append(f".{node.attr} (line {node.lineno})")
    return uses


def test_only_the_bridge_touches_saelens_internals() -> None:
    private = saelens_private_names()
    assert {"_update_pbar", "_set_sae_metadata", "_interruption"} <= private  # the scan works
    assert saelens_private_uses(BRIDGE, private)  # and finds the bridge's own uses
    outside = {
        module_name(p): uses
        for p in SRC.rglob("*.py")
        if p != BRIDGE and (uses := saelens_private_uses(p, private))
    }
    assert outside == {}


def test_only_the_bridge_re_types_objects() -> None:
    def assigns_class(path: Path) -> bool:
        return any(
            isinstance(target, ast.Attribute) and target.attr == "__class__"
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Assign)
            for target in node.targets
        )

    assert assigns_class(BRIDGE)
    assert [module_name(p) for p in SRC.rglob("*.py") if p != BRIDGE and assigns_class(p)] == []


def test_tests_mirror_the_package() -> None:
    """Each test folder is named after the package room it tests."""
    tests = Path(__file__).parent
    rooms = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert folders <= rooms, f"test folders without a package room: {sorted(folders - rooms)}"


def test_no_function_is_longer_than_90_lines() -> None:
    too_long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > 90:
                    too_long.append(f"{module_name(path)}.{node.name}: {length} lines")
    assert too_long == []


def test_production_code_does_not_patch_with_mock() -> None:
    offenders = [
        module_name(p)
        for p in SRC.rglob("*.py")
        if "unittest.mock" in p.read_text(encoding="utf-8")
        or "from unittest import mock" in p.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_schema_and_saelens_config_classes_agree_on_every_default() -> None:
    """Defaults are declared once (the pydantic schema); the SAELens dataclasses must agree,
    including the inference fields whose defaults SAELens's own base class declares."""
    from sae_gated_plugin.arch.config import GatedPaperSAEConfig, GatedPaperTrainingSAEConfig
    from sae_gated_plugin.arch.schema import GatedPaperSAESchema, GatedPaperTrainingSAESchema

    for schema, config in (
        (GatedPaperSAESchema, GatedPaperSAEConfig),
        (GatedPaperTrainingSAESchema, GatedPaperTrainingSAEConfig),
    ):
        compared = 0
        for field in fields(config):
            if field.name not in schema.model_fields:
                continue
            declared = schema.model_fields[field.name]
            if declared.is_required():
                continue
            assert field.default == declared.default, (config.__name__, field.name)
            compared += 1
        assert compared >= 4, (config.__name__, compared)


def test_run_config_sae_section_shares_the_architecture_fields() -> None:
    from sae_gated_plugin.arch.schema import GatedPaperTrainingFields, InputCentring
    from sae_gated_plugin.run.config import SAESettings

    assert issubclass(SAESettings, GatedPaperTrainingFields)
    assert issubclass(SAESettings, InputCentring)


@pytest.mark.parametrize(
    "module", ["sae_gated_plugin", "sae_gated_plugin.cli", "sae_gated_plugin.run.config"]
)
def test_light_modules_import_without_torch_or_saelens(module: str) -> None:
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in ('torch', 'sae_lens', 'transformer_lens', 'datasets') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module",
    [
        "sae_gated_plugin.arch.config",
        "sae_gated_plugin.arch.sae",
        "sae_gated_plugin.arch.registry",
        "sae_gated_plugin",
        "sae_lens",
    ],
)
def test_importing_any_module_first_registers_without_warnings(module: str) -> None:
    """A class module's own ``import sae_lens`` fires the autoload before its classes exist:
    registration must wait for them, not fail with a circular-import warning."""
    code = (
        f"import {module}, sae_lens.registry as r; "
        "print('gated_paper' in r.SAE_CLASS_REGISTRY and "
        "'gated_paper' in r.SAE_TRAINING_CLASS_REGISTRY)"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert "sae-gated-plugin" not in done.stderr
