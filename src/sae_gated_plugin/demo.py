"""``sae-gated demo``: train a ``gated_paper`` SAE on embedded SmolLM2-135M and corpus (from
activations cached once and read in epochs, as the SmolLM2 sweep does), evaluate, save, reload it
with ``SAE.load_from_disk`` (identical outputs), write ``report.json`` and the SAE's feature
browser."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from sae_lens import SAE
from transformer_lens import HookedTransformer

from sae_gated_plugin.errors import GatedPluginError, WriteFaultError
from sae_gated_plugin.eval.metrics import EvalReport
from sae_gated_plugin.inspect.api import inspect_sae
from sae_gated_plugin.inspect.options import INSPECT_FILENAME, check_output_folder
from sae_gated_plugin.io import atomic_write_json, read_json, staging_folder, write_fault
from sae_gated_plugin.run.cache import cache_activations
from sae_gated_plugin.run.config import TrainRunConfig, parse_config
from sae_gated_plugin.run.train import train
from sae_gated_plugin.sources import load_language_model, resolve_device

REPORT_FILENAME = "report.json"
SAE_FOLDER = "sae"
BROWSER_FOLDER = "browser"
BROWSER_TOKENS = 50_000
"""Held-out tokens the demo's feature browser reads."""
DEMO_MARKER = "sae-gated demo"
"""``written_by`` in the demo's report: marks the results a later demo may replace."""

DEMO_SETTINGS: dict[str, Any] = {
    "model_name": "smollm2-135m",
    "hook_name": "blocks.5.hook_resid_post",
    "dataset": "wiki-summaries",
    "context_size": 128,
    "training_tokens": 1_000_000,
    "train_batch_size_tokens": 1024,
    "store_batch_size_prompts": 8,
    "n_batches_in_buffer": 32,
    "n_batches_for_norm_estimate": 5,
    "lr": 2e-3,
    "n_checkpoints": 0,
    "sae": {"d_sae": 2304, "l1_coefficient": 3.0},
    "eval": {"n_sequences": 32, "batch_size": 8},
}
"""The demo run: small enough for a 2-core CPU in minutes, large enough to be a real SAE."""
CACHE_TOKENS = 250_000
"""Tokens of activations the demo caches; training reads them in epochs (the language model,
not the SAE step, is what costs time on a CPU)."""
CACHE_FOLDER = "activations"
"""The cache's folder inside the demo's staging folder; it goes when the staging folder does."""


def demo_config(sae_path: Path, cache_path: Path) -> TrainRunConfig:
    """The demo's run config, training from the activations cached in ``cache_path`` and writing
    the SAE to ``sae_path``."""
    cached = {"use_cached_activations": True, "cached_activations_path": str(cache_path)}
    settings = {**DEMO_SETTINGS, "output_path": str(sae_path), "saelens": cached}
    return parse_config(settings, source="demo")


def check_reload_identical(trained: Any, sae_path: Path, hook_name: str, model: Any) -> None:
    """Reload the saved SAE with SAELens and require identical outputs on real activations."""
    reloaded = SAE.load_from_disk(sae_path, device=str(trained.device))
    tokens = model.to_tokens("The Gated SAE separates detecting a feature from estimating it.")
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook_name)
        acts = cache[hook_name][:, 1:]
        trained.eval()
        same_features = torch.equal(trained.encode(acts), reloaded.encode(acts))
        same_output = torch.equal(trained(acts), reloaded(acts))
    if not (same_features and same_output):
        raise GatedPluginError(
            f"the SAE reloaded from {sae_path} does not reproduce the trained one"
        )


def _check_demo_output(output: Path) -> None:
    """Refuse an output that is a file or holds ``sae``/``report.json``/``browser`` not from an
    earlier demo."""
    if output.exists() and not output.is_dir():
        raise GatedPluginError(f"--output {output} is a file, not a folder")
    browser = output / BROWSER_FOLDER
    if browser.exists():
        check_output_folder(browser, INSPECT_FILENAME, "--output", overwrite=True)
    report = output / REPORT_FILENAME
    sae = output / SAE_FOLDER
    if not report.exists() and not sae.exists():
        return
    try:
        written_by_demo = read_json(report).get("written_by") == DEMO_MARKER
    except GatedPluginError:  # missing, a folder, or not a demo report
        written_by_demo = False
    if not written_by_demo:
        raise GatedPluginError(
            f"--output {output} already holds {SAE_FOLDER}/ or {REPORT_FILENAME} that the demo "
            "did not write; choose another --output (nothing was changed)"
        )


def run_demo(output: Path = Path("demo-output")) -> dict[str, Any]:
    """Run the demo, writing ``sae/`` and ``report.json`` into ``output`` once complete (replacing
    only an earlier demo's results; other files are never touched)."""
    _check_demo_output(output)
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    try:
        with staging_folder(output / ".sae-gated-demo.partial") as staging:
            report, evaluation, model = _train_into(staging)
            for name in (SAE_FOLDER, REPORT_FILENAME):
                old = output / name
                if old.is_dir():
                    os.replace(old, staging / f"old-{name}")  # removed with the staging folder
                os.replace(staging / name, old)
    except BaseException as exc:
        if created and not any(output.iterdir()):
            output.rmdir()
        if isinstance(exc, WriteFaultError):  # said of the staging folder, now removed
            intact = "nothing was written" if created else "the earlier demo output is unchanged"
            raise write_fault(output, exc.cause or "write failed", intact) from None
        raise
    sae_path = output / SAE_FOLDER
    print(evaluation.to_table())
    print(f"\nReport: {output / REPORT_FILENAME}   SAE: {sae_path}")
    print("Reloaded with SAE.load_from_disk: identical outputs.")
    index = inspect_sae(
        str(sae_path), n_tokens=BROWSER_TOKENS, output=output / BROWSER_FOLDER, model=model
    )
    print(f"Feature browser ({BROWSER_TOKENS:,} held-out tokens): {index.resolve()}")
    print("\nNext:")
    print(f"  sae-gated eval {sae_path} --output more-eval.json   # evaluate again, more text")
    print(f"  sae-gated push {sae_path} <you>/smollm2-gated-sae   # publish to the Hub")
    print(f"  python -c \"from sae_lens import SAE; print(SAE.load_from_disk('{sae_path}'))\"")
    return report


def _train_into(staging: Path) -> tuple[dict[str, Any], EvalReport, HookedTransformer]:
    """Train, evaluate and reload-check the demo SAE in ``staging``; write its report there."""
    staging.mkdir()
    cfg = demo_config(staging / SAE_FOLDER, staging / CACHE_FOLDER)
    started = time.perf_counter()
    model = load_language_model(cfg.model_name, resolve_device(cfg.device))
    print(
        f"Caching {CACHE_TOKENS:,} tokens of activations; training reads them "
        f"{cfg.training_tokens / CACHE_TOKENS:g} times"
    )
    cache_activations(cfg.model_copy(update={"training_tokens": CACHE_TOKENS}), model=model)
    result = train(cfg, model=model)
    check_reload_identical(result.trained_sae, result.output_path, cfg.hook_name, model)
    assert result.report is not None
    report = {
        **result.report.to_dict(),
        "tokens_trained": cfg.training_tokens,
        "tokens_cached": CACHE_TOKENS,
        "d_sae": result.trained_sae.cfg.d_sae,
        "l1_coefficient": cfg.sae.l1_coefficient,
        "reload_identical": True,
        "seconds": round(time.perf_counter() - started, 1),
        "device": resolve_device(cfg.device),
        "written_by": DEMO_MARKER,
    }
    atomic_write_json(staging / REPORT_FILENAME, report)
    return report, result.report, model
