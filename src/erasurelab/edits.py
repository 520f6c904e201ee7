"""Edit: named weight deltas of a U-Net — apply, revert exactly, save as a LoRA or as full weights.

Why edits are data (the project's design): a method's output must be inspectable, reversible and
shippable without the method. An Edit maps parameter names ("<module path>.weight" inside the
U-Net) to one of
  LowRank(B, A)  ΔW = B @ A (closed-form methods: PURE, UCE) — exported exactly as a LoRA;
  Dense(delta)   ΔW given in full (e.g. full fine-tuning) — exported as a truncated-SVD LoRA with
                 the relative truncation error reported;
  Replace(W)     the edited weight itself (what a saved `full` run holds).

Saved run folder (written to DIR.tmp, then renamed, so no half-written folder ever exists):
  manifest.json                       method, config, concept specs, base-model fingerprint,
                                      library versions, wall time, peak memory, per-layer ranks
  pytorch_lora_weights.safetensors    format="lora": peft keys "unet.<module>.lora_A/B.weight",
                                      loadable by diffusers' `pipe.load_lora_weights(DIR)`
  unet_edited.safetensors             format="full": the edited tensors (only those the edit
                                      changes), keyed like `unet.state_dict()`
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
import warnings
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from erasurelab.errors import ErasureLabError, did_you_mean
from erasurelab.models import provenance
from erasurelab.runinfo import file_sha256, library_versions, replace_folder, write_json_atomic

FORMATS: tuple[str, ...] = ("auto", "lora", "full")
MANIFEST = "manifest.json"
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
FULL_WEIGHTS = "unet_edited.safetensors"
MANIFEST_KIND = "erasurelab-edit"
#: Dense deltas exported without a rank keep singular values above this fraction of the largest:
#: below float32 resolution, so the export is exact at the precision the LoRA is stored in.
DENSE_RTOL = 1e-7


# ---------------------------------------------------------------------------------------------
# Delta kinds
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LowRank:
    """ΔW = B @ A with B (out, r) and A (r, in); kept in float64 so apply is exact to rounding."""

    B: torch.Tensor
    A: torch.Tensor

    def __post_init__(self) -> None:
        if self.B.dim() != 2 or self.A.dim() != 2 or self.B.shape[1] != self.A.shape[0]:
            raise ValueError(f"bad low-rank factors: B {tuple(self.B.shape)}, A {tuple(self.A.shape)}")

    @property
    def rank(self) -> int:
        return int(self.B.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.B.shape[0]), int(self.A.shape[1])

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        return self.B.double() @ self.A.double()


@dataclass(frozen=True)
class Dense:
    """ΔW given in full."""

    value: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.value.shape)

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        return self.value.double()


@dataclass(frozen=True)
class Replace:
    """The edited weight itself; its delta is defined only relative to a base weight."""

    weight: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.weight.shape)

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        if base is None:
            raise ErasureLabError("a full-weights edit needs its base model to express a delta (pass base=pipe)")
        return self.weight.double() - base.detach().cpu().double()


Delta = LowRank | Dense | Replace


# ---------------------------------------------------------------------------------------------
# Linear algebra helpers
# ---------------------------------------------------------------------------------------------


def compress_low_rank(B: torch.Tensor, A: torch.Tensor, rtol: float = 1e-12,
                      max_rank: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Re-factor B @ A at its numerical rank (or at most max_rank): (B', A', relative error).

    Why QR + SVD of the small core: the product is never formed, so a rank-r edit of a
    1280x768 weight costs O(d r^2), and the kept factors are orthogonally balanced.
    """
    B, A = B.double(), A.double()
    if B.shape[1] == 0:
        return B, A, 0.0
    q_b, r_b = torch.linalg.qr(B)
    q_a, r_a = torch.linalg.qr(A.T)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)
    keep = int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    if max_rank is not None:
        keep = min(keep, max_rank)
    total = float((s ** 2).sum())
    error = float((s[keep:] ** 2).sum() / total) ** 0.5 if total > 0 else 0.0
    root = s[:keep].sqrt()
    return (q_b @ u[:, :keep]) * root, root[:, None] * (vh[:keep] @ q_a.T), error


def dense_to_low_rank(delta: torch.Tensor, rank: int | None = None,
                      rtol: float = DENSE_RTOL) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Truncated SVD of a dense delta: (B, A, ‖ΔW − BA‖_F / ‖ΔW‖_F)."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    keep = int((s > rtol * s[0]).sum()) if s.numel() and s[0] > 0 else 0
    if rank is not None:
        keep = min(keep, rank)
    total = float((s ** 2).sum())
    error = float((s[keep:] ** 2).sum() / total) ** 0.5 if total > 0 else 0.0
    root = s[:keep].sqrt()
    return u[:, :keep] * root, root[:, None] * vh[:keep], error


# ---------------------------------------------------------------------------------------------
# Model access
# ---------------------------------------------------------------------------------------------


def unet_of(target: Any) -> torch.nn.Module:
    """The U-Net of a pipeline, or the module itself."""
    model = getattr(target, "unet", target)
    if not isinstance(model, torch.nn.Module):
        raise ErasureLabError(f"expected a diffusers pipeline or a U-Net module, got {type(target).__name__}")
    return model


def _parameter(unet: torch.nn.Module, key: str) -> torch.Tensor | None:
    """The parameter named `key`; a peft LoRA wrapper is looked through to its base Linear.

    Why through the wrapper: deltas are additive, so adding one to the frozen base weight while
    an adapter is attached gives the same function as adding it to the merged weight.
    """
    path, _, leaf = key.rpartition(".")
    try:
        module = unet.get_submodule(path)
    except AttributeError:
        return None
    module = getattr(module, "base_layer", module)
    param = getattr(module, leaf, None)
    return param if isinstance(param, torch.Tensor) else None


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def fingerprint(target: Any, keys: Any, originals: Mapping[str, torch.Tensor] | None = None) -> str:
    """sha256 over every parameter's name/shape/dtype plus the bytes of the tensors at `keys`.

    Why not a hash of the whole model: hashing gigabytes costs seconds, and an edit only needs
    to know that the architecture matches and that the weights it rewrites are the ones it was
    computed from. `originals` supplies unedited values for keys that are currently edited.
    """
    unet = unet_of(target)
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
    for key in sorted(keys):
        tensor = (originals or {}).get(key)
        if tensor is None:
            tensor = _parameter(unet, key)
        if tensor is not None:
            digest.update(key.encode())
            digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# The Edit
# ---------------------------------------------------------------------------------------------


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
        deltas: dict[str, Delta] = {}
        for name, module in unet_of(target).named_modules():
            lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
            if lora_a is None or lora_b is None or adapter_name not in lora_a:
                continue
            if not isinstance(getattr(module, "base_layer", None), torch.nn.Linear):
                raise ErasureLabError(f"{name} carries a LoRA on a {type(module.base_layer).__name__}: only "
                                      "Linear layers have an exact low-rank delta")
            if (getattr(module, "use_dora", None) or {}).get(adapter_name):
                raise ErasureLabError(f"{name} is a DoRA adapter: its delta is not low-rank")
            scale = float(module.scaling[adapter_name])
            deltas[f"{name}.weight"] = LowRank(lora_b[adapter_name].weight.detach().cpu().double(),
                                               lora_a[adapter_name].weight.detach().cpu().double() * scale)
        if not deltas:
            raise ErasureLabError(f"the model carries no LoRA adapter named {adapter_name!r}")
        return cls(deltas, meta)

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
            param = _parameter(unet, key)
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
        base_weights = self._base_weights(base) if needs_base else {}
        state, ranks, errors = {}, {}, {}
        for key, entry in self.deltas.items():
            module = key.removesuffix(".weight")
            if isinstance(entry, LowRank):
                if rank is None or entry.rank <= rank:
                    B, A, err = entry.B.double(), entry.A.double(), 0.0
                else:
                    B, A, err = compress_low_rank(entry.B, entry.A, max_rank=rank)
            elif len(entry.shape) != 2:  # fine-tuned biases, norms and convolutions have no LoRA form
                raise ErasureLabError(f"{key} is a {len(entry.shape)}-D tensor and a LoRA holds only 2-D weight "
                                      "deltas: save this edit with format='full'")
            else:
                B, A, err = dense_to_low_rank(entry.delta(base_weights.get(key)), rank)
            if B.shape[1] == 0:
                continue
            state[f"{module}.lora_A.weight"] = A.float().contiguous()
            state[f"{module}.lora_B.weight"] = B.float().contiguous()
            ranks[module] = int(B.shape[1])
            errors[module] = err
        return state, ranks, errors

    def lora_exportable(self) -> bool:
        """True when a LoRA can hold every delta (low-rank or 2-D weights; no biases, norms, convolutions)."""
        return any(True for _ in self.deltas) and all(
            isinstance(d, LowRank) or len(d.shape) == 2 for d in self.deltas.values())

    def save(self, directory: str | Path, format: str = "lora", rank: int | None = None, base: Any = None,
             overwrite: bool = False) -> Path:
        """Write a run folder (see module docstring) atomically; returns its path.

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
                self._write_lora(tmp, state, ranks)
            else:
                from safetensors.torch import save_file

                save_file(state, str(tmp / FULL_WEIGHTS), metadata={"format": "pt", "kind": MANIFEST_KIND})
            write_json_atomic(tmp / MANIFEST, self._manifest(tmp, format, rank, ranks, errors))
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

    @staticmethod
    def _write_lora(folder: Path, state: dict[str, torch.Tensor], ranks: dict[str, int]) -> None:
        """Save with diffusers' own writer; per-module ranks go in peft's rank/alpha patterns.

        lora_alpha = rank per module makes peft's scale alpha/r exactly 1, so W + B A is the edit.
        """
        from diffusers import StableDiffusionPipeline

        metadata = {"r": max(ranks.values()), "lora_alpha": max(ranks.values()), "rank_pattern": dict(ranks),
                    "alpha_pattern": dict(ranks), "target_modules": sorted(ranks), "lora_dropout": 0.0,
                    "bias": "none", "use_rslora": False, "use_dora": False}
        StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=state,
                                                  unet_lora_adapter_metadata=metadata, weight_name=LORA_WEIGHTS)

    def _manifest(self, folder: Path, format: str, rank: int | None, ranks: dict[str, int],
                  errors: dict[str, float]) -> dict[str, Any]:
        files = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.name != MANIFEST and p.is_file()}
        export: dict[str, Any] = {"format": format, "files": files}
        if format == "lora":
            export.update({
                "weight_name": LORA_WEIGHTS, "requested_rank": rank, "ranks": ranks,
                "rank_handling": "per-module rank_pattern/alpha_pattern (alpha = rank, scale 1); no padding",
                "relative_errors": errors, "max_relative_error": max(errors.values(), default=0.0),
                "load_with": "pipe.load_lora_weights(folder) or erasurelab.Edit.load(folder).apply(pipe)",
            })
        else:
            export.update({"weight_name": FULL_WEIGHTS,
                           "load_with": "unet.load_state_dict(safetensors.torch.load_file(f), strict=False) "
                                        "or erasurelab.Edit.load(folder).apply(pipe)"})
        return {"kind": MANIFEST_KIND, "manifest_version": 1, **self.meta, "export": export,
                "tensors": {k: {"shape": list(d.shape), "rank": r} for (k, d), r in
                            zip(self.deltas.items(), self.ranks().values(), strict=True)},
                "versions": self.meta.get("versions") or library_versions(),
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}

    # -- load -------------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path) -> Edit:
        """Read a saved run folder (or any folder with a peft-format U-Net LoRA)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ErasureLabError(f"edit folder not found: {directory}")
        meta = read_manifest(directory) if (directory / MANIFEST).exists() else {}
        meta.pop("export", None)
        for key in ("kind", "manifest_version", "tensors", "saved_at"):
            meta.pop(key, None)
        if (directory / FULL_WEIGHTS).exists():
            return cls({k: Replace(v) for k, v in _load_safetensors(directory / FULL_WEIGHTS).items()}, meta)
        lora = directory / LORA_WEIGHTS
        if not lora.exists():
            candidates = sorted(directory.glob("*.safetensors"))
            if len(candidates) != 1:
                raise ErasureLabError(f"no edit in {directory}: expected {LORA_WEIGHTS} or {FULL_WEIGHTS}")
            lora = candidates[0]
        return cls(_parse_lora(lora), meta)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """manifest.json of a run folder; one-line error when missing or corrupt."""
    path = Path(directory) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ErasureLabError(f"no {MANIFEST} in {directory}: not an erasurelab run folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ErasureLabError(f"corrupt {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ErasureLabError(f"corrupt {path}: expected a JSON object")
    return data


def is_run_folder(path: str | Path) -> bool:
    """True for a folder written by `Edit.save` (a manifest of kind erasurelab-edit)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("kind") == MANIFEST_KIND
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def base_model_spec(directory: str | Path) -> str:
    """The model spec to load a run's base model with (builtin name or a path that exists)."""
    base = read_manifest(directory).get("base") or {}
    source, resolved = base.get("source"), base.get("source_resolved")
    if not source:
        raise ErasureLabError(f"run {directory} does not name its base model (it was made from a pipeline not "
                              "loaded by erasurelab.load_pipeline); load the base and apply Edit.load(folder)")
    if str(source).startswith("builtin:") or Path(source).exists():
        return str(source)
    if resolved and Path(resolved).exists():
        return str(resolved)
    raise ErasureLabError(f"base model {source} of run {directory} not found")


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


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        raise ErasureLabError(f"corrupt weights file {path}: {str(exc).splitlines()[0]}") from exc


def _lora_metadata(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("lora_adapter_metadata")
    except Exception as exc:
        raise ErasureLabError(f"corrupt weights file {path}: {str(exc).splitlines()[0]}") from exc
    if not raw:
        return {}
    data = json.loads(raw)
    # diffusers stores the U-Net's config with a "unet." prefix on every key.
    return {k.removeprefix("unet."): v for k, v in data.items()}


def _pattern_value(patterns: Mapping[str, Any], module: str) -> Any:
    for pattern, value in patterns.items():
        if module == pattern or re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return None


def _parse_lora(path: Path) -> dict[str, Delta]:
    """peft-format U-Net LoRA -> {"<module>.weight": LowRank(B, scale * A)}."""
    state = _load_safetensors(path)
    meta = _lora_metadata(path)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"(?:unet\.)?(.+)\.lora_([AB])\.weight", key)
        if match is None or key.startswith(("text_encoder", "lora_te", "lora_unet")):
            raise ErasureLabError(f"unsupported LoRA in {path}: key {key!r} (only peft-format U-Net LoRAs with "
                                  "'unet.<module>.lora_A/B.weight' keys are supported)")
        factors.setdefault(match.group(1), {})[match.group(2)] = tensor
    deltas: dict[str, Delta] = {}
    for module, pair in factors.items():
        if set(pair) != {"A", "B"}:
            raise ErasureLabError(f"corrupt LoRA in {path}: {module} lacks lora_{'A' if 'A' not in pair else 'B'}")
        rank = int(pair["A"].shape[0])
        alpha = _pattern_value(meta.get("alpha_pattern") or {}, module)
        alpha = float(alpha if alpha is not None else meta.get("lora_alpha", rank))
        scale = alpha / (rank ** 0.5 if meta.get("use_rslora") else rank)
        deltas[f"{module}.weight"] = LowRank(pair["B"].double(), pair["A"].double() * scale)
    return deltas
