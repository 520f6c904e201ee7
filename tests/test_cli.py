"""The command line: help everywhere, one-line errors with exit code 2, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

import erasurelab
from erasurelab.cli import main

from conftest import needs_assets


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the console entry point in-process; returns (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["erasurelab", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version(capsys) -> None:
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"erasurelab {erasurelab.__version__}"


@pytest.mark.parametrize("command", [[], ["generate"], ["demo"], ["world"], ["world", "train"], ["world", "sample"]])
def test_help_on_every_command(command: list[str], capsys) -> None:
    code, out, _ = run_cli([*command, "--help"], capsys)
    assert code == 0 and "Usage" in out


def _assert_one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


def test_unknown_model_spec(tmp_path: Path, capsys) -> None:
    out = tmp_path / "grid.png"
    code, _, err = run_cli(["generate", "--model", "builtin:nope", "--prompt", "a red circle", "--out", str(out)],
                           capsys)
    _assert_one_line_error(code, err, "builtin:nope")
    assert not out.exists()


def test_missing_model_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "grid.png"
    missing = tmp_path / "no-such-model"
    code, _, err = run_cli(["generate", "--model", str(missing), "--prompt", "x", "--out", str(out)], capsys)
    _assert_one_line_error(code, err, str(missing))
    assert list(tmp_path.iterdir()) == []


def test_truncated_safetensors_in_a_model_folder(tmp_path: Path, capsys) -> None:
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                             "unet": ["diffusers", "UNet2DConditionModel"]}))
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    import torch

    save_file({"w": torch.zeros(64, 64)}, str(weights))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "grid.png"
    code, _, err = run_cli(["generate", "--model", str(model), "--prompt", "x", "--out", str(out)], capsys)
    _assert_one_line_error(code, err, "corrupt")
    assert not out.exists()


@pytest.mark.parametrize("request_text, needle", [
    ("colour=red", "unknown attribute 'colour'"),
    ("object=circel", "did you mean: circle"),
])
def test_unknown_attribute_in_a_request(request_text: str, needle: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "grid.png"
    code, _, err = run_cli(["generate", "--request", request_text, "--out", str(out)], capsys)
    _assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_bad_numbers_and_outputs(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["generate", "--prompt", "x", "--num-images", "0", "--out", str(tmp_path / "g.png")],
                           capsys)
    _assert_one_line_error(code, err, "--num-images")
    code, _, err = run_cli(["generate", "--prompt", "x", "--out", str(tmp_path / "g.jpg")], capsys)
    _assert_one_line_error(code, err, ".png")
    code, _, err = run_cli(["world", "train", "--stages", "vae,unicorn", "--out", str(tmp_path / "w")], capsys)
    _assert_one_line_error(code, err, "unicorn")
    assert not (tmp_path / "w").exists()


def test_world_sample_writes_a_grid(tmp_path: Path, capsys) -> None:
    out = tmp_path / "world.png"
    code, stdout, _ = run_cli(["world", "sample", "--n", "6", "--out", str(out)], capsys)
    assert code == 0 and out.exists() and "wrote" in stdout
    assert [p.name for p in tmp_path.iterdir()] == ["world.png"]  # no temp file left behind


def test_python_dash_m_entry_point() -> None:
    done = subprocess.run([sys.executable, "-m", "erasurelab", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("erasurelab ")


@needs_assets
def test_generate_prints_the_judges_verdict(tmp_path: Path, capsys) -> None:
    out = tmp_path / "grid.png"
    code, stdout, err = run_cli(["generate", "--request", "object=heart,color=red", "--num-images", "2",
                                 "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert out.exists()
    verdict_lines = [line for line in stdout.splitlines() if "seed" in line]
    assert len(verdict_lines) == 2
    assert all(("OK" in line) or ("MISS" in line) for line in verdict_lines)


def test_attack_flags_parse_one_way() -> None:
    """Repeated and comma-separated --attack values, 'default' and 'none' resolve to registered names."""
    from erasurelab.cli_options import attack_names, one_attack
    from erasurelab.demo import DEMO_ATTACKS
    from erasurelab.errors import ErasureLabError

    assert attack_names(["ring-a-bell,textual-inversion"]) == attack_names(["ring-a-bell", "textual-inversion"])
    assert attack_names(["ring-a-bell,textual-inversion"]) == ("ring-a-bell", "textual-inversion")
    assert attack_names(None, "default") == DEMO_ATTACKS
    assert attack_names(None) == () and attack_names(["None"], "default") == ()
    assert one_attack("Ring-A-Bell") == "ring-a-bell"
    with pytest.raises(ErasureLabError):
        attack_names(["none", "ring-a-bell"])
    with pytest.raises(ErasureLabError):
        one_attack("ring-a-bell,textual-inversion")


def test_a_misspelled_attack_fails_before_any_model_loads(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(["evaluate", "--model", "builtin:shapes", "--reference", "builtin:shapes", "--concept",
                            "red", "--attack", "textual-inversion,unicorn", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "unicorn" in err and len(err.strip().splitlines()) == 1


def test_shared_options_have_one_default_everywhere() -> None:
    """--seed defaults to the same value and --concept/--attack are repeatable on every command that takes them."""
    import click
    import typer.main

    from erasurelab.cli import app

    command = typer.main.get_command(app)
    seen: dict[str, set[object]] = {"seed": set()}
    multiple: dict[str, set[bool]] = {"concept": set(), "attack": set()}

    def walk(cmd: click.Command, path: str) -> None:
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {sub_name}")
        for param in cmd.params:
            if param.name == "seed":
                seen["seed"].add(param.default)
            if param.name in multiple and path.split()[-1:] not in (["attack"], ["demo"], ["dataset"]):
                multiple[param.name].add(param.multiple)

    walk(command, "erasurelab")
    assert seen["seed"] == {0}
    assert multiple["concept"] == {True} and multiple["attack"] == {True}


def test_verbose_turns_on_the_library_log(capsys) -> None:
    import logging

    logger = logging.getLogger("erasurelab")
    level, handlers = logger.level, list(logger.handlers)
    try:
        code, _, _ = run_cli(["--verbose", "judges"], capsys)
        assert code == 0 and logger.getEffectiveLevel() == logging.INFO
        logging.getLogger("erasurelab.diskcache").info("probe line")
        assert "probe line" in capsys.readouterr().err
    finally:
        logger.setLevel(level)
        logger.handlers[:] = handlers


@needs_assets
def test_bad_concept_yaml_and_judge_folder_are_one_line_errors_with_nothing_written(tmp_path, capsys) -> None:
    bad = tmp_path / "teapot.yaml"
    bad.write_text("name: teapot\ncategory: object\n", encoding="utf-8")  # no words, no anchors
    code, _, err = run_cli(["erase", "--concept", str(bad), "--method", "uce", "--out", str(tmp_path / "run"), "-q"],
                           capsys)
    assert code == 2 and "`words`" in err and err.count("\n") == 1 and not (tmp_path / "run").exists()
    for judge, needle in ((f"clip:{tmp_path / 'missing'}", "not found"), (f"clip:{tmp_path}", "CLIP")):
        code, _, err = run_cli(["evaluate", "--model", "builtin:shapes", "--concept", "red", "--judge", judge,
                                "--out", str(tmp_path / "report"), "-q"], capsys)
        assert code == 2 and needle in err and err.count("\n") == 1, err
        assert not (tmp_path / "report").exists()
