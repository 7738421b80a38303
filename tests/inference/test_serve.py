"""mooer-serve: input checks, the HTTP API (bad inputs, 8 concurrent requests), and the page
driven in headless Chromium (Debian's `chromium`, through Playwright; nothing is downloaded)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mooer.data.text import read_table
from mooer.inference.serve import InputError, Limits, check_audio
from tests.inference.serving import post, start_server

CHROMIUM = os.environ.get("MOOER_CHROMIUM", "/usr/bin/chromium")
LIMITS = Limits(max_upload_mb=1, max_duration_s=20)


def bad_inputs(directory: Path) -> dict[str, tuple[Path, str]]:
    """Files the service must refuse, each with a phrase its message must hold."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {"empty": (directory / "empty.wav", "empty"),
             "not audio": (directory / "notes.wav", "not audio"),
             "0.05 s": (directory / "click.wav", "0.050 s long"),
             "8 channels": (directory / "array.wav", "8 channels"),
             "too long": (directory / "long.flac", "over the limit of 20 s"),
             "too large": (directory / "large.wav", "over the limit of 1 MB"),
             "damaged": (directory / "cut.wav", "cannot be decoded: truncated WAV: header says "
                                                "64000 data bytes, file has 32000"),
             "NaN samples": (directory / "nan.wav", "holds NaN or infinite samples")}
    files["empty"][0].write_bytes(b"")
    files["not audio"][0].write_text("this is a text file, not audio\n" * 20)
    sf.write(files["0.05 s"][0], rng.normal(0, 0.1, 800), 16000)
    sf.write(files["8 channels"][0], rng.normal(0, 0.1, (16000, 8)), 16000)
    sf.write(files["too long"][0], np.zeros(16000 * 25), 16000)
    sf.write(files["too large"][0], rng.normal(0, 0.1, 16000 * 19), 16000, subtype="FLOAT")
    whole = directory / "whole.wav"
    sf.write(whole, rng.normal(0, 0.1, 32000), 16000, subtype="PCM_16")  # 2 s, 64,000 bytes
    files["damaged"][0].write_bytes(whole.read_bytes()[:44 + 32000])  # its header, half its data
    nan = rng.normal(0, 0.1, 16000).astype(np.float32)
    nan[8000] = np.nan
    sf.write(files["NaN samples"][0], nan, 16000, subtype="FLOAT")
    return files


def test_bad_inputs_get_clear_messages(tmp_path):
    for what, (path, phrase) in bad_inputs(tmp_path).items():
        with pytest.raises(InputError) as caught:
            check_audio(path, LIMITS, path.name)
        assert phrase in str(caught.value), (what, str(caught.value))
        assert caught.value.status == (413 if what == "too large" else 400)
    good = tmp_path / "good.ogg"
    sf.write(good, np.zeros(8000 * 3), 8000)  # any format soundfile reads
    assert check_audio(good, LIMITS) == pytest.approx(3.0)


def test_api_transcribes_and_refuses_bad_input_and_keeps_serving(server, corpus, tmp_path):
    import httpx

    url, expected, *_ = server
    health = httpx.get(f"{url}/api/health").json()
    assert health["tasks"] == ["asr", "ast", "asr_ast"]
    wav = Path(read_table(corpus / "wav.scp")[0][1])
    answer = post(url, wav)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    want = expected.transcribe(wav, "asr_ast", 1, wav.name)
    for key in ("name", "duration", "task", "transcript", "translation", "segments", "srt"):
        assert result[key] == want[key], key
    assert result["duration"] == pytest.approx(sf.info(wav).duration, abs=1e-3)
    assert result["segments"][0]["start"] == 0.0
    assert result["srt"].startswith("1\n00:00:00,000 --> 00:00:0")

    for what, (path, phrase) in bad_inputs(tmp_path).items():
        refused = post(url, path)
        assert refused.status_code == (413 if what == "too large" else 400), (what, refused.text)
        assert phrase in refused.json()["error"], (what, refused.text)
        assert "/tmp" not in refused.json()["error"]  # no server paths in messages
    refused = post(url, wav, task="summarize")
    assert refused.status_code == 400 and "not served" in refused.json()["error"]
    assert post(url, wav).json()["transcript"] == want["transcript"]  # still serving


def test_every_api_error_has_one_shape(server, corpus):
    """A missing field, a value of the wrong type and a file name no file system takes: 400 with
    {"error": ...} naming the problem (FastAPI's own answer was 422 in another shape, and the
    names a plain-text 500)."""
    import httpx

    url, *_ = server
    wav = Path(read_table(corpus / "wav.scp")[0][1])
    missing = httpx.post(f"{url}/api/transcribe", data={"task": "asr"}, timeout=60)
    assert missing.status_code == 400 and "file: Field required" in missing.json()["error"]
    with open(wav, "rb") as f:
        wrong = httpx.post(f"{url}/api/transcribe", files={"file": (wav.name, f)},
                           data={"num_beams": "abc"}, timeout=60)
    assert wrong.status_code == 400 and "num_beams" in wrong.json()["error"]
    for name in ("a." + "x" * 300, "a\x00b.wav", "tab\tin.wav"):
        # the multipart body by hand: a client library would escape the NUL and the tab
        body = (b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\""
                + name.encode() + b"\"\r\nContent-Type: audio/wav\r\n\r\n" + wav.read_bytes()
                + b"\r\n--b0undary--\r\n")
        refused = httpx.post(f"{url}/api/transcribe", content=body, timeout=60,
                             headers={"Content-Type": "multipart/form-data; boundary=b0undary"})
        assert refused.status_code == 400, (repr(name), refused.text)
        assert "not a usable file name" in refused.json()["error"]
    odd = "speech.w" + "a" * 40  # a long extension is dropped, the audio still read
    with open(wav, "rb") as f:
        answer = httpx.post(f"{url}/api/transcribe", files={"file": (odd, f)},
                            data={"task": "asr", "num_beams": "1"}, timeout=120)
    assert answer.status_code == 200 and answer.json()["name"] == odd


def test_a_chunked_upload_over_the_limit_is_refused_as_it_is_read(server, corpus):
    """No Content-Length to refuse it by: the body is counted as it arrives, and the upload is
    refused (413) once it passes --max_upload_mb (1 MB here): the server stops reading, so the
    client cannot push its 300 MB (before, all of it was written to disk, then refused); the
    server goes on serving."""
    import httpx

    url, *_ = server
    boundary = "mooer-test-boundary"
    sent = {"bytes": 0}

    def body():  # a generator: httpx sends it chunked, with no Content-Length
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
               'filename="big.wav"\r\nContent-Type: audio/wav\r\n\r\n').encode()
        for _ in range(300 * 16):  # 300 MB in 64 KiB pieces
            sent["bytes"] += 65536
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        refused = httpx.post(f"{url}/api/transcribe", content=body(), timeout=60,
                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    except httpx.HTTPError:  # the server closed the connection while the client still sent
        refused = None
    if refused is not None:
        assert refused.status_code == 413, refused.text
        assert "over the limit of 1 MB" in refused.json()["error"]
    assert sent["bytes"] < 64 * 2**20, sent  # what the socket buffers took, not 300 MB
    wav = Path(read_table(corpus / "wav.scp")[0][1])
    assert post(url, wav, "asr").status_code == 200  # still serving


def test_a_request_whose_client_left_is_not_decoded(patient_server, corpus):
    """A client gives up while its request waits for its batch: when the batch is decoded, its
    segment is left out (counted in /api/health), and the server answers the next one. The
    client leaves only once the server shows its segment waiting, so the order is certain."""
    import httpx

    url = patient_server
    before = httpx.get(f"{url}/api/health").json()
    wav = Path(read_table(corpus / "wav.scp")[0][1])
    boundary = "mooer-test-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="task"\r\n\r\nasr\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{wav.name}"\r\nContent-Type: audio/wav\r\n\r\n').encode()
    body += wav.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    host, port = url.removeprefix("http://").split(":")
    head = (f"POST /api/transcribe HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
    client = socket.create_connection((host, int(port)), timeout=30)
    client.sendall(head + body)
    deadline = time.time() + 60
    while httpx.get(f"{url}/api/health").json()["pending"] < 1:
        assert time.time() < deadline, "the request never reached the batcher"
        time.sleep(0.05)
    client.close()  # the client leaves while its segment waits (3 s) for its batch
    while httpx.get(f"{url}/api/health").json()["pending"] > 0:
        assert time.time() < deadline, "the batch was never taken"
        time.sleep(0.05)
    assert post(url, wav, "asr").status_code == 200
    after = httpx.get(f"{url}/api/health").json()
    assert after["abandoned"] == before["abandoned"] + 1
    assert after["batches"] == before["batches"] + 1  # only the second request was decoded


def test_the_api_takes_a_hotword_list(server, corpus):
    """/api/transcribe's `hotwords` (a line a word, optional tab and weight) and
    `hotword_score`: the transcript takes the heavy word, the translation is as without a
    list; a bad line is a 400 naming it."""
    import httpx

    url, expected, *_ = server
    wav = Path(read_table(corpus / "wav.scp")[0][1])
    want = expected.transcribe(wav, "asr_ast", 1, wav.name)

    def ask(**fields: str) -> httpx.Response:
        with open(wav, "rb") as f:
            return httpx.post(f"{url}/api/transcribe", files={"file": (wav.name, f)},
                              data={"task": "asr_ast", "num_beams": "1", **fields}, timeout=300)

    answer = ask(hotwords="张伟\n二十七\t40").json()
    assert "二十七" in answer["transcript"] and "二十七" not in want["transcript"]
    assert answer["translation"] == want["translation"]
    assert ask(hotwords="二十七", hotword_score="40").json()["transcript"] == answer["transcript"]
    refused = ask(hotwords="ok\n二十七\tmany")
    assert refused.status_code == 400
    assert refused.json()["error"] == "hotwords, line 2: the weight 'many' of '二十七' is not a number"


def test_requests_with_different_hotword_lists_share_a_batch(server, patient_server, corpus):
    """Two requests at once, each with its own list: decoded in one batch (the patient server
    waits 3 s for it to fill), each transcript what its list gives alone."""
    import httpx

    _, expected, *_ = server
    url = patient_server
    wavs = [Path(p) for _, p in read_table(corpus / "wav.scp")[:2]]
    lists = ["二十七\t40", "三十\t40"]
    want = [expected.transcribe(w, "asr", 1, w.name, hotwords=expected.hotwords(h))["transcript"]
            for w, h in zip(wavs, lists, strict=True)]
    assert "二十七" in want[0] and "三十" in want[1] and "三十" not in want[0]

    def ask(pair: tuple[Path, str]) -> httpx.Response:
        wav, hotwords = pair
        with open(wav, "rb") as f:
            return httpx.post(f"{url}/api/transcribe", files={"file": (wav.name, f)},
                              data={"task": "asr", "num_beams": "1", "hotwords": hotwords},
                              timeout=300)

    before = httpx.get(f"{url}/api/health").json()["batches"]
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(ask, zip(wavs, lists, strict=True)))
    assert [a.json()["transcript"] for a in answers] == want
    assert httpx.get(f"{url}/api/health").json()["batches"] == before + 1


def test_past_max_queue_the_answer_is_503_with_retry_after(patient_server, corpus):
    """Four requests at once, two allowed to wait: two answered, two refused at once with 503
    and Retry-After, in the shape of the API they asked (ours, OpenAI's); the server goes on
    serving."""
    import httpx

    url = patient_server
    wav = Path(read_table(corpus / "wav.scp")[0][1])

    def ask(route: str) -> httpx.Response:
        with open(wav, "rb") as f:
            return httpx.post(f"{url}{route}", files={"file": (wav.name, f)},
                              data={"task": "asr", "num_beams": "1", "model": "m"}, timeout=300)

    routes = ["/api/transcribe", "/v1/audio/transcriptions"] * 2
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, routes))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200, 200, 503, 503], [a.text for a in answers]
    for route, answer in zip(routes, answers, strict=True):
        if answer.status_code != 503:
            continue
        assert answer.headers["Retry-After"] == "5"
        if route.startswith("/v1/"):
            error = answer.json()["error"]
            assert (error["type"], error["code"]) == ("server_error", "server_busy")
            assert "busy" in error["message"]
        else:
            assert "busy" in answer.json()["error"]
    assert post(url, wav, "asr").status_code == 200


def test_concurrent_requests_are_decoded_in_shared_batches(server, corpus):
    """8 requests at once: their segments share batches (fewer batches than requests), and each
    answer is what its recording gives alone (greedy)."""
    import httpx

    url, expected, *_ = server
    paths = [Path(p) for _, p in read_table(corpus / "wav.scp")[8:16]]
    want = [expected.transcribe(p, "asr", 1, p.name)["transcript"] for p in paths]
    before = httpx.get(f"{url}/api/health").json()["batches"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: post(url, p, "asr", 1), paths))
    assert [a.json()["transcript"] for a in answers] == want
    assert httpx.get(f"{url}/api/health").json()["batches"] - before < 8


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_server_leaves_no_temporary_files(tiny_release, corpus, tmp_path, signum):
    """SIGTERM (what systemd and docker send) cleans up as Ctrl-C does: the server's own
    temporary directories (the page's subtitles, segments of long recordings) are gone."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    process, url, _ = start_server(tiny_release, tmp_path / "serve.log",
                                   env={"TMPDIR": str(temp),
                                        "GRADIO_TEMP_DIR": str(tmp_path / "gradio")})
    try:
        assert any(p.name.startswith("mooer-serve-") for p in temp.iterdir())  # made at start
        wav = Path(read_table(corpus / "wav.scp")[0][1])
        assert post(url, wav, "asr").status_code == 200
    finally:
        process.send_signal(signum)
        returncode = process.wait(timeout=60)
    assert returncode in (0, -signum, 128 + signum)
    assert sorted(p.name for p in temp.iterdir()) == []


def test_a_long_recording_comes_back_in_timed_segments(server, corpus, tmp_path):
    url, expected, *_ = server
    silence = np.zeros(16000, np.float32)
    pieces, starts = [silence], []
    for _, path in read_table(corpus / "wav.scp")[3:6]:
        starts.append(sum(len(p) for p in pieces) / 16000)
        pieces += [sf.read(path, dtype="float32")[0], silence]
    recording = tmp_path / "three.flac"
    sf.write(recording, np.concatenate(pieces), 16000)  # about 9 s, over --max_segment_s 4
    result = post(url, recording, "asr").json()
    segments = result["segments"]
    assert len(segments) == 3, segments
    assert [round(s["start"]) for s in segments] == [round(start) for start in starts]
    assert all(s["end"] - s["start"] <= 4 for s in segments)
    assert result["srt"].count(" --> ") == 3
    assert result["transcript"] == expected.transcribe(recording, "asr", 1)["transcript"]


def test_eight_concurrent_requests_are_queued_and_each_gets_its_own_result(server, corpus):
    url, expected, *_ = server
    rows = read_table(corpus / "wav.scp")[:8]
    paths = [Path(path) for _, path in rows]
    want = [expected.transcribe(path, "asr", 2, path.name)["transcript"] for path in paths]
    assert len(set(want)) > 1  # distinct answers, so a mix-up would show
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: post(url, p, "asr", 2), paths))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    assert [a.json()["name"] for a in answers] == [p.name for p in paths]
    assert [a.json()["transcript"] for a in answers] == want


def call_gradio_api(url: str, path: str) -> str:
    """Gradio's own API route, called as a hostile client would: with a file *path* on the
    server instead of an upload. Returns the event stream's text."""
    import httpx

    data = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, "asr", 1]}
    started = httpx.post(f"{url}/gradio_api/call/transcribe", json=data, timeout=60)
    assert started.status_code == 200, started.text
    event = started.json()["event_id"]
    return httpx.get(f"{url}/gradio_api/call/transcribe/{event}", timeout=120).text


def test_gradio_api_reads_only_files_the_server_was_sent(server, corpus, tmp_path):
    """A path on the server handed to Gradio's API is refused: not opened, not transcribed, not
    copied where /gradio_api/file= would serve it (the hole: any file the server could read)."""
    import httpx

    url, _, _, cache = server
    secret = tmp_path / "secret.wav"  # real audio the server could transcribe, readable by it
    shutil.copy(read_table(corpus / "wav.scp")[0][1], secret)
    secret.chmod(0o600)
    for path in (str(secret), "/etc/passwd", str(tmp_path / "absent.wav")):
        stream = call_gradio_api(url, path)
        assert "event: error" in stream and "event: complete" not in stream, (path, stream)
    copied = [f for f in cache.rglob("*") if f.is_file()
              and f.read_bytes() in (secret.read_bytes(), Path("/etc/passwd").read_bytes())]
    assert copied == []
    for path in (secret, Path("/etc/passwd")):
        served = httpx.get(f"{url}/gradio_api/file={path}", timeout=30)
        assert served.status_code in (403, 404) and served.content != path.read_bytes()


def test_an_api_key_guards_the_api_and_the_page(server, corpus, monkeypatch, capsys):
    from fastapi.testclient import TestClient

    from mooer.inference.serve import API_KEY_ENV, build_app, main

    _, expected, *_ = server
    wav = Path(read_table(corpus / "wav.scp")[0][1])
    good, wrong = {"Authorization": "Bearer s3cret"}, {"Authorization": "Bearer s3cre"}
    with TestClient(build_app(expected, api_key="s3cret")) as client:
        for headers in ({}, wrong):
            refused = client.get("/api/health", headers=headers)
            assert refused.status_code == 401 and "API key" in refused.json()["error"]
            with open(wav, "rb") as f:
                refused = client.post("/api/transcribe", files={"file": (wav.name, f)},
                                      headers=headers)
            assert refused.status_code == 401
        assert client.get("/api/health", headers=good).json()["tasks"] == ["asr", "ast", "asr_ast"]
        for headers in ({}, wrong):  # OpenAI's routes, in OpenAI's error shape
            refused = client.get("/v1/models", headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "invalid_api_key"
            with open(wav, "rb") as f:
                refused = client.post("/v1/audio/transcriptions", data={"model": "m"},
                                      files={"file": (wav.name, f)}, headers=headers)
            assert refused.status_code == 401
            assert refused.json()["error"]["type"] == "invalid_request_error"
        with open(wav, "rb") as f:
            answer = client.post("/v1/audio/transcriptions", data={"model": "m"},
                                 files={"file": (wav.name, f)}, headers=good)
        assert answer.json() == {"text": expected.transcribe(wav, "asr", 1)["transcript"]}
        with open(wav, "rb") as f:
            answer = client.post("/api/transcribe", files={"file": (wav.name, f)},
                                 data={"task": "asr", "num_beams": "1"}, headers=good)
        assert answer.json()["transcript"] == expected.transcribe(wav, "asr", 1)["transcript"]
        # Gradio's own API and the page's config need the page's login
        call = client.post("/gradio_api/call/transcribe", json={"data": [None, "asr", 1]})
        assert call.status_code in (401, 403)
        assert client.get("/config").status_code in (401, 403)
    # serving other machines without a key is refused before the model is loaded
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert main(["--host", "0.0.0.0", "--checkpoint", "/nonexistent"]) == 2
    assert "--api_key" in capsys.readouterr().err


def need_chromium() -> None:
    """Skip, saying why, where Debian's chromium is missing; fail in CI (.ci/run installs it and
    sets MOOER_REQUIRE_CHROMIUM=1)."""
    if shutil.which(CHROMIUM) is None:
        message = f"no Chromium at {CHROMIUM}: apt-get install -y chromium (.ci/run does)"
        if os.environ.get("MOOER_REQUIRE_CHROMIUM") == "1":
            pytest.fail(message)
        pytest.skip(message)


BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def drive_page(url: str, wav: Path | None, screenshot: Path, bad: Path | None = None,
               timeout_s: float = 120, hotwords: str = "", word_times: bool = False
               ) -> dict[str, str]:
    """Open the page in headless Chromium, upload `wav` (or, when None, record 2 s from the
    browser's fake microphone, a beep), choose both tasks, type `hotwords`, press Transcribe
    and read the transcript, translation and status off the page; saves a screenshot. Then,
    with `bad`, upload that and read the error the page shows."""
    from playwright.sync_api import sync_playwright

    wait = timeout_s * 1000
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=BROWSER_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.grant_permissions(["microphone"])
            page = context.new_page()
            page.goto(url, timeout=wait)
            # the page uploads the clip after it is recorded or chosen: Transcribe pressed
            # before that upload answers finds no audio ("Record or upload audio first")
            uploaded = page.expect_response(lambda r: "/gradio_api/upload" in r.url,
                                            timeout=wait)
            if wav is None:
                page.locator("#audio button[aria-label='Record audio']").click()
                page.locator("#audio button.record-button").click()
                page.wait_for_timeout(2000)
                with uploaded:
                    page.locator("#audio button.stop-button").click()
            else:
                with uploaded:
                    page.locator("#audio input[type=file]").set_input_files(str(wav))
            page.locator("#audio audio, #audio .waveform-container, #audio [data-testid="
                         "'waveform-Audio']").first.wait_for(timeout=wait)
            page.get_by_label("both").check()
            if hotwords:
                page.locator("#hotwords textarea").fill(hotwords)
            texts = {"word_times_enabled": str(
                page.locator("#word_times input[type=checkbox]").is_enabled()),
                "hotwords_label": page.locator("#hotwords").inner_text()}
            if word_times:
                page.locator("#word_times input[type=checkbox]").check()
            page.locator("#run").click()
            page.locator("#status").get_by_text("segment").wait_for(timeout=wait)
            texts.update({"transcript": page.locator("#transcript textarea").input_value(),
                          "translation": page.locator("#translation textarea").input_value(),
                          "status": page.locator("#status").inner_text(),
                          "words": page.locator("#words").inner_text()})
            page.screenshot(path=str(screenshot), full_page=True)
            if bad is not None:
                page.locator("#audio button[aria-label='Clear']").click()
                with page.expect_response(lambda r: "/gradio_api/upload" in r.url, timeout=wait):
                    page.locator("#audio input[type=file]").set_input_files(str(bad))
                page.locator("#run").click()
                error = page.get_by_text(" channels; at most ")
                error.first.wait_for(timeout=wait)
                texts["error"] = error.first.inner_text()
        finally:
            browser.close()
    return texts


@pytest.mark.slow
def test_the_page_in_headless_chromium(server, corpus, tmp_path):
    need_chromium()
    url, expected, *_ = server
    wav = Path(read_table(corpus / "wav.scp")[2][1])
    screenshot = tmp_path / "page.png"
    texts = drive_page(url, wav, screenshot, bad=bad_inputs(tmp_path / "bad")["8 channels"][0])
    want = expected.transcribe(wav, "asr_ast", 4, wav.name)
    assert texts["transcript"] == want["transcript"]
    assert texts["translation"] == want["translation"]
    assert "1 segment(s)" in texts["status"]
    assert screenshot.stat().st_size > 10_000 and screenshot.read_bytes()[:4] == b"\x89PNG"
    assert "array.wav has 8 channels" in texts["error"]  # shown on the page
    assert texts["word_times_enabled"] == "False"  # no CTC head: the box says why, disabled
    # and the hotwords box that a list goes unchecked
    assert "no CTC head" in texts["hotwords_label"] and "--ctc_head" in texts["hotwords_label"]


@pytest.mark.slow
def test_the_page_gives_word_times_with_a_ctc_head(head_server, corpus, tmp_path):
    """A server started with --ctc_head: the page's box asks for word times, and the words
    table holds the transcript's words, each with its times; the API gives the same words."""
    import httpx

    from mooer.inference.align import words_of

    need_chromium()
    url, _ = head_server
    wav = Path(read_table(corpus / "wav.scp")[2][1])
    texts = drive_page(url, wav, tmp_path / "words.png", word_times=True)
    assert texts["word_times_enabled"] == "True"
    assert texts["hotwords_label"].startswith("Hotwords") and "CTC" not in texts["hotwords_label"]
    answer = httpx.post(f"{url}/api/transcribe", files={"file": wav.open("rb")},
                        data={"task": "asr", "num_beams": "4", "word_timestamps": "true"},
                        timeout=120).json()
    words = [w for s in answer["segments"] for w in s["words"]]
    assert [w["word"] for w in words] == [w for w, _ in words_of([answer["transcript"]])]
    assert words and answer["transcript"] == texts["transcript"]
    for word in words:  # each word's row on the page: its text and its times
        assert word["word"] in texts["words"]
        shown = {f"{word['start']}", f"{word['start']:g}"}  # 0.0 may show as 0
        assert any(text in texts["words"] for text in shown), (word, texts["words"])
        assert 0 <= word["start"] < word["end"]


@pytest.mark.slow
def test_the_page_records_from_the_microphone(server, tmp_path):
    need_chromium()
    """Recorded from the browser's fake microphone (a beep), with a hotword typed in the page's
    box: the transcript of this untrained model takes the heavy word, the translation not."""
    url, *_ = server
    texts = drive_page(url, None, tmp_path / "microphone.png", hotwords="二十七\t40")
    seconds = float(texts["status"].split(" s of audio")[0])
    assert "1 segment(s)" in texts["status"] and 1.0 <= seconds <= 3.0, texts["status"]
    assert "二十七" in texts["transcript"] and "二十七" not in texts["translation"]
