"""The browser app of `emodiff app` (described in emodiff/cli/app.py): a thin Gradio layer over `emodiff.sample_form`.

The page is three parts (docs/design.md §5.4): `layout` builds the components and returns them as a `Page`,
`Handlers` are the events' functions (form values in, outputs out, testable without a browser), and `build_app`
wires them together. Every event is private to the page but one: `/make_video`, the documented API endpoint that
makes one video from the form's values (README, "The browser app"). `serve` loads the pipeline, builds the page and
serves it until Ctrl+C or SIGTERM; requests are queued, N at a time, and the work folder (examples, previews and
jobs) is removed at exit.
"""

import atexit
import os
import shutil
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from emodiff import demo
from emodiff.control import ScheduleOptions
from emodiff.control.intensity import parse_keyframes
from emodiff.data.labels import EMOTIONS
from emodiff.diffusion.schedulers import SAMPLERS
from emodiff.errors import EmodiffError
from emodiff.pipeline import EmoDiffPipeline
from emodiff.sample import SampleRequest
from emodiff.sample_form import (INTENSITY_MODES, Cancellations, SampleJob, face_warning, intensity_spec,
                                 preview_schedule, timeline_spec, write_examples)

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline server
try:
    import gradio as gr
except ImportError:
    raise EmodiffError("emodiff app needs Gradio; install the app extra: pip install -e \".[app]\".") from None

CSS = ("video, .image-frame img {image-rendering: pixelated;}"  # small frames are enlarged without blurring
       "#status {min-height: 4em;}")  # room for the queue position Gradio shows over the status line
STATUS_INTERVAL = 0.5  # seconds between status-line updates while sampling (the progress bar follows every frame)
PRIVATE = {"api_visibility": "private"}  # an event of the page, not of the API
Rows = Sequence[Sequence[object]] | None  # a table of the form (emotion timeline, key frames)


@dataclass(frozen=True)
class Defaults:
    """The form's first values and what a cleared number means: the pipeline's own steps and guidance (a distilled
    one's baked guidance) and sampler, `SampleRequest`'s seed, and the demo's schedule (`emodiff demo`)."""

    steps: int
    cfg_audio: float
    cfg_exp: float
    sampler: str
    seed: int = SampleRequest.seed

    @classmethod
    def of(cls, pipeline: EmoDiffPipeline) -> "Defaults":
        return cls(pipeline.default_steps, *pipeline.guidance_scales(None, None), pipeline.sampler)

    @staticmethod
    def timeline() -> list[list]:
        return [[name, float(start)] for name, start in (item.split("@") for item in demo.EMOTION.split(","))]

    @staticmethod
    def keyframes() -> list[list]:
        return [list(key) for key in parse_keyframes(demo.INTENSITY)]


@dataclass(frozen=True)
class Page:
    """The components of the page (`layout`), grouped as the events use them."""

    blocks: gr.Blocks
    face: gr.Image
    face_note: gr.Markdown
    speech: gr.Audio
    speech_note: gr.Markdown
    timeline: gr.Dataframe
    crossfade: gr.Number
    emotion_note: gr.Markdown
    mode: gr.Radio
    constant: gr.Slider
    keyframes: gr.Dataframe
    interpolation: gr.Radio
    voice_settings: gr.Row
    scale: gr.Number
    clip_low: gr.Number
    clip_high: gr.Number
    smooth_frames: gr.Number
    intensity_note: gr.Markdown
    schedule: gr.Image
    sampler: gr.Radio
    steps: gr.Slider
    cfg_audio: gr.Number
    cfg_exp: gr.Number
    seed: gr.Number
    generate: gr.Button
    cancel: gr.Button
    status: gr.Markdown
    video: gr.Video
    result_schedule: gr.Image
    sheet: gr.Image
    archive: gr.File
    command: gr.Code

    @property
    def schedule_inputs(self) -> list[gr.components.Component]:
        """The inputs of `Handlers.preview`: the speech and the schedule's fields."""
        return [self.speech, self.timeline, self.crossfade, self.mode, self.constant, self.keyframes,
                self.interpolation, self.scale, self.clip_low, self.clip_high, self.smooth_frames]

    @property
    def form(self) -> list[gr.components.Component]:
        """The inputs of `Handlers.make_video`: the face, the schedule and the sampler settings."""
        return [self.face, *self.schedule_inputs, self.sampler, self.steps, self.cfg_audio, self.cfg_exp, self.seed]

    @property
    def results(self) -> list[gr.components.Component]:
        """The outputs of `Handlers.make_video`, in the order of its tuples."""
        return [self.status, self.video, self.result_schedule, self.sheet, self.archive, self.command]


def layout(pipeline: EmoDiffPipeline, checkpoint: Path, faces: list[Path], speeches: list[Path],
           defaults: Defaults) -> Page:
    """The page's components, with their labels and first values, and the example faces and speech."""
    fps = pipeline.settings["fps"]
    with gr.Blocks(title="emodiff", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as blocks:
        gr.Markdown(f"# emodiff: talking heads with an emotion timeline and an intensity curve\n"
                    f"Pipeline `{checkpoint}` ({pipeline.settings['resolution']} px, {fps:g} fps; by default "
                    f"{pipeline.describe_sampling(defaults.sampler)})."
                    + (" It was trained on the cartoon faces of the synthetic world: start from an example face."
                       if faces else ""))
        with gr.Row():
            with gr.Column():
                face = gr.Image(label="Face", sources=["upload", "webcam"], type="filepath", image_mode=None,
                                elem_id="face", height=220)
                face_note = gr.Markdown(elem_id="face-note")
                if faces:
                    gr.Examples([[str(path)] for path in faces], inputs=[face], label="Example faces",
                                elem_id="face-examples", **PRIVATE)
                speech = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath", elem_id="speech")
                speech_note = gr.Markdown(elem_id="speech-note")
                if speeches:
                    gr.Examples([[str(path)] for path in speeches], inputs=[speech], label="Example speech",
                                elem_id="speech-examples", **PRIVATE)
            with gr.Column():
                timeline = gr.Dataframe(value=defaults.timeline(), headers=["emotion", "start (s)"],
                                        datatype=["str", "number"], column_count=2, row_count=2, type="array",
                                        interactive=True, label=f"Emotion timeline ({', '.join(EMOTIONS)})",
                                        elem_id="timeline")
                crossfade = gr.Number(value=ScheduleOptions.crossfade, label="Cross-fade (s)", elem_id="crossfade")
                emotion_note = gr.Markdown(elem_id="emotion-note")
                mode = gr.Radio(list(INTENSITY_MODES), value="key frames", label="Intensity k", elem_id="mode")
                constant = gr.Slider(0.0, 1.0, value=0.8, step=0.05, label="Constant k", elem_id="constant",
                                     visible=False)
                keyframes = gr.Dataframe(value=defaults.keyframes(), headers=["time (s)", "k"],
                                         datatype=["number", "number"], column_count=2, row_count=4, type="array",
                                         interactive=True, label="Key frames", elem_id="keyframes")
                interpolation = gr.Radio(["linear", "smooth"], value="linear", label="Interpolation between key frames")
                with gr.Row(visible=False) as voice_settings:
                    scale = gr.Number(value=1.0, label="From the voice: scale")
                    clip_low = gr.Number(value=0.0, label="clip low")
                    clip_high = gr.Number(value=1.0, label="clip high")
                    smooth_frames = gr.Number(value=5, precision=0, label="smoothing (frames)")
                intensity_note = gr.Markdown(elem_id="intensity-note")
                schedule = gr.Image(label="Schedule", type="filepath", interactive=False, elem_id="schedule")
        with gr.Row():
            sampler = gr.Radio(list(SAMPLERS), value=defaults.sampler, label="Sampler")
            steps = gr.Slider(1, 100, value=defaults.steps, step=1, label="Steps per frame", elem_id="steps")
            cfg_audio = gr.Number(value=defaults.cfg_audio, label="Audio guidance")
            cfg_exp = gr.Number(value=defaults.cfg_exp, label="Expression guidance")
            seed = gr.Number(value=defaults.seed, precision=0, label="Seed")
        with gr.Row():
            generate = gr.Button("Generate", variant="primary", elem_id="generate")
            cancel = gr.Button("Cancel", elem_id="cancel")
        status = gr.Markdown(label="Status", elem_id="status")  # the label names it in the API
        with gr.Row():
            video = gr.Video(label="Video", elem_id="video", interactive=False, height=320)
            result_schedule = gr.Image(label="Schedule of the video", type="filepath", interactive=False, height=320)
        sheet = gr.Image(label="Contact sheet", type="filepath", interactive=False, elem_id="sheet")
        with gr.Row():
            archive = gr.File(label="Download: video, schedule, contact sheet, command and inputs", elem_id="archive")
            command = gr.Code(label="The emodiff sample command (run it in the unzipped folder)", language="shell",
                              wrap_lines=True, elem_id="command")
    return Page(blocks, face, face_note, speech, speech_note, timeline, crossfade, emotion_note, mode, constant,
                keyframes, interpolation, voice_settings, scale, clip_low, clip_high, smooth_frames, intensity_note,
                schedule, sampler, steps, cfg_audio, cfg_exp, seed, generate, cancel, status, video, result_schedule,
                sheet, archive, command)


def _note(message: str | None) -> str:
    return f"⚠️ {message}" if message else ""


def _number(value: float | None, default: float) -> float:
    """A cleared number field is its default."""
    return default if value is None else float(value)


def schedule_options(crossfade: float | None, interpolation: str, scale: float | None, clip_low: float | None,
                     clip_high: float | None, smooth_frames: float | None) -> ScheduleOptions:
    """The form's schedule options (`ScheduleOptions`'s defaults for cleared fields)."""
    defaults = ScheduleOptions()
    return ScheduleOptions(interpolation=interpolation, crossfade=_number(crossfade, defaults.crossfade),
                           scale=_number(scale, defaults.scale),
                           clip=(_number(clip_low, defaults.clip[0]), _number(clip_high, defaults.clip[1])),
                           smooth_frames=int(_number(smooth_frames, defaults.smooth_frames)))


class Handlers:
    """The page's events as plain methods over the pipeline at `checkpoint`: the form's values in, the outputs out
    (in the order of `Page`'s groups); previews and jobs are written in `work_dir`. A browser session is told apart by
    its `gr.Request`'s session hash (the Cancel button, `Cancellations`)."""

    def __init__(self, pipeline: EmoDiffPipeline, checkpoint: Path, work_dir: Path, defaults: Defaults) -> None:
        self.pipeline, self.checkpoint, self.work_dir, self.defaults = pipeline, checkpoint, work_dir, defaults
        self.cancellations = Cancellations()

    def preview(self, speech: str | None, emotion_timeline: Rows, crossfade: float | None, intensity_mode: str,
                constant_k: float, keyframes: Rows, interpolation: str, voice_scale: float | None,
                voice_clip_low: float | None, voice_clip_high: float | None,
                voice_smoothing_frames: float | None) -> tuple[dict, str, str, str]:
        """The schedule plot (an update with its length as the label) and the speech, emotion and intensity notes."""
        plot = self.work_dir / "previews" / f"{uuid.uuid4().hex}.png"
        plot.parent.mkdir(parents=True, exist_ok=True)
        options = schedule_options(crossfade, interpolation, voice_scale, voice_clip_low, voice_clip_high,
                                   voice_smoothing_frames)
        result = preview_schedule(self.pipeline, speech, emotion_timeline, intensity_mode, constant_k, keyframes,
                                  options, plot)
        return (gr.update(value=result.plot and str(result.plot), label=f"Schedule {result.length}"),
                _note(result.speech_error), _note(result.emotion_error), _note(result.intensity_error))

    @staticmethod
    def intensity_fields(intensity_mode: str) -> tuple[dict, dict, dict, dict]:
        """The visibility of the constant, the key frames, their interpolation and the voice's settings."""
        return (gr.update(visible=intensity_mode == "constant"), gr.update(visible=intensity_mode == "key frames"),
                gr.update(visible=intensity_mode == "key frames"), gr.update(visible=intensity_mode == "from the voice"))

    def face_note(self, face: str | None) -> str:
        """The photo warning under the face (`face_warning`)."""
        return _note(face_warning(self.checkpoint, face))

    def submit(self, request: gr.Request) -> str:
        """Generate: the session's request is queued (Cancel can now stop it)."""
        self.cancellations.submitted(request.session_hash)
        return "In the queue…"

    def cancel(self, request: gr.Request) -> str | dict:
        """Cancel: the session's request stops after its current frame; the status stays when there is none."""
        if self.cancellations.cancel(request.session_hash):
            return "Cancelling after the current frame…"
        return gr.update()

    def make_video(self, face: str | None, speech: str | None, emotion_timeline: Rows, crossfade: float | None,
                   intensity_mode: str, constant_k: float, keyframes: Rows, interpolation: str,
                   voice_scale: float | None, voice_clip_low: float | None, voice_clip_high: float | None,
                   voice_smoothing_frames: float | None, sampler: str, steps: float | None, cfg_audio: float | None,
                   cfg_exp: float | None, seed: float | None, request: gr.Request,
                   progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:  # noqa: B008 (Gradio injects it so)
        """Make one talking-head video from a face image and speech, with an emotion timeline and an intensity
        schedule, as `emodiff sample` makes it (README, "The browser app"). Returns the status line, the mp4, the
        schedule plot, the contact sheet, a zip of these with the inputs, and the `emodiff sample` command; a refused
        input or a cancel ends with its sentence on the status line and no video.
        """
        session, skip = request.session_hash, gr.skip()
        try:
            if self.cancellations.is_cancelled(session):
                yield "Cancelled before it started.", skip, skip, skip, skip, skip
                return
            if not face or not speech:
                yield ("⚠️ Give a face (upload, webcam or an example) and speech (upload, microphone or an example) "
                       "first.", skip, skip, skip, skip, skip)
                return
            defaults = self.defaults
            try:
                job = SampleJob(self.pipeline, self.checkpoint, SampleRequest(
                    Path(face), Path(speech), timeline_spec(emotion_timeline),
                    intensity_spec(intensity_mode, constant_k, keyframes),
                    schedule_options(crossfade, interpolation, voice_scale, voice_clip_low, voice_clip_high,
                                     voice_smoothing_frames),
                    sampler, int(_number(steps, defaults.steps)), _number(cfg_audio, defaults.cfg_audio),
                    _number(cfg_exp, defaults.cfg_exp), int(_number(seed, defaults.seed))),
                    self.work_dir / "jobs" / uuid.uuid4().hex)
            except EmodiffError as err:
                yield f"⚠️ {err}", skip, skip, skip, skip, skip
                return
            warning = f"\n\n⚠️ {job.warning}" if job.warning else ""
            yield f"Sampling {job.n_frames} frames…{warning}", None, None, None, None, job.command
            frames, shown = job.run(), time.monotonic()
            try:  # a cancel is checked after every frame; closing `frames` early leaves no mp4
                for done in frames:
                    if self.cancellations.is_cancelled(session):
                        yield (f"Cancelled after frame {done} of {job.n_frames}; no video was written.",
                               skip, skip, skip, skip, skip)
                        return
                    progress((done, job.n_frames), desc="frames", unit="frame")
                    if time.monotonic() - shown > STATUS_INTERVAL:
                        shown = time.monotonic()
                        yield f"Sampling: frame {done} of {job.n_frames}.{warning}", skip, skip, skip, skip, skip
            finally:
                frames.close()
            yield (f"Done: {job.n_frames} frames at {self.pipeline.settings['fps']:g} fps.{warning}",
                   *(str(job.paths[key]) for key in ("video", "schedule", "sheet", "archive")), job.command)
        finally:
            self.cancellations.finished(session)


def build_app(pipeline: EmoDiffPipeline, checkpoint: Path, work_dir: Path, concurrency: int = 1) -> gr.Blocks:
    """The Gradio page for `pipeline` (loaded from `checkpoint`): `layout`'s components wired to `Handlers`, every
    event private but `/make_video`; examples, previews and jobs are written in `work_dir`."""
    faces, speeches = write_examples(checkpoint, work_dir / "examples")
    defaults = Defaults.of(pipeline)
    page = layout(pipeline, checkpoint, faces, speeches, defaults)
    handlers = Handlers(pipeline, checkpoint, work_dir, defaults)
    quiet = {"show_progress": "hidden", "concurrency_limit": None, **PRIVATE}  # the page's own light events
    preview_outputs = [page.schedule, page.speech_note, page.emotion_note, page.intensity_note]
    with page.blocks:
        page.mode.change(handlers.intensity_fields, [page.mode],
                         [page.constant, page.keyframes, page.interpolation, page.voice_settings], **quiet)
        for component in page.schedule_inputs:
            component.change(handlers.preview, page.schedule_inputs, preview_outputs, **quiet)
        page.blocks.load(handlers.preview, page.schedule_inputs, preview_outputs, **quiet)
        page.face.change(handlers.face_note, [page.face], [page.face_note], **quiet)
        # Cancel is cooperative (the job stops after its current frame and ends normally): Gradio's own `cancels=`
        # on a running generator left the page unable to start another request (gradio 6.31).
        page.generate.click(handlers.submit, None, [page.status], **quiet).then(
            handlers.make_video, page.form, page.results, show_progress_on=[page.status],
            concurrency_limit=concurrency, concurrency_id="sampling", api_name="make_video")
        page.cancel.click(handlers.cancel, None, [page.status], **quiet)
    page.blocks.queue(default_concurrency_limit=concurrency)
    return page.blocks


def serve(checkpoint: Path | None = None, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 1) -> None:
    """Serve the app of the pipeline at `checkpoint` (default: the bundled demo) on host:port, `concurrency` videos
    sampled at once, until Ctrl+C or SIGTERM."""
    import torch

    from emodiff.demo import bundled_checkpoint
    from emodiff.sample import load_pipeline

    if concurrency < 1:
        raise EmodiffError(f"--concurrency must be at least 1, not {concurrency}.")
    checkpoint = (checkpoint if checkpoint is not None else bundled_checkpoint()).resolve()
    pipeline = load_pipeline(checkpoint)
    pipeline.to("cuda" if torch.cuda.is_available() else "cpu")
    work_dir = Path(tempfile.mkdtemp(prefix="emodiff-app-"))  # examples, previews and jobs; removed at exit
    atexit.register(shutil.rmtree, work_dir, ignore_errors=True)
    page = build_app(pipeline, checkpoint, work_dir, concurrency)
    try:
        page.launch(server_name=host, server_port=port, css=CSS, ssr_mode=False, show_error=True,
                    allowed_paths=[str(work_dir)], quiet=True, prevent_thread_lock=True)
    except OSError:
        raise EmodiffError(f"Cannot serve on {host}:{port}: the port is taken or the address is not this "
                           "machine's; choose another --port or --host.") from None
    print(f"emodiff app: pipeline {checkpoint}; open http://{host}:{port} (Ctrl+C stops)", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it like Ctrl+C: the work folder goes
    page.block_thread()
