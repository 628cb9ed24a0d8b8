"""Speed of one training step: gated_paper (dense and sparse paths) against SAELens built-ins.

One process, identical batches, contenders interleaved round by round so that drift in machine
speed hits all alike. A step is what SAELens's SAETrainer does: forward, backward, gradient
clipping, Adam (built as SAETrainer builds it). For each d_sae and each state - the initial
dense state (SAELens's initialisation, about half the gates open) and about 1% and 5% open
latents (set through b_gate) - it prints the median time per step, the ratios to SAELens's
`gated` and `standard`, the ratio to one bare `x @ W_gate` of the same size (the floor: no step
can be cheaper than its one dense encoder product) and the floor as a share of the step, and
the peak tensor memory a step adds. Then Adam's share of a gated_paper step at ~1% open, with
PyTorch's default Adam (what SAETrainer builds), foreach and fused.

    python benchmarks/step_speed.py                                   # CPU: d_sae 4608 16384
    python benchmarks/step_speed.py --device cuda --d-sae 16384 65536 --batch 4096
    python benchmarks/step_speed.py --calibrate                       # dense/sparse crossover
    python benchmarks/step_speed.py --d-sae 131072 --states 0.01 --contenders auto floor
    python benchmarks/step_speed.py --states 0.01 --profile step_profile.txt  # op table

Large sizes: the dense contenders (SAELens's and gated_paper's dense path) need several
batch x d_sae tensors at once; ``--contenders`` leaves them out. The process's peak resident
memory is printed after each size.

Ratios, not seconds, carry over between machines. Close other CPU-heavy processes first.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from sae_lens import (
    GatedTrainingSAE,
    GatedTrainingSAEConfig,
    StandardTrainingSAE,
    StandardTrainingSAEConfig,
    TrainingSAE,
)
from sae_lens.saes.sae import TrainStepInput
from torch.profiler import ProfilerActivity, profile

from sae_gated_plugin import GatedPaperTrainingSAE, GatedPaperTrainingSAEConfig
from sae_gated_plugin.arch.kernels import THRESHOLD_ENV
from sae_gated_plugin.arch.sparse import open_fraction

Step = Callable[[], None]
CONTENDERS = {
    "auto": "gated_paper (auto: as shipped)",
    "dense": "gated_paper dense path",
    "gated": "gated (SAELens)",
    "standard": "standard (SAELens)",
    "floor": "x @ W_gate (floor)",
}


@dataclass
class Contender:
    """One row of the table: a named step and what its time and memory came to."""

    name: str
    step: Step
    times: list[float]
    peak_bytes: int | None = None


@contextmanager
def sparse_threshold(value: str | None) -> Iterator[None]:
    """Run with the sparse-step threshold variable set to ``value`` (None: shipped default)."""
    saved = os.environ.pop(THRESHOLD_ENV, None)
    if value is not None:
        os.environ[THRESHOLD_ENV] = value
    try:
        yield
    finally:
        os.environ.pop(THRESHOLD_ENV, None)
        if saved is not None:
            os.environ[THRESHOLD_ENV] = saved


def build_saes(
    d_in: int, d_sae: int, device: str, others: tuple[str, ...] = ("gated", "standard")
) -> dict[str, TrainingSAE]:
    """gated_paper and the ``others`` of SAELens's, same shapes and shared weights."""
    common = {"d_in": d_in, "d_sae": d_sae, "device": device}
    paper = GatedPaperTrainingSAE(GatedPaperTrainingSAEConfig(**common))
    saes: dict[str, TrainingSAE] = {"gated_paper": paper}
    if "gated" in others:
        saes["gated"] = GatedTrainingSAE(GatedTrainingSAEConfig(**common))
        saes["gated"].load_state_dict(paper.state_dict())
    if "standard" in others:
        standard = StandardTrainingSAE(StandardTrainingSAEConfig(**common))
        with torch.no_grad():  # same encoder and decoder as the gated SAEs
            standard.W_enc.copy_(paper.W_enc)
            standard.W_dec.copy_(paper.W_dec)
        saes["standard"] = standard
    return saes


@torch.no_grad()
def set_open_fraction(saes: dict[str, TrainingSAE], batch: torch.Tensor, density: float) -> None:
    """Move the gate (and standard's encoder bias) so about ``density`` of the pairs are open."""
    paper = saes["gated_paper"]
    sample = ((batch[:256] - paper.b_dec) @ paper.W_enc).flatten().float()
    sample = sample[: 2**22]  # kthvalue on a few million values is quick on any device
    rank = min(sample.numel(), max(1, round((1 - density) * sample.numel())))
    shift = -torch.kthvalue(sample.cpu(), rank).values.item()
    for sae in saes.values():
        bias = sae.b_enc if isinstance(sae, StandardTrainingSAE) else sae.b_gate
        bias.fill_(shift)


def make_step(sae: TrainingSAE, batch: torch.Tensor, threshold: str | None = None) -> Step:
    """One SAETrainer-style step: forward, backward, grad clipping, Adam (as SAETrainer builds
    it: ``Adam(params, lr, betas)``, PyTorch's default implementation for the device)."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-6, betas=(0.0, 0.999))
    step_input = TrainStepInput(
        sae_in=batch,
        coefficients={name: 1.0 for name in sae.get_coefficients()},
        dead_neuron_mask=None,
        n_training_steps=0,
        is_logging_step=False,
    )

    def step() -> None:
        with sparse_threshold(threshold):
            output = sae.training_forward_pass(step_input)
            output.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(step: Step, device: str, repeats: int) -> list[float]:
    """Wall time of ``repeats`` steps after one warm-up step."""
    step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def peak_step_bytes(step: Step, device: str) -> int:
    """Peak tensor memory one step allocates above what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: a timeline of the profiler's allocation and
    free events (tensor memory only, as on CUDA; not the process's resident set).
    """
    if device.startswith("cuda"):
        synchronize(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        synchronize(device)
        return torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    deltas = []
    for event in prof.events():
        amount = event.cpu_memory_usage if event.name == "[memory]" else event.self_cpu_memory_usage
        if amount:
            deltas.append((event.time_range.start, amount))
    current = peak = 0
    for _, amount in sorted(deltas):
        current += amount
        peak = max(peak, current)
    return peak


def run_interleaved(contenders: list[Contender], device: str, rounds: int, repeats: int) -> None:
    """Fill every contender's ``times``, one block of steps per contender per round."""
    for _ in range(rounds):
        for contender in contenders:
            contender.times += time_steps(contender.step, device, repeats)


def median_ms(contender: Contender) -> float:
    return statistics.median(contender.times) * 1e3


def state_contenders(
    saes: dict[str, TrainingSAE], batch: torch.Tensor, floor: Step, keys: list[str]
) -> list[Contender]:
    """The table's rows for one state of the SAEs (``keys`` of ``CONTENDERS``, in its order)."""
    paper = saes["gated_paper"]
    steps: dict[str, Callable[[], Step]] = {
        "auto": lambda: make_step(paper, batch),
        "dense": lambda: make_step(paper, batch, "0"),
        "gated": lambda: make_step(saes["gated"], batch),
        "standard": lambda: make_step(saes["standard"], batch),
        "floor": lambda: floor,
    }
    return [Contender(name, steps[key](), []) for key, name in CONTENDERS.items() if key in keys]


def ratio(ms: float, baseline: float | None, width: int) -> str:
    return f"{'-':>{width}}" if baseline is None else f"{ms / baseline:>{width}.2f}"


def print_state(title: str, contenders: list[Contender], density: float, device: str) -> None:
    by_name = {c.name: median_ms(c) for c in contenders}
    gated, standard = by_name.get(CONTENDERS["gated"]), by_name.get(CONTENDERS["standard"])
    floor = by_name.get(CONTENDERS["floor"])
    print(f"\n{title}: open fraction {density:.2%}")
    print(
        f"{'':<32}{'ms/step':>9}{'/ gated':>9}{'/ standard':>11}{'/ floor':>9}"
        f"{'floor %':>9}{'peak MiB':>10}"
    )
    for c in contenders:
        ms = by_name[c.name]
        peak = "" if c.peak_bytes is None else f"{c.peak_bytes / 2**20:.0f}"
        share = "-" if floor is None else f"{floor / ms:.0%}"
        print(
            f"{c.name:<32}{ms:>9.1f}{ratio(ms, gated, 9)}{ratio(ms, standard, 11)}"
            f"{ratio(ms, floor, 9)}{share:>9}{peak:>10}"
        )


def peak_rss_mib() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_profile(step: Step, path: str, title: str) -> None:
    """One more step under the profiler; its ops' table, top 10 by self CPU time, to ``path``."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)
    with open(path, "w") as out:
        out.write(f"{title}\n{table}\n")
    print(f"\nprofile of one step ({title}) written to {path}")


def benchmark_size(args: argparse.Namespace, d_sae: int) -> None:
    """Every state for one d_sae: build, time interleaved, measure peak memory, print."""
    torch.manual_seed(0)
    batch = torch.randn(args.batch, args.d_in, device=args.device)
    saes = build_saes(args.d_in, d_sae, args.device, tuple(args.contenders))
    paper = saes["gated_paper"]
    x_c = (batch - paper.b_dec.detach()).contiguous()
    w_gate = paper.W_enc.detach()

    def floor() -> None:
        x_c @ w_gate

    for state in args.states:
        if state != "init":
            set_open_fraction(saes, batch, float(state))
        contenders = state_contenders(saes, batch, floor, args.contenders)
        run_interleaved(contenders, args.device, args.rounds, args.repeats)
        for contender in contenders:
            contender.peak_bytes = peak_step_bytes(contender.step, args.device)
        with torch.no_grad():
            density = open_fraction((batch - paper.b_dec) @ paper.W_enc, paper.b_gate, args.batch)
        title = f"d_sae {d_sae}, {'initial state' if state == 'init' else f'~{state} open'}"
        print_state(title, contenders, density, args.device)
        if args.profile:
            profile_title = f"{title} (open fraction {density:.2%}), gated_paper as shipped"
            write_profile(make_step(paper, batch), args.profile, profile_title)
    print(f"process peak resident memory after d_sae {d_sae}: {peak_rss_mib():.0f} MiB")


def calibrate(args: argparse.Namespace, d_sae: int) -> None:
    """Dense and sparse gated_paper steps across open fractions: where does sparse stop paying?"""
    torch.manual_seed(0)
    batch = torch.randn(args.batch, args.d_in, device=args.device)
    saes = build_saes(args.d_in, d_sae, args.device, others=())
    paper = saes["gated_paper"]
    print(f"\nd_sae {d_sae}: {'open':>7}{'dense ms':>10}{'sparse ms':>11}{'sparse/dense':>14}")
    for density in args.calibrate_densities:
        set_open_fraction(saes, batch, density)
        dense = Contender("dense", make_step(paper, batch, "0"), [])
        sparse = Contender("sparse", make_step(paper, batch, "inf"), [])
        run_interleaved([dense, sparse], args.device, args.rounds, args.repeats)
        sparse_over_dense = median_ms(sparse) / median_ms(dense)
        print(
            f"{'':<12}{density:>7.1%}{median_ms(dense):>10.1f}{median_ms(sparse):>11.1f}{sparse_over_dense:>14.2f}"
        )
    print(f"process peak resident memory after d_sae {d_sae}: {peak_rss_mib():.0f} MiB")


def adam_share(args: argparse.Namespace, d_sae: int) -> None:
    """Adam's time against a whole gated_paper step, for each Adam implementation."""
    torch.manual_seed(0)
    batch = torch.randn(args.batch, args.d_in, device=args.device)
    saes = build_saes(args.d_in, d_sae, args.device, others=())
    paper = saes["gated_paper"]
    set_open_fraction(saes, batch, 0.01)
    step = Contender("gated_paper step at ~1% open", make_step(paper, batch), [])
    params = [p for p in paper.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    variants = {"default (as SAETrainer)": {}, "foreach=True": {"foreach": True}}
    variants["fused=True"] = {"fused": True}
    optimizers = {
        name: torch.optim.Adam(params, lr=1e-6, betas=(0.0, 0.999), **kwargs)  # type: ignore[arg-type]
        for name, kwargs in variants.items()
    }
    contenders = [step] + [
        Contender(f"Adam {name}", optimizer.step, []) for name, optimizer in optimizers.items()
    ]

    def restore_grads() -> None:  # the step above clears them; Adam needs some to work on
        for p in params:
            if p.grad is None:
                p.grad = torch.randn_like(p)

    for _ in range(args.rounds):
        for contender in contenders:
            restore_grads()
            contender.times += time_steps(contender.step, args.device, args.repeats)
    whole = median_ms(step)
    print(f"\nd_sae {d_sae}: Adam over {sum(p.numel() for p in params):,} parameters")
    for contender in contenders:
        ms = median_ms(contender)
        print(f"  {contender.name:<36}{ms:>9.1f} ms {ms / whole:>7.1%} of the step")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, nargs="+", default=[4608, 16384])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--states",
        nargs="+",
        default=["init", "0.01", "0.05"],
        help="'init' (SAELens's initialisation) and/or open fractions set through b_gate",
    )
    parser.add_argument(
        "--contenders",
        nargs="+",
        choices=list(CONTENDERS),
        default=list(CONTENDERS),
        help="rows of the table (leave out the dense ones at large d_sae)",
    )
    parser.add_argument("--no-adam", action="store_true", help="skip Adam's share")
    parser.add_argument("--profile", help="write the op table of one gated_paper step here")
    parser.add_argument("--calibrate", action="store_true", help="dense/sparse crossover only")
    parser.add_argument(
        "--calibrate-densities",
        type=float,
        nargs="+",
        default=[0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3],
    )
    return parser.parse_args()


def main() -> None:
    """Run the benchmark chosen by the arguments and print its tables."""
    args = parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device={args.device} ({name}) torch={torch.__version__} threads="
        f"{torch.get_num_threads()} d_in={args.d_in} batch={args.batch} "
        f"steps={args.rounds * args.repeats} per contender, medians"
    )
    for d_sae in args.d_sae:
        if args.calibrate:
            calibrate(args, d_sae)
        else:
            benchmark_size(args, d_sae)
            if not args.no_adam:
                adam_share(args, d_sae)


if __name__ == "__main__":
    main()
