"""The package's layout as the README draws it: the installed packages are the folders, imports run
one way between subpackages, and tests/README.md names every test file."""

from __future__ import annotations

import ast
import tomllib

from conftest import REPO

# lowest first: a subpackage may import its own layer and the layers below, never one above
LAYERS = [{"core", "model"}, {"stats", "store"}, {"data"}, {"training", "planning"}, {"launch"},
          {"cluster"}, {"report"}, {"trackers"}, {"api"}, {"cli"}]


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "harness" else None


def layer(name: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if name in names)


def test_imports_run_one_way_between_subpackages():
    upward = []
    for path in sorted((REPO / "harness").rglob("*.py")) + sorted((REPO / "model").rglob("*.py")):
        here = "model" if path.is_relative_to(REPO / "model") else path.relative_to(REPO / "harness").parts[0]
        if here.endswith(".py"):  # harness/__init__.py, __main__.py: the top
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                there = subpackage(name)
                if there and there != here and layer(there) > layer(here):
                    upward.append(f"{path.relative_to(REPO)} imports {name}")
    assert not upward, upward


def test_the_installed_packages_are_the_folders():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"harness"} | {f"harness.{p.parent.name}" for p in (REPO / "harness").glob("*/__init__.py")}
    assert set(config["packages"]) == folders | {"harness.model", "harness.sweeps"}
    assert config["package-dir"] == {"harness.model": "model", "harness.sweeps": "sweeps"}
    assert {name for names in LAYERS for name in names} == {p.split(".")[1] for p in config["packages"] if "." in p} - {"sweeps"}


def test_the_tests_readme_names_every_test_file():
    readme = (REPO / "tests" / "README.md").read_text()
    missing = [p.relative_to(REPO / "tests").as_posix() for p in sorted((REPO / "tests").rglob("test_*.py"))
               if p.name not in readme]
    assert not missing, f"tests/README.md does not name {missing}"


def test_the_readme_says_where_every_module_is():
    """The README's "Where is ..." table names each module beside its subpackage, so a new module is
    placed on the map when it is written, not rounds later."""
    rows = {line.split("`harness/")[1].split("/`")[0]: line for line in (REPO / "README.md").read_text().splitlines()
            if line.startswith("|") and "`harness/" in line}
    missing = [f"{p.parent.name}/{p.name}" for p in sorted((REPO / "harness").glob("*/*.py"))
               if p.name != "__init__.py" and f"`{p.name}`" not in rows.get(p.parent.name, "")]
    assert not missing, f"README's 'Where is' table does not name {missing}"
