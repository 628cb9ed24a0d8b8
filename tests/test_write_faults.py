"""Write faults of the machine, made for real on a small tmpfs: each CLI verb that writes exits 1
with one line naming the path, the cause and what is intact, and leaves nothing that looks
finished but is not. A full disk gives ENOSPC; the same tmpfs remounted read-only gives EROFS.
EACCES, EPERM, EDQUOT and EIO go through the same errno handling (``io.write_faults``); root
cannot be refused by permissions, so they are not made here. Where no tmpfs can be mounted
(not root), a file-size limit (EFBIG) still makes a write fail for real."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from datasets import Dataset
from sae_lens import SAE
from safetensors.torch import save_file
from transformer_lens import HookedTransformer, HookedTransformerConfig

from sae_gated_plugin.arch.config import GatedPaperSAEConfig
from sae_gated_plugin.arch.sae import GatedPaperSAE
from sae_gated_plugin.cli import EXIT_FAILED, _write_fault_message, main
from sae_gated_plugin.io import write_fault_cause
from sae_gated_plugin.run import cache as cache_module
from sae_gated_plugin.run import saelens_bridge
from sae_gated_plugin.run import train as train_module
from sae_gated_plugin.run.resume import check_checkpoint_files
from sae_gated_plugin.sweep import driver
from sae_gated_plugin.sweep.results import read_results, saes_folder

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

Disk = Callable[[int], Path]
D_MODEL, CONTEXT, VOCAB = 16, 16, 64
HOOK = "blocks.0.hook_resid_post"
SCRIPT = Path(sys.executable).with_name("sae-gated")
NO_SPACE = os.strerror(errno.ENOSPC)
READ_ONLY = os.strerror(errno.EROFS)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> HookedTransformer:
    """A random one-layer model and random tokens in place of SmolLM2 and its corpus."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(
            HookedTransformerConfig(
                n_layers=1, d_model=D_MODEL, n_ctx=CONTEXT, d_head=4, d_vocab=VOCAB, act_fn="gelu"
            )
        )
    rows = torch.randint(1, VOCAB, (96, CONTEXT), generator=torch.Generator().manual_seed(1))
    tokens = Dataset.from_dict({"input_ids": rows.tolist()})
    for module in (saelens_bridge, cache_module, driver):
        monkeypatch.setattr(module, "load_language_model", lambda name, device: model)
    for module in (saelens_bridge, cache_module, driver, train_module):
        monkeypatch.setattr(module, "load_text_dataset", lambda name, split: tokens)
    return model


def run_settings(**changes: Any) -> dict[str, Any]:
    return {
        "model_name": "tiny-random",
        "hook_name": HOOK,
        "dataset": "in-memory",
        "is_dataset_tokenized": True,
        "streaming": False,
        "context_size": CONTEXT,
        "prepend_bos": False,
        "exclude_special_tokens": False,
        "training_tokens": 8 * 64,
        "train_batch_size_tokens": 64,
        "store_batch_size_prompts": 4,
        "n_batches_in_buffer": 4,
        "n_batches_for_norm_estimate": 2,
        "device": "cpu",
        "sae": {"d_sae": 1024},
        "eval": {"enabled": False},
        **changes,
    }


def write_yaml(folder: Path, settings: dict[str, Any]) -> Path:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def fault_line(capsys: pytest.CaptureFixture[str], path: Path, cause: str) -> str:
    """The one-line message of a write fault; checks it names ``path`` and ``cause``."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("sae-gated: cannot write "), err
    assert str(path) in line and cause in line, line
    return line


def sae_files_finished_or_absent(folder: Path) -> None:
    """A ``cfg.json`` (what marks a folder finished) only beside weights that load."""
    if (folder / "cfg.json").exists():
        SAE.load_from_disk(folder, device="cpu")
    else:
        assert not (folder / "sae_weights.safetensors").exists()
    assert not [p for p in folder.rglob("*") if p.name.endswith(".partial")]


# ---- train --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kib", "checkpoint_fits"),
    [pytest.param(32, False, id="no-checkpoint-fits"), pytest.param(540, True, id="one-fits")],
)
def test_train_on_a_full_disk_exits_1_naming_the_last_checkpoint(
    tiny: Any,
    small_disk: Disk,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kib: int,
    checkpoint_fits: bool,
) -> None:
    output = small_disk(kib) / "out"
    config = write_yaml(tmp_path, run_settings(output_path=str(output), n_checkpoints=1))
    assert main(["train", str(config)]) == EXIT_FAILED
    line = fault_line(capsys, output, NO_SPACE)
    checkpoints = sorted((output / "checkpoints").glob("[0-9]*"))
    if checkpoint_fits:
        assert [p.name for p in checkpoints] == ["320"]
        check_checkpoint_files(checkpoints[0])  # complete: --resume takes it
        assert f"the last complete checkpoint is {checkpoints[0]}" in line
    else:
        assert checkpoints == []
        assert "no checkpoint was saved" in line
    sae_files_finished_or_absent(output)
    for folder in (output / "checkpoints").glob("*"):
        sae_files_finished_or_absent(folder)


def test_train_into_a_read_only_disk_exits_1_and_writes_nothing(
    tiny: Any,
    small_disk: Disk,
    read_only: Callable[[Path], None],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    disk = small_disk(64)
    read_only(disk)
    config = write_yaml(tmp_path, run_settings(output_path=str(disk / "out")))
    assert main(["train", str(config)]) == EXIT_FAILED
    assert "nothing was written" in fault_line(capsys, disk / "out", READ_ONLY)
    assert list(disk.iterdir()) == []


# ---- cache --------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_cache_on_a_full_or_read_only_disk_exits_1_and_leaves_no_cache(
    tiny: Any,
    small_disk: Disk,
    read_only: Callable[[Path], None],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fault: str,
) -> None:
    disk = small_disk(16)
    if fault == "read-only":
        read_only(disk)
    path = disk / "cache"
    saelens = {"cached_activations_path": str(path)}
    config = write_yaml(tmp_path, run_settings(output_path=str(tmp_path / "o"), saelens=saelens))
    assert main(["cache", str(config)]) == EXIT_FAILED
    line = fault_line(capsys, path, NO_SPACE if fault == "full" else READ_ONLY)
    assert "nothing was written" in line
    assert list(disk.iterdir()) == []


# ---- sweep --------------------------------------------------------------------------------
def sweep_config(
    folder: Path, output: Path, save: str, coefficients: tuple[float, ...] = (1, 4)
) -> Path:
    settings = {
        "output": str(output),
        "cache_path": str(folder / "activations"),
        "cache_tokens": 64 * CONTEXT,
        "save": save,
        "run": run_settings(
            training_tokens=8 * 64, sae={"d_sae": 256}, eval={"n_sequences": 8, "batch_size": 4}
        ),
        "grids": [
            {
                "name": "g",
                "architectures": ["gated_paper"],
                "coefficients": {"gated_paper": list(coefficients)},
            }
        ],
    }
    return write_yaml(folder, settings)


def test_sweep_results_on_a_full_disk_keep_every_line_complete(
    tiny: Any, small_disk: Disk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = small_disk(4) / "sweep.jsonl"  # one page: lines of ~0.6 KB, 10 of them
    coefficients = tuple(float(c) for c in range(1, 11))
    config = sweep_config(tmp_path, output, "none", coefficients)
    assert main(["sweep", str(config)]) == EXIT_FAILED
    line = fault_line(capsys, output, NO_SPACE)
    assert "every line before it is complete (run the sweep again to finish)" in line
    records = read_results(output)
    assert 0 < len(records) < len(coefficients)
    assert output.read_bytes().endswith(b"\n")  # the cut line was taken back out
    assert f"{float(coefficients[len(records)])}" in line  # the first one not added


def test_sweep_saving_saes_on_a_full_disk_keeps_every_line_and_sae_whole(
    tiny: Any, small_disk: Disk, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = small_disk(96) / "sweep.jsonl"
    assert main(["sweep", str(sweep_config(tmp_path, output, "all"))]) == EXIT_FAILED
    line = fault_line(capsys, saes_folder(output), NO_SPACE)
    assert "every results line and saved SAE before it is complete" in line
    records = read_results(output)  # every line there parses
    assert output.read_bytes().endswith(b"\n") or not output.read_bytes()
    for folder in saes_folder(output).iterdir():
        sae_files_finished_or_absent(folder)
        assert any(r.get("sae_path", "").endswith(folder.name) for r in records)


def test_sweep_into_a_read_only_disk_exits_1_and_writes_nothing(
    tiny: Any,
    small_disk: Disk,
    read_only: Callable[[Path], None],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    disk = small_disk(16)
    read_only(disk)
    output = disk / "sweep.jsonl"
    assert main(["sweep", str(sweep_config(tmp_path, output, "none"))]) == EXIT_FAILED
    assert "the results file is unchanged" in fault_line(capsys, output, READ_ONLY)
    assert list(disk.iterdir()) == []


# ---- convert ------------------------------------------------------------------------------
def saved_gated_paper(folder: Path, d_sae: int) -> Path:
    sae = GatedPaperSAE(GatedPaperSAEConfig(d_in=D_MODEL, d_sae=d_sae))
    sae.save_model(folder)
    save_file({"sparsity": torch.zeros(d_sae)}, folder / "sparsity.safetensors")
    return folder


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_convert_on_a_full_or_read_only_disk_exits_1_and_writes_nothing(
    small_disk: Disk,
    read_only: Callable[[Path], None],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fault: str,
) -> None:
    src = saved_gated_paper(tmp_path / "src", d_sae=4096)  # weights of ~530 KB
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    disk = small_disk(128)
    if fault == "read-only":
        read_only(disk)
    dst = disk / "gated"
    assert main(["convert", str(src), str(dst), "--to", "gated"]) == EXIT_FAILED
    line = fault_line(capsys, dst, NO_SPACE if fault == "full" else READ_ONLY)
    assert "nothing was written; the source is unchanged" in line
    assert list(disk.iterdir()) == []
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


# ---- the last resort in the CLI -----------------------------------------------------------
def test_an_unnamed_write_fault_is_still_one_line(small_disk: Disk) -> None:
    disk = small_disk(4)
    with pytest.raises(OSError) as raised:  # a real ENOSPC from the kernel
        (disk / "big").write_bytes(b"x" * 64 * 1024)
    assert raised.value.errno == errno.ENOSPC
    message = _write_fault_message(raised.value)
    assert message is not None and NO_SPACE in message and "\n" not in message
    assert write_fault_cause(RuntimeError("Error while serializing: StorageFull")) == NO_SPACE
    assert write_fault_cause(ValueError("a bug")) is None


# ---- without root: a file-size limit (EFBIG) instead of a small disk ----------------------
def limited_file_size(limit: int) -> Callable[[], None]:
    """A ``preexec_fn`` capping file size at ``limit`` bytes, with SIGXFSZ ignored so a write
    past it fails with EFBIG instead of killing the process (works without root)."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_convert_past_a_file_size_limit_exits_1_and_writes_nothing(tmp_path: Path) -> None:
    src = saved_gated_paper(tmp_path / "src", d_sae=4096)
    dst = tmp_path / "gated"
    done = subprocess.run(
        [str(SCRIPT), "convert", str(src), str(dst), "--to", "gated"],
        capture_output=True,
        text=True,
        preexec_fn=limited_file_size(64 * 1024),
        timeout=300,
    )
    assert done.returncode == EXIT_FAILED, done.stderr
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert str(dst) in line and os.strerror(errno.EFBIG) in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
