"""The paper's claims on SmolLM2-135M: gated_paper against SAELens's standard (ReLU) SAE.

arXiv:2404.16014 claims that, against a standard SAE trained the same way,
1. a Gated SAE reconstructs better at the same sparsity: at equal L0, more loss recovered
   (a better reconstruction-sparsity frontier, the paper's Figure 1);
2. a Gated SAE does not shrink its reconstructions: relative reconstruction bias gamma ~ 1,
   where a standard SAE's L1 penalty pulls gamma below 1 (the paper's Figure 5).

Both architectures are trained here on the SAME cached activations of the demo's layer
(`sae-gated cache`), with the same optimiser, steps and dictionary size, each at several
sparsity coefficients, and evaluated on the same held-out windows. The script prints a table
and each gated point's loss recovered against the standard frontier interpolated at its L0,
and writes everything to OUTPUT/results.json.

    python benchmarks/pareto_vs_standard.py                       # ~25 min on 2 CPU cores
    python benchmarks/pareto_vs_standard.py --tokens 1000000 --device cuda
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

from sae_lens import StandardTrainingSAEConfig

from sae_gated_plugin.demo import DEMO_SETTINGS
from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.run import train as training
from sae_gated_plugin.run.caching import cache_activations, check_cache_matches
from sae_gated_plugin.run.run_config import TrainRunConfig, parse_config

GATED_L1 = (2.0, 5.0, 12.0)
STANDARD_L1 = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def run_config(output: Path, cache: Path, tokens: int, device: str, **sae: Any) -> TrainRunConfig:
    """The demo's run, from the shared cache, into ``output``."""
    return parse_config(
        {
            **DEMO_SETTINGS,
            "training_tokens": tokens,
            "device": device,
            "output_path": str(output),
            "sae": {**DEMO_SETTINGS["sae"], **sae},
            "saelens": {"use_cached_activations": True, "cached_activations_path": str(cache)},
        },
        source="benchmark",
    )


def standard_config(cfg: TrainRunConfig, d_in: int, l1: float) -> StandardTrainingSAEConfig:
    """SAELens's standard SAE with the run's width, normalisation and L1 warm-up."""
    return StandardTrainingSAEConfig(
        d_in=d_in,
        d_sae=cfg.sae.d_sae or cfg.sae.expansion_factor * d_in,
        l1_coefficient=l1,
        l1_warm_up_steps=cfg.total_steps // 20,
        normalize_activations=cfg.normalize_activations,
        dtype=cfg.dtype,
        device=training.resolve_device(cfg.device),
    )


def interpolate_at_l0(points: list[dict[str, Any]], l0: float) -> float | None:
    """Loss recovered of ``points`` (one architecture) at ``l0``, linear in log L0 between
    the two nearest points; None outside their L0 range (no extrapolation)."""
    ordered = sorted(points, key=lambda p: p["l0"])
    for low, high in itertools.pairwise(ordered):
        if low["l0"] <= l0 <= high["l0"]:
            span = math.log(high["l0"]) - math.log(low["l0"])
            weight = (math.log(l0) - math.log(low["l0"])) / span if span else 0.0
            return low["loss_recovered"] + weight * (high["loss_recovered"] - low["loss_recovered"])
    return None


def main() -> None:
    """Cache once, train every (architecture, coefficient), evaluate, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("benchmark-output/pareto"))
    parser.add_argument("--tokens", type=int, default=DEMO_SETTINGS["training_tokens"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--gated-l1", type=float, nargs="+", default=list(GATED_L1))
    parser.add_argument("--standard-l1", type=float, nargs="+", default=list(STANDARD_L1))
    args = parser.parse_args()

    cache = args.output / "activations"
    base = run_config(args.output / "unused", cache, args.tokens, args.device)
    model = training.load_language_model(base.model_name, training.resolve_device(base.device))
    d_in = training.activation_width(model, base.hook_name)
    if cache.exists():
        check_cache_matches(base, d_in)  # reuse the cache of an earlier run of this script
    else:
        start = time.perf_counter()
        cache_activations(base, model=model)
        print(f"cached {args.tokens} activations in {time.perf_counter() - start:.0f} s")

    runs = [("gated_paper", l1) for l1 in args.gated_l1]
    runs += [("standard", l1) for l1 in args.standard_l1]
    rows: list[dict[str, Any]] = []
    for architecture, l1 in runs:
        output = args.output / f"{architecture}-l1-{l1:g}"
        cfg = run_config(output, cache, args.tokens, args.device, l1_coefficient=l1)
        if (output / training.EVAL_FILENAME).is_file():
            report = json.loads((output / training.EVAL_FILENAME).read_text())
        else:
            if (output / "cfg.json").exists():
                raise GatedPluginError(f"{output} holds an SAE but no evaluation: remove it")
            sae_config = standard_config(cfg, d_in, l1) if architecture == "standard" else None
            result = training.train(cfg, model=model, sae_config=sae_config)
            assert result.report is not None
            report = result.report.to_dict()
        rows.append({"architecture": architecture, "l1_coefficient": l1, **report})
        print(
            f"{architecture:<12} l1 {l1:<5g} L0 {report['l0']:6.1f}  loss recovered "
            f"{report['loss_recovered']:.3f}  gamma {report['relative_reconstruction_bias']:.3f}"
        )

    standard = [r for r in rows if r["architecture"] == "standard"]
    print()
    print(
        "| architecture | L1 coef. | L0 | loss recovered | explained variance | gamma | "
        "standard's loss recovered at this L0 |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        is_gated = row["architecture"] != "standard"
        at_l0 = interpolate_at_l0(standard, row["l0"]) if is_gated else None
        row["standard_loss_recovered_at_same_l0"] = at_l0
        print(
            f"| {row['architecture']} | {row['l1_coefficient']:g} | {row['l0']:.1f} | "
            f"{row['loss_recovered']:.3f} | {row['explained_variance']:.3f} | "
            f"{row['relative_reconstruction_bias']:.3f} | "
            f"{'-' if at_l0 is None else f'{at_l0:.3f}'} |"
        )
    settings = {k: v for k, v in base.model_dump(mode="json").items() if k != "output_path"}
    (args.output / "results.json").write_text(
        json.dumps({"settings": settings, "runs": rows}, indent=2), encoding="utf-8"
    )
    print(f"\nResults: {args.output / 'results.json'}")


if __name__ == "__main__":
    main()
