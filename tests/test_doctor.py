"""`emodiff doctor` reports versions, device, optional backends and weight files, and exits 0."""

from __future__ import annotations

from emodiff.cli import main


def test_doctor_reports_everything(tmp_path, capsys, monkeypatch):
    sr = tmp_path / "RealESRGAN_x4plus.pth"
    sr.write_bytes(b"x")
    monkeypatch.setenv("EMODIFF_FLAME_MODEL", str(tmp_path / "absent_generic_model.pkl"))
    monkeypatch.delenv("EMODIFF_DECA_MODEL", raising=False)
    assert main(["doctor", "--sr-weights", str(sr)]) == 0
    out = capsys.readouterr().out
    for name in ("python", "torch", "diffusers", "accelerate", "transformers", "av", "mediapipe", "numpy",
                 "device", "face-alignment", "xformers", "pytorch3d", "basicsr"):
        assert name in out
    assert f"found {sr}" in out
    assert "MISSING" in out and "absent_generic_model.pkl" in out and "flame.is.tue.mpg.de" in out
    assert "deca_model      not set" in out
    assert "cpu" in out or "cuda" in out or "mps" in out
