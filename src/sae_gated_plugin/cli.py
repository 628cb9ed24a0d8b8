"""The ``sae-gated`` command: train, cache, sweep, plot, compare, eval, inspect, push,
directory-entry, convert, schema, demo.

Exit status: 0 on success, 2 on invalid input (config, file, argument, download) with a
message naming what is wrong, 1 when training diverges or a rank of a torchrun launch fails,
130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from sae_gated_plugin.errors import (
    DistributedTrainingError,
    GatedPluginError,
    TrainingDivergedError,
    TrainingInterruptedError,
    WriteFaultError,
)
from sae_gated_plugin.sweep.selection import Y_METRICS

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # argparse's error() is typed NoReturn; this one raises too
        self.print_usage(sys.stderr)
        raise GatedPluginError(message)


def _add_run_config_arguments(parser: argparse.ArgumentParser, config_help: str) -> None:
    """The run config argument and its ``--set`` overrides, shared by train and cache."""
    parser.add_argument("config", type=Path, help=config_help)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, dotted for sections (e.g. sae.l1_coefficient=5)",
    )


def _add_grid_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="FIELD=V1,V2",
        help="keep only lines whose FIELD is one of the values (repeatable), e.g. grids=frontier",
    )
    parser.add_argument(
        "--sweep", type=Path, metavar="CONFIG", help="the sweep config (for --grid)"
    )
    parser.add_argument(
        "--grid",
        dest="grids",
        action="append",
        default=[],
        metavar="NAME",
        help="keep only the points of this grid of --sweep's config (repeatable)",
    )
    parser.add_argument(
        "--envelope",
        action="store_true",
        help="one line per architecture/variant over all lrs: its Pareto front (best lr per L0)",
    )
    parser.add_argument(
        "--y",
        choices=Y_METRICS,
        help="metric against L0 (default loss_recovered; mcc for synthetic sweeps)",
    )


def _grid_points(args: argparse.Namespace) -> set[tuple[Any, ...]] | None:
    """The point keys of the --grid grids of the --sweep config (None: no --grid)."""
    if not args.grids:
        return None
    if args.sweep is None:
        raise GatedPluginError("--grid needs --sweep CONFIG, the sweep config that defines it")
    from sae_gated_plugin.sweep.config import expand, load_sweep_config

    return {point.key() for point in expand(load_sweep_config(args.sweep), only=args.grids)}


def _add_results_verbs(verbs: argparse._SubParsersAction[_Parser]) -> None:
    """The verbs that read a sweep's results file: plot and compare."""
    plot = verbs.add_parser("plot", help="plot a sweep's results: L0 vs loss recovered, gamma")
    plot.add_argument("results", type=Path, help="the sweep's JSON-lines results file")
    plot.add_argument(
        "--output", type=Path, help="file prefix for .png and .svg (default: beside the results)"
    )
    _add_grid_selection(plot)
    plot.add_argument("--title", help="figure title")

    compare = verbs.add_parser(
        "compare", help="tables of a sweep's results: every point, L0 at equal loss recovered"
    )
    compare.add_argument("results", type=Path, help="the sweep's JSON-lines results file")
    _add_grid_selection(compare)
    compare.add_argument(
        "--reference",
        help="line the L0 ratios are taken against (default: the first standard line)",
    )
    compare.add_argument(
        "--at",
        dest="levels",
        type=float,
        nargs="+",
        default=None,
        metavar="LEVEL",
        help="loss-recovered levels to read L0 at (default 0.90 0.93 0.95 0.97); with a "
        "--y other than loss_recovered, L0 values to read it at (default 0.5, 1, 2 x true L0)",
    )


def _add_hub_verbs(verbs: argparse._SubParsersAction[_Parser]) -> None:
    """The verbs that publish to the Hub: push and directory-entry."""
    push = verbs.add_parser(
        "push", help="publish trained SAEs (folders or a sweep's results) to the Hugging Face Hub"
    )
    push.add_argument(
        "sae_paths",
        type=Path,
        nargs="+",
        metavar="SAE_PATH|RESULTS",
        help="SAE folders (cfg.json + safetensors), or one sweep results file (.jsonl)",
    )
    push.add_argument("repo_id", help="Hub repo, e.g. your-name/smollm2-gated-saes")
    push.add_argument(
        "--sae-id",
        help="folder in the repo, one SAE only (default: the hook name for one folder, else "
        "<hook_name>/width_<d_sae>/l0_<round(l0)>)",
    )
    push.add_argument(
        "--select",
        action="append",
        default=[],
        metavar="FIELD=V1,V2",
        help="results file: keep only lines whose FIELD is one of the values (repeatable)",
    )
    push.add_argument(
        "--frontier",
        action="store_true",
        help="results file: only each line's Pareto front (L0 vs loss recovered)",
    )
    push.add_argument(
        "--license", help="license id for the card: mit (default), apache-2.0, cc-by-4.0, ..."
    )
    push.add_argument(
        "--with-eval",
        action="store_true",
        help="also upload each SAE folder's neuronpedia/ export under <sae_id>/neuronpedia/",
    )
    push.add_argument("--revision", help="branch to push to (created if missing)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument(
        "--portable",
        action="store_true",
        help="publish as SAELens's built-in 'gated' so plain SAELens loads it without the plugin",
    )
    push.add_argument("--token", help="Hub token (default: HF_TOKEN or huggingface-cli login)")

    entry = verbs.add_parser(
        "directory-entry", help="print a release's entry for SAELens's pretrained_saes.yaml"
    )
    entry.add_argument("repo_id", help="Hub repo made by `sae-gated push`")
    entry.add_argument("--release", help="release name (default: the repo's name)")
    entry.add_argument("--revision", help="branch or commit (default main)")
    entry.add_argument("--token", help="Hub token (default: HF_TOKEN or huggingface-cli login)")


def build_parser() -> argparse.ArgumentParser:
    """The ``sae-gated`` argument parser (every verb and option; builds without heavy imports)."""
    parser = _Parser(
        prog="sae-gated",
        description="Train, evaluate and publish Gated SAEs (arXiv:2404.16014) with SAELens.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    train = verbs.add_parser("train", help="train a gated_paper SAE from a YAML/JSON config")
    _add_run_config_arguments(train, "YAML or JSON run config (see `schema`)")
    train.add_argument("--resume", type=Path, help="checkpoint folder to continue from")

    cache = verbs.add_parser(
        "cache", help="cache a run's activations on disk, to train a sweep from them"
    )
    _add_run_config_arguments(cache, "the run config that will train from the cache")

    sweep = verbs.add_parser(
        "sweep", help="train and evaluate a grid of SAEs from one activation stream"
    )
    _add_run_config_arguments(sweep, "YAML or JSON sweep config (grids + a base run)")
    sweep.add_argument(
        "--grid",
        dest="grids",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this grid of the config (repeatable; default all)",
    )

    _add_results_verbs(verbs)

    evaluate = verbs.add_parser("eval", help="evaluate any SAELens SAE on held-out text")
    evaluate.add_argument("sae_path", type=Path, help="folder with cfg.json + safetensors")
    evaluate.add_argument("--model", help="model name (default: the SAE's metadata)")
    evaluate.add_argument(
        "--dataset", help="embedded corpus or Hub dataset (default: the SAE's, held-out split)"
    )
    evaluate.add_argument("--split", default="eval", help="split of the dataset (default eval)")
    evaluate.add_argument("--n-sequences", type=int, default=64, help="windows to evaluate")
    evaluate.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    evaluate.add_argument(
        "--output", type=Path, help="report path (default SAE_PATH/evaluation.json)"
    )
    evaluate.add_argument(
        "--overwrite", action="store_true", help="replace an existing report at that path"
    )

    _add_hub_verbs(verbs)

    from sae_gated_plugin.convert import command as convert_command
    from sae_gated_plugin.inspect import command as inspect_command

    convert_command.add_parser(verbs)
    inspect_command.add_parser(verbs)

    verbs.add_parser("schema", help="print the JSON Schema of the train config")

    demo = verbs.add_parser("demo", help="train, evaluate and reload an SAE on SmolLM2, offline")
    demo.add_argument("--output", type=Path, default=Path("demo-output"), help="output folder")
    return parser


def _run_results_verb(args: argparse.Namespace) -> int:
    """plot or compare: read a sweep's results file."""
    if args.verb == "plot":
        from sae_gated_plugin.sweep.plot import plot_sweep

        paths = plot_sweep(
            args.results,
            output=args.output,
            select=args.select,
            points=_grid_points(args),
            title=args.title,
            envelope=args.envelope,
            y=args.y,
        )
        print("Wrote " + ", ".join(str(p) for p in paths))
        return EXIT_OK
    from sae_gated_plugin.sweep.compare import compare_sweep

    print(
        compare_sweep(
            args.results,
            select=args.select,
            points=_grid_points(args),
            reference=args.reference,
            levels=args.levels,
            envelope=args.envelope,
            y=args.y,
        ),
        end="",
    )
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    if args.verb == "schema":
        from sae_gated_plugin.run.config import json_schema

        print(json.dumps(json_schema(), indent=2))
        return EXIT_OK
    if args.verb in ("train", "cache"):
        from sae_gated_plugin.run.config import load_config

        config = load_config(args.config, args.overrides)  # config errors answer before torch loads
    if args.verb == "train":
        print("loading SAELens...", file=sys.stderr, flush=True)
        from sae_gated_plugin.sources import launched_by_torchrun

        if launched_by_torchrun():
            from sae_gated_plugin.distributed.launch import train_distributed as train
        else:
            from sae_gated_plugin.run.train import train

        result = train(config, resume_from=args.resume)
        if not _is_main_process():  # under torchrun, rank 0 alone reports
            return EXIT_OK
        if result.report is not None:
            print(result.report.to_table())
        print(f"Saved the SAE to {result.output_path}")
        return EXIT_OK
    if args.verb == "cache":
        from sae_gated_plugin.run.cache import cache_activations

        path = cache_activations(config)
        print(f"Cached activations in {path}")
        return EXIT_OK
    if args.verb == "sweep":
        from sae_gated_plugin.sweep.config import load_sweep_config

        sweep_config = load_sweep_config(args.config, args.overrides)
        from sae_gated_plugin.sweep.driver import run_sweep  # after config errors: loads torch

        run_sweep(sweep_config, only=args.grids, echo=lambda line: print(line, flush=True))
        print(f"Results in {sweep_config.output}")
        return EXIT_OK
    if args.verb in ("plot", "compare"):
        return _run_results_verb(args)
    if args.verb == "eval":
        from sae_gated_plugin.eval.saved import evaluate_saved_sae

        options = ("dataset", "split", "n_sequences", "batch_size", "device", "output", "overwrite")
        report = evaluate_saved_sae(
            args.sae_path, model_name=args.model, **{name: getattr(args, name) for name in options}
        )
        print(report.to_table())
        return EXIT_OK
    if args.verb == "push":
        from sae_gated_plugin.hub.publish import push_release
        from sae_gated_plugin.hub.release import release_saes

        saes = release_saes(args.sae_paths, args.sae_id, args.select, args.frontier)
        push_options = ("revision", "private", "portable", "token", "license", "with_eval")
        urls = push_release(
            saes, args.repo_id, **{name: getattr(args, name) for name in push_options}
        )
        print("\n".join(f"Pushed to {url}" for url in urls))
        return EXIT_OK
    if args.verb == "directory-entry":
        from sae_gated_plugin.hub.directory import directory_entry, release_config

        release = release_config(args.repo_id, revision=args.revision, token=args.token)
        print(directory_entry(args.repo_id, release, args.release), end="")
        return EXIT_OK
    if args.verb == "convert":
        from sae_gated_plugin.convert import command as convert_command

        print(convert_command.run(args))
        return EXIT_OK
    if args.verb == "inspect":
        from sae_gated_plugin.inspect import command as inspect_command

        print(inspect_command.run(args))
        return EXIT_OK
    if args.verb == "demo":
        from sae_gated_plugin.demo import run_demo

        run_demo(args.output)
        return EXIT_OK
    raise GatedPluginError(f"unknown command {args.verb!r}")  # argparse prevents this


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _is_main_process() -> bool:
    from sae_gated_plugin.sources import is_main_process

    return is_main_process()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sae-gated`` console script."""
    # SIGTERM behaves as Ctrl-C from the first second (model loading included): a clean exit
    # 130, with staging folders cleaned up; training installs its own step-boundary handler.
    previous = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return _run(args)
    except GatedPluginError as exc:
        print(f"sae-gated: error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except TrainingDivergedError as exc:
        if _is_main_process():  # under torchrun every rank stops alike: rank 0 says so
            print(f"sae-gated: training diverged: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except DistributedTrainingError as exc:
        print(f"sae-gated: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except TrainingInterruptedError as exc:
        if _is_main_process():
            print(f"sae-gated: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("sae-gated: interrupted; nothing was left half-written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except WriteFaultError as exc:
        print(f"sae-gated: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        message = _write_fault_message(exc)
        if message is None:
            raise
        print(f"sae-gated: {message}", file=sys.stderr)
        return EXIT_FAILED


# ---- write faults no write site named: one line, no traceback -----------------------------
def _write_fault_message(exc: Exception) -> str | None:
    """One line for a write the machine refused (disk full, read-only...), else None."""
    from sae_gated_plugin.io import write_fault_cause

    cause = write_fault_cause(exc)
    if cause is None:
        return None
    where = getattr(exc, "filename", None)
    target = f"{where}: a file operation failed" if where else "a write failed"
    detail = "" if where else f" [{type(exc).__name__}: {str(exc).splitlines()[0][:200]}]"
    return (
        f"{target} ({cause}){detail}; every file written before is complete, none was left "
        "half-written under its final name"
    )


if __name__ == "__main__":
    sys.exit(main())
