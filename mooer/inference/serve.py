"""`mooer-serve`: a web page and an HTTP API that transcribe (ASR) and translate (AST) speech.

    mooer-serve --run_dir demo_out/run                       # after make demo (make serve)
    mooer-serve --checkpoint exp/asr/checkpoints/last.ckpt -- llm=qwen2_7b ...
    mooer-serve --encoder_path ... --llm_path ... --adapter_path ... --lora_dir ...  # MooER paths

The page (Gradio, as MooER's, FunASR's and SLAM-LLM's demos): record from the microphone or upload
a file of any format soundfile reads (WAV, FLAC, OGG/Opus, MP3, ...), choose ASR, AST or both and
the beam size; it shows the transcript, the translation, a table of segments with their times, and
an SRT file to download. Recordings longer than --max_segment_s are cut where silero-vad finds
speech and decoded in batches, as mooer-transcribe does.

The HTTP API (also Gradio's own, at /gradio_api/):

    curl -F file=@meeting.flac -F task=asr -F num_beams=4 http://127.0.0.1:7860/api/transcribe

answers JSON: {"name", "duration", "task", "transcript", "translation", "segments": [{"start",
"end", "transcript", "translation"}], "srt", "seconds"}; a bad input answers 400 (413 over the
size limit) with {"error": "..."}, and the server goes on serving. GET /api/health tells the model
and the tasks. One model decodes one request at a time; the others wait their turn in order (at
most --max_queue waiting, then 503).
"""

import argparse
import atexit
import hmac
import ipaddress
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
from omegaconf import DictConfig

from mooer.inference.formats import Segment, joined, subtitles
from mooer.inference.recognizer import MIN_AUDIO_SECONDS, Recognizer
from mooer.inference.segment import MIN_SILENCE_MS
from mooer.inference.transcribe import add_model_arguments, add_segment_arguments, model_config

log = logging.getLogger("mooer.serve")

TASK_CHOICES = {"asr": "ASR (transcript)", "ast": "AST (English translation)",
                "asr_ast": "both"}


class InputError(ValueError):
    """Audio the service cannot take, with a message for the person who sent it."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Busy(RuntimeError):
    """The queue is full."""


@dataclass
class Limits:
    """What one request may hold."""

    max_upload_mb: float = 200.0
    max_duration_s: float = 3 * 3600.0
    min_duration_s: float = MIN_AUDIO_SECONDS
    max_channels: int = 2


def check_audio(path: str | Path, limits: Limits, name: str = "the file") -> float:
    """The duration in seconds of an upload the model can take, or InputError saying why not:
    empty, too large, not audio, too many channels, too short or too long."""
    size = os.path.getsize(path)
    if size == 0:
        raise InputError(f"{name} is empty (0 bytes)")
    if size > limits.max_upload_mb * 2**20:
        raise InputError(f"{name} is {size / 2**20:.1f} MB, over the limit of "
                         f"{limits.max_upload_mb:g} MB (mooer-serve --max_upload_mb)", 413)
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as err:
        reason = str(err).splitlines()[-1].split("': ")[-1]  # without the server's temp path
        raise InputError(f"{name} is not audio that soundfile reads (WAV, FLAC, OGG/Opus, MP3, "
                         f"...): {reason}") from err
    if info.frames == 0 or info.duration == 0:
        raise InputError(f"{name} holds no audio (0 samples)")
    if info.channels > limits.max_channels:
        raise InputError(f"{name} has {info.channels} channels; at most {limits.max_channels} are "
                         "taken: mix it down or pick a channel first (for example `sox in.wav "
                         "out.wav remix 1`), or raise mooer-serve --max_channels")
    if info.duration < limits.min_duration_s:
        raise InputError(f"{name} is {info.duration:.3f} s long; at least "
                         f"{limits.min_duration_s:g} s of audio is needed")
    if info.duration > limits.max_duration_s:
        raise InputError(f"{name} is {info.duration:.0f} s long, over the limit of "
                         f"{limits.max_duration_s:g} s (mooer-serve --max_duration_s)")
    return float(info.duration)


@dataclass
class Transcriber:
    """One loaded model (a Recognizer) that decodes one request at a time; the others wait in
    order, at most `max_queue` of them."""

    cfg: DictConfig
    recognizer: Recognizer
    max_segment_s: float = 30.0
    min_silence_ms: int = MIN_SILENCE_MS
    max_queue: int = 32
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Transcriber":
        """The transcriber `mooer-serve` runs for its parsed command line."""
        cfg = model_config(args)
        try:
            recognizer = Recognizer.from_config(cfg, args.device, args.precision, args.batch_size,
                                                {"max_new_tokens": args.max_new_tokens})
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
        if not recognizer.tasks:
            raise SystemExit("error: the prompt format has no instruction for asr or ast")
        limits = Limits(args.max_upload_mb, args.max_duration_s, MIN_AUDIO_SECONDS,
                        args.max_channels)
        return cls(cfg, recognizer, args.max_segment_s, args.min_silence_ms, args.max_queue,
                   limits)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting = 0
        self._count = threading.Lock()

    def choices(self) -> list[str]:
        """The tasks the page offers: each the prompt format has, and both when it has both."""
        tasks = self.recognizer.tasks
        return tasks + (["asr_ast"] if len(tasks) == 2 else [])

    def transcribe(self, path: str | Path, task: str = "asr", num_beams: int = 4,
                   name: str = "the file") -> dict:
        """Transcribe and/or translate one recording: the texts, the segments with times, SRT."""
        if task not in self.choices():
            raise InputError(f"task {task!r} is not served: choose one of "
                             f"{', '.join(self.choices())}")
        if not 1 <= int(num_beams) <= 16:
            raise InputError(f"num_beams must be between 1 and 16, got {num_beams}")
        duration = check_audio(path, self.limits, name)
        tasks = ["asr", "ast"] if task == "asr_ast" else [task]
        with self._count:
            if self._waiting >= self.max_queue:
                raise Busy(f"busy: {self._waiting} requests are waiting; try again later")
            self._waiting += 1
        try:
            with self._lock:
                started = time.perf_counter()
                segments = self._decode(Path(path), tasks, int(num_beams))
        finally:
            with self._count:
                self._waiting -= 1
        texts = dict(zip(tasks, joined(segments, len(tasks)), strict=True))
        return {
            "name": name, "duration": round(duration, 3), "task": task,
            "transcript": texts.get("asr", ""), "translation": texts.get("ast", ""),
            "segments": [{"start": s.start, "end": s.end,
                          **dict(zip(("transcript" if t == "asr" else "translation"
                                      for t in tasks), s.texts, strict=True))}
                         for s in segments],
            "srt": subtitles(segments, "srt"),
            "seconds": round(time.perf_counter() - started, 3),
        }

    def _decode(self, path: Path, tasks: list[str], num_beams: int) -> list[Segment]:
        decoded = self.recognizer.decode_long(
            [("input", str(path))], tasks, self.max_segment_s, self.min_silence_ms,
            progress=None, num_beams=num_beams)
        if decoded.prepared.no_speech:  # too short cannot be: check_audio refused that
            raise InputError("no speech was found in the recording")
        if "input" not in decoded.recordings:
            raise InputError("the recording could not be decoded (see the server's log)")
        return decoded.recordings["input"]


def build_page(transcriber: Transcriber, title: str = "mooer"):
    """The Gradio page: audio in (microphone or upload), task and beam size; transcript,
    translation, segments and SRT out. Errors show as a message on the page."""
    import gradio as gr

    choices = [(TASK_CHOICES[t], t) for t in transcriber.choices()]
    subtitles_dir = Path(tempfile.mkdtemp(prefix="mooer-serve-srt-"))
    atexit.register(shutil.rmtree, subtitles_dir, ignore_errors=True)

    def run(audio_path, task, num_beams):
        if not audio_path:
            raise gr.Error("Record or upload audio first.")
        try:
            result = transcriber.transcribe(audio_path, task, num_beams,
                                            name=Path(audio_path).name)
        except (InputError, Busy) as err:
            raise gr.Error(str(err)) from err
        rows = [[s["start"], s["end"], s.get("transcript", ""), s.get("translation", "")]
                for s in result["segments"]]
        for old in subtitles_dir.iterdir():  # Gradio has long copied those
            if time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        srt = subtitles_dir / f"{uuid.uuid4().hex[:8]}" / (Path(audio_path).stem + ".srt")
        srt.parent.mkdir()
        srt.write_text(result["srt"], encoding="utf-8")  # Gradio copies it into its cache
        status = (f"{result['duration']:.1f} s of audio, {len(rows)} segment(s), decoded in "
                  f"{result['seconds']:.1f} s")
        return result["transcript"], result["translation"], rows, str(srt), status

    # uploads and answers in Gradio's cache are deleted an hour after they were made
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown(f"# {title}: speech recognition and translation\n"
                    "Record or upload audio (WAV, FLAC, OGG, MP3, any rate; recordings longer "
                    f"than {transcriber.max_segment_s:g} s are cut at pauses).")
        with gr.Row():
            with gr.Column():
                audio = gr.Audio(sources=["upload", "microphone"], type="filepath", format=None,
                                 label="Audio", elem_id="audio")
                task = gr.Radio(choices, value=choices[-1][1], label="Task", elem_id="task")
                beams = gr.Slider(1, 8, value=4, step=1, label="Beam size", elem_id="beams")
                button = gr.Button("Transcribe", variant="primary", elem_id="run")
            with gr.Column():
                transcript = gr.Textbox(label="Transcript", lines=3, elem_id="transcript")
                translation = gr.Textbox(label="Translation", lines=3, elem_id="translation")
                status = gr.Markdown(elem_id="status")
        table = gr.Dataframe(headers=["start (s)", "end (s)", "transcript", "translation"],
                             label="Segments", elem_id="segments", interactive=False)
        srt = gr.File(label="Subtitles (SRT)", elem_id="srt")
        button.click(run, [audio, task, beams], [transcript, translation, table, srt, status],
                     api_name="transcribe", concurrency_limit=1)
    return page


API_KEY_ENV = "MOOER_API_KEY"


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def build_app(transcriber: Transcriber, title: str = "mooer", api_key: str | None = None):
    """A FastAPI app: POST /api/transcribe, GET /api/health, and the page at /. With `api_key`,
    the API answers only requests with `Authorization: Bearer <api_key>` (what OpenAI clients
    send) and the page asks for it as its password."""
    import gradio as gr
    from fastapi import FastAPI, Form, Request, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    app = FastAPI(title=f"{title} API")
    limit = int(transcriber.limits.max_upload_mb * 2**20)

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "tasks": transcriber.choices(),
                "model": str(transcriber.cfg.get("run_dir") or transcriber.cfg.get("checkpoint")
                             or transcriber.cfg.llm.get("path") or "")}

    @app.middleware("http")
    async def refuse_large_uploads(request: Request, call_next):
        """An upload whose declared size is over the limit is refused before it is read."""
        declared = request.headers.get("content-length", "")
        if (request.url.path == "/api/transcribe" and declared.isdigit()
                and int(declared) > limit + 2**16):  # the form's other fields aside
            return JSONResponse({"error": f"the upload is {int(declared) / 2**20:.1f} MB, over "
                                 f"the limit of {transcriber.limits.max_upload_mb:g} MB "
                                 "(mooer-serve --max_upload_mb)"}, 413)
        return await call_next(request)

    if api_key:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def require_api_key(request: Request, call_next):
            """Our routes take the key as a bearer token (checked first: the middleware added
            last runs first); Gradio's own routes ask for the page's login (below)."""
            given = request.headers.get("authorization", "").encode()
            if request.url.path.startswith("/api/") and not hmac.compare_digest(given, expected):
                return JSONResponse({"error": "missing or wrong API key: send the header "
                                     "`Authorization: Bearer <key>` (mooer-serve --api_key)"},
                                    401, headers={"WWW-Authenticate": "Bearer"})
            return await call_next(request)

    @app.post("/api/transcribe")
    async def transcribe(file: UploadFile, task: str = Form("asr"), num_beams: int = Form(4)):
        name = Path(file.filename or "upload").name
        with tempfile.NamedTemporaryFile(suffix=Path(name).suffix or ".audio") as tmp:
            shutil.copyfileobj(file.file, tmp)
            tmp.flush()
            try:
                result = await run_in_threadpool(transcriber.transcribe, tmp.name, task,
                                                 num_beams, name)
            except InputError as err:
                log.info("refused %s: %s", name, err)
                return JSONResponse({"error": str(err)}, err.status)
            except Busy as err:
                return JSONResponse({"error": str(err)}, 503)
        log.info("%s: %.1f s of audio (%s) in %.2f s", name, result["duration"], task,
                 result["seconds"])
        return result

    page = build_page(transcriber, title)
    app = gr.mount_gradio_app(
        app, page, path="/", max_file_size=limit, ssr_mode=False, mcp_server=False,
        auth=(lambda _user, password: hmac.compare_digest(password.encode(), api_key.encode()))
        if api_key else None,
        auth_message="Sign in with any user name and the server's API key as the password.")
    # Gradio refuses a file handed to an event unless the server received it (an upload) only
    # once the page "has launched", which mount_gradio_app never marks: unmarked, its API opened
    # any path on the machine it was given and copied the file where /gradio_api/file= serves it
    page.has_launched = True
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mooer-serve", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--task", choices=["asr", "ast", "asr_ast"], default="asr_ast",
                        help="the prompt format (conf/task/<task>.yaml) when no --run_dir: "
                             "asr_ast serves both")
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="0.0.0.0 to serve other machines (then an API key is required)")
    parser.add_argument("--api_key", default=os.environ.get(API_KEY_ENV),
                        help="clients send it as `Authorization: Bearer <key>`; the page asks "
                             f"for it as its password (default: ${API_KEY_ENV})")
    parser.add_argument("--no_auth", action="store_true",
                        help="serve a non-loopback --host without an API key (behind a proxy "
                             "that authenticates, or on a trusted network)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--batch_size", type=int, default=8,
                        help="segments of a long recording decoded together")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    add_segment_arguments(parser)
    parser.add_argument("--max_upload_mb", type=float, default=Limits.max_upload_mb)
    parser.add_argument("--max_duration_s", type=float, default=Limits.max_duration_s)
    parser.add_argument("--max_channels", type=int, default=Limits.max_channels)
    parser.add_argument("--max_queue", type=int, default=32,
                        help="requests waiting for the model before the API answers 503")
    parser.add_argument("--title", default="mooer")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls home
    if not is_loopback(args.host) and not args.api_key and not args.no_auth:
        print(f"error: --host {args.host} serves other machines: give an API key (--api_key, or "
              f"${API_KEY_ENV}) that clients send as `Authorization: Bearer <key>`, or pass "
              "--no_auth to serve without one", file=sys.stderr)
        return 2
    import uvicorn

    transcriber = Transcriber.from_args(args)
    app = build_app(transcriber, args.title, args.api_key)
    print(f"mooer-serve: http://{args.host}:{args.port}/ (API: POST /api/transcribe; "
          f"tasks {', '.join(transcriber.choices())})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
