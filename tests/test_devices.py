"""--device and --dtype: resolved before any model loads, one-line errors for what this machine cannot run."""

from __future__ import annotations

import pytest
import torch

from erasurelab.devices import peak_memory_mb, resolve_device, resolve_dtype
from erasurelab.errors import ErasureLabError
from test_cli import run_cli

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this check needs a machine without CUDA")


def test_names_resolve():
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(None).type == "cpu"
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float32") is torch.float32
    assert resolve_dtype(None) is None
    assert peak_memory_mb("cpu") > 0


@no_cuda
def test_cuda_without_cuda_is_a_one_line_error():
    with pytest.raises(ErasureLabError, match="CUDA is not available"):
        resolve_device("cuda")


def test_bad_names_and_fp16_on_cpu():
    with pytest.raises(ErasureLabError, match="unknown device"):
        resolve_device("tpu:x:y")
    with pytest.raises(ErasureLabError, match="unknown dtype"):
        resolve_dtype("float8")
    with pytest.raises(ErasureLabError, match="cannot run on a CPU"):
        resolve_dtype("float16", "cpu")


@no_cuda
@pytest.mark.parametrize("command", [
    ["generate", "--prompt", "a red circle", "--out", "{tmp}/g.png"],
    ["erase", "--concept", "red", "--out", "{tmp}/run"],
    ["evaluate", "--concept", "red", "--model", "{tmp}/run", "--out", "{tmp}/report"],
    ["finetune", "--data", "{tmp}/data", "--out", "{tmp}/ft"],
])
def test_every_model_command_refuses_cuda_here_and_writes_nothing(command, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in command] + ["--device", "cuda"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "CUDA is not available" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_float16_on_cpu_is_refused_by_the_cli(tmp_path, capsys):
    code, _, err = run_cli(["generate", "--prompt", "x", "--out", str(tmp_path / "g.png"), "--dtype", "float16"],
                           capsys)
    assert code == 2 and "cannot run on a CPU" in err
