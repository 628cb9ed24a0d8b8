"""`sae-gated inspect` end to end on the real SmolLM2-135M and corpus: the browser, the
Neuronpedia export, and every bad input refused before anything is written."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens.saes.sae import SAEMetadata

from sae_gated_plugin import GatedPaperSAE, GatedPaperSAEConfig
from sae_gated_plugin.cli import EXIT_INVALID, EXIT_OK, main
from sae_gated_plugin.inspect.options import INSPECT_FILENAME

pytestmark = [
    pytest.mark.embedded,
    pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning"),
]

D_SAE = 48
METADATA = {
    "model_name": "smollm2-135m",
    "hook_name": "blocks.1.hook_resid_post",
    "dataset_path": "wiki-summaries",
    "context_size": 64,
    "prepend_bos": True,
    "seqpos_slice": [3, None],
    "exclude_special_tokens": True,
}


def saved_sae(folder: Path, d_in: int = 576, **metadata: Any) -> Path:
    """A random gated_paper SAE over SmolLM2's residual stream, latent 0 never firing."""
    generator = torch.Generator().manual_seed(0)
    cfg = GatedPaperSAEConfig(
        d_in=d_in, d_sae=D_SAE, metadata=SAEMetadata(**{**METADATA, **metadata})
    )
    sae = GatedPaperSAE(cfg)
    with torch.no_grad():
        w_dec = torch.nn.functional.normalize(torch.randn(D_SAE, d_in, generator=generator), dim=1)
        sae.W_dec.copy_(w_dec)
        sae.W_enc.copy_(w_dec.T)
        sae.b_gate.copy_(-torch.rand(D_SAE, generator=generator) * 2)
        sae.b_gate[0] = -1e6
    sae.save_model(folder)
    return folder


@pytest.fixture(scope="module")
def inspected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inspect")
    sae = saved_sae(root / "sae")
    site, export = root / "site", root / "neuronpedia"
    argv = ["inspect", str(sae), "--n-tokens", "2000", "--output", str(site)]
    assert main([*argv, "--neuronpedia", str(export), "--device", "cpu"]) == EXIT_OK
    return {"sae": sae, "site": site, "export": export}


def test_the_browser_holds_every_latent_and_the_dead_ones_as_such(
    inspected: dict[str, Path],
) -> None:
    site = inspected["site"]
    summary = json.loads((site / INSPECT_FILENAME).read_text())
    assert summary["d_sae"] == D_SAE and len(summary["latents"]) == D_SAE
    assert summary["n_tokens"] > 0 and summary["hook_name"] == METADATA["hook_name"]
    assert summary["latents"][0]["n_firing"] == 0
    assert any(latent["n_firing"] > 0 for latent in summary["latents"])
    assert (site / "index.html").is_file()
    assert len(list((site / "latents").glob("*.html"))) == D_SAE
    assert not list(site.parent.glob(".site.*"))  # no staging folder left behind


def test_the_neuronpedia_export_of_a_real_run_parses(inspected: dict[str, Path]) -> None:
    features = list(inspected["export"].rglob("features/*.jsonl.gz"))
    activations = list(inspected["export"].rglob("activations/*.jsonl.gz"))
    assert features and activations
    records = [
        json.loads(line)
        for path in features
        for line in gzip.decompress(path.read_bytes()).decode().splitlines()
    ]
    assert sorted(int(r["index"]) for r in records) == list(range(D_SAE))
    for record in records:
        assert len(record["pos_str"]) == len(record["pos_values"]) > 0
        assert len(record["freq_hist_data_bar_heights"]) == len(record["freq_hist_data_bar_values"])


def test_an_earlier_output_is_replaced_only_with_overwrite(
    inspected: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = inspected["site"]
    before = (site / INSPECT_FILENAME).read_bytes()
    argv = ["inspect", str(inspected["sae"]), "--n-tokens", "200", "--output", str(site)]
    assert main(argv) == EXIT_INVALID
    assert "--overwrite" in capsys.readouterr().err
    assert (site / INSPECT_FILENAME).read_bytes() == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main([*argv[:-1], str(other), "--overwrite"]) == EXIT_INVALID
    assert "not an earlier sae-gated inspect output" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        pytest.param(lambda f: f.mkdir(), [], "cfg.json", id="folder-without-sae"),
        pytest.param(
            lambda f: saved_sae(f, hook_name="blocks.99.hook_resid_post"), [], "blocks.99",
            id="hook-not-in-model",
        ),
        pytest.param(lambda f: saved_sae(f, d_in=100), [], "100 dimensions", id="width-mismatch"),
        pytest.param(saved_sae, ["--latents", f"0-{D_SAE}"], "out of range", id="latents-range"),
        pytest.param(saved_sae, ["--latents", "3-x"], "--latents", id="latents-syntax"),
        pytest.param(saved_sae, ["--n-tokens", "0"], "--n-tokens", id="no-tokens"),
    ],
)  # fmt: skip
def test_bad_input_is_exit_2_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Any,
    extra: list[str],
    message: str,
) -> None:
    sae = tmp_path / "sae"
    make(sae)
    site, export = tmp_path / "site", tmp_path / "export"
    argv = ["inspect", str(sae), "--output", str(site), "--neuronpedia", str(export)]
    assert main([*argv, "--n-tokens", "200", *extra]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not site.exists() and not export.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]


# --------------------------------------------------------------------------- in a real browser

_CLICKS = """<script>
document.querySelector('button[data-sort="freq"]').click();
var search = document.getElementById("search");
search.value = "%s";
search.dispatchEvent(new Event("input"));
</script>"""


def _chromium() -> str:
    """Debian's chromium: required in CI (.ci/run installs it), else the test skips."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs Debian's chromium package")
        pytest.skip("needs Debian's chromium package (apt-get install chromium)")
    return found


def _open(page: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--enable-logging=stderr", "--v=0", *options, page.as_uri()]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console  # no script error, no console output at all
    return done


def _not_blank(png: Path) -> None:
    from matplotlib.image import imread

    pixels = imread(png)
    assert pixels.shape[0] >= 600 and pixels.shape[1] >= 800
    assert float(pixels[..., :3].std()) > 0.05  # text, highlights and bars, not one colour


def test_the_pages_open_in_headless_chromium(inspected: dict[str, Path], tmp_path: Path) -> None:
    site = inspected["site"]
    summary = json.loads((site / INSPECT_FILENAME).read_text())
    live = next(latent for latent in summary["latents"] if latent["n_firing"] > 0)
    page = site / "latents" / f"{live['index']}.html"
    dom = _open(page, "--dump-dom").stdout
    assert f"Latent {live['index']}" in dom and dom.count("<svg") == 2
    assert "Top activations" in dom and 'title="' in dom
    _open(page, f"--screenshot={tmp_path / 'latent.png'}", "--window-size=1200,900")
    _not_blank(tmp_path / "latent.png")

    dom = _open(site / "index.html", "--dump-dom").stdout
    assert 'id="tools" hidden' not in dom  # the script ran and showed the controls
    live_count = sum(1 for latent in summary["latents"] if latent["n_firing"] > 0)
    assert dom.count("<tr data-index=") == live_count  # dead latents have their own list
    assert 'id="dead"' in dom
    _open(site / "index.html", f"--screenshot={tmp_path / 'index.png'}", "--window-size=1200,900")
    _not_blank(tmp_path / "index.png")


def test_sorting_and_search_work_in_the_browser(inspected: dict[str, Path]) -> None:
    """The index's own script, driven by clicks: rows sorted by frequency, search hides rows."""
    site = inspected["site"]
    summary = json.loads((site / INSPECT_FILENAME).read_text())
    word = "the"
    driven = site / "driven.html"
    html = (site / "index.html").read_text()
    driven.write_text(html.replace("</body>", _CLICKS % word + "</body>"))
    try:
        dom = _open(driven, "--dump-dom").stdout
    finally:
        driven.unlink()
    rows = re.findall(
        r'<tr data-index="\d+" data-freq="([^"]+)"[^>]*data-tokens="([^"]*)"([^>]*)>', dom
    )
    assert len(rows) == sum(1 for latent in summary["latents"] if latent["n_firing"] > 0)
    frequencies = [float(frequency) for frequency, _, _ in rows]
    assert frequencies == sorted(frequencies, reverse=True)
    hidden = ["hidden" in attributes for _, _, attributes in rows]
    assert hidden == [word not in tokens for _, tokens, _ in rows]
