"""Ablations in the 16² world of the end-to-end test (tests/test_end_to_end.py): train its store, generator,
denoiser and readout with denoiser-config overrides, and print the happy projection at k = 0, 0.5, 1, the mouth r
and |G(neutral)| — the numbers the CI learning test asserts on.

    python scripts/ablate_tiny_world.py --out runs/ablate [--seed 0] [--set train.motion_noise_max=0 ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_end_to_end import measure, train_world  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs (must not exist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="denoiser config overrides")
    args = parser.parse_args()
    args.out.mkdir(parents=True)
    result = measure(*train_world(args.out, args.seed, tuple(args.set)), args.seed)
    print(json.dumps({"overrides": args.set, "seed": args.seed, **result}))


if __name__ == "__main__":
    main()
