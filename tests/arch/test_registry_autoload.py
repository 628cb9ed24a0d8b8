"""Registration of gated_paper in SAELens, and the start-up autoload that makes
``import sae_lens`` alone enough - in the dev venv and from an installed wheel."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sae_lens.registry
from sae_lens.registry import get_sae_class, get_sae_training_class
from sae_lens.saes.gated_sae import (
    GatedSAE,
    GatedSAEConfig,
    GatedTrainingSAE,
    GatedTrainingSAEConfig,
)

import _sae_gated_plugin_autoload as autoload
import sae_gated_plugin.arch.registry
from sae_gated_plugin import (
    GatedPaperSAE,
    GatedPaperSAEConfig,
    GatedPaperTrainingSAE,
    GatedPaperTrainingSAEConfig,
    register,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
GROUP = "sae_lens.architectures"
ENV_VAR = "SAE_GATED_PLUGIN_AUTOLOAD"
SUBPROCESS_TIMEOUT = 300


# --- the registries, in process -----------------------------------------------------------------


def test_builtin_gated_still_maps_to_saelens_classes() -> None:
    assert get_sae_class("gated") == (GatedSAE, GatedSAEConfig)
    assert get_sae_training_class("gated") == (GatedTrainingSAE, GatedTrainingSAEConfig)


def test_gated_paper_maps_to_our_classes() -> None:
    assert get_sae_class("gated_paper") == (GatedPaperSAE, GatedPaperSAEConfig)
    assert get_sae_training_class("gated_paper") == (
        GatedPaperTrainingSAE,
        GatedPaperTrainingSAEConfig,
    )
    assert sae_gated_plugin.arch.registry.is_registered()


@pytest.fixture
def private_registries(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], dict[str, Any]]:
    """Copies of SAELens's registries without gated_paper; the originals come back afterwards."""
    inference = {
        k: v for k, v in sae_lens.registry.SAE_CLASS_REGISTRY.items() if k != "gated_paper"
    }
    training = {
        k: v for k, v in sae_lens.registry.SAE_TRAINING_CLASS_REGISTRY.items() if k != "gated_paper"
    }
    monkeypatch.setattr(sae_lens.registry, "SAE_CLASS_REGISTRY", inference)
    monkeypatch.setattr(sae_lens.registry, "SAE_TRAINING_CLASS_REGISTRY", training)
    return inference, training


def test_register_adds_both_entries_and_is_idempotent(
    private_registries: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    inference, training = private_registries
    before = (dict(inference), dict(training))
    assert not sae_gated_plugin.arch.registry.is_registered()
    register()
    assert inference["gated_paper"] == (GatedPaperSAE, GatedPaperSAEConfig)
    assert training["gated_paper"] == (GatedPaperTrainingSAE, GatedPaperTrainingSAEConfig)
    register()  # second call: no error, nothing changes
    assert inference == {**before[0], "gated_paper": (GatedPaperSAE, GatedPaperSAEConfig)}
    assert training == {
        **before[1],
        "gated_paper": (GatedPaperTrainingSAE, GatedPaperTrainingSAEConfig),
    }
    assert inference["gated"] == (GatedSAE, GatedSAEConfig)


@pytest.mark.parametrize("which", ["inference", "training"])
def test_register_refuses_to_replace_a_foreign_gated_paper(
    private_registries: tuple[dict[str, Any], dict[str, Any]], which: str
) -> None:
    inference, training = private_registries
    if which == "inference":
        inference["gated_paper"] = (GatedSAE, GatedSAEConfig)
    else:
        training["gated_paper"] = (GatedTrainingSAE, GatedTrainingSAEConfig)
    with pytest.raises(RuntimeError, match="already registered"):
        register()
    foreign = inference if which == "inference" else training
    assert foreign["gated_paper"][0] in (GatedSAE, GatedTrainingSAE)  # left as it was


def test_saelens_itself_refuses_a_second_gated_paper() -> None:
    with pytest.raises(ValueError, match="already registered"):
        sae_lens.registry.register_sae_class("gated_paper", GatedSAE, GatedSAEConfig)
    assert get_sae_class("gated_paper")[0] is GatedPaperSAE


def test_installed_metadata_declares_the_entry_point() -> None:
    found = [ep for ep in importlib.metadata.entry_points(group=GROUP) if ep.name == "gated_paper"]
    assert [ep.value for ep in found] == ["sae_gated_plugin.arch.registry:register"]
    assert found[0].load() is sae_gated_plugin.arch.registry.register


# --- load_entry_points and the import watcher, in process -----------------------------------------


@dataclass
class FakeEntryPoint:
    name: str
    value: str
    target: Callable[[], None]

    def load(self) -> Callable[[], None]:
        return self.target


def fail() -> None:
    raise RuntimeError("plugin exploded")


def use_entry_points(monkeypatch: pytest.MonkeyPatch, found: list[Any]) -> None:
    def entry_points(group: str) -> list[Any]:
        assert group == GROUP
        return found

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_failing_entry_points_warn_and_the_others_still_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    use_entry_points(
        monkeypatch,
        [
            importlib.metadata.EntryPoint(
                name="missing", value="no_such_module_xyz:register", group=GROUP
            ),
            FakeEntryPoint("exploding", "fake:fail", fail),
            FakeEntryPoint("good", "fake:ok", lambda: calls.append("good")),
        ],
    )
    with pytest.warns(RuntimeWarning) as record:
        autoload.load_entry_points()
    messages = [str(w.message) for w in record]
    assert any("'missing'" in m and "ModuleNotFoundError" in m for m in messages), messages
    assert any("'exploding'" in m and "plugin exploded" in m for m in messages), messages
    assert calls == ["good"]


def test_unreadable_entry_points_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(group: str) -> list[Any]:
        raise OSError("metadata unreadable")

    monkeypatch.setattr(importlib.metadata, "entry_points", broken)
    with pytest.warns(RuntimeWarning, match="metadata unreadable"):
        autoload.load_entry_points()


@pytest.fixture
def fake_sae_lens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A stand-in module that the watcher treats as sae_lens (the real one is already loaded)."""
    name = "fake_sae_lens_watched"
    (tmp_path / f"{name}.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(autoload, "_WATCHED", name)
    monkeypatch.delenv(ENV_VAR, raising=False)
    try:
        yield name
    finally:
        autoload.uninstall()
        sys.modules.pop(name, None)


def test_watcher_runs_entry_points_after_the_module_loaded(
    fake_sae_lens: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    use_entry_points(
        monkeypatch,
        [
            FakeEntryPoint("exploding", "fake:fail", fail),
            FakeEntryPoint(
                "probe", "fake:probe", lambda: seen.append(sys.modules[fake_sae_lens].LOADED)
            ),
        ],
    )
    autoload.install()
    assert autoload._watcher in sys.meta_path
    with pytest.warns(RuntimeWarning, match="plugin exploded"):
        module = __import__(fake_sae_lens)
    assert module.LOADED is True  # the failing plugin did not break the import
    assert seen == [True]  # called once, after the module had run
    assert autoload._watcher not in sys.meta_path  # fires once


def test_watcher_leaves_a_shared_loader_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One loader object may serve many modules (zipimport: one per archive, so sae_lens in a
    zipped bundle). Hooking sae_lens's exec_module must not stay on that shared object, or
    every later module it loads re-runs all plugins."""
    archive = tmp_path / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("fake_zipped_sae_lens.py", "LOADED = True\n")
        bundle.writestr("fake_zipped_sibling.py", "LOADED = True\n")
    monkeypatch.syspath_prepend(str(archive))
    monkeypatch.setattr(autoload, "_WATCHED", "fake_zipped_sae_lens")
    monkeypatch.delenv(ENV_VAR, raising=False)
    calls: list[str] = []
    use_entry_points(monkeypatch, [FakeEntryPoint("probe", "f:p", lambda: calls.append("x"))])
    try:
        autoload.install()
        assert __import__("fake_zipped_sae_lens").LOADED
        assert calls == ["x"]
        assert __import__("fake_zipped_sibling").LOADED
        assert calls == ["x"], "the plugins ran again for a module that is not sae_lens"
    finally:
        autoload.uninstall()
        for name in ("fake_zipped_sae_lens", "fake_zipped_sibling"):
            sys.modules.pop(name, None)
        sys.path_importer_cache.pop(str(archive), None)


@pytest.mark.parametrize("value", ["0", "false", "No", " OFF "])
def test_opt_out_installs_nothing(
    fake_sae_lens: str, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    called: list[str] = []
    use_entry_points(monkeypatch, [FakeEntryPoint("probe", "f:p", lambda: called.append("x"))])
    assert not autoload.autoload_enabled()
    autoload.install()
    assert autoload._watcher not in sys.meta_path
    __import__(fake_sae_lens)
    assert called == []


@pytest.mark.parametrize("value", ["1", "", "yes", "true"])
def test_autoload_enabled_values(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    assert autoload.autoload_enabled()


# --- fresh interpreters ---------------------------------------------------------------------------


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def result(self) -> dict[str, Any]:
        assert self.returncode == 0, self.stderr[-4000:]
        lines = [line for line in self.stdout.splitlines() if line.startswith("RESULT:")]
        assert lines, (
            f"no RESULT line; stdout={self.stdout[-2000:]!r} stderr={self.stderr[-4000:]!r}"
        )
        return json.loads(lines[-1][len("RESULT:") :])


def start(code: str, cwd: Path, python: str = sys.executable, **env: str) -> subprocess.Popen[str]:
    """A fresh interpreter running ``code``, started in an empty folder (``-c`` puts the working
    directory on sys.path), without PYTHONPATH and with the autoload switch at its default."""
    environ = {k: v for k, v in os.environ.items() if k not in (ENV_VAR, "PYTHONPATH")}
    environ.update(env)
    return subprocess.Popen(
        [python, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        cwd=str(cwd),
    )


def run_all(procs: dict[str, subprocess.Popen[str]]) -> dict[str, Finished]:
    """Wait for interpreters started together (importing sae_lens takes seconds each)."""
    done: dict[str, Finished] = {}
    try:
        for key, proc in procs.items():
            out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
            done[key] = Finished(proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


IMPORT_SAE_LENS_ONLY = """
    import json, sys
    at_start = sorted(
        m for m in ("torch", "sae_lens", "sae_gated_plugin", "transformer_lens")
        if m in sys.modules
    )
    watcher_loaded = "_sae_gated_plugin_autoload" in sys.modules
    import sae_lens
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
    def name(arch, registry):
        entry = registry.get(arch)
        return None if entry is None else entry[0].__module__ + "." + entry[0].__qualname__
    result = {
        "at_start": at_start,
        "watcher_loaded": watcher_loaded,
        "inference": name("gated_paper", SAE_CLASS_REGISTRY),
        "training": name("gated_paper", SAE_TRAINING_CLASS_REGISTRY),
        "gated": name("gated", SAE_CLASS_REGISTRY),
    }
    if "sae_gated_plugin" in sys.modules:
        result["plugin_file"] = sys.modules["sae_gated_plugin"].__file__
    if result["inference"] is None:
        import sae_gated_plugin  # an explicit import still registers
        result["after_explicit_import"] = name("gated_paper", SAE_CLASS_REGISTRY)
    print("RESULT:" + json.dumps(result))
"""

IMPORT_PLUGIN_FIRST = """
    import json, warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import sae_gated_plugin
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
    print("RESULT:" + json.dumps({
        "warnings": [str(w.message) for w in caught if "sae-gated-plugin" in str(w.message)],
        "registered": "gated_paper" in SAE_CLASS_REGISTRY
        and "gated_paper" in SAE_TRAINING_CLASS_REGISTRY,
    }))
"""


@pytest.fixture(scope="module")
def dev_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Finished]:
    cwd = tmp_path_factory.mktemp("dev_runs")
    return run_all(
        {
            "default": start(IMPORT_SAE_LENS_ONLY, cwd),
            "opt_out": start(IMPORT_SAE_LENS_ONLY, cwd, **{ENV_VAR: "0"}),
            "plugin_first": start(IMPORT_PLUGIN_FIRST, cwd),
        }
    )


def test_dev_venv_import_sae_lens_alone_registers(dev_runs: dict[str, Finished]) -> None:
    result = dev_runs["default"].result()
    assert result["at_start"] == []  # start-up stays light: no torch, no sae_lens, no plugin
    assert result["watcher_loaded"] is True
    assert result["inference"] == "sae_gated_plugin.arch.sae.GatedPaperSAE"
    assert result["training"] == "sae_gated_plugin.arch.sae.GatedPaperTrainingSAE"
    assert result["gated"] == "sae_lens.saes.gated_sae.GatedSAE"
    assert Path(result["plugin_file"]).is_relative_to(REPO_ROOT / "src")
    assert "sae-gated-plugin autoload" not in dev_runs["default"].stderr  # no failed plugin


def test_dev_venv_opt_out_does_not_register(dev_runs: dict[str, Finished]) -> None:
    result = dev_runs["opt_out"].result()
    assert result["at_start"] == []
    assert result["inference"] is None and result["training"] is None
    assert "plugin_file" not in result
    assert result["after_explicit_import"] == "sae_gated_plugin.arch.sae.GatedPaperSAE"


def test_importing_the_plugin_before_sae_lens_is_silent(dev_runs: dict[str, Finished]) -> None:
    """``import sae_gated_plugin`` in a fresh interpreter must not warn (the autoload's entry
    point must not trip over the half-imported plugin package)."""
    result = dev_runs["plugin_first"].result()
    assert result["registered"] is True
    assert result["warnings"] == []


# --- an installed wheel in a fresh environment ---------------------------------------------


@dataclass
class WheelEnv:
    wheel: Path
    python: str
    site_packages: Path
    cwd: Path


def checked(*cmd: str) -> str:
    """Run a set-up command; on failure show its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> WheelEnv:
    base = tmp_path_factory.mktemp("wheel_env")
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    checked(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
            "-w", str(base / "dist"), str(REPO_ROOT))  # fmt: skip
    (wheel,) = (base / "dist").glob("sae_gated_plugin-*.whl")
    env_dir = base / "env"
    checked(sys.executable, "-m", "venv", "--without-pip", str(env_dir))
    python = str(env_dir / "bin" / "python")
    purelib = checked(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
    site_packages = Path(purelib.strip())
    checked(*pip, "install", "--no-deps", "--no-index", "-q",
            "--target", str(site_packages), str(wheel))  # fmt: skip
    # The dev venv's packages provide the dependencies; its own .pth files (the editable
    # install among them) are NOT processed from a directory that a .pth file added.
    (site_packages / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    (base / "cwd").mkdir()
    return WheelEnv(wheel, python, site_packages, base / "cwd")


WHEEL_CHECK = """
    import json
    import sae_lens
    from sae_lens.registry import get_sae_training_class
    try:
        cls, cfg_cls = get_sae_training_class("gated_paper")
    except KeyError as exc:
        print("RESULT:" + json.dumps({"key_error": str(exc)}))
        raise SystemExit(0)
    import torch, sae_gated_plugin, _sae_gated_plugin_autoload
    sae = cls(cfg_cls(d_in=4, d_sae=8))
    feats = sae.encode(torch.randn(3, 4))
    print("RESULT:" + json.dumps({
        "training": cls.__module__ + "." + cls.__qualname__,
        "plugin_file": sae_gated_plugin.__file__,
        "autoload_file": _sae_gated_plugin_autoload.__file__,
        "feats_shape": list(feats.shape),
    }))
"""


@pytest.fixture(scope="module")
def wheel_runs(wheel_env: WheelEnv) -> dict[str, Finished]:
    return run_all(
        {
            "default": start(WHEEL_CHECK, wheel_env.cwd, python=wheel_env.python),
            "opt_out": start(WHEEL_CHECK, wheel_env.cwd, python=wheel_env.python, **{ENV_VAR: "0"}),
        }
    )


@pytest.mark.integration
def test_wheel_contains_plugin_autoload_and_entry_point(wheel_env: WheelEnv) -> None:
    with zipfile.ZipFile(wheel_env.wheel) as wheel:
        names = set(wheel.namelist())
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        declared = wheel.read(entry_points).decode()
    for expected in (
        "sae_gated_plugin/__init__.py",
        "sae_gated_plugin/arch/sae.py",
        "sae_gated_plugin/arch/unit_norm.py",
        "_sae_gated_plugin_autoload.py",
        "sae_gated_plugin_autoload.pth",
    ):
        assert expected in names, expected
    assert f"[{GROUP}]" in declared
    assert "gated_paper = sae_gated_plugin.arch.registry:register" in declared
    assert not any(n.startswith(("tests/", "src/")) for n in names)
    pth = wheel_env.site_packages / "sae_gated_plugin_autoload.pth"
    assert pth.read_text() == (REPO_ROOT / "src" / "sae_gated_plugin_autoload.pth").read_text()


@pytest.mark.integration
def test_installed_wheel_registers_on_import_sae_lens(
    wheel_env: WheelEnv, wheel_runs: dict[str, Finished]
) -> None:
    result = wheel_runs["default"].result()
    assert result["training"] == "sae_gated_plugin.arch.sae.GatedPaperTrainingSAE"
    # the wheel's copy is what ran, not the dev checkout
    assert Path(result["plugin_file"]).is_relative_to(wheel_env.site_packages)
    assert Path(result["autoload_file"]).is_relative_to(wheel_env.site_packages)
    assert result["feats_shape"] == [3, 8]
    assert "sae-gated-plugin autoload" not in wheel_runs["default"].stderr


@pytest.mark.integration
def test_installed_wheel_opt_out_leaves_gated_paper_unknown(
    wheel_runs: dict[str, Finished],
) -> None:
    result = wheel_runs["opt_out"].result()
    assert "gated_paper" in result["key_error"]


def test_pth_line_is_silent_when_the_autoload_module_is_missing(tmp_path: Path) -> None:
    """site.py runs the .pth line at every start-up: a missing or broken autoload module must
    not print 'Error processing line 1 of ...pth' in every Python process."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "x.pth").write_text(
        (REPO_ROOT / "src" / "sae_gated_plugin_autoload.pth").read_text()
    )
    (site_dir / "_sae_gated_plugin_autoload.py").write_text("raise RuntimeError('broken')\n")
    code = f"import site; site.addsitedir({str(site_dir)!r}); print('ok')"
    for broken in (True, False):
        if not broken:
            (site_dir / "_sae_gated_plugin_autoload.py").unlink()
        done = subprocess.run(
            [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0
        assert done.stdout.strip() == "ok"
        assert done.stderr == ""
