"""The paper's evaluation metrics (arXiv:2404.16014) for any SAELens SAE on any HookedTransformer.

:func:`evaluate_sae` reports, over a fixed set of token windows:

* sparsity: L0 (mean number of active latents per evaluated token) and the fraction of latents
  that never fired (dead) / fired at least once (alive);
* reconstruction: explained variance, MSE and the relative reconstruction bias
  ``gamma = E||x_hat||^2 / E[x . x_hat]`` (``gamma < 1`` means shrinkage), all computed from
  float64 sums over the WHOLE evaluation set, so the batching never changes the result;
* downstream: next-token cross-entropy with the model clean, with the SAE spliced in and with
  the hooked activation zero-ablated, the CE difference and the loss recovered
  ``(CE_zero - CE_sae) / (CE_zero - CE_clean)``.

Spliced positions
-----------------
The SAE is applied - and every SAE metric computed - only at the *spliced positions*: positions
inside ``seqpos_slice`` whose token is not in ``exclude_token_ids``. Everywhere else the model
runs clean, in the SAE run and in the zero-ablation run alike. Evaluate an SAE where it was
trained: an SAE trained with SAELens's ``seqpos_slice=(1, None)`` and ``exclude_special_tokens``
must be evaluated with the same slice and tokens. This matters for models with an attention
sink, such as SmolLM2, whose position-0 residual stream is ~150x larger than elsewhere; splicing
an SAE (or zeros) there wrecks the language model whatever the SAE. (SAELens's own
``run_evals`` ignores ``seqpos_slice`` and zero-ablates every position.)

The SAE sees the same activations as a separate ``run_with_cache`` pass would give (the model is
clean up to the hook point), so they are taken inside the SAE-splicing hook itself instead of
in an extra forward pass.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from sae_gated_plugin.errors import GatedPluginError

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

__all__ = [
    "EvalReport",
    "MetricAccumulator",
    "eval_tokens_from_dataset",
    "evaluate_sae",
    "special_token_ids",
    "write_report",
]

# --------------------------------------------------------------------------- report


@dataclass
class EvalReport:
    """The paper's metrics for one SAE on one set of evaluation windows."""

    l0: float
    """Mean number of active (non-zero) latents per evaluated token."""
    dead_fraction: float
    """Fraction of latents that never fired on the evaluated tokens."""
    alive_fraction: float
    """Fraction of latents that fired at least once (``1 - dead_fraction``)."""
    explained_variance: float
    """``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over the whole evaluation set."""
    mse: float
    """Mean over tokens of ``||x - x_hat||^2`` (summed over ``d_in``)."""
    relative_reconstruction_bias: float
    """``gamma = E||x_hat||^2 / E[x . x_hat]`` over the whole set; ``< 1`` means shrinkage."""
    ce_loss_clean: float
    """Next-token CE (nats) of the unmodified model, averaged over all predicted positions."""
    ce_loss_with_sae: float
    """Next-token CE with the SAE reconstruction spliced in at the spliced positions."""
    ce_loss_zero_ablation: float
    """Next-token CE with the hooked activation set to zero at the spliced positions."""
    delta_ce_loss: float
    """``ce_loss_with_sae - ce_loss_clean``."""
    loss_recovered: float
    """``(ce_zero - ce_sae) / (ce_zero - ce_clean)``: 1 is perfect, 0 is as bad as zeros."""
    n_tokens: int
    """Number of token positions the SAE was evaluated on (the spliced positions)."""
    n_sequences: int
    """Number of evaluation windows."""
    context_size: int
    """Length of each evaluation window in tokens."""
    hook_name: str
    """The TransformerLens hook point the SAE was spliced into."""
    spliced_positions: str
    """Human-readable description of where the SAE was spliced in."""

    def to_dict(self) -> dict[str, Any]:
        """The report as a plain dict (field order kept; non-finite floats kept as floats)."""
        return asdict(self)

    def to_table(self) -> str:
        """An aligned two-column text table for the terminal."""
        rows = [(f.name, _format_value(getattr(self, f.name))) for f in fields(self)]
        width = max(len(name) for name, _ in rows)
        return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def _json_safe(value: Any) -> Any:
    """Non-finite floats become ``None`` (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_report(report: EvalReport, path: Path | str) -> None:
    """Write ``report`` as strict JSON to ``path``, atomically (temp file + ``os.replace``).

    Non-finite values (e.g. ``gamma`` of an SAE that always outputs zero) are written as
    ``null``. The parent folder is created if needed; readers never see a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_safe(report.to_dict()), indent=2, allow_nan=False) + "\n"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise


# --------------------------------------------------------------------------- streaming metrics


class MetricAccumulator:
    """Streaming float64 sums for the SAE metrics, exact over the whole set whatever the batching.

    Feed it ``(x, x_hat, feature_acts)`` batch by batch with :meth:`update`; read the metrics
    from the properties or :meth:`finalize`. The total variance about the GLOBAL mean is kept
    with Chan et al.'s parallel update of per-dimension means and centred sums of squares, so
    it neither depends on the batching nor cancels catastrophically when the mean is large.
    A latent counts as active where its activation is non-zero (so negative activations of
    bidirectional architectures count too, as in SAELens).
    """

    def __init__(self, d_sae: int, device: torch.device | str | None = None) -> None:
        if d_sae <= 0:
            raise GatedPluginError(f"d_sae must be positive, not {d_sae}")
        self.d_sae = int(d_sae)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.n_tokens = 0
        self._fired = torch.zeros(self.d_sae, dtype=torch.bool, device=self.device)
        self._l0_sum = 0.0
        self._resid_sq_sum = 0.0
        self._x_hat_sq_sum = 0.0
        self._x_dot_x_hat_sum = 0.0
        self._mean: torch.Tensor | None = None  # per-dimension running mean of x (float64)
        self._m2: torch.Tensor | None = None  # per-dimension sum of squared deviations

    @torch.no_grad()
    def update(self, x: torch.Tensor, x_hat: torch.Tensor, feature_acts: torch.Tensor) -> None:
        """Add tokens: ``x`` and ``x_hat`` ``(..., d_in)``, ``feature_acts`` ``(..., d_sae)``.

        Leading axes are flattened; every row is one token.
        """
        if x.shape != x_hat.shape:
            raise GatedPluginError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ")
        if feature_acts.shape[-1] != self.d_sae:
            raise GatedPluginError(
                f"feature_acts has {feature_acts.shape[-1]} latents, expected {self.d_sae}"
            )
        if feature_acts.is_sparse:
            feature_acts = feature_acts.to_dense()
        d_in = x.shape[-1]
        xs = x.detach().reshape(-1, d_in).to(device=self.device, dtype=torch.float64)
        xh = x_hat.detach().reshape(-1, d_in).to(device=self.device, dtype=torch.float64)
        acts = feature_acts.detach().reshape(-1, self.d_sae).to(self.device)
        n = xs.shape[0]
        if acts.shape[0] != n:
            raise GatedPluginError(f"feature_acts has {acts.shape[0]} rows, x has {n}")
        if n == 0:
            return

        active = acts != 0
        self._l0_sum += float(active.sum(dtype=torch.float64))
        self._fired |= active.any(dim=0)
        self._resid_sq_sum += float((xs - xh).pow(2).sum())
        self._x_hat_sq_sum += float(xh.pow(2).sum())
        self._x_dot_x_hat_sum += float((xs * xh).sum())

        batch_mean = xs.mean(dim=0)
        batch_m2 = (xs - batch_mean).pow(2).sum(dim=0)
        if self._mean is None or self._m2 is None:
            self._mean, self._m2 = batch_mean, batch_m2
        else:
            if batch_mean.shape != self._mean.shape:
                raise GatedPluginError(f"d_in changed from {self._mean.shape[0]} to {d_in}")
            total = self.n_tokens + n
            delta = batch_mean - self._mean
            self._mean = self._mean + delta * (n / total)
            self._m2 = self._m2 + batch_m2 + delta.pow(2) * (self.n_tokens * n / total)
        self.n_tokens += n

    @property
    def l0(self) -> float:
        """Mean number of non-zero latents per token."""
        return self._l0_sum / self.n_tokens if self.n_tokens else math.nan

    @property
    def dead_fraction(self) -> float:
        """Fraction of latents that never fired."""
        return 1.0 - self.alive_fraction

    @property
    def alive_fraction(self) -> float:
        """Fraction of latents that fired at least once."""
        return float(self._fired.sum()) / self.d_sae

    @property
    def total_variance(self) -> float:
        """``sum_i ||x_i - mean(x)||^2`` over all tokens seen (the mean taken over all of them)."""
        return float(self._m2.sum()) if self._m2 is not None else math.nan

    @property
    def explained_variance(self) -> float:
        """``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` over all tokens seen."""
        total = self.total_variance
        if self.n_tokens == 0 or total == 0.0:
            return math.nan
        return 1.0 - self._resid_sq_sum / total

    @property
    def mse(self) -> float:
        """Mean over tokens of ``||x - x_hat||^2`` (summed over the input dimensions)."""
        return self._resid_sq_sum / self.n_tokens if self.n_tokens else math.nan

    @property
    def relative_reconstruction_bias(self) -> float:
        """``gamma = E||x_hat||^2 / E[x . x_hat]`` over all tokens seen (nan if undefined)."""
        if self.n_tokens == 0 or self._x_dot_x_hat_sum == 0.0:
            return math.nan
        return self._x_hat_sq_sum / self._x_dot_x_hat_sum

    def finalize(self) -> dict[str, float]:
        """All metrics at once: l0, dead/alive fractions, explained variance, mse, gamma, n."""
        return {
            "l0": self.l0,
            "dead_fraction": self.dead_fraction,
            "alive_fraction": self.alive_fraction,
            "explained_variance": self.explained_variance,
            "mse": self.mse,
            "relative_reconstruction_bias": self.relative_reconstruction_bias,
            "n_tokens": float(self.n_tokens),
        }


# --------------------------------------------------------------------------- evaluation


def special_token_ids(model: HookedTransformer) -> list[int]:
    """The token ids SAELens's ``exclude_special_tokens=True`` excludes (BOS, EOS, PAD, ...)."""
    from sae_lens.util import get_special_token_ids

    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return []
    return sorted(int(t) for t in get_special_token_ids(tokenizer))


def _slice_text(seqpos_slice: tuple[int | None, ...]) -> str:
    sl = slice(*seqpos_slice)
    text = f"{'' if sl.start is None else sl.start}:{'' if sl.stop is None else sl.stop}"
    if sl.step is not None:
        text += f":{sl.step}"
    return text


def _describe_positions(
    seqpos_slice: tuple[int | None, ...],
    exclude_token_ids: Sequence[int],
    context_size: int,
    model: Any,
) -> str:
    sl = slice(*seqpos_slice)
    if sl.start is None and sl.stop is None and sl.step is None:
        text = f"all positions of each {context_size}-token window"
    else:
        text = f"positions {_slice_text(seqpos_slice)} of each {context_size}-token window"
    if exclude_token_ids:
        ids = sorted({int(t) for t in exclude_token_ids})
        tokenizer = getattr(model, "tokenizer", None)
        labels = []
        for token_id in ids:
            label = str(token_id)
            if tokenizer is not None:
                with contextlib.suppress(Exception):
                    label += f" {tokenizer.convert_ids_to_tokens(token_id)!r}"
            labels.append(label)
        text += f", excluding tokens [{', '.join(labels)}]"
    return text


def _input_device(model: Any) -> torch.device:
    cfg_device = getattr(getattr(model, "cfg", None), "device", None)
    if cfg_device is not None:
        return torch.device(cfg_device)
    with contextlib.suppress(StopIteration):
        return next(model.parameters()).device
    return torch.device("cpu")


def _sae_view(act: torch.Tensor, head_index: int | None) -> torch.Tensor:
    """The part of a hook activation the SAE reads, as ``(batch, pos, d_in)``.

    As SAELens: an activation with a head axis, ``(batch, pos, n_heads, d_head)`` (``hook_q``,
    ``hook_k``, ``hook_v``, ``hook_z``, ...), gives one head where the SAE names a
    ``hook_head_index``, else all heads flattened.
    """
    if act.ndim == 4:
        return act[:, :, head_index] if head_index is not None else act.flatten(-2, -1)
    if act.ndim != 3 or head_index is not None:
        raise GatedPluginError(
            f"cannot splice an SAE into an activation of shape {tuple(act.shape)}"
            + (f" at head {head_index}" if head_index is not None else "")
        )
    return act


def _write_back(act: torch.Tensor, new_view: torch.Tensor, head_index: int | None) -> torch.Tensor:
    """Inverse of :func:`_sae_view`: a full activation with ``new_view`` in the SAE's part."""
    if head_index is not None:
        out = act.clone()
        out[:, :, head_index] = new_view
        return out
    return new_view.reshape(act.shape)


@contextlib.contextmanager
def _hook_z_reshaping_off(sae: Any) -> Iterator[None]:
    """SAELens's hook_z SAEs reshape heads themselves; we flatten heads here instead."""
    was_on = bool(getattr(sae, "hook_z_reshaping_mode", False))
    if was_on:
        sae.turn_off_forward_pass_hook_z_reshaping()
    try:
        yield
    finally:
        if was_on:
            sae.turn_on_forward_pass_hook_z_reshaping()


def _position_mask(
    tokens: torch.Tensor,
    seqpos_slice: tuple[int | None, ...],
    exclude: torch.Tensor | None,
) -> torch.Tensor:
    """Boolean ``(batch, pos)`` mask of the spliced positions."""
    context_size = tokens.shape[1]
    in_slice = torch.zeros(context_size, dtype=torch.bool, device=tokens.device)
    in_slice[torch.arange(context_size, device=tokens.device)[slice(*seqpos_slice)]] = True
    mask = in_slice.unsqueeze(0).expand_as(tokens)
    if exclude is not None and exclude.numel():
        mask = mask & ~torch.isin(tokens, exclude)
    return mask


def evaluate_sae(
    sae: SAE[Any],
    model: HookedTransformer,
    tokens: torch.Tensor,
    *,
    hook_name: str | None = None,
    seqpos_slice: tuple[int | None, ...] = (None,),
    exclude_token_ids: Sequence[int] = (),
    batch_size: int = 8,
    show_progress: bool = True,
    norm_scaling_factor: float | None = None,
) -> EvalReport:
    """Evaluate ``sae`` spliced into ``model`` at ``hook_name`` on the windows ``tokens``.

    Args:
        sae: any SAELens SAE (standard, topk, jumprelu, gated, gated_paper, ...); only its
            ``encode`` and ``decode`` are used, its ``use_error_term`` is not touched.
        model: the language model.
        tokens: ``(n_sequences, context_size)`` token ids, e.g. from
            :func:`eval_tokens_from_dataset`. Used as given (no BOS is added).
        hook_name: hook point; defaults to ``sae.cfg.metadata.hook_name``.
        seqpos_slice: python slice over the sequence axis, as SAELens's ``seqpos_slice``
            (e.g. ``(1, None)`` skips position 0, the attention sink of Llama-style models).
        exclude_token_ids: token ids never spliced (e.g. :func:`special_token_ids`).
        batch_size: windows per forward pass.
        show_progress: draw a tqdm progress bar.
        norm_scaling_factor: for an SAE trained on activations multiplied by this factor
            (SAELens ``normalize_activations="expected_average_only_in"``) whose factor was not
            folded into its weights: the SAE reads ``x * factor`` and its output is divided by
            it. Metrics are always in the model's units. SAELens folds the factor at the end
            of training, so finished SAEs need none.

    Returns:
        An :class:`EvalReport`. SAE metrics cover the spliced positions only; CE losses are
        averaged over every predicted position of every window (``n_sequences *
        (context_size - 1)``), with the model clean outside the spliced positions.
    """
    from tqdm.auto import tqdm

    hook_name = hook_name or getattr(sae.cfg.metadata, "hook_name", None)
    if not hook_name:
        raise GatedPluginError("hook_name is not given and the SAE's config does not name one")
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise GatedPluginError(
            f"tokens must be (n_sequences, context_size >= 2), got {tuple(tokens.shape)}"
        )
    if tokens.dtype not in (torch.long, torch.int32, torch.int64):
        raise GatedPluginError(f"tokens must be integer token ids, got {tokens.dtype}")
    if batch_size < 1:
        raise GatedPluginError(f"batch_size must be at least 1, not {batch_size}")
    if not 1 <= len(seqpos_slice) <= 3:
        raise GatedPluginError(f"seqpos_slice must have 1 to 3 entries, got {seqpos_slice!r}")
    if norm_scaling_factor is not None and not norm_scaling_factor > 0:
        raise GatedPluginError(f"norm_scaling_factor must be positive, not {norm_scaling_factor}")

    n_sequences, context_size = tokens.shape
    head_index = getattr(sae.cfg.metadata, "hook_head_index", None)
    device = _input_device(model)
    tokens = tokens.to(device=device, dtype=torch.long)
    exclude_ids = sorted({int(t) for t in exclude_token_ids})
    exclude = torch.tensor(exclude_ids, dtype=torch.long, device=device) if exclude_ids else None
    sae_device = sae.device if hasattr(sae, "device") else next(sae.parameters()).device
    accumulator = MetricAccumulator(sae.cfg.d_sae, device=sae_device)
    scale = float(norm_scaling_factor) if norm_scaling_factor is not None else 1.0
    description = _describe_positions(seqpos_slice, exclude_ids, context_size, model)
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is not None and hook_name not in hook_dict:
        raise GatedPluginError(f"the model has no hook point {hook_name!r}")
    if not bool(_position_mask(tokens, seqpos_slice, exclude).any()):
        raise GatedPluginError(
            "no token position is spliced: seqpos_slice and exclude_token_ids leave nothing "
            f"to evaluate ({description})"
        )

    def check_width(view: torch.Tensor) -> None:
        if view.shape[-1] != sae.cfg.d_in:
            raise GatedPluginError(
                f"the SAE reads {sae.cfg.d_in} dimensions but {hook_name} gives "
                f"{view.shape[-1]} (activation shape {tuple(view.shape)})"
            )

    def make_hooks(
        mask: torch.Tensor,
    ) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
        def splice_sae(act: torch.Tensor, hook: Any) -> torch.Tensor:
            view = _sae_view(act, head_index)
            check_width(view)
            m = mask.to(act.device)
            if not bool(m.any()):
                return act
            x = view[m]
            sae_in = x.to(sae_device)
            feature_acts = sae.encode(sae_in * scale if scale != 1.0 else sae_in)
            x_hat = sae.decode(feature_acts)
            x_hat = (x_hat / scale if scale != 1.0 else x_hat).to(act.device, act.dtype)
            accumulator.update(x, x_hat, feature_acts)
            new_view = view.clone()
            new_view[m] = x_hat
            return _write_back(act, new_view, head_index)

        def splice_zeros(act: torch.Tensor, hook: Any) -> torch.Tensor:
            view = _sae_view(act, head_index)
            m = mask.to(act.device)
            new_view = view.masked_fill(m.unsqueeze(-1), 0.0)
            return _write_back(act, new_view, head_index)

        return splice_sae, splice_zeros

    ce_sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_predicted = 0
    starts = range(0, n_sequences, batch_size)
    progress = tqdm(
        starts,
        desc=f"Evaluating SAE at {hook_name}",
        unit="batch",
        disable=not show_progress,
        leave=False,
    )
    with torch.no_grad(), _hook_z_reshaping_off(sae):
        for start in progress:
            batch = tokens[start : start + batch_size]
            mask = _position_mask(batch, seqpos_slice, exclude)
            splice_sae, splice_zeros = make_hooks(mask)
            runs: dict[str, list[tuple[str, Callable[..., torch.Tensor]]]] = {
                "clean": [],
                "sae": [(hook_name, splice_sae)],
                "zero": [(hook_name, splice_zeros)],
            }
            for key, fwd_hooks in runs.items():
                loss = model.run_with_hooks(
                    batch, return_type="loss", loss_per_token=True, fwd_hooks=fwd_hooks
                )
                ce_sums[key] += float(loss.sum(dtype=torch.float64))
            n_predicted += batch.shape[0] * (batch.shape[1] - 1)

    if accumulator.n_tokens == 0:  # the hook never ran
        raise GatedPluginError(f"the SAE hook at {hook_name!r} was never called")
    ce_clean, ce_sae, ce_zero = (ce_sums[k] / n_predicted for k in ("clean", "sae", "zero"))
    denominator = ce_zero - ce_clean
    metrics = accumulator.finalize()
    return EvalReport(
        l0=metrics["l0"],
        dead_fraction=metrics["dead_fraction"],
        alive_fraction=metrics["alive_fraction"],
        explained_variance=metrics["explained_variance"],
        mse=metrics["mse"],
        relative_reconstruction_bias=metrics["relative_reconstruction_bias"],
        ce_loss_clean=ce_clean,
        ce_loss_with_sae=ce_sae,
        ce_loss_zero_ablation=ce_zero,
        delta_ce_loss=ce_sae - ce_clean,
        loss_recovered=(ce_zero - ce_sae) / denominator if denominator != 0 else math.nan,
        n_tokens=accumulator.n_tokens,
        n_sequences=int(n_sequences),
        context_size=int(context_size),
        hook_name=hook_name,
        spliced_positions=description,
    )


# --------------------------------------------------------------------------- eval tokens


def _row_column(row: Any, column: str | None) -> str | None:
    if not isinstance(row, Mapping):
        return None
    if column is not None:
        if column not in row:
            raise GatedPluginError(f"dataset rows have no column {column!r}: {sorted(row)}")
        return column
    for candidate in ("tokens", "input_ids", "text", "problem"):  # ActivationsStore's order
        if candidate in row:
            return candidate
    raise GatedPluginError(
        f"dataset rows need a 'tokens', 'input_ids', 'text' or 'problem' column: {sorted(row)}"
    )


def eval_tokens_from_dataset(
    model: HookedTransformer,
    dataset: Iterable[Any],
    *,
    context_size: int,
    n_sequences: int,
    prepend_bos: bool = True,
    sequence_separator_token: int | Literal["bos", "eos", "sep"] | None = "bos",
    disable_concat_sequences: bool = False,
    column: str | None = None,
) -> torch.Tensor:
    """The first ``n_sequences`` windows of ``context_size`` tokens, built as SAELens trains.

    Mirrors ``ActivationsStore._iterate_tokenized_sequences`` and reuses SAELens's
    ``concat_and_batch_sequences``: each text document is tokenized WITHOUT a BOS
    (``model.to_tokens(text, prepend_bos=False, truncate=False)``), documents are concatenated
    with ``sequence_separator_token`` (default: the tokenizer's BOS, whatever ``prepend_bos``
    says) between them and cut into windows; with ``prepend_bos`` every window - including one
    that continues a document - starts with the BOS token. A pre-tokenized dataset (a ``tokens``
    or ``input_ids`` column) is used as is, one window per row truncated to ``context_size``,
    with no BOS added, as in SAELens. Tokens that do not fill a last window are dropped.

    Args:
        model: gives the tokenizer (``model.to_tokens``, ``model.tokenizer``).
        dataset: a ``datasets.Dataset`` or any iterable of rows (mappings) or plain strings;
            read in order and only as far as needed.
        context_size: window length.
        n_sequences: number of windows.
        prepend_bos: start every window with the BOS token (SAELens's ``prepend_bos``).
        sequence_separator_token: token between concatenated documents, as SAELens's
            ``sequence_separator_token`` (``"bos"``, ``"eos"``, ``"sep"``, an id or None).
        disable_concat_sequences: one window per document (documents shorter than a window
            are skipped), as SAELens's option of that name.
        column: the row column to read; by default the first of ``tokens``, ``input_ids``,
            ``text``, ``problem``, as ``ActivationsStore`` chooses.

    Returns:
        A ``(n_sequences, context_size)`` long tensor on the CPU.

    Raises:
        GatedPluginError: bad arguments, or the dataset holds fewer than ``n_sequences`` windows.
    """
    from sae_lens.pretokenize_runner import get_special_token_from_cfg
    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    if context_size < 1 or n_sequences < 1:
        raise GatedPluginError(
            f"context_size and n_sequences must be positive, got {context_size}, {n_sequences}"
        )
    tokenizer = getattr(model, "tokenizer", None)
    rows = iter(dataset)
    try:
        first = next(rows)
    except StopIteration:
        raise GatedPluginError("the dataset is empty") from None
    key = _row_column(first, column)
    pretokenized = key in ("tokens", "input_ids")

    def all_rows() -> Iterator[Any]:
        yield first
        yield from rows

    def values() -> Iterator[Any]:
        for row in all_rows():
            yield row[key] if key is not None else row

    windows: Iterator[torch.Tensor]
    if pretokenized:

        def pretokenized_windows() -> Iterator[torch.Tensor]:
            for value in values():
                row_tokens = torch.as_tensor(value, dtype=torch.long).reshape(-1)
                if row_tokens.shape[0] < context_size:
                    raise GatedPluginError(
                        f"a pre-tokenized row has {row_tokens.shape[0]} tokens, fewer than "
                        f"context_size {context_size}"
                    )
                yield row_tokens[:context_size]

        windows = pretokenized_windows()
    else:

        def document_tokens() -> Iterator[torch.Tensor]:
            for value in values():
                if not isinstance(value, str):
                    raise GatedPluginError(
                        f"expected text in column {key!r}, got {type(value).__name__}"
                    )
                yield (
                    model.to_tokens(value, prepend_bos=False, truncate=False, move_to_device=False)
                    .squeeze(0)
                    .cpu()
                )

        bos_id = None if tokenizer is None else tokenizer.bos_token_id
        if prepend_bos and bos_id is None:
            raise GatedPluginError("prepend_bos=True but the model's tokenizer has no BOS token")
        windows = concat_and_batch_sequences(
            tokens_iterator=document_tokens(),
            context_size=context_size,
            begin_batch_token_id=bos_id if prepend_bos else None,
            begin_sequence_token_id=None,
            sequence_separator_token_id=(
                get_special_token_from_cfg(sequence_separator_token, tokenizer)
                if tokenizer is not None
                else None
            ),
            disable_concat_sequences=disable_concat_sequences,
        )

    collected: list[torch.Tensor] = []
    for window in windows:
        collected.append(window.to(dtype=torch.long, device="cpu"))
        if len(collected) == n_sequences:
            break
    if len(collected) < n_sequences:
        raise GatedPluginError(
            f"the dataset gives only {len(collected)} windows of {context_size} tokens, "
            f"{n_sequences} requested"
        )
    return torch.stack(collected)
