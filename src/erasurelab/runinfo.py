"""Facts about the current run that manifests and bench files record, and atomic file writes.

Why recorded: results depend on the code (commit), the command, and library versions (closed-form
results change with diffusers/transformers versions), so every saved number says what produced it.
`provenance()` gathers those facts without naming the host.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

_PACKAGES = ("erasurelab", "torch", "diffusers", "transformers", "peft", "safetensors", "numpy")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _git(*args: str) -> str | None:
    """Output of `git -C <package dir> ARGS`, or None when git or a checkout is not there."""
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).resolve().parent), *args], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def source_revision() -> dict[str, Any]:
    """{"commit": sha or "unknown", "dirty": bool or None} of the checkout erasurelab is imported from.

    "unknown" outside a git checkout of erasurelab (e.g. an installed wheel); dirty = uncommitted changes exist,
    so the commit alone does not reproduce the code that ran.
    """
    head = _git("rev-parse", "HEAD")
    # A package installed inside some other repository (e.g. a venv in a project) is not a checkout of it.
    if head is None or _git("ls-files", "--error-unmatch", Path(__file__).name) is None:
        return {"commit": "unknown", "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": head.strip(), "dirty": None if status is None else bool(status.strip())}


def tree_digest(root: Path, pattern: str = "*") -> str:
    """sha256 over the files under `root` matching `pattern` (relative paths and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob(pattern) if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@functools.cache
def code_digest() -> str:
    """`tree_digest` of every .py file of the installed erasurelab package.

    Why: a result stored for reuse (a resumable bench row) is only valid for the code that made it; a
    changed default or a fixed bug must recompute it, also outside a git checkout.
    """
    return tree_digest(Path(__file__).resolve().parent, "*.py")


@functools.cache
def cpu_bf16_capable() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX), where autocast pays off."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in checks:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:  # pragma: no cover - a torch build without the probe's backend
            continue
    return False


def machine_facts() -> dict[str, Any]:
    """Hostname-free facts that change timings: OS, architecture, CPU count, torch threads, and the CPU's
    vector instruction set and native bf16, which made two machines of one kind differ 2.2x in the benches
    (bench/results/demo.md)."""
    facts: dict[str, Any] = {"system": platform.system(), "machine": platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch

        facts["torch_threads"] = torch.get_num_threads()
        facts["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        facts["cpu_bf16"] = cpu_bf16_capable()
    except ImportError:  # pragma: no cover - torch is a dependency
        facts.update(torch_threads=None, cpu_capability=None, cpu_bf16=None)
    return facts


def provenance(command: str | None = None) -> dict[str, Any]:
    """What produced a result: source commit (+ dirty flag), command line, UTC time, versions, machine.

    command: the command to record; None records this process's argv.
    """
    return {**source_revision(), "command": command if command is not None else " ".join(sys.argv),
            "time_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "versions": library_versions(),
            "machine": machine_facts()}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if platform.system() == "Darwin" else peak / 1024


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> Path:
    """Write text via a temp file + rename: a reader never sees half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file an ordinary file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: Path, payload: Any) -> Path:
    """Write JSON atomically (write_text_atomic): a reader never sees half a manifest."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def replace_folder(tmp: Path, directory: Path) -> Path:
    """Move a finished tmp folder into place, so readers never see a half-written output.

    An existing folder is swapped out first and removed only once the new one is in place.
    """
    if directory.exists():
        old = directory.with_name(directory.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)
    return directory
