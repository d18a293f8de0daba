"""The `emodiff` command line: one subcommand per stage (docs/design.md §1).

Each command is a module of this package (`emodiff.cli.<command>`, the training stages `emodiff.cli.train.<stage>`)
that provides `add_arguments(parser)` and `run(args)`: `run` turns the parsed flags into typed values and calls the
library function that does the work, and no module outside this package parses arguments. The module docstring's
first line is the command's help. Only the module of the command being run is
imported (the others' help lines are read from their source), so `emodiff --help` does not load torch.
User errors (`EmodiffError`) are printed as one sentence with exit status 1, never as a traceback. Every command
takes `--verbose`, which keeps the C++ log lines of mediapipe / TensorFlow Lite (`emodiff.native_logs`).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import sys
from pathlib import Path

from emodiff.errors import EmodiffError
from emodiff.native_logs import VERBOSE_ENV

COMMANDS: dict[str, str] = {
    "app": "emodiff.cli.app",
    "doctor": "emodiff.cli.doctor",
    "evaluate": "emodiff.cli.evaluate",
    "prepare": "emodiff.cli.prepare",
    "inspect": "emodiff.cli.inspect",
    "schedule": "emodiff.cli.schedule",
    "sample": "emodiff.cli.sample",
    "synthesize": "emodiff.cli.synthesize",
    "assemble": "emodiff.cli.assemble",
    "demo": "emodiff.cli.demo",
    "synthetic-run": "emodiff.cli.synthetic_run",
    "ablate": "emodiff.cli.ablate",
    "real-clips": "emodiff.cli.real_clips",
}
TRAIN_STAGES: dict[str, str] = {
    "denoiser": "emodiff.cli.train.denoiser",
    "expression": "emodiff.cli.train.expression",
    "intensity": "emodiff.cli.train.intensity",
    "emotion-classifier": "emodiff.cli.train.emotion_classifier",
    "readout": "emodiff.cli.train.readout",
    "distill": "emodiff.cli.train.distill",
    "super-resolution": "emodiff.cli.train.super_resolution",
}


PACKAGE_DIR = Path(__file__).resolve().parents[1]  # emodiff/


def _docstring(module_name: str) -> str:
    """A command module's docstring, read from its source without importing it."""
    path = PACKAGE_DIR.joinpath(*module_name.split(".")[1:]).with_suffix(".py")
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def _add_module(subparsers: argparse._SubParsersAction, name: str, module_name: str, chosen: bool) -> None:
    doc = _docstring(module_name)
    parser = subparsers.add_parser(name, help=doc.splitlines()[0] if doc else "", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    if chosen:  # only the command being run is imported and gets its arguments
        module = importlib.import_module(module_name)
        module.add_arguments(parser)
        parser.add_argument("--verbose", action="store_true",
                            help=f"show the C++ log lines of mediapipe / TensorFlow Lite (also: {VERBOSE_ENV}=1)")
        parser.set_defaults(run=module.run)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser: every command is listed, only the one named in `argv` (default: sys.argv[1:]) is complete."""
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
    command = words[0] if words else None
    stage = words[1] if len(words) > 1 and command == "train" else None
    parser = argparse.ArgumentParser(prog="emodiff", description=__doc__.splitlines()[0])
    from emodiff import __version__

    parser.add_argument("--version", action="version", version=f"emodiff {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        _add_module(commands, name, module_name, chosen=name == command)
    train = commands.add_parser("train", help="Train one model stage (also runs under `accelerate launch -m emodiff train <stage>`).")
    stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, module_name in TRAIN_STAGES.items():
        _add_module(stages, name, module_name, chosen=command == "train" and name == stage)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    try:
        return int(args.run(args) or 0)
    except EmodiffError as err:
        print(f"emodiff: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("emodiff: interrupted.", file=sys.stderr)
        return 130

