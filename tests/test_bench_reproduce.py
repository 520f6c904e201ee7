"""A bench row reproduces exactly, and bench JSON carries what makes its numbers traceable."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import needs_assets

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_closed_form

import _common

pytestmark = [pytest.mark.slow, needs_assets]
# One thread: small batches gain nothing from two, and spinning threads cost a lot on a shared machine.
torch.set_num_threads(1)


def _weights(pipe) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def test_closed_form_row_reproduces_and_json_records_provenance(builtin_pipe, shapes_judge, tmp_path,
                                                                 monkeypatch) -> None:
    args = bench_closed_form.sizes(seeds=1, paraphrase_seeds=1, retain_seeds=1, max_prompts=4)
    before = _weights(builtin_pipe)
    first = bench_closed_form.bench_row(builtin_pipe, shapes_judge, ("red",), "uce", args)
    second = bench_closed_form.bench_row(builtin_pipe, shapes_judge, ("red",), "uce", args)
    after = _weights(builtin_pipe)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the row leaves the pipeline as it was
    assert first["base"] == second["base"] and first["edited"] == second["edited"]
    assert first["edited"]["red/anchor"] < first["base"]["red/anchor"]  # the row measured an erasure
    assert first["split"] == ["dev"]

    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    path = _common.write_json("row", {"results": [first]}, pipe=builtin_pipe, judge=shapes_judge,
                              settings={"seeds": 1}, command="bench_closed_form.py --seeds 1")
    payload = json.loads(path.read_text())
    assert {"provenance", "model_hash", "judge", "settings", "results"} <= set(payload)
    provenance = payload["provenance"]
    assert {"commit", "dirty", "command", "time_utc", "versions", "machine"} <= set(provenance)
    assert provenance["command"] == "bench_closed_form.py --seeds 1"
    assert provenance["commit"] == "unknown" or len(provenance["commit"]) == 40
    assert payload["model_hash"] == _common.builtin_model_hash()
    assert payload["judge"]["id"] == shapes_judge.id
    assert payload["settings"] == {"seeds": 1}
    assert not list(tmp_path.glob("*.tmp"))
