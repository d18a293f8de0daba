"""The app's logic without a browser (`emodiff.sample_form`): form rows → specs, the live preview with the command
line's sentences, examples and the photo warning, and a job whose video the shown `emodiff sample` command remakes;
the page's handlers (`emodiff.app.Handlers`) called as plain methods; and the app served in-process, whose one API
endpoint makes the README's video through gradio_client."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from emodiff.cli import main as cli_main
from emodiff.control import ScheduleOptions
from emodiff.data.media import SAMPLE_RATE, load_audio, probe, read_video
from emodiff.data.store import write_wav
from emodiff.data.synthetic import SyntheticWorld, render_origin, save_render
from emodiff.errors import EmodiffError
from emodiff.pipeline import EmoDiffPipeline
from emodiff.sample import OUTPUT, SampleRequest
from emodiff.sample_form import (ARCHIVE, COMMAND, SHEET, Cancellations, SampleJob, face_warning, intensity_spec,
                                 preview_schedule, timeline_spec, write_examples)
from tests.browser import free_port
from tests.conftest import write_tiny_pipeline

FPS = 25
README = Path(__file__).resolve().parents[1] / "README.md"
WORLD = {"seed": 2, "size": 32, "fps": FPS, "held_out_identities": ["syn007"]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_pipeline(tmp_path_factory.mktemp("app") / "pipeline", size=16, fps=FPS, world=WORLD)


@pytest.fixture(scope="module")
def pipeline(checkpoint) -> EmoDiffPipeline:
    return EmoDiffPipeline.from_pretrained(checkpoint)


@pytest.fixture(scope="module")
def inputs(checkpoint, tmp_path_factory) -> dict[str, Path]:
    """The example faces and speech, 0.4 s of speech and a silent second."""
    root = tmp_path_factory.mktemp("inputs")
    faces, speech = write_examples(checkpoint, root / "examples")
    short = root / "speech_0.4s.wav"
    write_wav(short, load_audio(speech[1])[: int(0.4 * SAMPLE_RATE)])
    silent = root / "silent.wav"
    write_wav(silent, np.zeros(SAMPLE_RATE, np.float32))
    return {"face": faces[0], "speech": speech[1], "short": short, "silent": silent, "faces": faces}


def cli_error(argv: list[str], capsys) -> str:
    """The sentence `emodiff ARGV` prints for a refused input."""
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("emodiff: error: ") and err.count("\n") == 1
    return err.removeprefix("emodiff: error: ").strip()


def test_rows_become_the_command_line_specs_and_blank_rows_are_skipped():
    assert timeline_spec([["happy", 0], [" surprised ", 2.0], ["", None], [None, float("nan")]]) == "happy@0,surprised@2"
    assert intensity_spec("key frames", 0.5, [[0, 0.2], [1.5, 0.9], [None, None]]) == "0:0.2,1.5:0.9"
    assert intensity_spec("constant", 0.75, None) == "0.75"
    assert intensity_spec("from the voice", 0.5, None) == "audio"
    with pytest.raises(EmodiffError, match="timeline is empty"):
        timeline_spec([["", None]])
    with pytest.raises(EmodiffError, match="key frames are empty"):
        intensity_spec("key frames", 0.5, [])


def test_preview_draws_the_schedule_over_the_speech_and_shows_the_cli_sentence_next_to_each_field(
        pipeline, inputs, tmp_path, capsys):
    options = ScheduleOptions(crossfade=0.2)
    good = preview_schedule(pipeline, str(inputs["short"]), [["happy", 0], ["sad", 0.2]], "key frames", 0.5,
                            [[0, 0.1], [0.4, 0.9]], options, tmp_path / "good.png")
    assert good.plot == tmp_path / "good.png" and Image.open(good.plot).size[0] > 300
    assert (good.speech_error, good.emotion_error, good.intensity_error) == (None, None, None)
    assert "0.40 s of the speech" in good.length

    bad_emotion = preview_schedule(pipeline, str(inputs["short"]), [["hapy", 0]], "key frames", 0.5,
                                   [[0, 0.1], [0.4, 0.9]], options, tmp_path / "bad_emotion.png")
    assert bad_emotion.emotion_error == cli_error(
        ["schedule", "--intensity", "0.5", "--emotion", "hapy@0", "--audio", str(inputs["short"])], capsys)
    assert bad_emotion.plot is not None and bad_emotion.intensity_error is None  # k is still drawn

    late_key = preview_schedule(pipeline, str(inputs["short"]), [["happy", 0]], "key frames", 0.5,
                                [[0, 0.1], [2, 0.9]], options, tmp_path / "late_key.png")
    assert "beyond the audio, which lasts 0.40 s" in late_key.intensity_error
    assert late_key.intensity_error == cli_error(
        ["schedule", "--intensity", "0:0.1,2:0.9", "--audio", str(inputs["short"])], capsys)
    assert late_key.plot is None and not (tmp_path / "late_key.png").exists()

    out_of_range = preview_schedule(pipeline, None, [["happy", 0]], "constant", 1.5, None, options, tmp_path / "k.png")
    assert out_of_range.intensity_error == cli_error(["schedule", "--intensity", "1.5", "--duration", "4"], capsys)

    silent = preview_schedule(pipeline, str(inputs["silent"]), [["happy", 0]], "constant", 0.5, None, options,
                              tmp_path / "silent.png")
    assert "is silent" in silent.speech_error and "until speech is given" in silent.length

    no_predictor = preview_schedule(pipeline, str(inputs["short"]), [["happy", 0]], "from the voice", 0.5, None,
                                    options, tmp_path / "voice.png")
    assert "trained intensity predictor" in no_predictor.intensity_error
    no_speech = preview_schedule(pipeline, None, [["happy", 0]], "from the voice", 0.5, None, options,
                                 tmp_path / "voice2.png")
    assert no_speech.intensity_error == "An intensity from the voice needs speech; give it above."


def test_examples_are_unseen_faces_of_the_pipelines_world_and_only_other_images_get_the_photo_warning(
        checkpoint, inputs, tmp_path):
    faces = inputs["faces"]
    assert [render_origin(face)["identity"] for face in faces] == [7, 1000, 1001, 1002]  # held out, then unseen
    assert all(render_origin(face)["seed"] == WORLD["seed"] for face in faces)
    assert face_warning(checkpoint, str(faces[0])) is None
    touched = np.array(Image.open(faces[0]))
    touched[0, 0] ^= 1  # one pixel off: no longer the world's render
    Image.fromarray(touched).save(tmp_path / "touched.png")
    warning = face_warning(checkpoint, str(tmp_path / "touched.png"))
    assert "trained only on the cartoon faces of the synthetic world" in warning and warning.count(". ") == 0
    assert "touched.png" in warning and "emodiff demo" in warning

    real_world_pipeline = write_tiny_pipeline(tmp_path / "real", size=16, fps=FPS)
    assert write_examples(real_world_pipeline, tmp_path / "none") == ([], [])
    assert face_warning(real_world_pipeline, str(tmp_path / "touched.png")) is None


def request_for(inputs: dict[str, Path], **overrides) -> SampleRequest:
    settings = dict(face=inputs["face"], speech=inputs["short"], emotion="happy@0,sad@0.2", intensity="0:0.1,0.4:0.9",
                    options=ScheduleOptions(interpolation="smooth", crossfade=0.2), steps=2, cfg_exp=1.5, seed=4)
    settings.update(overrides)
    return SampleRequest(**settings)


def test_a_job_writes_video_plot_sheet_and_zip_and_its_command_remakes_the_same_video(
        pipeline, checkpoint, inputs, tmp_path, monkeypatch):
    request = request_for(inputs)
    job = SampleJob(pipeline, checkpoint, request, tmp_path / "job")
    assert job.n_frames == 10 and job.warning is None
    assert [done for done in job.run()] == list(range(1, 11))  # per-frame progress
    info = probe(job.paths["video"])
    assert info.has_audio and abs(info.duration - 0.4) < 0.05
    app_frames = np.stack(list(read_video(job.paths["video"], FPS)))
    assert len(app_frames) == 10
    for name in ("schedule", "sheet"):
        assert Image.open(job.paths[name]).size[0] > 300
    command = job.paths["command"].read_text().splitlines()[-1]
    assert command == job.command and command.startswith("emodiff sample --checkpoint ")
    assert "--emotion happy@0,sad@0.2" in command and "--interpolation smooth" in command and "--seed 4" in command
    with zipfile.ZipFile(job.paths["archive"]) as archive:
        assert sorted(archive.namelist()) == sorted(["identity.png", "speech.wav", OUTPUT, "talking_head.intensity.png",
                                                     SHEET, COMMAND])
        archive.extractall(tmp_path / "download")
    (tmp_path / "download" / OUTPUT).unlink()
    monkeypatch.chdir(tmp_path / "download")
    assert cli_main(shlex.split(command)[1:] + ["--no-progress"]) == 0
    np.testing.assert_array_equal(np.stack(list(read_video(OUTPUT, FPS))), app_frames)
    assert ARCHIVE not in command


def test_a_cancelled_job_leaves_no_video_and_bad_inputs_stop_before_sampling(pipeline, checkpoint, inputs, tmp_path):
    job = SampleJob(pipeline, checkpoint, request_for(inputs), tmp_path / "cancelled")
    frames = job.run()
    assert next(frames) == 1 and next(frames) == 2
    frames.close()
    assert sorted(p.name for p in (tmp_path / "cancelled").iterdir()) == ["identity.png", "speech.wav"]

    with pytest.raises(EmodiffError, match="is silent"):
        SampleJob(pipeline, checkpoint, request_for(inputs, speech=inputs["silent"]), tmp_path / "silent")
    with pytest.raises(EmodiffError, match="beyond the audio"):
        SampleJob(pipeline, checkpoint, request_for(inputs, intensity="0:0,3:1"), tmp_path / "late")
    with pytest.raises(EmodiffError, match="no longer on the server"):
        SampleJob(pipeline, checkpoint, request_for(inputs, face=tmp_path / "gone.png"), tmp_path / "gone")


def test_a_render_is_used_as_the_aligned_crop_and_a_photo_gets_the_warning(pipeline, checkpoint, inputs, tmp_path):
    job = SampleJob(pipeline, checkpoint, request_for(inputs), tmp_path / "render")
    resized = Image.open(inputs["face"]).resize((16, 16), Image.BILINEAR)
    crop = (job.video.identity.permute(1, 2, 0).numpy() + 1) * 127.5
    assert np.abs(crop - np.asarray(resized, dtype=np.float32)).mean() < 12  # the whole render, not a re-crop

    world = SyntheticWorld(0, 256)
    photo = tmp_path / "photo.png"
    Image.fromarray(world.portrait(3)).save(photo)  # a face mediapipe finds, without the render tag
    job = SampleJob(pipeline, checkpoint, request_for(inputs, face=photo), tmp_path / "photo")
    assert "photo.png, which is not one of its renders" in job.warning


def test_cancel_marks_only_a_session_with_a_request_and_a_new_request_starts_uncancelled():
    cancellations = Cancellations()
    assert not cancellations.cancel("idle")  # nothing to cancel: the page keeps its status
    cancellations.submitted("a")
    cancellations.submitted("b")
    assert cancellations.cancel("a") and cancellations.is_cancelled("a") and not cancellations.is_cancelled("b")
    cancellations.submitted("a")  # the next request of the same page
    assert not cancellations.is_cancelled("a")
    cancellations.finished("a")
    assert not cancellations.cancel("a")


def test_app_command_without_gradio_or_with_a_bad_concurrency_is_one_sentence(monkeypatch, capsys):
    assert cli_error(["app", "--concurrency", "0"], capsys) == "--concurrency must be at least 1, not 0."
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    monkeypatch.delitem(sys.modules, "emodiff.app", raising=False)  # imported afresh, as by the command
    assert "pip install -e \".[app]\"" in cli_error(["app"], capsys)


def test_saved_renders_are_recognised_and_copies_that_lost_the_tag_are_not(tmp_path):
    world = SyntheticWorld(5, 48)
    path = save_render(tmp_path / "face.png", world, 12)
    assert render_origin(path) == {"seed": 5, "size": 48, "identity": 12}
    Image.open(path).save(tmp_path / "copy.png")  # re-saved: same pixels, no tag
    assert render_origin(tmp_path / "copy.png") is None
    Image.open(path).convert("RGB").save(tmp_path / "face.jpg")
    assert render_origin(tmp_path / "face.jpg") is None


def test_the_form_logic_does_not_import_gradio_and_the_page_does_not_import_torchvision(checkpoint, tmp_path):
    code = "import sys, emodiff.sample_form; print('gradio' in sys.modules, 'torchvision' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["False", "False"], result.stderr
    pytest.importorskip("gradio")
    code = ("import sys; from pathlib import Path; from emodiff.app import build_app; "
            "from emodiff.pipeline import EmoDiffPipeline; "
            f"page = build_app(EmoDiffPipeline.from_pretrained({str(checkpoint)!r}), Path({str(checkpoint)!r}), "
            f"Path({str(tmp_path)!r})); print(type(page).__name__, 'torchvision' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["Blocks", "False"], result.stderr
    assert len(list((tmp_path / "examples").glob("face_syn*.png"))) == 4


def form_values(inputs: dict[str, Path], **overrides) -> dict[str, object]:
    """`Handlers.make_video`'s arguments for 0.4 s of speech at 2 steps (the page's own values elsewhere)."""
    values = dict(face=str(inputs["face"]), speech=str(inputs["short"]), emotion_timeline=[["happy", 0], ["sad", 0.2]],
                  crossfade=0.2, intensity_mode="key frames", constant_k=0.8, keyframes=[[0, 0.1], [0.4, 0.9]],
                  interpolation="linear", voice_scale=1.0, voice_clip_low=0.0, voice_clip_high=1.0,
                  voice_smoothing_frames=5, sampler="ddim", steps=2, cfg_audio=None, cfg_exp=None, seed=4)
    values.update(overrides)
    return values


def gr_skip() -> dict:
    import gradio

    return gradio.skip()


@pytest.fixture(scope="module")
def handlers(pipeline, checkpoint, tmp_path_factory):
    pytest.importorskip("gradio")
    from emodiff.app import Defaults, Handlers

    return Handlers(pipeline, checkpoint, tmp_path_factory.mktemp("work"), Defaults.of(pipeline))


def test_handlers_take_the_form_values_and_return_the_outputs_without_a_browser(handlers, inputs):
    preview_values = {key: value for key, value in form_values(inputs).items()
                      if key not in ("face", "sampler", "steps", "cfg_audio", "cfg_exp", "seed")}
    plot, speech_note, emotion_note, intensity_note = handlers.preview(**preview_values)
    assert plot["label"] == "Schedule over the 0.40 s of the speech" and Path(plot["value"]).is_file()
    assert (speech_note, emotion_note, intensity_note) == ("", "", "")
    _, _, emotion_note, _ = handlers.preview(**{**preview_values, "emotion_timeline": [["hapy", 0]]})
    assert emotion_note.startswith("⚠️ ") and "hapy" in emotion_note
    assert [update["visible"] for update in handlers.intensity_fields("from the voice")] == [False, False, False, True]
    assert handlers.face_note(str(inputs["face"])) == ""

    session = SimpleNamespace(session_hash="user")
    outputs = list(handlers.make_video(**form_values(inputs), request=session))
    assert outputs[0][0] == "Sampling 10 frames…" and outputs[0][1:5] == (None,) * 4
    status, video, schedule, sheet, archive, command = outputs[-1]
    assert status == "Done: 10 frames at 25 fps." and len(list(read_video(video, FPS))) == 10
    assert all(Path(path).is_file() for path in (schedule, sheet, archive)) and "--steps 2 --cfg-audio" in command

    (refused,) = handlers.make_video(**form_values(inputs, face=None), request=session)
    assert refused[0].startswith("⚠️ Give a face") and refused[1:] == (gr_skip(),) * 5

    assert handlers.cancel(session) == gr_skip()  # nothing to cancel: the status stays
    assert handlers.submit(session) == "In the queue…"
    frames = handlers.make_video(**form_values(inputs), request=session)
    assert next(frames)[0] == "Sampling 10 frames…"
    assert handlers.cancel(session) == "Cancelling after the current frame…"
    assert next(frames)[0] == "Cancelled after frame 1 of 10; no video was written."
    assert next(frames, None) is None


@pytest.fixture(scope="module")
def served(pipeline, checkpoint, tmp_path_factory):
    """The app served in-process on a free port, as `emodiff app` serves it; yields its URL."""
    pytest.importorskip("gradio")
    from emodiff.app import build_app

    work_dir = tmp_path_factory.mktemp("served")
    page = build_app(pipeline, checkpoint, work_dir)
    port = free_port()
    page.launch(server_name="127.0.0.1", server_port=port, ssr_mode=False, allowed_paths=[str(work_dir)], quiet=True,
                prevent_thread_lock=True)
    yield f"http://127.0.0.1:{port}/"
    page.close()


def test_the_api_is_one_endpoint_and_the_readme_example_makes_a_video_with_it(served, inputs, tmp_path, monkeypatch):
    from gradio_client import Client

    api = Client(served, verbose=False).view_api(return_format="dict", print_info=False)
    assert list(api["named_endpoints"]) == ["/make_video"] and not api["unnamed_endpoints"]
    parameters = [parameter["parameter_name"] for parameter in api["named_endpoints"]["/make_video"]["parameters"]]
    assert parameters == list(form_values(inputs))

    example = re.search(r"```python\n(from gradio_client import .*?)```", README.read_text(), re.DOTALL).group(1)
    assert 'Client("http://127.0.0.1:7860/")' in example
    shutil.copyfile(inputs["face"], tmp_path / "face.png")
    shutil.copyfile(inputs["short"], tmp_path / "speech.wav")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(example.replace("http://127.0.0.1:7860/", served), namespace)  # the README's code, against this server
    assert namespace["status"] == "Done: 10 frames at 25 fps."
    assert len(list(read_video(namespace["video"], FPS))) == 10 and probe(namespace["video"]).has_audio
    assert namespace["command"].startswith("emodiff sample --checkpoint ") and "--seed 4" in namespace["command"]
