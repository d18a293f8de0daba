"""`emodiff ablate`: each table's rows are the variants it names, trained as those variants, scored on the same
requests with finite numbers."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from emodiff.experiments import ablations, synthetic_run
from emodiff.cli import main as cli_main
from emodiff.models.unet import DenoisingUNet, ReferenceAttention
from tests.test_synthetic_run import TINY

pytestmark = pytest.mark.slow  # a synthetic run, then every table's variants trained and scored


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished tiny synthetic run (2 training steps per stage) for the tables to reuse."""
    out = tmp_path_factory.mktemp("base")
    config = synthetic_run.run_config(synthetic_run.DEFAULT_CONFIG, None, TINY)
    OmegaConf.save(config, out / "synthetic_run.yaml")
    synthetic_run.train_all(config, out)
    return out


@pytest.fixture(autouse=True)
def smoke_finetune(monkeypatch):
    """The smoke budget with the shipped Table 3 protocol: denoisers fine-tuned from the run's own."""
    monkeypatch.setitem(ablations.BUDGETS, "smoke-finetune", dataclasses.replace(ablations.BUDGETS["smoke"],
                                                                                 fine_tune=True))


def _run(table, base, out, budget="smoke"):
    return cli_main(["ablate", table, "--base", str(base), "--out", str(out), "--report", str(out / "docs"),
                     "--budget", budget])


def _finite_rows(out, table, keys):
    rows = json.loads((out / f"{table}.json").read_text())["rows"]
    for row in rows.values():
        for key in keys:
            values = [row["generated"][key]] if "generated" in row else [row[key]]
            assert all(np.isfinite(v) for v in values), (table, key, row)
    return rows


def test_table2_and_table3_train_the_named_denoisers_and_score_the_same_requests(base, tmp_path):
    out = tmp_path / "ablations"
    assert _run("table3", base, out) == 0
    assert _run("table2", base, out) == 0
    rows3 = _finite_rows(out, "table3", ("emotion_accuracy", "flie", "intensity_l2", "beat_align", "mouth_pearson"))
    rows2 = _finite_rows(out, "table2", ("psnr", "ssim", "cpbd"))
    assert sorted(rows3) == sorted(v.label for v in ablations.TABLES["table3"])
    # each row is the model it names, not the same run under four labels
    for variant in ablations.TABLES["table3"]:
        unet = DenoisingUNet.from_pretrained(out / variant.folder / "unet")
        assert unet.config.expression_encoder == variant.overrides[0].split("=")[1]
    with_ref, without = (DenoisingUNet.from_pretrained(out / v.folder / "unet") for v in ablations.TABLES["table2"])
    assert any(isinstance(m, ReferenceAttention) for m in with_ref.modules())
    assert not any(isinstance(m, ReferenceAttention) for m in without.modules())
    with_label, without_label = (v.label for v in ablations.TABLES["table2"])
    assert rows2[without_label]["parameters"] < rows2[with_label]["parameters"]
    samples = {v.folder: np.load(out / v.folder / "samples.npz") for v in ablations.TABLES["table3"]}
    first = samples[ablations.INTERPOLATION.folder]
    for folder, data in samples.items():
        np.testing.assert_array_equal(data["truth0"], first["truth0"])  # the same requests …
        if folder != ablations.INTERPOLATION.folder:
            assert not np.array_equal(data["frames0"], first["frames0"])  # … answered by different models
    # Table 2 reuses Table 3's interpolation run (trained once) and both tables hold one row per variant
    assert rows2[ablations.INTERPOLATION.label]["generated"] == rows3[ablations.INTERPOLATION.label]["generated"]
    table3 = (out / "docs" / "table3.md").read_text()
    assert all(f"| {v.label} |" in table3 for v in ablations.TABLES["table3"]) and "| true render |" in table3
    assert "| w/o ReferenceNet |" in (out / "docs" / "table2.md").read_text()


def test_table3_finetune_budget_starts_every_variant_from_the_runs_denoiser(base, tmp_path, capsys):
    out = tmp_path / "ablations"
    assert _run("table3", base, out, "smoke-finetune") == 0
    # the copy itself is tested in test_train_denoiser (the tiny base here is too close to its initialisation)
    assert capsys.readouterr().out.count(f"started from {base / 'denoiser'}: ") == len(ablations.TABLES["table3"])
    for variant in ablations.TABLES["table3"]:
        init = OmegaConf.load(out / variant.folder / "config.yaml").init
        assert init.weights == str(base / "denoiser") and list(init.fresh) == ["expression_embedding"]
    assert "freshly initialised expression encoder" in (out / "docs" / "table3.md").read_text()
    # finished variants are reused, so another budget in the same folder is refused, not mixed in
    assert _run("table3", base, out, "smoke") != 0
    assert "another --out" in capsys.readouterr().err
    assert _run("table2", base, tmp_path / "other", "smoke-finetune") != 0
    assert "table3 only" in capsys.readouterr().err


def test_table4_trains_the_four_discriminator_setups(base, tmp_path):
    out = tmp_path / "ablations"
    assert _run("table4", base, out) == 0
    rows = _finite_rows(out, "table4", ("emotion_accuracy", "flie", "embedding_gap"))
    assert all(row["lie"] is None for row in rows.values())  # no LPIPS weights given
    settings = [(c.model.global_discriminator.temporal, c.model.use_local_discriminator)
                for c in (OmegaConf.load(out / v.folder / "config.yaml") for v in ablations.TABLES["table4"])]
    assert settings == [("tcn", True), ("tcn", False), ("conv", True), ("conv", False)]
    d_global = {}
    for variant, (temporal, local) in zip(ablations.TABLES["table4"], settings):
        checkpoint = out / variant.folder / "checkpoints" / "checkpoint-2"
        models = sorted(p.name for p in checkpoint.glob("model*.safetensors"))  # G, D_g and D_l where it exists
        assert models == ["model.safetensors", "model_1.safetensors", *(["model_2.safetensors"] if local else [])]
        d_global.setdefault(temporal, set(load_file(checkpoint / "model_1.safetensors")))
    assert d_global["tcn"] != d_global["conv"]
    generators = [load_file(out / v.folder / "generator" / "diffusion_pytorch_model.safetensors")
                  for v in ablations.TABLES["table4"]]
    assert all(not torch.equal(g["out.weight"], generators[0]["out.weight"]) for g in generators[1:])
    assert (out / "docs" / "table4_embedding.png").stat().st_size > 5000
