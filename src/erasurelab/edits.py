"""Edit: named weight deltas of a U-Net — apply, revert exactly, sum, save and load a run folder.

Why edits are data (the project's design): a method's output must be inspectable, reversible and
shippable without the method. An Edit maps parameter names ("<module path>.weight" inside the
U-Net) to a delta (`erasurelab.deltas`: LowRank, Dense or Replace). Saving writes a run folder
(`erasurelab.run_folder`) holding either a diffusers-loadable LoRA (`erasurelab.lora_format`) or
the edited tensors. The names of those modules are re-exported here, where callers import them.
"""

from __future__ import annotations

import contextlib
import shutil
import warnings
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from erasurelab.deltas import DENSE_RTOL, Delta, Dense, LowRank, Replace, compress_low_rank, dense_to_low_rank
from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.lora_format import deltas_from_peft, load_safetensors, lora_factors, parse_lora, write_lora
from erasurelab.models import provenance
from erasurelab.run_folder import (
    FORMATS,
    FULL_WEIGHTS,
    LORA_WEIGHTS,
    MANIFEST,
    MANIFEST_KIND,
    SAVE_KEYS,
    base_model_spec,
    build_manifest,
    is_run_folder,
    read_manifest,
)
from erasurelab.runinfo import replace_folder, write_json_atomic
from erasurelab.unet_weights import fingerprint, parameter_at, unet_of

__all__ = [
    "DENSE_RTOL", "FORMATS", "FULL_WEIGHTS", "LORA_WEIGHTS", "MANIFEST", "MANIFEST_KIND", "Delta", "Dense", "Edit",
    "LowRank", "Replace", "base_model_spec", "compress_low_rank", "dense_to_low_rank", "fingerprint",
    "is_run_folder", "load_run", "read_manifest", "unet_of",
]


class Edit:
    """Named weight deltas of a U-Net plus the metadata a manifest records.

    meta keys written by methods and `erasurelab.erase`: method, config, concepts, base
    ({source, fingerprint}), layers (per-layer ranks and diagnostics), wall_time_s, peak_rss_mb.
    """

    def __init__(self, deltas: Mapping[str, Delta] | None = None, meta: Mapping[str, Any] | None = None) -> None:
        self.deltas: dict[str, Delta] = dict(deltas or {})
        self.meta: dict[str, Any] = dict(meta or {})
        self._originals: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, torch.Tensor]] = \
            weakref.WeakKeyDictionary()
        self._source: weakref.ref[torch.nn.Module] | None = None

    # -- container ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.deltas)

    def __iter__(self) -> Iterator[str]:
        return iter(self.deltas)

    def __repr__(self) -> str:
        return f"Edit(method={self.meta.get('method')!r}, tensors={len(self)}, ranks={self.ranks()})"

    @property
    def is_empty(self) -> bool:
        return not self.deltas

    def ranks(self) -> dict[str, int | None]:
        """Rank per edited tensor (None for dense or full-weight entries)."""
        return {k: d.rank if isinstance(d, LowRank) else None for k, d in self.deltas.items()}

    # -- peft adapters and sums ---------------------------------------------------------------
    @classmethod
    def from_peft(cls, target: Any, adapter_name: str = "default", meta: Mapping[str, Any] | None = None) -> Edit:
        """The exact low-rank deltas of one attached peft LoRA adapter: ΔW = B·(scale·A) per wrapped Linear.

        Why exact factors instead of merging: the Edit then exports as the same LoRA (and as full
        weights) without an SVD, and the adapter can be removed, leaving the model as it was.
        """
        return cls(deltas_from_peft(target, adapter_name), meta)

    def __add__(self, other: Edit) -> Edit:
        """The sum of two edits (one LoRA per concept, applied together with weight 1 each).

        Low-rank + low-rank stays exact: B = [B₁ B₂], A = [A₁; A₂]. Full-weight entries have no
        delta without their base, so they cannot be summed.
        """
        if not isinstance(other, Edit):
            return NotImplemented
        deltas: dict[str, Delta] = dict(self.deltas)
        for key, entry in other.deltas.items():
            mine = deltas.get(key)
            if isinstance(entry, Replace) or isinstance(mine, Replace):
                raise ErasureLabError(f"{key}: a full-weights edit cannot be summed; load it as a LoRA instead")
            if mine is None:
                deltas[key] = entry
            elif isinstance(mine, LowRank) and isinstance(entry, LowRank):
                deltas[key] = LowRank(torch.cat([mine.B.double(), entry.B.double()], dim=1),
                                      torch.cat([mine.A.double(), entry.A.double()], dim=0))
            else:
                deltas[key] = Dense(mine.delta() + entry.delta())
        return Edit(deltas, {"summed": [dict(self.meta), dict(other.meta)]})

    def __radd__(self, other: Any) -> Edit:
        """`sum(edits)` starts from 0."""
        if isinstance(other, int) and other == 0:
            return self
        return NotImplemented

    def bind_source(self, target: Any) -> Edit:
        """Remember (weakly) the model this edit was computed from, for `save(format="full")`."""
        self._source = weakref.ref(unet_of(target))
        return self

    # -- apply / revert ---------------------------------------------------------------------
    def check(self, target: Any) -> dict[str, torch.Tensor]:
        """The parameters this edit touches; one-line error if the model does not fit the edit."""
        unet = unet_of(target)
        params, missing, mismatched = {}, [], []
        for key, entry in self.deltas.items():
            param = parameter_at(unet, key)
            if param is None:
                missing.append(key)
            elif tuple(param.shape) != tuple(entry.shape):
                mismatched.append(f"{key} is {tuple(param.shape)} in the model but {tuple(entry.shape)} in the edit")
            else:
                params[key] = param
        where = type(unet).__name__
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ErasureLabError(f"edit does not fit this model: {where} has no parameter {missing[0]}{more}; "
                                  "the edit was made for another architecture")
        if mismatched:
            more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
            raise ErasureLabError(f"edit does not fit this model: {mismatched[0]}{more}; "
                                  "the edit was made for another architecture")
        return params

    def is_applied(self, target: Any) -> bool:
        return unet_of(target) in self._originals

    def apply(self, target: Any) -> Any:
        """Add the deltas to the model's weights in place (computed in float64, cast once).

        Originals are kept so `revert` restores them bit for bit. Checks every tensor before
        writing any, so a misfit edit never leaves a half-edited model. The edit records itself as
        applied (erasurelab.models.provenance), which is how `evaluate(pipe, ...)` finds it.
        """
        unet = unet_of(target)
        if unet in self._originals:
            raise ErasureLabError("this edit is already applied to this model; revert it first")
        params = self.check(unet)
        expected = (self.meta.get("base") or {}).get("fingerprint")
        if expected and fingerprint(unet, self.deltas) != expected:
            warnings.warn("applying an edit to a model that differs from its base (fingerprint mismatch): "
                          "the edited weights are not the ones the method computed", stacklevel=2)
        originals = {key: p.detach().clone() for key, p in params.items()}
        with torch.no_grad():
            for key, param in params.items():
                entry = self.deltas[key]
                new = entry.weight if isinstance(entry, Replace) else param.detach().cpu().double() + entry.delta()
                param.copy_(new.to(device=param.device, dtype=param.dtype))
        self._originals[unet] = originals
        provenance.record_applied(unet, self)
        return target

    def revert(self, target: Any) -> Any:
        """Restore the exact weights `apply` replaced, and drop this edit from the model's applied edits."""
        unet = unet_of(target)
        originals = self._originals.get(unet)
        if originals is None:
            raise ErasureLabError("this edit is not applied to this model; nothing to revert")
        params = self.check(unet)
        with torch.no_grad():
            for key, param in params.items():
                param.copy_(originals[key])
        del self._originals[unet]
        provenance.record_reverted(unet, self)
        return target

    @contextlib.contextmanager
    def applied(self, target: Any) -> Iterator[Any]:
        """`apply` for the block and `revert` after it, also when the block raises; yields `target`.

        The one way code measures an edited model and hands the unedited one back."""
        self.apply(target)
        try:
            yield target
        finally:
            self.revert(target)

    # -- base weights -----------------------------------------------------------------------
    def _base_weights(self, base: Any = None) -> dict[str, torch.Tensor]:
        """Unedited weights of the edited tensors: from `base`, or the model this edit was made from."""
        unet = unet_of(base) if base is not None else (self._source() if self._source is not None else None)
        if unet is None:
            raise ErasureLabError("this export needs the base model: pass base=pipe (the model the edit was made from)")
        params = self.check(unet)
        originals = self._originals.get(unet, {})
        return {k: originals.get(k, p).detach().cpu() for k, p in params.items()}

    def dense(self, key: str, base: Any = None) -> torch.Tensor:
        """ΔW of one tensor in float64."""
        entry = self.deltas[key]
        return entry.delta(self._base_weights(base)[key] if isinstance(entry, Replace) else None)

    # -- export -----------------------------------------------------------------------------
    def lora_state_dict(self, rank: int | None = None,
                        base: Any = None) -> tuple[dict[str, torch.Tensor], dict[str, int], dict[str, float]]:
        """peft-format factors {"<module>.lora_A.weight", "<module>.lora_B.weight"} (float32, scale 1).

        Low-rank entries are exact (rank None or ≥ their rank); dense entries and low-rank ones
        above `rank` are truncated by SVD, and their relative error ‖ΔW − BA‖/‖ΔW‖ is returned.
        Entries of rank 0 are left out: peft cannot hold a rank-0 adapter and they change nothing.
        """
        if rank is not None and rank <= 0:
            raise ErasureLabError(f"LoRA rank must be positive, got {rank}")
        needs_base = any(isinstance(d, Replace) for d in self.deltas.values())
        return lora_factors(self.deltas, rank, self._base_weights(base) if needs_base else {})

    def lora_exportable(self) -> bool:
        """True when a LoRA can hold every delta (low-rank or 2-D weights; no biases, norms, convolutions)."""
        return any(True for _ in self.deltas) and all(
            isinstance(d, LowRank) or len(d.shape) == 2 for d in self.deltas.values())

    def save(self, directory: str | Path, format: str = "lora", rank: int | None = None, base: Any = None,
             overwrite: bool = False) -> Path:
        """Write a run folder (see `erasurelab.run_folder`) atomically; returns its path.

        format: "lora" (diffusers-loadable; exact for low-rank edits), "full" (edited tensors) or
        "auto" (a LoRA when every delta has one, i.e. no fine-tuned bias, norm or convolution; else full).
        rank: LoRA rank cap for dense entries (None: their numerical rank, i.e. exact).
        base: the unedited model, needed for "full" unless this edit came from `erasurelab.erase`.
        """
        if format not in FORMATS:
            raise ErasureLabError(f"unknown edit format {format!r}{did_you_mean(format, FORMATS)}; "
                                  f"valid: {', '.join(FORMATS)}")
        if format == "auto":
            format = "lora" if self.lora_exportable() else "full"
        directory = Path(directory)
        if directory.exists() and not overwrite:
            raise ErasureLabError(f"output folder exists: {directory} (choose another --out or overwrite it)")
        if format == "lora":
            state, ranks, errors = self.lora_state_dict(rank, base)
            if not state:
                raise ErasureLabError("the edit changes no weights (empty forget set or every layer a no-op); "
                                      "there is no LoRA to export — use format='full' to record the run")
        else:
            state, ranks, errors = self._full_state_dict(base), {}, {}
        tmp = directory.with_name(directory.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)  # left over from an interrupted save of this same folder
        tmp.mkdir(parents=True)
        try:
            if format == "lora":
                write_lora(tmp, state, ranks, LORA_WEIGHTS)
            else:
                from safetensors.torch import save_file

                save_file(state, str(tmp / FULL_WEIGHTS), metadata={"format": "pt", "kind": MANIFEST_KIND})
            tensors = {k: {"shape": list(d.shape), "rank": r}
                       for (k, d), r in zip(self.deltas.items(), self.ranks().values(), strict=True)}
            write_json_atomic(tmp / MANIFEST, build_manifest(tmp, self.meta, tensors, format, rank, ranks, errors))
            replace_folder(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return directory

    def _full_state_dict(self, base: Any) -> dict[str, torch.Tensor]:
        base_weights = self._base_weights(base) if self.deltas else {}
        out = {}
        for key, entry in self.deltas.items():
            original = base_weights[key]
            new = entry.weight if isinstance(entry, Replace) else original.double() + entry.delta()
            out[key] = new.to(original.dtype).contiguous()
        return out

    # -- load -------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path) -> Edit:
        """Read a saved run folder (or any folder with a peft-format U-Net LoRA)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ErasureLabError(f"edit folder not found: {directory}")
        meta = read_manifest(directory) if (directory / MANIFEST).exists() else {}
        for key in SAVE_KEYS:
            meta.pop(key, None)
        if (directory / FULL_WEIGHTS).exists():
            return cls({k: Replace(v) for k, v in load_safetensors(directory / FULL_WEIGHTS).items()}, meta)
        lora = directory / LORA_WEIGHTS
        if not lora.exists():
            candidates = sorted(directory.glob("*.safetensors"))
            if len(candidates) != 1:
                raise ErasureLabError(f"no edit in {directory}: expected {LORA_WEIGHTS} or {FULL_WEIGHTS}")
            lora = candidates[0]
        return cls(parse_lora(lora), meta)


def load_run(directory: str | Path, loader: Any, **load_kwargs: Any) -> Any:
    """Base pipeline of a saved run with the run's edit applied.

    loader: `erasurelab.models.load_pipeline` (passed in so this module never imports loading).
    Its recorded source is the run folder, its base source the base model's spec, and the Edit is
    its current edit (erasurelab.models.provenance).
    """
    edit = Edit.load(directory)
    base = base_model_spec(directory)
    pipe = loader(base, **load_kwargs)
    provenance.record_source(pipe, str(directory), provenance.base_source_of(pipe) or str(base))
    edit.apply(pipe)
    return pipe
