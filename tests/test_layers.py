"""The layer rule of docs/design.md §2: imports run one way, data → models / diffusion → control → pipeline → train →
metrics / experiments / applications → cli, with the exceptions that section names and no others."""

from __future__ import annotations

import ast
from pathlib import Path

import emodiff

PACKAGE = Path(emodiff.__file__).parent
# Layer of each top-level name of the package; the command line (emodiff/cli/) is the last layer.
COMMANDS = 6
LAYERS = {"data": 0, "models": 1, "diffusion": 1, "control": 2, "pipeline": 3, "inference": 3, "assemble": 3,
          "train": 4, "metrics": 5, "experiments": 5, "sample": 5, "sample_form": 5,
          "demo": 5, "app": 5, "doctor": 5, "cli": COMMANDS}
LEAVES = {"errors", "native_logs", "files", "_configs"}  # every layer may use these
# docs/design.md §2: stages that train or validate with a metric's own network import that metric module.
EXCEPTIONS = {
    ("emodiff.train.distill", "emodiff.metrics.quality"),
    ("emodiff.train.emotion_classifier", "emodiff.metrics.emotion"),
    ("emodiff.train.super_resolution", "emodiff.metrics.super_resolution"),
}


def layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "emodiff" or len(parts) == 1 or parts[1].startswith("__") or parts[1] in LEAVES:
        return None
    return LAYERS[parts[1]]


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module an AST imports, at the top or inside a function (the rule looks at emodiff's)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "emodiff":  # from emodiff import cli, __version__
                names.update(f"emodiff.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return names


def upward_imports() -> set[tuple[str, str]]:
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("emodiff", *path.relative_to(PACKAGE).with_suffix("").parts))
        source = layer(module)
        if source is None:
            continue
        for name in imported_modules(ast.parse(path.read_text(encoding="utf-8"))):
            target = layer(name)
            if target is not None and target > source:
                found.add((module, name))
    return found


def test_imports_run_one_way_but_for_the_documented_exceptions() -> None:
    found = upward_imports()
    assert not found - EXCEPTIONS, f"imports against the layer rule (docs/design.md §2): {sorted(found - EXCEPTIONS)}"
    assert not EXCEPTIONS - found, f"these exceptions are gone; remove them here and in docs/design.md §2: " \
                                   f"{sorted(EXCEPTIONS - found)}"


def test_the_rule_sees_an_upward_import_inside_a_function() -> None:
    tree = ast.parse("def f():\n    from emodiff.pipeline import EmoDiffPipeline\n")
    assert imported_modules(tree) == {"emodiff.pipeline"}
    assert layer("emodiff.data.datasets") < layer("emodiff.pipeline") < layer("emodiff.cli")


def test_every_module_has_a_layer_and_only_the_cli_parses_arguments() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("emodiff", *path.relative_to(PACKAGE).with_suffix("").parts))
        layer(module)  # a KeyError names a top-level module missing from LAYERS
        if layer(module) != COMMANDS:
            assert "argparse" not in imported_modules(ast.parse(path.read_text(encoding="utf-8"))), \
                f"{module} parses arguments; command-line code belongs in emodiff/cli (docs/design.md §2)"


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
