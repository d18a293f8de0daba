"""Frame-aligned audio features a^(0..N), one row per video frame (paper §3.2 "Audio Conditioning").

`extract_audio_features(audio16k, fps, kind)` (docs/design.md §4.1) turns 16 kHz mono speech into a (T, F)
float32 array with exactly T = round(duration × fps) rows, duration = len(audio16k) / 16 000:

- `mel` (default, no weights): log-mel spectrogram, 80 bins, 25 ms Hann window, 10 ms hop (100 Hz),
  computed with `torch.stft` and our own Slaney-style filterbank (the mel scale that is linear
  below 1 kHz and logarithmic above, each triangle normalised to unit area; librosa's default).
  Video frame i gets the k = round(100 / fps) mel frames starting at round(i × 100 / fps)
  (4 at 25 fps, 3 at 30 fps), flattened frame-major: F = 80 k. Mel frame j is centred at
  j × 10 ms (the signal is zero-padded by half a window at both ends); rows past the last mel frame
  repeat it.
- `hubert` / `wav2vec2`: the last hidden states of a `transformers` HubertModel / Wav2Vec2Model
  (50 Hz, F = hidden_size), from a local directory or a hub id. Hidden state j has its receptive
  field centred at 20 j + 12.5 ms; row i is the linear interpolation at the video frame's centre
  (i + ½) / fps, clamped to the first/last state at the ends.

`check_speech(audio)` rejects silent or too-short speech before sampling.
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from emodiff.data.media import SAMPLE_RATE
from emodiff.errors import EmodiffError

N_MELS = 80
MEL_HOP = SAMPLE_RATE // 100  # 10 ms
MEL_WINDOW = SAMPLE_RATE * 25 // 1000  # 25 ms
MEL_N_FFT = 512
LOG_FLOOR = 1e-10  # log(max(mel power, LOG_FLOOR)): digital silence maps to about -23
SILENCE_RMS = 1e-3  # -60 dBFS: quieter speech is treated as silence
MIN_SPEECH_SECONDS = 0.2  # five frames at 25 fps


def n_video_frames(n_samples: int, fps: float) -> int:
    """T = round(duration × fps), the number of video frames a 16 kHz signal spans."""
    return round(n_samples / SAMPLE_RATE * fps)


def check_speech(audio: np.ndarray, source: str = "The audio") -> None:
    """Raise `EmodiffError` if 16 kHz `audio` is shorter than MIN_SPEECH_SECONDS, not finite, or silent
    (RMS below SILENCE_RMS, i.e. -60 dBFS)."""
    audio = np.asarray(audio, dtype=np.float32)
    seconds = len(audio) / SAMPLE_RATE
    if seconds < MIN_SPEECH_SECONDS:
        raise EmodiffError(f"{source} lasts {seconds:.3f} s; speech needs at least {MIN_SPEECH_SECONDS} s.")
    if not np.isfinite(audio).all():
        raise EmodiffError(f"{source} contains NaN or infinite samples.")
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise EmodiffError(f"{source} is silent (RMS {rms:.1e} is below {SILENCE_RMS:g}); give a recording with speech.")


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: 3 mels per 200 Hz up to 1 kHz (= 15 mels), then 27 mels per factor 6.4."""
    hz = np.asarray(hz, dtype=np.float64)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * 27.0 / math.log(6.4)
    return np.where(hz < 1000.0, hz * 3.0 / 200.0, log_part)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp((mel - 15.0) * math.log(6.4) / 27.0))


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = MEL_N_FFT, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters evenly spaced on the Slaney mel scale from 0 Hz to
    Nyquist, each scaled by 2 / (its bandwidth in Hz) so it has unit area."""
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), n_mels + 2))
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (upper - lower))
    return torch.from_numpy(weights.astype(np.float32))


class AudioEncoder(Protocol):
    """One kind of audio feature: `dim(fps)` columns and `__call__(audio16k, fps) -> (T, dim)`."""

    def dim(self, fps: float) -> int: ...

    def __call__(self, audio16k: np.ndarray, fps: float) -> np.ndarray: ...


class MelFeatures:
    """Stacked log-mel frames, k = round(100 / fps) per video frame (module docstring)."""

    def __init__(self, model: str | None = None):
        if model is not None:
            raise EmodiffError("Mel audio features need no model; drop the model argument or choose hubert/wav2vec2.")
        self.filterbank = mel_filterbank()
        self.window = torch.hann_window(MEL_WINDOW)

    @staticmethod
    def frames_per_video_frame(fps: float) -> int:
        return max(1, round(100 / fps))

    def dim(self, fps: float) -> int:
        return N_MELS * self.frames_per_video_frame(fps)

    def log_mel(self, audio16k: np.ndarray) -> torch.Tensor:
        """(1 + len // 160, 80) log mel power, frame j centred at j × 10 ms."""
        spectrum = torch.stft(torch.as_tensor(audio16k, dtype=torch.float32), MEL_N_FFT, MEL_HOP, MEL_WINDOW,
                              self.window, center=True, pad_mode="constant", return_complex=True)
        power = spectrum.abs().square()
        return torch.log((self.filterbank @ power).clamp_min(LOG_FLOOR)).T

    def __call__(self, audio16k: np.ndarray, fps: float) -> np.ndarray:
        n_frames = n_video_frames(len(audio16k), fps)
        mel = self.log_mel(audio16k)
        k = self.frames_per_video_frame(fps)
        starts = torch.round(torch.arange(n_frames, dtype=torch.float64) * 100 / fps).long()
        rows = (starts[:, None] + torch.arange(k)).clamp_max(len(mel) - 1)
        return mel[rows].reshape(n_frames, k * N_MELS).numpy()


TRANSFORMER_MODELS = {  # kind: (transformers class, default hub id)
    "hubert": ("HubertModel", "facebook/hubert-large-ls960-ft"),
    "wav2vec2": ("Wav2Vec2Model", "facebook/wav2vec2-base-960h"),
}
HIDDEN_RATE = 50  # Hz: the convolutional front end strides 320 samples at 16 kHz
HIDDEN_CENTRE_S = 0.0125  # receptive field of state 0 is samples [0, 400): centre 12.5 ms


class TransformerFeatures:
    """Last hidden states of a HuBERT / wav2vec 2.0 model, linearly resampled to the video rate."""

    def __init__(self, kind: str, model: str | None = None):
        import transformers

        class_name, default = TRANSFORMER_MODELS[kind]
        name = model or default
        how_to_get = (f"download it on a connected machine with `huggingface-cli download {name} --local-dir DIR` "
                      f"and pass that folder as the model")
        folder = Path(name).expanduser()
        if not folder.is_dir() and (folder.is_absolute() or name.startswith((".", "~"))):
            raise EmodiffError(f"The {kind} model folder {name} does not exist; {how_to_get}.")
        location = str(folder) if folder.is_dir() else name  # otherwise a hub id
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.model = getattr(transformers, class_name).from_pretrained(location).eval().to(self.device)
        except (OSError, ValueError) as err:
            raise EmodiffError(f"Cannot load the {kind} model {name} ({type(err).__name__}); {how_to_get}.") from None
        try:
            self.normalise = transformers.Wav2Vec2FeatureExtractor.from_pretrained(location).do_normalize
        except OSError:  # no preprocessor_config.json: both model families expect normalised input
            self.normalise = True

    def dim(self, fps: float) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, audio16k: np.ndarray, fps: float) -> np.ndarray:
        audio = torch.as_tensor(audio16k, dtype=torch.float32)
        if self.normalise:
            audio = (audio - audio.mean()) / torch.sqrt(audio.var(correction=0) + 1e-7)
        hidden = self.model(audio[None].to(self.device)).last_hidden_state[0].float().cpu()
        n_frames = n_video_frames(len(audio16k), fps)
        centres = (torch.arange(n_frames, dtype=torch.float64) + 0.5) / fps
        position = ((centres - HIDDEN_CENTRE_S) * HIDDEN_RATE).clamp(0, len(hidden) - 1)
        below = position.floor().long()
        above = (below + 1).clamp_max(len(hidden) - 1)
        weight = (position - below).float()[:, None]
        return ((1 - weight) * hidden[below] + weight * hidden[above]).numpy()


AUDIO_FEATURES: dict[str, Callable[..., AudioEncoder]] = {
    "mel": MelFeatures,
    "hubert": partial(TransformerFeatures, "hubert"),
    "wav2vec2": partial(TransformerFeatures, "wav2vec2"),
}


@lru_cache(maxsize=4)
def get_audio_encoder(kind: str = "mel", model: str | None = None) -> AudioEncoder:
    """The (cached) encoder for `kind`; `model` is a local folder or hub id for hubert / wav2vec2
    (these run on the GPU when there is one)."""
    if kind not in AUDIO_FEATURES:
        raise EmodiffError(f"Unknown audio feature kind {kind!r}; choose one of {', '.join(AUDIO_FEATURES)}.")
    return AUDIO_FEATURES[kind](model=model)


def audio_feature_dim(kind: str = "mel", fps: float = 25.0, model: str | None = None) -> int:
    """F, the number of columns `extract_audio_features` returns for this kind, rate and model."""
    return get_audio_encoder(kind, model).dim(fps)


def extract_audio_features(audio16k: np.ndarray, fps: float, kind: str = "mel", model: str | None = None) -> np.ndarray:
    """(T, F) float32 features for 16 kHz mono audio, T = round(len(audio16k) / 16000 × fps) exactly."""
    audio16k = np.asarray(audio16k, dtype=np.float32).reshape(-1)
    if n_video_frames(len(audio16k), fps) < 1:
        raise EmodiffError(f"The audio lasts {len(audio16k) / SAMPLE_RATE:.3f} s, less than one frame at {fps:g} fps.")
    return get_audio_encoder(kind, model)(audio16k, fps).astype(np.float32, copy=False)
