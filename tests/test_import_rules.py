"""Import rules: the embedded world is a plugin nothing else imports, and the old import cycles stay broken.

The import graph is read from the source (AST), with top-level and function-level imports alike;
imports under `if TYPE_CHECKING:` never run, so they count for the world rule but not for cycles.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "erasurelab"
WORLD = "erasurelab.world"


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module (a package's submodule when `from package import submodule`)
    function: str | None  # innermost enclosing function, None at module level
    typing_only: bool  # under `if TYPE_CHECKING:`
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import in one module, with the function it sits in and whether it only serves type checking."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[Import] = []

    def visit(node: ast.AST, function: str | None, typing_only: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(module, a.name, function, typing_only, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, path.name == "__init__.py", node)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append(Import(module, candidate if candidate in known else base, function, typing_only,
                                    node.lineno))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                visit(child, function, True)
            for child in node.orelse:
                visit(child, function, typing_only)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, function, typing_only)

    visit(tree, None, False)
    return found


def all_imports() -> list[Import]:
    found = modules()
    return [i for name, path in found.items() for i in imports_of(name, path, set(found))]


def runtime_graph() -> dict[str, set[str]]:
    """module -> erasurelab modules it imports at run time (any function level)."""
    graph: dict[str, set[str]] = {name: set() for name in modules()}
    for imp in all_imports():
        if not imp.typing_only and imp.target in graph:
            graph[imp.source].add(imp.target)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def is_world(name: str) -> bool:
    return name == WORLD or name.startswith(WORLD + ".")


# -- The world rule -------------------------------------------------------------------------------------


def test_the_ast_scan_sees_imports_at_every_level() -> None:
    """Guards the scanner itself: it finds function-level and typing-only imports, and resolves relative ones."""
    found = modules()
    cli_imports = imports_of("erasurelab.world.cli", found["erasurelab.world.cli"], set(found))
    assert any(i.target == "erasurelab.world.train" and i.function == "world_train" for i in cli_imports)
    spec_imports = imports_of("erasurelab.concepts.spec", found["erasurelab.concepts.spec"], set(found))
    assert any(i.target == "erasurelab.concepts.providers" and i.function == "from_yaml" for i in spec_imports)
    providers = imports_of("erasurelab.concepts.providers", found["erasurelab.concepts.providers"], set(found))
    assert any(i.target == "erasurelab.concepts.spec" and i.typing_only for i in providers)
    tree = ast.parse("from .. import world\nfrom .vocab import x\n")
    relative = [_absolute("erasurelab.judges.base", False, n) for n in tree.body]  # type: ignore[arg-type]
    assert relative == ["erasurelab", "erasurelab.judges.vocab"]


def test_nothing_outside_world_imports_the_world() -> None:
    """No exception: not even the command line, which finds `erasurelab world` through the plugin registry."""
    offenders = [f"{imp.source}:{imp.line} imports {imp.target} (in {imp.function or 'module level'})"
                 for imp in all_imports() if not is_world(imp.source) and is_world(imp.target)]
    assert not offenders, "\n".join(offenders)


def test_world_registers_through_the_plugin_loader_only() -> None:
    """The built-in plugin list and the entry point both name the world's plugin module."""
    from erasurelab import plugins

    assert "erasurelab.world.plugin" in plugins.BUILTIN_PLUGINS
    assert plugins.BUILTIN_CLI_APPS["world"] == "erasurelab.world.cli:world_app"
    pyproject = (SRC.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert '[project.entry-points."erasurelab.plugins"]' in pyproject
    assert 'world = "erasurelab.world.plugin"' in pyproject
    assert '[project.entry-points."erasurelab.cli"]' in pyproject
    assert 'world = "erasurelab.world.cli:world_app"' in pyproject


# -- Cycles ---------------------------------------------------------------------------------------------


def test_world_and_judges_do_not_import_each_other_in_a_cycle() -> None:
    graph = runtime_graph()
    judges = [m for m in graph if m == "erasurelab.judges" or m.startswith("erasurelab.judges.")]
    assert "erasurelab.judges.base" in judges
    assert all(not is_world(m) for j in judges for m in reachable(graph, j) | {j})
    assert not any(m.startswith("erasurelab.judges.shapes") for m in graph)  # the shapes judge lives in world/


def test_concept_spec_and_yaml_loader_are_not_a_cycle() -> None:
    graph = runtime_graph()
    spec, loader = "erasurelab.concepts.spec", "erasurelab.concepts.yaml_spec"
    assert spec in reachable(graph, loader)  # the loader builds specs
    assert loader not in reachable(graph, spec)  # the record reads YAML through the provider registry


# -- Cheap imports, lazy plugins --------------------------------------------------------------------------


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          cwd=SRC.parent, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_erasurelab_does_not_import_torch() -> None:
    assert _run("import sys, erasurelab; print('torch' in sys.modules)") == "False"


def test_importing_the_framework_does_not_load_the_world_until_a_lookup() -> None:
    out = _run("""
        import sys
        import erasurelab.api, erasurelab.attacks, erasurelab.cli, erasurelab.concepts, erasurelab.evaluation.runner
        import erasurelab.generate_cmd, erasurelab.judges, erasurelab.methods, erasurelab.models
        print(sorted(m for m in sys.modules if m.startswith("erasurelab.world")))
        from erasurelab.concepts import concept
        concept("red")
        print("erasurelab.world.plugin" in sys.modules)
    """)
    assert out.splitlines() == ["[]", "True"]


def test_a_third_party_plugin_registers_through_the_entry_point_group(tmp_path: Path) -> None:
    (tmp_path / "thirdparty_concepts.py").write_text(textwrap.dedent("""
        from erasurelab.concepts import ConceptSpec, register_concept_provider

        def resolve(name):
            return ConceptSpec.from_words("teapot", "object", ["teapot"]) if name == "teapot" else None

        register_concept_provider("thirdparty", resolve, names=lambda: ["teapot"])
    """), encoding="utf-8")
    out = _run(f"""
        import sys
        from importlib import metadata
        sys.path.insert(0, {str(tmp_path)!r})
        real = metadata.entry_points
        fake = metadata.EntryPoint("thirdparty", "thirdparty_concepts", "erasurelab.plugins")
        metadata.entry_points = lambda **kw: [fake] if kw.get("group") == "erasurelab.plugins" else real(**kw)
        from erasurelab.concepts import catalog, concept
        print(concept("teapot").forget[0], "teapot" in catalog(), concept("red").category)
    """)
    assert out == "a photo of teapot True color"


def test_the_command_line_lists_plugin_groups_without_importing_them() -> None:
    """`erasurelab --help` names `world` but imports neither the world's plugin nor torch; `world --help` loads
    the group alone."""
    out = _run("""
        import sys
        from typer.testing import CliRunner
        from erasurelab.cli import app
        top = CliRunner().invoke(app, ["--help"])
        print(top.exit_code, "world" in top.output, "torch" in sys.modules,
              sorted(m for m in sys.modules if m.startswith("erasurelab.world")))
        sub = CliRunner().invoke(app, ["world", "--help"])
        print(sub.exit_code, "sample" in sub.output, "torch" in sys.modules)
    """)
    assert out.splitlines() == ["0 True False ['erasurelab.world', 'erasurelab.world.cli']", "0 True False"]


def test_a_third_party_command_group_registers_through_the_cli_entry_point(tmp_path: Path) -> None:
    """A working group runs; a broken one warns once and is absent, and the built-in commands keep working."""
    (tmp_path / "thirdparty_cli.py").write_text(textwrap.dedent("""
        import typer

        teapot_app = typer.Typer(help="Teapot tools.")

        @teapot_app.command()
        def brew(cups: int = 1) -> None:
            print(f"brewed {cups}")

        @teapot_app.command()
        def pour() -> None:
            print("poured")
    """), encoding="utf-8")
    out = _run(f"""
        import sys, warnings
        from importlib import metadata
        sys.path.insert(0, {str(tmp_path)!r})
        real = metadata.entry_points
        fakes = [metadata.EntryPoint("teapot", "thirdparty_cli:teapot_app", "erasurelab.cli"),
                 metadata.EntryPoint("broken", "no_such_module:app", "erasurelab.cli")]
        metadata.entry_points = lambda **kw: fakes if kw.get("group") == "erasurelab.cli" else real(**kw)
        from typer.testing import CliRunner
        from erasurelab.cli import app
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print(CliRunner().invoke(app, ["teapot", "brew", "--cups", "3"]).output.strip())
            broken = CliRunner().invoke(app, ["broken"])
        print(broken.exit_code, sum("could not load erasurelab command group 'broken'" in str(w.message)
                                    for w in caught))
        print(CliRunner().invoke(app, ["methods"]).exit_code)
    """)
    assert out.splitlines() == ["brewed 3", "2 1", "0"]


@pytest.mark.parametrize(("registry", "name"), [
    ("erasurelab.concepts.providers:CONCEPT_PROVIDERS", "shapes"),
    ("erasurelab.concepts.grammar:PROMPT_GRAMMARS", "shapes"),
    ("erasurelab.evaluation.suites:SUITE_BUILDERS", "shapes"),
    ("erasurelab.judges.base:JUDGES", "shapes"),
    ("erasurelab.judges.base:JUDGES", "pixels"),
    ("erasurelab.models.loading:MODEL_SOURCES", "builtin:shapes"),
])
def test_the_world_plugin_fills_every_registry(registry: str, name: str) -> None:
    from importlib import import_module

    from erasurelab.plugins import load_plugins

    module, attribute = registry.split(":")
    load_plugins()
    assert name in getattr(import_module(module), attribute)
