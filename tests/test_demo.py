"""``sae-gated demo`` end to end on the embedded SmolLM2, shrunk to a few thousand tokens: the
report, the SAE SAELens reloads, the feature browser, and a rerun that replaces only its own
output."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sae_lens import SAE

from sae_gated_plugin import demo
from sae_gated_plugin.errors import WriteFaultError
from sae_gated_plugin.inspect.options import INSPECT_FILENAME

pytestmark = [pytest.mark.embedded, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture
def small_demo(monkeypatch: pytest.MonkeyPatch, smollm2: Any) -> None:
    """The demo's settings but 576 latents, 8,192 tokens trained from 4,096 cached, a short
    evaluation and a 2,048-token browser."""
    shrunk = {
        **demo.DEMO_SETTINGS,
        "sae": {**demo.DEMO_SETTINGS["sae"], "d_sae": 576},
        "training_tokens": 8192,
        "n_batches_in_buffer": 16,
        "eval": {"n_sequences": 4, "batch_size": 4},
    }
    monkeypatch.setattr(demo, "DEMO_SETTINGS", shrunk)
    monkeypatch.setattr(demo, "CACHE_TOKENS", 4096)
    monkeypatch.setattr(demo, "BROWSER_TOKENS", 2048)
    monkeypatch.setattr(demo, "load_language_model", lambda name, device: smollm2)


@pytest.mark.usefixtures("small_demo")
def test_demo_trains_evaluates_reloads_and_writes_a_browser(tmp_path: Path) -> None:
    output = tmp_path / "demo-output"
    (output / "notes.txt").parent.mkdir()
    (output / "notes.txt").write_text("mine")
    report = demo.run_demo(output)

    written = json.loads((output / demo.REPORT_FILENAME).read_text())
    assert written == report
    assert report["written_by"] == demo.DEMO_MARKER and report["reload_identical"] is True
    assert report["tokens_trained"] == 8192 and report["tokens_cached"] == 4096
    assert report["d_sae"] == 576
    assert report["l1_coefficient"] == demo.DEMO_SETTINGS["sae"]["l1_coefficient"]
    assert 0 < report["l0"] < 576 and report["ce_loss_clean"] < report["ce_loss_zero_ablation"]
    sae = SAE.load_from_disk(output / demo.SAE_FOLDER)
    assert sae.cfg.architecture() == "gated_paper"
    summary = json.loads((output / demo.BROWSER_FOLDER / INSPECT_FILENAME).read_text())
    assert summary["d_sae"] == 576 and summary["n_tokens"] > 0
    assert (output / demo.BROWSER_FOLDER / "index.html").is_file()

    weights = (output / demo.SAE_FOLDER / "sae_weights.safetensors").read_bytes()
    demo.run_demo(output)  # a rerun replaces the earlier demo's output, nothing else
    assert (output / "notes.txt").read_text() == "mine"
    assert (output / demo.SAE_FOLDER / "sae_weights.safetensors").read_bytes() == weights
    leftovers = sorted(p.name for p in output.iterdir())
    assert leftovers == sorted([demo.SAE_FOLDER, demo.REPORT_FILENAME, demo.BROWSER_FOLDER,
                                "notes.txt"])  # fmt: skip


@pytest.mark.usefixtures("small_demo")
def test_demo_on_a_full_disk_keeps_the_earlier_demo(
    tmp_path: Path, small_disk: Callable[[int], Path]
) -> None:
    # 4,096 cached activations of width 576 take 9 MiB: a 2 MiB disk fills while caching.
    output = small_disk(2048) / "demo-output"
    with pytest.raises(WriteFaultError) as fault:
        demo.run_demo(output)
    message = str(fault.value)
    assert message.startswith(f"cannot write {output} (No space left on device)"), message
    assert message.endswith("nothing was written"), message
    assert not output.exists()

    output.mkdir()
    (output / demo.REPORT_FILENAME).write_text(json.dumps({"written_by": demo.DEMO_MARKER}))
    with pytest.raises(WriteFaultError) as fault:
        demo.run_demo(output)
    assert "the earlier demo output is unchanged" in str(fault.value)
    assert [p.name for p in output.iterdir()] == [demo.REPORT_FILENAME]
