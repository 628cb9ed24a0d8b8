"""Throughput of data-parallel training with 1 and 2 (or more) ranks under torchrun.

Two workloads, each run once per rank count with the same config (the same global batch):

* ``pipeline``: ``sae-gated train``'s whole pipeline - the embedded SmolLM2-135M up to the hook,
  SAELens's ActivationsStore on each rank's shard of the embedded corpus, the gated_paper step,
  DDP's gradient averaging;
* ``sae``: the SAE step alone on in-memory activations (SAELens's trainer, DDP), which shows
  what gradient averaging costs when there is no language model to share out.

Tokens/s are counted from the end of the ``--warmup``-th step to the end of the last one.
Efficiency is the throughput per rank relative to one rank: (tokens/s with N ranks / N) /
(tokens/s with 1 rank). Each rank gets ``--threads-per-rank`` CPU threads in every run, so on
an N-core CPU N ranks of 1 thread can at best reach efficiency 1. The one-process run without
torchrun (``plain``, SAELens's runner as ``sae-gated train`` uses it) is measured too, as the
baseline the 1-rank torchrun run is compared with.

    python benchmarks/scaling.py                         # CPU: pipeline and sae, 1 and 2 ranks
    python benchmarks/scaling.py --device cuda --ranks 1 2 4 8 --batch 4096 --d-sae 16384
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORKLOADS = ("pipeline", "sae")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------------- worker side
def _record_steps() -> list[float]:
    """Patch SAELens's trainer step (which every trainer of the plugin calls) to timestamp
    the end of each step."""
    from sae_lens.training.sae_trainer import SAETrainer

    stamps: list[float] = []
    original = SAETrainer.step

    def timed(self: Any, batch: Any) -> Any:
        output = original(self, batch)
        if self.sae.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return output

    SAETrainer.step = timed  # type: ignore[method-assign]
    return stamps


def _pipeline(args: argparse.Namespace, output: Path) -> None:
    from sae_gated_plugin.run.config import parse_config
    from sae_gated_plugin.run.train import train

    cfg = parse_config(
        {
            "output_path": str(output),
            "hook_name": args.hook,
            "context_size": args.context,
            "training_tokens": (args.steps + 1) * args.batch,
            "train_batch_size_tokens": args.batch,
            "store_batch_size_prompts": args.prompts,
            "n_batches_in_buffer": 16,
            "n_batches_for_norm_estimate": 2,
            "n_checkpoints": 0,
            "device": args.device,
            "sae": {"d_sae": args.d_sae},
            "eval": {"enabled": False},
        },
        source="scaling benchmark",
    )
    train(cfg)


def _sae_only(args: argparse.Namespace) -> None:
    import torch
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from sae_gated_plugin import GatedPaperTrainingSAE, GatedPaperTrainingSAEConfig

    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device if args.device == "cpu" else f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    torch.manual_seed(0)
    sae = GatedPaperTrainingSAE(
        GatedPaperTrainingSAEConfig(d_in=args.d_in, d_sae=args.d_sae, device=device)
    )
    gen = torch.Generator().manual_seed(rank)
    local = args.batch // world_size
    batches = [torch.randn(local, args.d_in, generator=gen).to(device) for _ in range(4)]
    trainer = SAETrainer(
        cfg=SAETrainerConfig(
            total_training_samples=(args.steps + 1) * args.batch,
            train_batch_size_samples=args.batch,
            lr=3e-4,
            lr_end=3e-4,
            device=device,
        ),
        sae=sae,
        data_provider=iter(batches * (args.steps + 1)),
    )
    if "WORLD_SIZE" not in os.environ:
        trainer.fit()
        return
    from sae_gated_plugin.distributed.context import context_from_environment, process_group
    from sae_gated_plugin.distributed.trainers import DataParallelTrainer

    ctx = context_from_environment(args.device)
    with process_group(ctx, timeout_s=600):
        trainer.__class__ = DataParallelTrainer
        trainer.attach(ctx, None)  # type: ignore[attr-defined]
        trainer.begin()  # type: ignore[attr-defined]
        trainer.fit()


def worker(args: argparse.Namespace) -> None:
    """One rank (or the one plain process) of a measurement; rank 0 writes ``args.result``."""
    import torch

    torch.set_num_threads(args.threads_per_rank)
    stamps = _record_steps()
    with tempfile.TemporaryDirectory() as folder:
        if args.worker == "pipeline":
            _pipeline(args, Path(folder) / "out")
        else:
            _sae_only(args)
    if os.environ.get("RANK", "0") != "0":
        return
    measured = stamps[args.warmup :]
    seconds = measured[-1] - measured[0]
    tokens = (len(measured) - 1) * args.batch
    Path(args.result).write_text(
        json.dumps({"tokens_per_s": tokens / seconds, "steps": len(measured) - 1})
    )


# ---------------------------------------------------------------------------- launcher side
def measure(args: argparse.Namespace, workload: str, ranks: int | None) -> dict[str, Any]:
    """Tokens/s of ``workload`` with ``ranks`` torchrun ranks (None: one plain process)."""
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        own = [
            str(Path(__file__).resolve()),
            "--worker",
            workload,
            "--result",
            str(result),
            *_shared_flags(args),
        ]
        command = [sys.executable, *own]
        if ranks is not None:
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc-per-node",
                str(ranks),
                "--master-port",
                str(_free_port()),
                *own,
            ]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_rank)}
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
        return json.loads(result.read_text())


def _shared_flags(args: argparse.Namespace) -> list[str]:
    names = ("device", "steps", "warmup", "batch", "d_in", "d_sae", "hook", "context", "prompts")
    flags = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in names]
    return [*flags, f"--threads-per-rank={args.threads_per_rank}"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=[*WORKLOADS, "both"], default="both")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per rank)")
    parser.add_argument("--threads-per-rank", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40, help="optimiser steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed")
    parser.add_argument("--batch", type=int, default=1024, help="global batch, tokens")
    parser.add_argument("--d-in", type=int, default=576, help="sae workload only")
    parser.add_argument("--d-sae", type=int, default=2304)
    parser.add_argument("--hook", default="blocks.2.hook_resid_post", help="pipeline only")
    parser.add_argument("--context", type=int, default=128, help="pipeline only")
    parser.add_argument("--prompts", type=int, default=8, help="windows per LM batch")
    parser.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser


def main() -> None:
    """Measure each workload with one plain process and with each rank count; print a table."""
    args = _parser().parse_args()
    if args.worker:
        worker(args)
        return
    workloads = WORKLOADS if args.workload == "both" else (args.workload,)
    rows = []
    print(
        f"device {args.device}, {args.threads_per_rank} thread(s) per rank, global batch "
        f"{args.batch} tokens, d_sae {args.d_sae}, {args.steps} steps ({args.warmup} untimed)"
    )
    print(f"{'workload':<9} {'launch':<11} {'tokens/s':>9} {'per rank':>9} {'efficiency':>10}")
    for workload in workloads:
        plain = measure(args, workload, None)["tokens_per_s"]
        print(f"{workload:<9} {'plain':<11} {plain:9.0f} {plain:9.0f} {'':>10}")
        single = None
        for ranks in args.ranks:
            tps = measure(args, workload, ranks)["tokens_per_s"]
            single = tps if ranks == 1 else single
            efficiency = (tps / ranks) / single if single else float("nan")
            label = f"torchrun {ranks}"
            print(f"{workload:<9} {label:<11} {tps:9.0f} {tps / ranks:9.0f} {efficiency:10.2f}")
            rows.append({"workload": workload, "ranks": ranks, "tokens_per_s": tps, "plain": plain})
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": None}, "rows": rows}))


if __name__ == "__main__":
    main()
