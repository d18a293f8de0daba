"""The rules of docs/design.md §2: imports run one way (pyproject.toml's import-linter contract), only emodiff/cli parses
arguments, and no module draws with pyplot."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import emodiff

PACKAGE = Path(emodiff.__file__).parent
ROOT = PACKAGE.parent
LEAVES = {"errors", "native_logs", "files", "_configs"}  # docs/design.md §2: every layer may use these


def contract() -> dict:
    """The layers contract of pyproject.toml's [tool.importlinter]."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        (layers,) = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    return layers


def test_imports_run_one_way_by_the_import_contract() -> None:
    """import-linter checks every import, inside functions too, against the layers of docs/design.md §2."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_every_top_level_module_has_a_layer_or_is_a_leaf() -> None:
    named = {part.strip().split(".")[1] for layer in contract()["layers"] for part in layer.split(":")}
    modules = {path.stem if path.is_file() else path.name for path in PACKAGE.iterdir()
               if (path.suffix == ".py" or (path / "__init__.py").exists()) and not path.name.startswith("__")}
    assert not modules - named - LEAVES, f"add these to a layer of pyproject.toml's import contract: " \
                                         f"{sorted(modules - named - LEAVES)}"


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module an AST imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_only_the_cli_parses_arguments() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] != "cli":
            assert "argparse" not in imported_modules(ast.parse(path.read_text(encoding="utf-8"))), \
                f"{path} parses arguments; command-line code belongs in emodiff/cli (docs/design.md §2)"


def imports_pyplot(tree: ast.AST) -> bool:
    """Whether an AST imports matplotlib.pyplot (`import matplotlib.pyplot`, `from matplotlib import pyplot`)."""
    from_matplotlib = {f"matplotlib.{alias.name}" for node in ast.walk(tree)
                       if isinstance(node, ast.ImportFrom) and node.module == "matplotlib" for alias in node.names}
    return any(name.split(".")[:2] == ["matplotlib", "pyplot"] for name in imported_modules(tree) | from_matplotlib)


def test_no_module_draws_with_pyplot() -> None:
    """docs/design.md §8: figures are drawn on matplotlib's Figure API, not pyplot's global state, so threads (the
    app's sessions) can draw at once."""
    users = [str(path.relative_to(PACKAGE)) for path in sorted(PACKAGE.rglob("*.py"))
             if imports_pyplot(ast.parse(path.read_text(encoding="utf-8")))]
    assert not users, f"these modules import matplotlib.pyplot; draw on matplotlib.figure.Figure instead: {users}"


def test_the_pyplot_check_sees_every_form_of_the_import() -> None:
    for source in ("import matplotlib.pyplot as plt", "def f():\n    from matplotlib import pyplot\n",
                   "from matplotlib.pyplot import subplots"):
        assert imports_pyplot(ast.parse(source)), source
    assert not imports_pyplot(ast.parse("import matplotlib\nfrom matplotlib.figure import Figure\n"))
