"""The repository's structure rules, checked: one ``serrano`` namespace, gateware apart from
flows, small ``elaborate()`` methods, thin scripts, documents that a clone actually has."""

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HW = ROOT / "hw"

# Python code that belongs to the project (the venv and build output are not).
PY_DIRS = ["hw", "sim", "flows", "serrano", "scripts", "tests"]

# "Well under 150 lines" is the house style; this is the hard limit a test holds.
MAX_ELABORATE_LINES = 150

# Modules gateware must not use: they run tools, touch files or read the environment.
FORBIDDEN_IN_HW = {"subprocess", "os", "shutil", "pathlib", "tempfile", "json", "glob",
                   "multiprocessing", "concurrent", "importlib"}


def _py_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _imported_modules(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            names.add("." * node.level + mod)
            names |= {"." * node.level + (mod + "." if mod else "") + a.name
                      for a in node.names}
    return names


def test_one_top_level_package():
    dist = importlib.metadata.distribution("serrano")
    assert dist.read_text("top_level.txt").split() == ["serrano"]
    # From a directory outside the checkout, nothing named hw or sim is importable.
    for name in ("hw", "sim", "flows"):
        proc = subprocess.run([sys.executable, "-I", "-c", f"import {name}"], cwd="/",
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, name


def test_root_api():
    import serrano
    from serrano.hw.config import AcceleratorConfig
    from serrano.sim.runtime import Accelerator
    assert serrano.AcceleratorConfig is AcceleratorConfig
    assert serrano.Accelerator is Accelerator


@pytest.mark.parametrize("path", _py_files(*PY_DIRS), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_sys_path_edits(path):
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.Attribute) and node.attr == "path" \
                and isinstance(node.value, ast.Name) and node.value.id == "sys":
            pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} uses sys.path")


@pytest.mark.parametrize("path", _py_files("hw"), ids=lambda p: str(p.relative_to(ROOT)))
def test_hw_is_gateware_only(path):
    tree = _parse(path)
    rel = path.relative_to(ROOT)
    for mod in _imported_modules(tree):
        top = mod.lstrip(".").split(".")[0]
        assert top not in FORBIDDEN_IN_HW, f"{rel} imports {mod}"
        assert "flows" not in mod.split("."), f"{rel} imports the flow package ({mod})"
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in ("open", "exec", "eval"), \
                f"{rel}:{node.lineno} calls {node.func.id}()"
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            pytest.fail(f"{rel}:{node.lineno}: no __future__ imports in gateware")


@pytest.mark.parametrize("path", _py_files("hw"), ids=lambda p: str(p.relative_to(ROOT)))
def test_gateware_functions_are_short(path):
    """Every ``elaborate()``, and every helper it delegates to, reads in one sitting."""
    for node in ast.walk(_parse(path)):
        if isinstance(node, ast.FunctionDef):
            lines = node.end_lineno - node.lineno + 1
            assert lines <= MAX_ELABORATE_LINES, \
                f"{path.relative_to(ROOT)}:{node.lineno}: {node.name}() is {lines} lines"


@pytest.mark.parametrize("path", sorted((ROOT / "scripts").glob("*.py")), ids=lambda p: p.name)
def test_scripts_are_thin_wrappers(path):
    command = path.stem
    assert (ROOT / "serrano" / "commands" / f"{command}.py").is_file()
    assert f"from serrano.commands.{command} import main" in path.read_text()
    assert len(path.read_text().splitlines()) <= 15


def test_every_command_is_registered():
    from serrano.cli import COMMANDS
    modules = {p.stem for p in (ROOT / "serrano" / "commands").glob("*.py")} - {"__init__"}
    assert {module for module, _ in COMMANDS.values()} == modules


def test_cli_runs_a_command(capsys):
    from serrano.cli import main
    assert main(["--help"]) == 0
    assert "synth" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2


@pytest.mark.parametrize("doc", ["README.md", *sorted(p.relative_to(ROOT).as_posix()
                                                        for p in (ROOT / "docs").glob("*.md"))])
def test_document_links_resolve(doc):
    """Relative links point to files of this repository, never outside it."""
    path = ROOT / doc
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{doc} links outside the repository: {target}"
        assert resolved.exists(), f"{doc} links to a missing file: {target}"
    assert "../shared" not in path.read_text(), f"{doc} refers to ../shared"
