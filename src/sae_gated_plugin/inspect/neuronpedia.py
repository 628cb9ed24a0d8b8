"""A Neuronpedia batch export of an :class:`InspectReport`, in the layout SAEDashboard's
``neuronpedia/neuronpedia_export.py`` writes and Neuronpedia's admins import::

    {folder}/{model_id}/{source_id}/
        release.jsonl  model.jsonl  sourceset.jsonl  source.jsonl
        features/batch-<n>.jsonl.gz     one Feature record per latent
        activations/batch-<n>.jsonl.gz  one Activation record per shown context
with SAEDashboard's record field names and ``source_id = f"{layer}-{source_set}"``.

Filled, per Feature: ``modelId``, ``layer`` (the source id), ``index``, ``creatorId``,
``createdAt``, ``maxActApprox`` (the largest value of its activation records), ``hookName``,
``topkCosSimIndices``/``topkCosSimValues`` (from ``nearest``), ``pos_str``/``pos_values``
(promoted tokens), ``neg_str``/``neg_values`` (suppressed), ``frac_nonzero`` (frequency),
``freq_hist_data_bar_*`` and ``logits_hist_data_bar_*`` (heights = counts, values = bin
centres). Per Activation: ``id``, ``tokens``, ``index``, ``layer``, ``modelId``,
``maxValue``, ``maxValueTokenIndex``, ``minValue``, ``values``, ``creatorId``, ``createdAt``,
``binMin``, ``binMax``, ``binContains``, ``qualifyingTokenIndex``.

Left empty: ``vector``/``hasVector`` (the report carries no decoder rows),
``decoder_weights_dist``, ``neuron_alignment_*`` and ``correlated_*`` (the inspection does
not compute them), the DFA fields, ``lossValues``, ``logitContributions``, ``zIndices`` and
``zValues`` (attention-only or per-token analyses it does not run), and ``dataSource`` /
``dataIndex`` (a context's window is a held-out window, not a dataset row Neuronpedia can
look up). A dead latent gets a Feature record and no Activation records.
"""

from __future__ import annotations

import gzip
import json
import re
import uuid
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.inspect.data import InspectReport, LatentReport
from sae_gated_plugin.io import json_safe

# The creator id SAEDashboard falls back to when none is given (Neuronpedia's admins map it).
FALLBACK_CREATOR_ID = "clkht01d40000jv08hvalcvly"
BATCH_SIZE = 128
LAYER = re.compile(r"^blocks\.(\d+)\.")
NOT_IN_ID = re.compile(r"[^a-z0-9]+")
# The fields the inspection leaves empty (see above), as SAEDashboard writes them when empty.
EMPTY_ACTIVATION: dict[str, Any] = {
    "dataSource": None, "dataIndex": None, "dfaValues": [], "dfaTargetIndex": None,
    "dfaMaxValue": None, "lossValues": [], "logitContributions": None, "zIndices": None,
    "zValues": None,
}  # fmt: skip
EMPTY_FEATURE: dict[str, Any] = {
    "hasVector": False, "vector": [], "vectorLabel": None, "vectorDefaultSteerStrength": 10,
    "decoder_weights_dist": [], "sourceSetName": None,
    **{f"neuron_alignment_{k}": [] for k in ("indices", "values", "l1")},
    **{f"correlated_{kind}_{k}": [] for kind in ("neurons", "features")
       for k in ("indices", "pearson", "l1")},
}  # fmt: skip


def layer_of(hook_name: str) -> int:
    """The block number of a TransformerLens hook name such as ``blocks.4.hook_resid_post``."""
    match = LAYER.match(hook_name)
    if match is None:
        raise GatedPluginError(
            f"hook_name {hook_name!r}: a Neuronpedia source needs a layer, "
            "read from a hook name of the form blocks.<n>.<hook>"
        )
    return int(match.group(1))


def centres(edges: list[float]) -> list[float]:
    """The centre of each bin of a histogram with the given edges."""
    return [(low + high) / 2 for low, high in pairwise(edges)]


def write_jsonl(path: Path, records: list[dict[str, Any]], *, compress: bool = False) -> None:
    """Write one strict-JSON record per line, gzipped when ``compress``."""
    data = "".join(json.dumps(json_safe(r), allow_nan=False) + "\n" for r in records).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, compresslevel=5) if compress else data)


def activation_records(latent: LatentReport, common: dict[str, Any]) -> list[dict[str, Any]]:
    """One Activation record per context of every group of ``latent``."""
    records = []
    for group in latent.groups:
        for context in group.contexts:
            values = [float(v) for v in context.values]
            top = max(values)
            records.append({
                "id": "c" + uuid.uuid4().hex[:24], "tokens": context.tokens,
                "index": str(latent.index), **common, "maxValue": top,
                "maxValueTokenIndex": values.index(top), "minValue": min(values),
                "values": values, "binMin": group.bin_min, "binMax": group.bin_max,
                "binContains": group.bin_contains,
                "qualifyingTokenIndex": context.qualifying_index, **EMPTY_ACTIVATION,
            })  # fmt: skip
    return records


def feature_record(
    latent: LatentReport, activations: list[dict[str, Any]], common: dict[str, Any], hook: str
) -> dict[str, Any]:
    """The Feature record of ``latent``; ``maxActApprox`` from its activation records."""
    return {
        "modelId": common["modelId"],
        "layer": common["layer"],
        "index": str(latent.index),
        "creatorId": common["creatorId"],
        "createdAt": common["createdAt"],
        "maxActApprox": max((a["maxValue"] for a in activations), default=0.0),
        "hookName": hook,
        "topkCosSimIndices": [index for index, _ in latent.nearest],
        "topkCosSimValues": [cosine for _, cosine in latent.nearest],
        "neg_str": [token for token, _ in latent.suppressed],
        "neg_values": [logit for _, logit in latent.suppressed],
        "pos_str": [token for token, _ in latent.promoted],
        "pos_values": [logit for _, logit in latent.promoted],
        "frac_nonzero": latent.frequency,
        "freq_hist_data_bar_heights": [float(c) for c in latent.histogram_counts],
        "freq_hist_data_bar_values": centres(latent.histogram_edges),
        "logits_hist_data_bar_heights": [float(c) for c in latent.logit_histogram_counts],
        "logits_hist_data_bar_values": centres(latent.logit_histogram_edges),
        **EMPTY_FEATURE,
    }


def write_neuronpedia_export(
    report: InspectReport,
    folder: Path,
    *,
    model_id: str | None = None,
    source_set: str | None = None,
    creator_name: str = "sae-gated-plugin",
    creator_id: str = FALLBACK_CREATOR_ID,
    release_id: str | None = None,
    description: str | None = None,
    url: str | None = None,
    hf_repo_id: str | None = None,
    batch_size: int = BATCH_SIZE,
) -> Path:
    """Write the Neuronpedia batch export of ``report`` under ``folder``; return the source
    folder ``{folder}/{model_id}/{source_id}``.

    ``model_id`` defaults to the model name's last part in lower case, ``source_set`` to the
    architecture and ``d_sae`` (e.g. ``gated-paper-16384``), ``release_id`` to the source set.
    """
    model_id = model_id or NOT_IN_ID.sub("-", report.model_name.split("/")[-1].lower())
    source_set = source_set or NOT_IN_ID.sub("-", f"{report.architecture}-{report.d_sae}".lower())
    release_id = release_id or source_set
    description = description or f"{report.architecture} SAE {report.sae} on {report.hook_name}"
    source_id = f"{layer_of(report.hook_name)}-{source_set}"
    created = datetime.now().isoformat()
    out = folder / model_id / source_id
    urls = [url] if url else []
    owner = {"creatorId": creator_id, "createdAt": created}
    write_jsonl(out / "release.jsonl", [{
        "name": release_id, "description": description, "creatorName": creator_name, **owner,
        "visibility": "PUBLIC", "isNewUi": False, "featured": False,
        "descriptionShort": description, "urls": urls, "creatorEmail": None,
        "creatorNameShort": creator_name, "defaultSourceSetName": None,
        "defaultSourceId": None, "defaultUmapSourceIds": [],
    }])  # fmt: skip
    write_jsonl(out / "model.jsonl", [{
        "id": model_id, "instruct": model_id.endswith("-it"), **owner,
        "displayNameShort": model_id, "displayName": model_id, "tlensId": report.model_name,
        "dimension": report.d_in, "visibility": "PUBLIC", "defaultSourceSetName": None,
        "defaultSourceId": None, "inferenceEnabled": False, "layers": 0, "neuronsPerLayer": 0,
        "owner": "", "updatedAt": created, "website": None,
    }])  # fmt: skip
    write_jsonl(out / "sourceset.jsonl", [{
        "modelId": model_id, "name": source_set, **owner, "hasDashboards": True,
        "visibility": "PUBLIC", "description": description, "type": "",
        "creatorName": creator_name, "urls": urls, "creatorEmail": None,
        "releaseName": release_id, "defaultOfModelId": None, "defaultRange": 1,
        "defaultShowBreaks": True, "showDfa": False, "showCorrelated": False,
        "showHeadAttribution": False, "showUmap": False,
    }])  # fmt: skip
    write_jsonl(out / "source.jsonl", [{
        "id": source_id, "modelId": model_id, "setName": source_set, **owner,
        "hasDashboards": True, "inferenceEnabled": False, "inferenceHosts": [],
        "saelensConfig": None, "saelensRelease": None, "saelensSaeId": None,
        "hfRepoId": hf_repo_id, "hfFolderId": None, "visibility": "PUBLIC",
        "defaultOfModelId": None, "hasUmap": False, "hasUmapLogSparsity": False,
        "hasUmapClusters": False, "num_prompts": report.n_sequences,
        "num_tokens_in_prompt": report.context_size, "dataset": report.dataset, "notes": None,
    }])  # fmt: skip
    common = {"layer": source_id, "modelId": model_id, **owner}
    latents = sorted(report.latents, key=lambda latent: latent.index)
    for batch, start in enumerate(range(0, len(latents), batch_size)):
        features, activations = [], []
        for latent in latents[start : start + batch_size]:
            records = activation_records(latent, common)
            features.append(feature_record(latent, records, common, report.hook_name))
            activations += records
        write_jsonl(out / "features" / f"batch-{batch}.jsonl.gz", features, compress=True)
        write_jsonl(out / "activations" / f"batch-{batch}.jsonl.gz", activations, compress=True)
    return out
