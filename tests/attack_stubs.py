"""Stub judges and helpers for the attack tests on tiny random pipelines.

Why stubs: the shapes judge needs the trained embedded weights, and a random tiny pipeline renders
noise anyway. The attacks only need a verdict per image, so these judges script the verdicts
(always / never / by call number) and count how many images they were shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """A fresh disk cache per test (import this fixture into a test module to use it).

    Why: the stub judges share one id, so a cached `prepare` from another test would replay that
    test's scripted verdicts and shift every judge call of this one.
    """
    folder = tmp_path / "erasurelab-cache"
    monkeypatch.setenv("ERASURELAB_CACHE", str(folder))
    return folder


class ScriptedJudge:
    """Verdicts of the n-th call (1-based) = script[n - 1]: one bool for every image, or a list per image.

    After the script ends every image gets `default`.
    """

    id = "stub-scripted"

    def __init__(self, script: Sequence[bool | Sequence[bool]] = (), default: bool = False) -> None:
        self.script = list(script)
        self.default = default
        self.calls = 0
        self.images_seen = 0

    def concepts(self) -> list[str]:
        return []

    def present(self, images: torch.Tensor, concept: str) -> torch.Tensor:
        self.calls += 1
        self.images_seen += len(images)
        value = self.script[self.calls - 1] if self.calls <= len(self.script) else self.default
        if isinstance(value, Sequence):
            assert len(value) == len(images), f"call {self.calls}: script has {len(value)} verdicts for {len(images)}"
            return torch.tensor([bool(v) for v in value])
        return torch.full((len(images),), bool(value))


def always(value: bool) -> ScriptedJudge:
    return ScriptedJudge((), default=value)


def snapshot(*pipes: Any) -> list[dict[str, Any]]:
    """Every parameter and buffer (cloned) plus requires_grad flags and tokenizer sizes of the pipelines."""
    out = []
    for pipe in pipes:
        state: dict[str, Any] = {}
        for part in ("unet", "text_encoder", "vae"):
            module = getattr(pipe, part)
            for name, tensor in module.state_dict().items():
                state[f"{part}.{name}"] = tensor.detach().clone()
            state[f"{part}.flags"] = [p.requires_grad for p in module.parameters()]
        state["tokenizer_len"] = len(pipe.tokenizer)
        out.append(state)
    return out


def assert_unchanged(before: list[dict[str, Any]], pipes: Sequence[Any]) -> None:
    """Bit-identical weights, same requires_grad flags, same tokenizer: the attack edited nothing."""
    after = snapshot(*pipes)
    for b, a in zip(before, after, strict=True):
        assert b.keys() == a.keys()
        for key in b:
            if isinstance(b[key], torch.Tensor):
                assert torch.equal(b[key], a[key]), f"{key} changed"
            else:
                assert b[key] == a[key], f"{key} changed"
