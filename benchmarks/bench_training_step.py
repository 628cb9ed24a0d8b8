"""Speed of one training step: gated_paper against SAELens's built-in architectures.

Runs every architecture in ONE process on the same random activations and prints the time per
step (forward + backward + Adam, as SAELens's SAETrainer does it) and the ratio to SAELens's
built-in `gated`. Ratios, not seconds, are what carry over between machines.

    python benchmarks/bench_training_step.py                  # CPU, d_in 576, d_sae 4608
    python benchmarks/bench_training_step.py --device cuda --d-sae 16384 --batch 4096
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from sae_lens import (
    GatedTrainingSAE,
    GatedTrainingSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TrainingSAE,
)
from sae_lens.saes.sae import TrainStepInput

from sae_gated_plugin import GatedPaperTrainingSAE, GatedPaperTrainingSAEConfig


def build_saes(d_in: int, d_sae: int, device: str) -> dict[str, TrainingSAE]:
    """The contenders, each with the same shapes on the same device."""
    common = {"d_in": d_in, "d_sae": d_sae, "device": device}
    return {
        "gated (SAELens built-in)": GatedTrainingSAE(GatedTrainingSAEConfig(**common)),
        "standard (SAELens built-in)": StandardTrainingSAE(StandardTrainingSAEConfig(**common)),
        "gated_paper (this plugin)": GatedPaperTrainingSAE(GatedPaperTrainingSAEConfig(**common)),
    }


def step_fn(sae: TrainingSAE, batch: torch.Tensor) -> Callable[[], None]:
    """One SAETrainer-style step: forward, backward, grad clipping, Adam."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4, betas=(0.0, 0.999))
    coefficients = {name: 1.0 for name in sae.get_coefficients()}
    step_input = TrainStepInput(
        sae_in=batch,
        coefficients=coefficients,
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )

    def step() -> None:
        output = sae.training_forward_pass(step_input)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def time_steps(step: Callable[[], None], device: str, repeats: int) -> list[float]:
    """Wall time of each of ``repeats`` steps, after two warm-up steps."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    """Parse arguments, time every architecture interleaved, print a table of ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per SAE")
    args = parser.parse_args()

    torch.manual_seed(0)
    batch = torch.randn(args.batch, args.d_in, device=args.device)
    saes = build_saes(args.d_in, args.d_sae, args.device)
    steps = {name: step_fn(sae, batch) for name, sae in saes.items()}
    samples: dict[str, list[float]] = {name: [] for name in saes}
    for _ in range(args.rounds):  # interleave so drift in machine speed hits all alike
        for name, step in steps.items():
            samples[name] += time_steps(step, args.device, args.repeats)

    baseline = statistics.median(samples["gated (SAELens built-in)"])
    print(
        f"device={args.device} d_in={args.d_in} d_sae={args.d_sae} batch={args.batch} "
        f"threads={torch.get_num_threads()} steps={args.rounds * args.repeats} per SAE"
    )
    print(f"{'architecture':<30} {'median ms/step':>15} {'speed-up vs built-in gated':>28}")
    for name, times in samples.items():
        median = statistics.median(times)
        print(f"{name:<30} {median * 1e3:>15.1f} {baseline / median:>27.2f}x")


if __name__ == "__main__":
    main()
