"""Stage configs: found in a source checkout and from an installed wheel; unknown override keys refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emodiff.cli import main
from emodiff.errors import EmodiffError
from emodiff.train.common import CONFIG_DIR, load_config, merge_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_source_checkout_reads_the_top_level_configs():
    assert CONFIG_DIR == ROOT / "configs"


def test_wheel_layout_finds_the_configs_inside_the_package(tmp_path):
    """pyproject.toml installs configs/ as emodiff/_configs; a copy of the package so laid out, away from any
    checkout, finds them there."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "emodiff", site / "emodiff", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    shutil.copytree(ROOT / "configs", site / "emodiff" / "_configs")
    code = "import emodiff.train.common as c; print(c.__file__); print(c.CONFIG_DIR)"
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(site)}, cwd=tmp_path,
                            capture_output=True, text=True, check=True)
    module, config_dir = result.stdout.split()
    assert Path(module).is_relative_to(site)
    assert Path(config_dir) == site / "emodiff" / "_configs"
    assert load_config(Path(config_dir) / "expression_gan.yaml") == load_config(CONFIG_DIR / "expression_gan.yaml")


def test_every_package_is_listed_for_the_wheel():
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("emodiff", "third_party")
             for p in (ROOT / top).rglob("__init__.py")}
    assert set(setuptools["packages"]) == found | {"emodiff._configs"}
    assert setuptools["package-dir"] == {"emodiff._configs": "configs"}
    assert "*.yaml" in setuptools["package-data"]["emodiff._configs"]


def test_unknown_override_key_is_refused_naming_the_valid_ones(capsys):
    with pytest.raises(EmodiffError, match=r"^Unknown config key 'train\.bach_size'; valid keys in train: "
                                           r"batch_size, generator_lr, .*, log_every\.$"):
        load_config(CONFIG_DIR / "expression_gan.yaml", ["train.bach_size=4"])
    with pytest.raises(EmodiffError, match=r"^Unknown config key 'trian'; valid keys at the top level: output_dir, "):
        load_config(CONFIG_DIR / "expression_gan.yaml", ["trian.batch_size=4"])
    assert main(["train", "expression", "--store", "nowhere", "--set", "model.generator.hiden=4"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Unknown config key 'model.generator.hiden'; valid keys in model.generator: " \
                                   "emotion_dim, noise_dim, hidden, n_layers." in err


def test_known_keys_override_and_the_result_stays_open():
    config = load_config(CONFIG_DIR / "expression_gan.yaml", ["train.batch_size=4", "data.store=s"])
    assert (config.train.batch_size, config.data.store) == (4, "s")
    config.profile = "added by code"  # configs stay extensible by the code that loads them
    assert merge_overrides(config, {"train": {"max_steps": 3}}).train.max_steps == 3
    with pytest.raises(EmodiffError, match="^Unknown config key 'train.max_step'"):
        merge_overrides(config, {"train": {"max_step": 3}})


def test_a_config_can_be_overrides_of_a_base(tmp_path):
    """denoiser_tiny.yaml holds only what differs from denoiser_base.yaml; loaded, it has every key of the base."""
    tiny, base = load_config(CONFIG_DIR / "denoiser_tiny.yaml"), load_config(CONFIG_DIR / "denoiser_base.yaml")
    assert list(tiny) == list(base) and all(list(tiny[key]) == list(base[key]) for key in base if key in ("data", "train"))
    assert (tiny.data.resolution, tiny.unet.base_channels, tiny.data.window) == (16, 16, base.data.window)
    (tmp_path / "misspelt.yaml").write_text(f"base: {CONFIG_DIR / 'denoiser_base.yaml'}\ntrain: {{max_step: 3}}\n")
    with pytest.raises(EmodiffError, match="^Unknown config key 'train.max_step'; valid keys in train: "):
        load_config(tmp_path / "misspelt.yaml")
