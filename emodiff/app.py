"""The browser app of `emodiff app` (described in emodiff/cli/app.py): a thin Gradio layer over `emodiff.sample_form`.

`serve` loads the pipeline, builds the page (`build_app`) and serves it until Ctrl+C or SIGTERM; requests are queued,
N at a time, and the work folder (examples, previews and jobs) is removed at exit.
"""

import atexit
import os
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from emodiff.errors import EmodiffError

CSS = ("video, .image-frame img {image-rendering: pixelated;}"  # small frames are enlarged without blurring
       "#status {min-height: 4em;}")  # room for the queue position Gradio shows over the status line
STATUS_INTERVAL = 0.5  # seconds between status-line updates while sampling (the progress bar follows every frame)


def _import_gradio() -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline server
    try:
        import gradio
    except ImportError:
        raise EmodiffError("emodiff app needs Gradio; install the app extra: pip install -e \".[app]\".") from None
    return gradio


def build_app(pipeline: Any, checkpoint: Path, work_dir: Path, concurrency: int = 1) -> Any:
    """The Gradio Blocks page for `pipeline` (loaded from `checkpoint`); jobs and previews are written in `work_dir`."""
    gr = _import_gradio()
    from emodiff import demo
    from emodiff.control import ScheduleOptions
    from emodiff.control.intensity import parse_keyframes
    from emodiff.data.labels import EMOTIONS
    from emodiff.diffusion.schedulers import SAMPLERS
    from emodiff.sample_form import (INTENSITY_MODES, Cancellations, SampleJob, SampleRequest, face_warning,
                                     intensity_spec, preview_schedule, timeline_spec, write_examples)

    faces, speeches = write_examples(checkpoint, work_dir / "examples")
    fps = pipeline.settings["fps"]
    request_defaults = SampleRequest  # the dataclass's defaults: sampler and seed
    default_steps = pipeline.default_steps  # the pipeline's own sampling settings (a distilled one's baked guidance)
    default_cfg_audio, default_cfg_exp = pipeline.guidance_scales(None, None)
    demo_timeline = [[name, float(start)] for name, start in (item.split("@") for item in demo.EMOTION.split(","))]
    demo_keyframes = [list(key) for key in parse_keyframes(demo.INTENSITY)]

    def note(message: str | None) -> str:
        return f"⚠️ {message}" if message else ""

    def number(value: float | None, default: float) -> float:  # a cleared number field is its default
        return default if value is None else float(value)

    def options(crossfade: float | None, interpolation: str, scale: float | None, clip_low: float | None,
                clip_high: float | None, smooth_frames: float | None) -> ScheduleOptions:
        defaults = ScheduleOptions()
        return ScheduleOptions(interpolation=interpolation, crossfade=number(crossfade, defaults.crossfade),
                               scale=number(scale, defaults.scale),
                               clip=(number(clip_low, defaults.clip[0]), number(clip_high, defaults.clip[1])),
                               smooth_frames=int(number(smooth_frames, defaults.smooth_frames)))

    with gr.Blocks(title="emodiff", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as page:
        gr.Markdown(f"# emodiff: talking heads with an emotion timeline and an intensity curve\n"
                    f"Pipeline `{checkpoint}` ({pipeline.settings['resolution']} px, {fps:g} fps; by default "
                    f"{pipeline.describe_sampling(request_defaults.sampler)})."
                    + (" It was trained on the cartoon faces of the synthetic world: start from an example face."
                       if faces else ""))
        with gr.Row():
            with gr.Column():
                face = gr.Image(label="Face", sources=["upload", "webcam"], type="filepath", image_mode=None,
                                elem_id="face", height=220)
                face_note = gr.Markdown(elem_id="face-note")
                if faces:
                    gr.Examples([[str(path)] for path in faces], inputs=[face], label="Example faces",
                                elem_id="face-examples")
                speech = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath", elem_id="speech")
                speech_note = gr.Markdown(elem_id="speech-note")
                if speeches:
                    gr.Examples([[str(path)] for path in speeches], inputs=[speech], label="Example speech",
                                elem_id="speech-examples")
            with gr.Column():
                timeline = gr.Dataframe(value=demo_timeline, headers=["emotion", "start (s)"],
                                        datatype=["str", "number"], column_count=2, row_count=2, type="array",
                                        interactive=True, label=f"Emotion timeline ({', '.join(EMOTIONS)})",
                                        elem_id="timeline")
                crossfade = gr.Number(value=ScheduleOptions.crossfade, label="Cross-fade (s)", elem_id="crossfade")
                emotion_note = gr.Markdown(elem_id="emotion-note")
                mode = gr.Radio(list(INTENSITY_MODES), value="key frames", label="Intensity k", elem_id="mode")
                constant = gr.Slider(0.0, 1.0, value=0.8, step=0.05, label="Constant k", elem_id="constant",
                                     visible=False)
                keyframes = gr.Dataframe(value=demo_keyframes, headers=["time (s)", "k"], datatype=["number", "number"],
                                         column_count=2, row_count=4, type="array", interactive=True,
                                         label="Key frames", elem_id="keyframes")
                interpolation = gr.Radio(["linear", "smooth"], value="linear", label="Interpolation between key frames")
                with gr.Row(visible=False) as voice_settings:
                    scale = gr.Number(value=1.0, label="From the voice: scale")
                    clip_low = gr.Number(value=0.0, label="clip low")
                    clip_high = gr.Number(value=1.0, label="clip high")
                    smooth_frames = gr.Number(value=5, precision=0, label="smoothing (frames)")
                intensity_note = gr.Markdown(elem_id="intensity-note")
                schedule = gr.Image(label="Schedule", type="filepath", interactive=False, elem_id="schedule")
        with gr.Row():
            sampler = gr.Radio(list(SAMPLERS), value=request_defaults.sampler, label="Sampler")
            steps = gr.Slider(1, 100, value=default_steps, step=1, label="Steps per frame", elem_id="steps")
            cfg_audio = gr.Number(value=default_cfg_audio, label="Audio guidance")
            cfg_exp = gr.Number(value=default_cfg_exp, label="Expression guidance")
            seed = gr.Number(value=request_defaults.seed, precision=0, label="Seed")
        with gr.Row():
            generate = gr.Button("Generate", variant="primary", elem_id="generate")
            cancel = gr.Button("Cancel", elem_id="cancel")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            video = gr.Video(label="Video", elem_id="video", interactive=False, height=320)
            result_schedule = gr.Image(label="Schedule of the video", type="filepath", interactive=False, height=320)
        sheet = gr.Image(label="Contact sheet", type="filepath", interactive=False, elem_id="sheet")
        with gr.Row():
            archive = gr.File(label="Download: video, schedule, contact sheet, command and inputs", elem_id="archive")
            command = gr.Code(label="The emodiff sample command (run it in the unzipped folder)", language="shell",
                              wrap_lines=True, elem_id="command")

        schedule_inputs = [speech, timeline, crossfade, mode, constant, keyframes, interpolation, scale, clip_low,
                           clip_high, smooth_frames]

        def preview(speech_path, timeline_rows, fade, mode_name, k, key_rows, interp, scale_, low, high, smooth):
            plot = work_dir / "previews" / f"{uuid.uuid4().hex}.png"
            plot.parent.mkdir(parents=True, exist_ok=True)
            result = preview_schedule(pipeline, speech_path, timeline_rows, mode_name, k, key_rows,
                                      options(fade, interp, scale_, low, high, smooth), plot)
            return (gr.update(value=result.plot and str(result.plot), label=f"Schedule {result.length}"),
                    note(result.speech_error), note(result.emotion_error), note(result.intensity_error))

        mode.change(lambda name: [gr.update(visible=name == "constant"), gr.update(visible=name == "key frames"),
                                  gr.update(visible=name == "key frames"), gr.update(visible=name == "from the voice")],
                    [mode], [constant, keyframes, interpolation, voice_settings], show_progress="hidden",
                    concurrency_limit=None)
        preview_outputs = [schedule, speech_note, emotion_note, intensity_note]
        for component in schedule_inputs:
            component.change(preview, schedule_inputs, preview_outputs, show_progress="hidden",
                             concurrency_limit=None)
        page.load(preview, schedule_inputs, preview_outputs, show_progress="hidden", concurrency_limit=None)
        face.change(lambda path: note(face_warning(checkpoint, path)), [face], [face_note], show_progress="hidden",
                    concurrency_limit=None)

        cancellations = Cancellations()

        def sample(face_path, speech_path, timeline_rows, fade, mode_name, k, key_rows, interp, scale_, low, high,
                   smooth, sampler_name, n_steps, guidance_audio, guidance_exp, seed_value, request: gr.Request,
                   progress=gr.Progress()) -> Iterator[dict]:  # noqa: B008 (Gradio injects the tracker so)
            session = request.session_hash
            try:
                if cancellations.is_cancelled(session):
                    yield {status: "Cancelled before it started."}
                    return
                if not face_path or not speech_path:
                    yield {status: "⚠️ Give a face (upload, webcam or an example) and speech (upload, microphone or "
                                   "an example) first."}
                    return
                try:
                    job = SampleJob(pipeline, checkpoint, SampleRequest(
                        Path(face_path), Path(speech_path), timeline_spec(timeline_rows),
                        intensity_spec(mode_name, k, key_rows), options(fade, interp, scale_, low, high, smooth),
                        sampler_name, int(number(n_steps, default_steps)),
                        number(guidance_audio, default_cfg_audio), number(guidance_exp, default_cfg_exp),
                        int(number(seed_value, request_defaults.seed))),
                        work_dir / "jobs" / uuid.uuid4().hex)
                except EmodiffError as err:
                    yield {status: f"⚠️ {err}"}
                    return
                warning = f"\n\n⚠️ {job.warning}" if job.warning else ""
                yield {status: f"Sampling {job.n_frames} frames…{warning}", video: None, result_schedule: None,
                       sheet: None, archive: None, command: job.command}
                frames, shown = job.run(), time.monotonic()
                try:  # a cancel is checked after every frame; closing `frames` early leaves no mp4
                    for done in frames:
                        if cancellations.is_cancelled(session):
                            yield {status: f"Cancelled after frame {done} of {job.n_frames}; no video was written."}
                            return
                        progress((done, job.n_frames), desc="frames", unit="frame")
                        if time.monotonic() - shown > STATUS_INTERVAL:
                            shown = time.monotonic()
                            yield {status: f"Sampling: frame {done} of {job.n_frames}.{warning}"}
                finally:
                    frames.close()
                yield {status: f"Done: {job.n_frames} frames at {fps:g} fps.{warning}",
                       video: str(job.paths["video"]), result_schedule: str(job.paths["schedule"]),
                       sheet: str(job.paths["sheet"]), archive: str(job.paths["archive"]), command: job.command}
            finally:
                cancellations.finished(session)

        def submit(request: gr.Request) -> str:
            cancellations.submitted(request.session_hash)
            return "In the queue…"

        def cancel_request(request: gr.Request) -> Any:
            if cancellations.cancel(request.session_hash):
                return "Cancelling after the current frame…"
            return gr.update()

        # Cancel is cooperative (the job stops after its current frame and ends normally): Gradio's own `cancels=`
        # on a running generator left the page unable to start another request (gradio 6.31).
        generate.click(submit, None, [status], show_progress="hidden", concurrency_limit=None).then(
            sample, [face, *schedule_inputs, sampler, steps, cfg_audio, cfg_exp, seed],
            [status, video, result_schedule, sheet, archive, command], show_progress_on=[status],
            concurrency_limit=concurrency, concurrency_id="sampling")
        cancel.click(cancel_request, None, [status], show_progress="hidden", concurrency_limit=None)
    page.queue(default_concurrency_limit=concurrency)
    return page


def serve(checkpoint: Path | None = None, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 1) -> None:
    """Serve the app of the pipeline at `checkpoint` (default: the bundled demo) on host:port, `concurrency` videos
    sampled at once, until Ctrl+C or SIGTERM."""
    import torch

    from emodiff.demo import bundled_checkpoint
    from emodiff.sample import load_pipeline

    if concurrency < 1:
        raise EmodiffError(f"--concurrency must be at least 1, not {concurrency}.")
    _import_gradio()
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
