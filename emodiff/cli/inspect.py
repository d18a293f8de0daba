"""Draw a contact sheet per clip of a store: face crops with their 68 landmarks over the intensity curve.

`emodiff inspect STORE [--out DIR]` writes DIR/<clip_id>.png (DIR defaults to STORE/inspect) so a
person can check a prepared store at a glance.
"""

from __future__ import annotations

import argparse

from emodiff.data.contact_sheet import inspect_store

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="a clip store made by `emodiff prepare`")
    parser.add_argument("--out", help="folder for the PNGs (default: STORE/inspect)")


def run(args: argparse.Namespace) -> int:
    count, out = inspect_store(args.store, args.out)
    print(f"inspect: {count} contact sheets in {out}")
    return 0
