"""What one ``sae-gated push`` publishes: SAE folders, or the saved SAEs of a sweep's results
lines (``--select``, ``--frontier``), each with the sae_id it gets in the repo."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.sweep.results import read_results, saved_sae_folder
from sae_gated_plugin.sweep.selection import on_frontier, select_records


@dataclass
class ReleaseSAE:
    """One SAE to publish: its folder, its sae_id (None: the default name) and the metrics of
    its sweep results line (beside its evaluation.json, which wins)."""

    folder: Path
    sae_id: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def saes_from_results(
    results: Path, select: Sequence[str] = (), frontier: bool = False
) -> list[ReleaseSAE]:
    """The saved SAEs of the results lines ``select`` keeps (``frontier``: only each line's
    Pareto front in L0 / loss recovered); GatedPluginError names a line with no saved SAE."""
    if not results.is_file():
        raise GatedPluginError(f"{results}: no such results file")
    records = select_records(read_results(results), select)
    if frontier:  # the SAEs a sweep with `save: frontier` keeps
        y = "loss_recovered" if any("loss_recovered" in r for r in records) else "mcc"
        records = on_frontier([r for r in records if r.get("l0") is not None], y)
    if not records:
        raise GatedPluginError(f"{results}: no result lines to push (after --select/--frontier)")
    saes = []
    for record in records:
        folder = saved_sae_folder(results, record)
        point = ", ".join(f"{k}={record.get(k)}" for k in ("architecture", "coefficient", "lr"))
        if folder is None:
            where = record.get("sae_path")
            raise GatedPluginError(
                f"{results}: the line of {point} has no saved SAE"
                + (f" (its folder {where} is gone)" if where else " (no sae_path)")
            )
        saes.append(ReleaseSAE(folder, None, record))
    return saes


def default_sae_id(cfg: dict[str, Any], metrics: dict[str, Any]) -> str | None:
    """``<hook_name>/width_<d_sae>/l0_<round(l0)>`` (without the L0 part when unknown); None
    when the SAE's metadata names no hook."""
    hook = (cfg.get("metadata") or {}).get("hook_name") or metrics.get("hook_name")
    if not isinstance(hook, str) or not hook:
        return None
    sae_id = f"{hook}/width_{cfg.get('d_sae')}"
    l0 = metrics.get("l0")
    if isinstance(l0, (int, float)) and not isinstance(l0, bool) and l0 == l0:
        sae_id += f"/l0_{round(l0)}"
    return sae_id


def unique_ids(names: list[tuple[str, str]]) -> list[str]:
    """Distinct ids from ``(sae_id, architecture)`` pairs: a clash gets ``_<architecture>``,
    then ``_2``, ``_3``... (first come keeps the plain id)."""
    taken: set[str] = set()
    out = []
    for sae_id, architecture in names:
        candidate = sae_id
        if candidate in taken:
            candidate = f"{sae_id}_{architecture}"
        base, n = candidate, 2
        while candidate in taken:
            candidate, n = f"{base}_{n}", n + 1
        taken.add(candidate)
        out.append(candidate)
    return out


def release_saes(
    paths: Sequence[Path], sae_id: str | None, select: Sequence[str], frontier: bool
) -> list[ReleaseSAE]:
    """What ``sae-gated push PATHS...`` publishes: one results file (a file) or SAE folders."""
    files = [p for p in paths if p.is_file()]
    if files and len(paths) > 1:
        raise GatedPluginError(f"{files[0]}: push one results file, or SAE folders, not both")
    if not files and (select or frontier):
        raise GatedPluginError("--select and --frontier need a sweep results file")
    if sae_id is not None and (files or len(paths) > 1):
        raise GatedPluginError("--sae-id names one SAE folder: omit it to use default names")
    if files:
        return saes_from_results(files[0], select, frontier)
    return [ReleaseSAE(path, sae_id) for path in paths]
