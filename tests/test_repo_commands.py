"""The README's two commands and CI: CI runs exactly the README's test command, and both install with the
torch constraint (so no install pulls a CUDA build)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    """The one-line commands in the README's ```bash blocks that install the package."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("pip install")]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
                if line and not line.startswith(("#", "set ", "cd "))]
    test_commands = [c for c in readme_commands() if "pytest" in c]
    assert len(test_commands) == 1, test_commands
    assert ci_lines == test_commands


def test_both_readme_commands_install_with_the_torch_constraint() -> None:
    commands = readme_commands()
    assert any("erasurelab demo" in c for c in commands) and any("pytest" in c for c in commands)
    assert all("-c constraints.txt" in c for c in commands), commands
    assert re.search(r"^torch==\d", (ROOT / "constraints.txt").read_text(encoding="utf-8"), re.M)
