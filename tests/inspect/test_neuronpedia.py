"""The Neuronpedia export: SAEDashboard's batch-import layout, parseable, with the documented
fields filled consistently."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from sae_gated_plugin.errors import GatedPluginError
from sae_gated_plugin.inspect.data import InspectReport
from sae_gated_plugin.inspect.neuronpedia import layer_of, write_neuronpedia_export

FEATURE_FIELDS = {
    "modelId", "layer", "index", "creatorId", "createdAt", "maxActApprox", "hasVector",
    "vector", "hookName", "topkCosSimIndices", "topkCosSimValues", "neg_str", "neg_values",
    "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_heights",
    "freq_hist_data_bar_values", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
    "decoder_weights_dist", "neuron_alignment_indices", "neuron_alignment_values",
    "neuron_alignment_l1", "correlated_neurons_indices", "correlated_neurons_pearson",
    "correlated_neurons_l1", "correlated_features_indices", "correlated_features_pearson",
    "correlated_features_l1",
}  # fmt: skip
ACTIVATION_FIELDS = {
    "id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue",
    "values", "creatorId", "createdAt", "binMin", "binMax", "binContains",
    "qualifyingTokenIndex",
}  # fmt: skip


def read_lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    text = gzip.decompress(raw).decode() if path.suffix == ".gz" else raw.decode()
    return [json.loads(line) for line in text.splitlines()]


def read_batches(folder: Path) -> list[dict[str, Any]]:
    files = sorted(
        folder.glob("batch-*.jsonl.gz"), key=lambda p: int(p.name.split("-")[1].split(".")[0])
    )
    return [record for path in files for record in read_lines(path)]


@pytest.fixture
def exported(report: InspectReport, tmp_path: Path) -> Path:
    return write_neuronpedia_export(report, tmp_path, source_set="gated-res", batch_size=3)


def test_the_layout_is_saedashboards(report: InspectReport, tmp_path: Path, exported: Path) -> None:
    assert exported == tmp_path / "smollm2-135m" / "4-gated-res"
    for name in ("release", "model", "sourceset", "source"):
        [record] = read_lines(exported / f"{name}.jsonl")
        assert record["creatorId"] and isinstance(record["createdAt"], str)
    assert read_lines(exported / "source.jsonl")[0]["id"] == "4-gated-res"
    assert read_lines(exported / "sourceset.jsonl")[0]["name"] == "gated-res"
    assert read_lines(exported / "model.jsonl")[0]["id"] == "smollm2-135m"
    # four latents in batches of three
    assert sorted(p.name for p in (exported / "features").iterdir()) == [
        "batch-0.jsonl.gz",
        "batch-1.jsonl.gz",
    ]
    assert sorted(p.name for p in (exported / "activations").iterdir()) == [
        "batch-0.jsonl.gz",
        "batch-1.jsonl.gz",
    ]


def test_features_carry_the_documented_fields(report: InspectReport, exported: Path) -> None:
    features = read_batches(exported / "features")
    assert [f["index"] for f in features] == ["0", "3", "5", "7"]
    by_index = {latent.index: latent for latent in report.latents}
    for feature in features:
        assert set(feature) >= FEATURE_FIELDS
        latent = by_index[int(feature["index"])]
        assert feature["layer"] == "4-gated-res" and feature["modelId"] == "smollm2-135m"
        assert feature["hookName"] == "blocks.4.hook_resid_post"
        assert feature["frac_nonzero"] == latent.frequency
        assert feature["topkCosSimIndices"] == [i for i, _ in latent.nearest]
        assert feature["pos_str"] == [t for t, _ in latent.promoted]
        assert feature["neg_values"] == [v for _, v in latent.suppressed]
        for a, b in (("pos_str", "pos_values"), ("neg_str", "neg_values")):
            assert len(feature[a]) == len(feature[b])
        for kind in ("freq", "logits"):
            heights = feature[f"{kind}_hist_data_bar_heights"]
            assert len(heights) == len(feature[f"{kind}_hist_data_bar_values"])
        assert feature["hasVector"] is False and feature["vector"] == []
    first = features[0]
    assert first["freq_hist_data_bar_values"] == [0.25, 0.75, 1.25, 1.75]  # bin centres
    assert first["freq_hist_data_bar_heights"] == [20, 10, 5, 2]


def test_activations_are_consistent_with_their_features(
    report: InspectReport, exported: Path
) -> None:
    features = {f["index"]: f for f in read_batches(exported / "features")}
    activations = read_batches(exported / "activations")
    assert len(activations) == sum(
        len(g.contexts) for latent in report.latents for g in latent.groups
    )
    assert len({a["id"] for a in activations}) == len(activations)
    for activation in activations:
        assert set(activation) >= ACTIVATION_FIELDS
        assert len(activation["values"]) == len(activation["tokens"])
        assert activation["maxValue"] == max(activation["values"])
        assert activation["values"][activation["maxValueTokenIndex"]] == activation["maxValue"]
        assert activation["minValue"] == min(activation["values"])
        assert 0 <= activation["qualifyingTokenIndex"] < len(activation["tokens"])
    for index, feature in features.items():
        mine = [a["maxValue"] for a in activations if a["index"] == index]
        assert feature["maxActApprox"] == max(mine, default=0.0)
    assert features["7"]["maxActApprox"] == 0.0  # the dead latent: a feature, no activations
    top = [a for a in activations if a["index"] == "0" and a["binMin"] == -1]
    assert len(top) == 2 and all(a["binContains"] == -1 for a in top)
    assert any(a["binContains"] == 0.25 for a in activations)


def test_the_layer_comes_from_the_hook_name(report: InspectReport, tmp_path: Path) -> None:
    assert layer_of("blocks.17.attn.hook_z") == 17
    report.hook_name = "hook_embed"
    with pytest.raises(GatedPluginError, match="hook_embed"):
        write_neuronpedia_export(report, tmp_path)


def test_defaults_name_the_model_and_the_source_set(report: InspectReport, tmp_path: Path) -> None:
    report.model_name = "HuggingFaceTB/SmolLM2-135M"
    out = write_neuronpedia_export(report, tmp_path, creator_name="me", url="https://x.org")
    assert out == tmp_path / "smollm2-135m" / "4-gated-paper-16"
    [release] = read_lines(out / "release.jsonl")
    assert release["creatorName"] == "me" and release["urls"] == ["https://x.org"]
    assert release["name"] == "gated-paper-16"
    assert len(read_batches(out / "features")) == 4  # one batch of the default size
