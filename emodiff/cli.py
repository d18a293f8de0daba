"""The `emodiff` command line: one subcommand per stage (DESIGN §1).

Each command lives in its own module, which provides `add_arguments(parser)` and `run(args)`;
the module docstring's first line is the command's help. User errors (`EmodiffError`) are
printed as one sentence with exit status 1, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from emodiff.errors import EmodiffError

COMMANDS: dict[str, str] = {
    "doctor": "emodiff.doctor",
    "evaluate": "emodiff.metrics.evaluate",
    "prepare": "emodiff.data.prepare",
    "inspect": "emodiff.data.contact_sheet",
    "schedule": "emodiff.control.preview",
    "sample": "emodiff.sample",
    "synthesize": "emodiff.data.synthetic",
    "assemble": "emodiff.assemble",
    "demo": "emodiff.demo",
    "synthetic-run": "emodiff.synthetic_run",
}
TRAIN_STAGES: dict[str, str] = {
    "denoiser": "emodiff.train.denoiser",
    "expression": "emodiff.train.expression_gan",
    "intensity": "emodiff.train.intensity",
    "emotion-classifier": "emodiff.train.emotion_classifier",
    "readout": "emodiff.train.readout",
}


def _add_module(subparsers: argparse._SubParsersAction, name: str, module_name: str) -> None:
    module = importlib.import_module(module_name)
    summary = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
    parser = subparsers.add_parser(name, help=summary, description=module.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    parser.set_defaults(run=module.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emodiff", description=__doc__.splitlines()[0])
    from emodiff import __version__

    parser.add_argument("--version", action="version", version=f"emodiff {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        _add_module(commands, name, module_name)
    if TRAIN_STAGES:
        train = commands.add_parser("train", help="Train one model stage (also runs under `accelerate launch -m emodiff.train.<stage>`).")
        stages = train.add_subparsers(dest="stage", metavar="STAGE", required=True)
        for name, module_name in TRAIN_STAGES.items():
            _add_module(stages, name, module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except EmodiffError as err:
        print(f"emodiff: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("emodiff: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
