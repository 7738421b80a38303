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
"end", "transcript", "translation", and "flagged" ({task: why} where the hallucination guard
still doubts a text)}], "srt", "seconds"}; a bad input answers 400 (413 over the
size limit) with {"error": "..."}, and the server goes on serving. GET /api/health tells the model,
the tasks and the queue.

OpenAI's audio API (`openai_api`), for the clients that speak it:

    client = openai.OpenAI(base_url="http://127.0.0.1:7860/v1", api_key=KEY)
    client.audio.transcriptions.create(model="mooer", file=open("a.wav", "rb"),
                                       response_format="verbose_json")    # also translations

One model serves every request. A request's recording is checked and cut into segments in its
own thread; one decoding thread takes the waiting segments of all requests that ask the same
(task, beam size) and decodes up to --batch_size of them together, waiting at most
--batch_wait_ms for a batch to fill (each answer is what its recording gives alone). At most
--max_queue requests wait; past that the answer is 503 with Retry-After. A request whose client
has left is not decoded.
"""

import argparse
import atexit
import hmac
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf
from omegaconf import DictConfig

from mooer.data.audio import audio_problem
from mooer.data.hotword_list import HotwordError, check_score, parse_hotwords
from mooer.inference.batching import Abandoned, Batcher
from mooer.inference.formats import Segment, joined, subtitles
from mooer.inference.hotwords import ContextGraph
from mooer.inference.longform import collect, prepare
from mooer.inference.openai_api import ROUTES, ApiError, error_body, parse_options, render
from mooer.inference.recognizer import MIN_AUDIO_SECONDS, Recognizer
from mooer.inference.segment import MIN_SILENCE_MS
from mooer.inference.transcribe import add_model_arguments, add_segment_arguments, model_config
from mooer.models.weights import CheckpointError

log = logging.getLogger("mooer.serve")

TASK_CHOICES = {"asr": "ASR (transcript)", "ast": "AST (English translation)",
                "asr_ast": "both"}


class InputError(ValueError):
    """Audio the service cannot take, with a message for the person who sent it."""

    def __init__(self, message: str, status: int = 400, param: str = "file"):
        super().__init__(message)
        self.status, self.param = status, param


class Busy(RuntimeError):
    """The queue is full."""


class Gone(RuntimeError):
    """The client left before its request's turn came."""


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
    problem = audio_problem(path, info)  # a truncated header, NaN samples
    if problem:
        raise InputError(f"{name} cannot be decoded: {problem}")
    return float(info.duration)


def upload_name(filename: str | None) -> str:
    """The name an upload goes by (its base name), or InputError for one no file system takes:
    control characters (NUL...) or over 255 bytes."""
    name = Path(filename or "upload").name or "upload"
    if len(name.encode("utf-8", "surrogatepass")) > 255 or any(
            ord(c) < 32 or ord(c) == 127 for c in name):
        raise InputError("the upload's file name is not a usable file name (control characters, "
                         "or over 255 bytes): rename the file and send it again")
    return name


def upload_suffix(name: str) -> str:
    """A short, plain extension for the upload's temporary file (soundfile reads the format from
    the content; a long or odd one is dropped)."""
    suffix = Path(name).suffix
    return suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,10}", suffix) else ".audio"


@dataclass
class Recognized:
    """A recording decoded: its duration, its segments (a text per task each) and the seconds
    it took, waiting included."""

    duration: float
    segments: list[Segment]
    seconds: float


@dataclass
class Transcriber:
    """One loaded model serving every request: each recording is cut into segments in its
    request's thread, and the segments of all waiting requests are decoded in batches by one
    thread (`Batcher`: up to `max_batch`, waiting at most `batch_wait_ms` for a batch to fill).
    At most `max_queue` requests wait; more are refused (Busy)."""

    cfg: DictConfig
    recognizer: Recognizer
    max_segment_s: float = 30.0
    min_silence_ms: int = MIN_SILENCE_MS
    max_queue: int = 32
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 8
    batch_wait_ms: float = 10.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Transcriber":
        """The transcriber `mooer-serve` runs for its parsed command line."""
        cfg = model_config(args)
        try:
            recognizer = Recognizer.from_config(cfg, args.device, args.precision, args.batch_size,
                                                {"max_new_tokens": args.max_new_tokens})
        except (CheckpointError, ValueError) as err:
            raise SystemExit(f"error: {err}") from None
        if not recognizer.tasks:
            raise SystemExit("error: the prompt format has no instruction for asr or ast")
        limits = Limits(args.max_upload_mb, args.max_duration_s, MIN_AUDIO_SECONDS,
                        args.max_channels)
        return cls(cfg, recognizer, args.max_segment_s, args.min_silence_ms, args.max_queue,
                   limits, args.batch_size, args.batch_wait_ms)

    def __post_init__(self) -> None:
        self._graphs: OrderedDict[tuple, ContextGraph] = OrderedDict()  # the newest 32 lists
        self.abandoned = 0  # requests whose clients left before their turn
        self.batcher = Batcher(self.recognizer, self.max_batch, self.batch_wait_ms / 1000)
        self._waiting = 0
        self._count = threading.Lock()

    @property
    def waiting(self) -> int:
        """Requests queued or decoding now."""
        return self._waiting

    def hotwords(self, text: str | None, score: float | None = None,
                 words: list[tuple[str, float | None]] | None = None) -> ContextGraph | None:
        """The context graph of a request's hotword list (`text`: a word or phrase a line,
        optionally <TAB>weight; or `words` already parsed), None for none; the same list gives
        the same graph (built once; requests with different lists share batches all the same).
        InputError names a bad line."""
        try:
            check_score(score)
            words = words if words is not None else parse_hotwords(text or "", "hotwords")
        except HotwordError as err:
            raise InputError(str(err), param="hotwords") from None
        if not words:
            return None
        key = (tuple(words), None if score is None else float(score))
        with self._count:
            graph = self._graphs.pop(key, None)
        if graph is None:
            graph = ContextGraph.build(words, self.recognizer.model.tokenizer, score)
        with self._count:
            self._graphs[key] = graph
            while len(self._graphs) > 32:
                self._graphs.popitem(last=False)
        return graph

    def choices(self) -> list[str]:
        """The tasks the page offers: each the prompt format has, and both when it has both."""
        tasks = self.recognizer.tasks
        return tasks + (["asr_ast"] if len(tasks) == 2 else [])

    def transcribe(self, path: str | Path, task: str = "asr", num_beams: int = 4,
                   name: str = "the file", gone: Callable[[], bool] | None = None,
                   hotwords: ContextGraph | None = None, timestamps: bool = False) -> dict:
        """Transcribe and/or translate one recording: the texts, the segments with times, SRT.
        `gone` tells, when the request's segments' turn comes, whether its client has left (then
        they are not decoded: Gone); `hotwords` bias the transcript."""
        if task not in self.choices():
            raise InputError(f"task {task!r} is not served: choose one of "
                             f"{', '.join(self.choices())}")
        tasks = ["asr", "ast"] if task == "asr_ast" else [task]
        done = self.recognize(path, tasks, num_beams, name, gone, hotwords, timestamps)
        segments = done.segments
        texts = dict(zip(tasks, joined(segments, len(tasks)), strict=True))
        return {
            "name": name, "duration": round(done.duration, 3), "task": task,
            "transcript": texts.get("asr", ""), "translation": texts.get("ast", ""),
            "segments": [{"start": s.start, "end": s.end,
                          **dict(zip(("transcript" if t == "asr" else "translation"
                                      for t in tasks), s.texts, strict=True)),
                          **({"flagged": s.flagged(tasks)} if s.flagged(tasks) else {}),
                          **({"words": [w.as_dict() for w in s.words]} if timestamps else {})}
                         for s in segments],
            "srt": subtitles(segments, "srt"),
            "seconds": round(done.seconds, 3),
        }

    def recognize(self, path: str | Path, tasks: list[str], num_beams: int = 4,
                  name: str = "the file", gone: Callable[[], bool] | None = None,
                  hotwords: ContextGraph | None = None, timestamps: bool = False) -> Recognized:
        """One recording checked, queued (or Busy) and decoded for each of `tasks` (which the
        prompt format has): its segments in time order, a text per task each."""
        missing = [task for task in tasks if task not in self.recognizer.tasks]
        if missing:
            raise InputError(f"this server's model has no instruction for {missing[0]} (it "
                             f"serves {', '.join(self.recognizer.tasks)})")
        if not 1 <= int(num_beams) <= 16:
            raise InputError(f"num_beams must be between 1 and 16, got {num_beams}")
        if timestamps and not self.recognizer.model.has_ctc_head:
            raise InputError("word timestamps need the encoder's CTC head, which this server's "
                             "model has not (start it with --ctc_head: see experiment=ctc_head)",
                             param="timestamp_granularities")
        duration = check_audio(path, self.limits, name)
        with self._count:
            if self._waiting >= self.max_queue:
                raise Busy(f"busy: {self._waiting} requests are waiting; try again later")
            self._waiting += 1
        try:
            started = time.perf_counter()
            segments = self._decode(Path(path), tasks, int(num_beams), name, gone, hotwords,
                                    timestamps)
        finally:
            with self._count:
                self._waiting -= 1
        return Recognized(duration, segments, time.perf_counter() - started)

    def _decode(self, path: Path, tasks: list[str], num_beams: int, name: str,
                gone: Callable[[], bool] | None,
                hotwords: ContextGraph | None = None, timestamps: bool = False
                ) -> list[Segment]:
        with tempfile.TemporaryDirectory(prefix="mooer-serve-") as work:
            prepared = prepare([("input", str(path))], Path(work), self.max_segment_s,
                               self.limits.min_duration_s, self.min_silence_ms)
            if prepared.unreadable:  # (check_audio names the usual reasons first)
                raise InputError(f"{name} could not be read as audio")
            if prepared.no_speech:  # too short cannot be: check_audio refused that
                raise InputError("no speech was found in the recording")
            uttids = list(prepared.spans)
            waiting = [self.batcher.submit([prepared.sources[u] for u in uttids], task,
                                           num_beams, gone,
                                           hotwords if task == "asr" else None,
                                           timestamps and task == "asr")
                       for task in tasks]
            try:
                answers = [dict(zip(uttids, [f.result() for f in futures], strict=True))
                           for futures in waiting]
            except Abandoned:
                self.abandoned += 1
                raise Gone(f"{name}: the client left before its turn; not decoded") from None
            except ValueError as err:
                raise InputError(f"{name} could not be decoded: {err}") from err
        words = ({u: times for u, (_, _, times) in answers[tasks.index("asr")].items()}
                 if "asr" in tasks else None)
        recording = collect(prepared, [{u: a[0] for u, a in answer.items()} for answer in answers],
                            [{u: a[1] for u, a in answer.items() if a[1]} for answer in answers],
                            words).get("input")
        if not recording:
            raise InputError("the recording could not be decoded (see the server's log)")
        return recording


def build_page(transcriber: Transcriber, title: str = "mooer"):
    """The Gradio page: audio in (microphone or upload), task, beam size, hotwords and word
    times (on a model with a CTC head); transcript, translation, segments, words and SRT out.
    Errors show as a message on the page."""
    import gradio as gr

    choices = [(TASK_CHOICES[t], t) for t in transcriber.choices()]
    subtitles_dir = Path(tempfile.mkdtemp(prefix="mooer-serve-srt-"))
    atexit.register(shutil.rmtree, subtitles_dir, ignore_errors=True)

    has_head = transcriber.recognizer.model.has_ctc_head

    def run(audio_path, task, num_beams, hotword_text, word_times=False):
        if not audio_path:
            raise gr.Error("Record or upload audio first.")
        timestamps = bool(word_times) and has_head and task != "ast"
        try:
            result = transcriber.transcribe(audio_path, task, num_beams,
                                            name=Path(audio_path).name,
                                            hotwords=transcriber.hotwords(hotword_text),
                                            timestamps=timestamps)
        except (InputError, Busy) as err:
            raise gr.Error(str(err)) from err
        rows = [[s["start"], s["end"], s.get("transcript", ""), s.get("translation", "")]
                for s in result["segments"]]
        words = [[w["start"], w["end"], w["word"], w["confidence"]]
                 for s in result["segments"] for w in s.get("words", [])]
        for old in subtitles_dir.iterdir():  # Gradio has long copied those
            if time.time() - old.stat().st_mtime > 3600:
                shutil.rmtree(old, ignore_errors=True)
        srt = subtitles_dir / f"{uuid.uuid4().hex[:8]}" / (Path(audio_path).stem + ".srt")
        srt.parent.mkdir()
        srt.write_text(result["srt"], encoding="utf-8")  # Gradio copies it into its cache
        status = (f"{result['duration']:.1f} s of audio, {len(rows)} segment(s), decoded in "
                  f"{result['seconds']:.1f} s")
        return result["transcript"], result["translation"], rows, words, str(srt), status

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
                hotword_box = gr.Textbox(
                    label="Hotwords (names, terms: one a line; optional tab and weight)" + (
                        "" if has_head else ": this model has no CTC head to check them "
                        "against the audio, so list only words you expect (start the server "
                        "with --ctc_head)"), lines=2, elem_id="hotwords")
                word_box = gr.Checkbox(
                    label=("Word times and confidence (of the transcript)" if has_head else
                           "Word times: this model has no CTC head (start the server with "
                           "--ctc_head)"), value=False, interactive=has_head,
                    elem_id="word_times")
                button = gr.Button("Transcribe", variant="primary", elem_id="run")
            with gr.Column():
                transcript = gr.Textbox(label="Transcript", lines=3, elem_id="transcript")
                translation = gr.Textbox(label="Translation", lines=3, elem_id="translation")
                status = gr.Markdown(elem_id="status")
        table = gr.Dataframe(headers=["start (s)", "end (s)", "transcript", "translation"],
                             label="Segments", elem_id="segments", interactive=False)
        words = gr.Dataframe(headers=["start (s)", "end (s)", "word", "confidence"],
                             label="Words", elem_id="words", interactive=False)
        srt = gr.File(label="Subtitles (SRT)", elem_id="srt")
        button.click(run, [audio, task, beams, hotword_box, word_box],
                     [transcript, translation, table, words, srt, status],
                     api_name="transcribe", concurrency_limit=transcriber.max_batch)
    return page


API_KEY_ENV = "MOOER_API_KEY"


class BodyLimit:
    """An ASGI middleware that refuses a request body over `limit` bytes on the paths it
    guards, with 413 in the API's error shape: at once when Content-Length says so, else as
    soon as the bytes read pass the limit (a chunked upload declares no length), before any more
    of it is read or written anywhere."""

    def __init__(self, app: Any, limit: int, paths: tuple[str, ...], megabytes: float) -> None:
        self.app, self.limit, self.paths, self.megabytes = app, limit, paths, megabytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.paths):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, int(declared), scope["path"])
            return
        state = {"received": 0, "refused": False}

        async def counted() -> dict:
            if state["refused"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit:
                    state["refused"] = True
                    await self._refuse(send, None, scope["path"])
                    return {"type": "http.disconnect"}  # the app stops reading the body here
            return message

        async def unless_refused(message: dict) -> None:
            if not state["refused"]:
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not state["refused"]:
                raise  # (after a refusal the app's complaint about the cut body is moot)

    async def _refuse(self, send: Callable, declared: int | None, path: str) -> None:
        size = f"{declared / 2**20:.1f} MB" if declared is not None else "more than that"
        body = json.dumps(error_json(path, f"the upload is {size}, over the limit of "
                                     f"{self.megabytes:g} MB (mooer-serve --max_upload_mb)",
                                     413, "upload_too_large", "file"))
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body.encode()})


def error_json(path: str, message: str, status: int, code: str | None = None,
               param: str | None = None) -> dict:
    """An error body in the shape of the route's API: OpenAI's under /v1/, else ours."""
    if path.startswith("/v1/"):
        return error_body(message, status, code, param)
    return {"error": message}


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def build_app(transcriber: Transcriber, title: str = "mooer", api_key: str | None = None):
    """A FastAPI app: POST /api/transcribe, GET /api/health, OpenAI's audio API under /v1/
    (`openai_api`), and the page at /. With `api_key`, both APIs answer only requests with
    `Authorization: Bearer <api_key>` (what OpenAI clients send) and the page asks for it as its
    password."""
    import gradio as gr
    from anyio.from_thread import run as run_from_thread
    from anyio.lowlevel import current_token
    from fastapi import FastAPI, Form, Request, UploadFile
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.datastructures import UploadFile as FormFile

    app = FastAPI(title=f"{title} API")
    limit = int(transcriber.limits.max_upload_mb * 2**20)
    started = int(time.time())

    def problem(path: str, message: str, status: int, code: str | None = None,
                param: str | None = None, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(error_json(path, message, status, code, param), status,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        """A missing field or a value of the wrong type, in the API's error shape (400)."""
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}"
                             for e in err.errors())
        return problem(request.url.path, f"invalid request: {problems}", 400)

    @app.get("/api/health")
    def health() -> dict:
        return {"status": "ok", "tasks": transcriber.choices(),
                "model": str(transcriber.cfg.get("run_dir") or transcriber.cfg.get("checkpoint")
                             or transcriber.cfg.llm.get("path") or ""),
                "waiting": transcriber.waiting, "abandoned": transcriber.abandoned,
                "batches": transcriber.batcher.batches, "pending": transcriber.batcher.pending}

    # the form's other fields aside; under the API key check, which is added after it
    app.add_middleware(BodyLimit, limit=limit + 2**16, paths=("/api/transcribe", *ROUTES),
                       megabytes=transcriber.limits.max_upload_mb)

    if api_key:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def require_api_key(request: Request, call_next):
            """Our routes take the key as a bearer token (checked first: the middleware added
            last runs first); Gradio's own routes ask for the page's login (below)."""
            given = request.headers.get("authorization", "").encode()
            path = request.url.path
            if path.startswith(("/api/", "/v1/")) and not hmac.compare_digest(given, expected):
                return problem(path, "missing or wrong API key: send the header "
                               "`Authorization: Bearer <key>` (mooer-serve --api_key)", 401,
                               "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            return await call_next(request)

    async def decode_upload(request: Request, upload: Any, name: str,
                            work: Callable[[str, Callable[[], bool]], Any]) -> Any:
        """`work(path, gone)` on the upload saved to a temporary file, in a worker thread;
        `gone` tells whether the client has left (asked from the decoding thread)."""
        token = current_token()

        def gone() -> bool:
            return run_from_thread(request.is_disconnected, token=token)

        with tempfile.NamedTemporaryFile(suffix=upload_suffix(name)) as tmp:
            shutil.copyfileobj(upload.file, tmp)
            tmp.flush()
            return await run_in_threadpool(work, tmp.name, gone)

    def refused(path: str, name: str, err: Exception) -> JSONResponse:
        """The answer to a request that was not decoded: bad input, a full queue, a client that
        left."""
        if isinstance(err, Busy):
            return problem(path, str(err), 503, "server_busy", headers={"Retry-After": "5"})
        if isinstance(err, Gone):
            log.info("%s", err)
            return problem(path, str(err), 499, "client_closed_request")
        log.info("refused %s: %s", name, err)
        status = getattr(err, "status", 400)
        return problem(path, str(err), status, getattr(err, "code", None)
                       or ("upload_too_large" if status == 413 else "invalid_file"),
                       getattr(err, "param", "file"))

    @app.post("/api/transcribe")
    async def transcribe(request: Request, file: UploadFile, task: str = Form("asr"),
                         num_beams: int = Form(4), hotwords: str = Form(""),
                         hotword_score: float | None = Form(None),
                         word_timestamps: bool = Form(False)):
        try:
            name = upload_name(file.filename)
            graph = transcriber.hotwords(hotwords, hotword_score)
            result = await decode_upload(request, file, name, lambda path, gone: (
                transcriber.transcribe(path, task, num_beams, name, gone, graph,
                                       word_timestamps)))
        except (InputError, Busy, Gone) as err:
            return refused(request.url.path, getattr(file, "filename", "") or "", err)
        log.info("%s: %.1f s of audio (%s) in %.2f s", name, result["duration"], task,
                 result["seconds"])
        return result

    @app.get("/v1/models")
    def models() -> dict:
        """The one model this server decodes with (any `model` name is accepted)."""
        return {"object": "list", "data": [{"id": title, "object": "model", "created": started,
                                            "owned_by": "mooer"}]}

    async def openai_audio(request: Request) -> Response:
        """POST /v1/audio/transcriptions and /v1/audio/translations (see `openai_api`)."""
        path = request.url.path
        task = ROUTES[path]
        try:
            form = await request.form()
        except Exception as err:  # noqa: BLE001 - a body that is no form
            return problem(path, f"the body is not a multipart form: {err}", 400,
                           "invalid_request", None)
        try:
            upload = form.get("file")
            if not isinstance(upload, FormFile):
                raise ApiError("`file` is required: the recording, as a file field", "file",
                               "missing_required_parameter")
            granularities = [str(v) for v in form.getlist("timestamp_granularities[]")]
            options = parse_options(form, granularities, task)
            name = upload_name(upload.filename)
            graph = transcriber.hotwords(None, options.hotword_score, list(options.hotwords))
            done = await decode_upload(request, upload, name, lambda path, gone: (
                transcriber.recognize(path, [task], options.num_beams, name, gone, graph,
                                      options.word_times)))
        except (ApiError, InputError, Busy, Gone) as err:
            return refused(path, "the upload", err)
        finally:
            await form.close()
        log.info("%s: %.1f s of audio (%s, OpenAI API) in %.2f s", name, done.duration, task,
                 done.seconds)
        tokenizer = transcriber.recognizer.model.tokenizer
        body, media = render(options, task, done.segments, round(done.duration, 3),
                             lambda text: tokenizer.encode(text, add_special_tokens=False))
        if isinstance(body, dict):
            return JSONResponse(body, media_type=media)
        return Response(body, media_type=media)

    for route in ROUTES:
        app.add_api_route(route, openai_audio, methods=["POST"], include_in_schema=True)

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


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # an orderly exit: exit handlers clean up


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
                        help="segments decoded together, from any of the waiting requests "
                             "(1: one at a time)")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    add_segment_arguments(parser)
    parser.add_argument("--max_upload_mb", type=float, default=Limits.max_upload_mb)
    parser.add_argument("--max_duration_s", type=float, default=Limits.max_duration_s)
    parser.add_argument("--max_channels", type=int, default=Limits.max_channels)
    parser.add_argument("--max_queue", type=int, default=32,
                        help="requests waiting for the model before the API answers 503")
    parser.add_argument("--batch_wait_ms", type=float, default=10.0,
                        help="how long the first waiting segment waits for a batch to fill")
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
    # uvicorn shuts down on SIGTERM as on SIGINT, then raises the signal again under the handler
    # it found: by default SIGTERM's kills the process before its temporary files are removed
    signal.signal(signal.SIGTERM, _exit_on_signal)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
