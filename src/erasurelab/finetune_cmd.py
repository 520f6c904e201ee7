"""What `erasurelab finetune` does: benign LoRA fine-tuning of a model or an erasure run, or Modular LoRA.

- `--model BASE`: fine-tune the base (the unerased control); OUT holds the fine-tuning LoRA.
- `--model RUN`: fine-tune the erased model (RUN's base with its edit applied), as a user who
  downloads an erased model does; OUT holds safety + fine-tuning.
- `--model RUN --full`: baseline (a), the erased model's attention projections fine-tuned at full
  rank (no adapter); OUT holds safety + the dense fine-tuning deltas.
- `--model RUN --modular` (or `--model BASE --safety RUN --modular`): train on RUN's base with the
  safety edit absent, then merge both; OUT holds safety + fine-tuning.
OUT is a run folder (manifest.json + LoRA, or full deltas when the safety edit is dense), so
`erasurelab.load_pipeline(OUT)` and `--model OUT` load base + safety + fine-tuning.
Every input is checked before training: the dataset row by row, the safety run's base against the
model (fingerprint), the settings, and the output folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from erasurelab.errors import ErasureLabError


def resolve_safety(model: str, safety: str | None) -> tuple[str, Any, str | None]:
    """(model spec to load as the base, safety Edit or None, its run folder)."""
    from erasurelab.edits import Edit, base_model_spec, is_run_folder

    if safety is not None:
        if not is_run_folder(safety):
            raise ErasureLabError(f"--safety {safety} is not an erasure run folder (no manifest.json)")
        if is_run_folder(model):
            raise ErasureLabError("give either --model RUN or --model BASE --safety RUN, not two runs")
        return model, Edit.load(safety), safety
    if is_run_folder(model):
        return base_model_spec(model), Edit.load(model), model
    return model, None, None


def dense_deltas(edit: Any, pipe: Any) -> Any:
    """The edit with full-weight entries turned into deltas against `pipe` (so it can be summed)."""
    from erasurelab.edits import Dense, Edit, Replace

    if not any(isinstance(d, Replace) for d in edit.deltas.values()):
        return edit
    base = edit._base_weights(pipe)  # once: dense() would rebuild every base tensor for each key
    deltas = {k: Dense(d.delta(base[k])) if isinstance(d, Replace) else d for k, d in edit.deltas.items()}
    return Edit(deltas, edit.meta)


def check_base(safety: Any, pipe: Any, run: str | None) -> None:
    """One-line error when the safety run was made from another base than the model (fingerprints differ)."""
    from erasurelab.edits import fingerprint

    expected = (safety.meta.get("base") or {}).get("fingerprint")
    safety.check(pipe)
    if expected and fingerprint(pipe, safety.deltas) != expected:
        raise ErasureLabError(f"the safety run {run} was made from another base model than the one being "
                              "fine-tuned (fingerprint mismatch); fine-tune its own base")


def run_finetune(model: str, data: Path, out: Path, modular: bool = False, full: bool = False,
                 safety: str | None = None, config: Any = None, merge_mode: str = "sum", overwrite: bool = False,
                 quiet: bool = False, device: str = "cpu", dtype: Any = None, echo: Any = print) -> Path:
    from erasurelab.api import base_description
    from erasurelab.caption_data import load_caption_folder
    from erasurelab.finetuning import FinetuneConfig, finetune
    from erasurelab.models import load_pipeline

    config = config or FinetuneConfig()
    out = Path(out)
    if out.exists() and not overwrite:
        raise ErasureLabError(f"output folder exists: {out} (choose another --out or pass --overwrite)")
    base_spec, safety_edit, safety_run = resolve_safety(model, safety)
    if modular and full:
        raise ErasureLabError("give --modular or --full, not both")
    for flag, wanted in (("--modular", modular), ("--full", full)):
        if wanted and safety_edit is None:
            raise ErasureLabError(f"{flag} needs a safety edit: --model RUN or --safety RUN")
    pipe = load_pipeline(base_spec, dtype=dtype, device=device)
    if safety_edit is not None:
        check_base(safety_edit, pipe, safety_run)
        safety_edit = dense_deltas(safety_edit, pipe)
    size = int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))
    dataset = load_caption_folder(data, size=size)
    variant = "modular" if modular else "full" if full else ("plain" if safety_edit is not None else "control")
    echo(f"fine-tuning ({variant}) on {len(dataset)} images from {data} for {config.steps} steps")
    result = finetune(pipe, dataset, variant, safety_edit, config, checkpoint_dir=out.with_name(out.name + ".ckpt"),
                      quiet=quiet, merge_mode=merge_mode)
    merged = result.merged
    merged.meta["base"] = base_description(pipe, merged.deltas)
    merged.meta.update({"safety_run": safety_run, "data": str(data), "data_rows": len(dataset),
                        "loss_first": result.logs[0]["loss"], "loss_last": result.logs[-1]["loss"],
                        "wall_time_s": result.wall_time_s})
    fmt = "lora" if all(type(d).__name__ == "LowRank" for d in merged.deltas.values()) else "full"
    saved = merged.bind_source(pipe).save(out, format=fmt, overwrite=overwrite)
    echo(f"loss {result.logs[0]['loss']:.4f} -> {result.logs[-1]['loss']:.4f} in {result.wall_time_s:.0f} s")
    return saved
