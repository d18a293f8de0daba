"""The command line lists every command without importing them, and imports only the one it runs."""

from __future__ import annotations

import subprocess
import sys

from emodiff.cli import COMMANDS, TRAIN_STAGES


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_help_lists_every_command_without_importing_torch():
    result = run_python(
        "import sys\n"
        "from emodiff.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH LOADED' if 'torch' in sys.modules else 'NO TORCH')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("NO TORCH")
    assert all(name in result.stdout for name in COMMANDS)


def test_the_chosen_command_gets_its_arguments_and_help_lines_come_from_the_docstrings():
    result = run_python(
        "import sys\n"
        "from emodiff.cli import main\n"
        "try:\n    main(['train', 'readout', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('emodiff.train.')))")
    assert result.returncode == 0, result.stderr
    assert "--output-dir" in result.stdout and "--resume" in result.stdout
    assert "emodiff.train.readout" in result.stdout and "emodiff.train.denoiser" not in result.stdout
    train_help = run_python("from emodiff.cli import main\ntry:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n")
    assert all(stage in train_help.stdout for stage in TRAIN_STAGES)
    assert "Train the synthetic world's readout network" in train_help.stdout
