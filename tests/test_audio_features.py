"""Audio features: mel bins land where the tone is, rows line up with video frames, T is exact,
transformer encoders load from a local folder, and bad speech is refused."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emodiff.data.audio_features import (AUDIO_FEATURES, N_MELS, audio_feature_dim, check_speech,
                                         extract_audio_features, get_audio_encoder)
from emodiff.data.media import SAMPLE_RATE, load_audio
from emodiff.errors import EmodiffError


def tone(freq: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * SAMPLE_RATE))) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def slaney_centres(n_mels: int = N_MELS, fmax: float = 8000.0) -> np.ndarray:
    """Centre frequencies of the mel bins, from the published Slaney scale (linear to 1 kHz, then log)."""
    step = math.log(6.4) / 27
    to_mel = lambda f: f / (200 / 3) if f < 1000 else 15 + math.log(f / 1000) / step  # noqa: E731
    to_hz = lambda m: m * 200 / 3 if m < 15 else 1000 * math.exp((m - 15) * step)  # noqa: E731
    return np.array([to_hz(m) for m in np.linspace(0, to_mel(fmax), n_mels + 2)[1:-1]])


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3500.0])
def test_pure_tone_peaks_in_its_mel_bin(freq: float) -> None:
    feats = extract_audio_features(tone(freq, 1.0), fps=25)
    spectrum = feats.reshape(len(feats), -1, N_MELS)[2:-2].mean(axis=(0, 1))  # skip the zero-padded edges
    assert spectrum.argmax() == np.abs(slaney_centres() - freq).argmin()
    far = np.abs(slaney_centres() - freq) > freq / 2
    assert spectrum.max() - spectrum[far].max() > 5  # at least e^5 more power than an octave away


@pytest.mark.parametrize("fps, per_frame", [(25, 4), (30, 3), (50, 2), (12.5, 8)])
def test_rows_follow_video_frames(fps: float, per_frame: int) -> None:
    """A tone burst during video frames [20, 30) lights up exactly those rows."""
    n_frames = 40
    audio = np.random.default_rng(0).normal(0, 1e-3, int(n_frames / fps * SAMPLE_RATE)).astype(np.float32)
    start, stop = round(20 / fps * SAMPLE_RATE), round(30 / fps * SAMPLE_RATE)
    audio[start:stop] += tone(1000.0, (stop - start) / SAMPLE_RATE)
    feats = extract_audio_features(audio, fps=fps)
    assert feats.shape == (n_frames, per_frame * N_MELS) == (n_frames, audio_feature_dim("mel", fps))
    loud = feats.reshape(n_frames, per_frame, N_MELS).max(axis=(1, 2)) > feats.min() + 10
    assert loud[20:30].all()
    assert not loud[:19].any() and not loud[31:].any()  # one frame of slack for the 25 ms window


@pytest.mark.parametrize("seconds, fps", [(1.234, 25), (1.234, 30), (2.71, 24), (0.3, 29.97), (8.0, 25)])
def test_row_count_is_round_duration_times_fps(seconds: float, fps: float) -> None:
    audio = tone(440.0, seconds)
    assert len(extract_audio_features(audio, fps)) == round(len(audio) / SAMPLE_RATE * fps)


def test_real_speech_features(fixtures_dir: Path) -> None:
    speech = load_audio(fixtures_dir / "hdtf_katiehill_000.mp4")
    check_speech(speech)
    feats = extract_audio_features(speech, fps=25)
    assert feats.shape == (200, 320) and feats.dtype == np.float32 and np.isfinite(feats).all()
    assert feats.std(axis=0).min() > 0.1  # speech varies in every bin over time


def test_check_speech_refuses_silence_and_short_audio() -> None:
    check_speech(tone(200.0, 1.0))
    with pytest.raises(EmodiffError, match="silent"):
        check_speech(np.random.default_rng(0).normal(0, 1e-4, SAMPLE_RATE).astype(np.float32))
    with pytest.raises(EmodiffError, match="speech.wav lasts 0.100 s"):
        check_speech(tone(200.0, 0.1), source="speech.wav")
    with pytest.raises(EmodiffError, match="NaN"):
        check_speech(np.full(SAMPLE_RATE, np.nan, dtype=np.float32))
    with pytest.raises(EmodiffError, match="less than one frame"):
        extract_audio_features(tone(200.0, 0.01), fps=25)


def test_unknown_kind_lists_the_valid_ones() -> None:
    with pytest.raises(EmodiffError, match="mel, hubert, wav2vec2"):
        extract_audio_features(tone(200.0, 1.0), fps=25, kind="mfcc")
    assert set(AUDIO_FEATURES) == {"mel", "hubert", "wav2vec2"}


@pytest.fixture(scope="module", params=["hubert", "wav2vec2"])
def tiny_transformer(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A randomly initialised 1-layer, 16-wide model saved with save_pretrained (the offline path)."""
    import transformers

    kind = request.param
    config_class, model_class = {"hubert": ("HubertConfig", "HubertModel"),
                                 "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model")}[kind]
    config = getattr(transformers, config_class)(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp(kind)
    getattr(transformers, model_class)(config).save_pretrained(folder)
    return kind, folder


@pytest.mark.parametrize("seconds, fps", [(1.0, 25), (1.37, 30)])
def test_transformer_features_are_resampled_to_video_frames(tiny_transformer: tuple[str, Path],
                                                            seconds: float, fps: float) -> None:
    kind, folder = tiny_transformer
    audio = tone(220.0, seconds) + np.random.default_rng(1).normal(0, 0.05, int(seconds * SAMPLE_RATE)).astype(np.float32)
    feats = extract_audio_features(audio, fps, kind=kind, model=str(folder))
    n_frames = round(seconds * fps)
    assert feats.shape == (n_frames, 16) == (n_frames, audio_feature_dim(kind, fps, str(folder)))
    # The documented rule: row i interpolates the 50 Hz states (centred at 20 j + 12.5 ms) at (i + 1/2) / fps.
    encoder = get_audio_encoder(kind, str(folder))
    normalised = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
    with torch.no_grad():
        hidden = encoder.model(torch.from_numpy(normalised)[None]).last_hidden_state[0].numpy()
    centres_ms = (np.arange(n_frames) + 0.5) / fps * 1000
    state_ms = 20 * np.arange(len(hidden)) + 12.5
    expected = np.stack([np.interp(centres_ms, state_ms, hidden[:, d]) for d in range(16)], axis=1)
    np.testing.assert_allclose(feats, expected, atol=1e-4)


def test_missing_model_folder_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(EmodiffError, match="does not exist; download it on a connected machine with "
                                           "`huggingface-cli download"):
        extract_audio_features(tone(200.0, 1.0), fps=25, kind="hubert", model=str(tmp_path / "no_such_model"))
    with pytest.raises(EmodiffError, match="Mel audio features need no model"):
        extract_audio_features(tone(200.0, 1.0), fps=25, kind="mel", model=str(tmp_path))
