"""runinfo.provenance: what produced a result, with the commit only inside a checkout of erasurelab."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import erasurelab
from erasurelab import runinfo


def test_provenance_records_the_checkout_commit_command_and_versions() -> None:
    info = runinfo.provenance("erasurelab bench --concept green")
    assert info["command"] == "erasurelab bench --concept green"
    assert info["time_utc"].endswith("Z") and info["versions"]["torch"]
    assert set(info["machine"]) == {"system", "machine", "cpu_count", "torch_threads", "cpu_capability", "cpu_bf16"}
    assert isinstance(info["machine"]["cpu_capability"], str) and isinstance(info["machine"]["cpu_bf16"], bool)
    package = Path(erasurelab.__file__).resolve().parent
    head = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert info["commit"] == head.stdout.strip() and isinstance(info["dirty"], bool)
    else:
        assert info["commit"] == "unknown"
    assert json.loads(json.dumps(info)) == info  # JSON as it is


def test_provenance_defaults_to_this_process_command_line(monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_x.py", "--seeds", "2"])
    assert runinfo.provenance()["command"] == "bench_x.py --seeds 2"


def test_commit_is_unknown_outside_a_checkout(monkeypatch, tmp_path) -> None:
    copy = tmp_path / "runinfo.py"
    copy.write_text("")
    monkeypatch.setattr(runinfo, "__file__", str(copy))
    assert runinfo.source_revision() == {"commit": "unknown", "dirty": None}


def test_a_package_inside_another_repository_is_not_its_checkout(monkeypatch, tmp_path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "other.txt").write_text("x")
    subprocess.run(["git", "-C", str(tmp_path), "add", "other.txt"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "x"],
                   check=True)
    copy = tmp_path / "runinfo.py"  # present but untracked: a venv inside some project
    copy.write_text("")
    monkeypatch.setattr(runinfo, "__file__", str(copy))
    assert runinfo.source_revision()["commit"] == "unknown"


def test_atomic_writes_get_an_ordinary_file_mode(tmp_path) -> None:
    import os

    mask = os.umask(0o022)
    try:
        path = runinfo.write_json_atomic(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
