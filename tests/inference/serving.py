"""Starting mooer-serve for tests, and posting to it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import TINY


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tiny_release, log_path: Path, *flags: str, env: dict | None = None
                 ) -> tuple[subprocess.Popen, str, list[str]]:
    """mooer-serve on the tiny release model (both tasks) with `flags`, answering: (the
    process, its URL, its full flags)."""
    import httpx

    root, tokenizer_dir = tiny_release
    port = free_port()
    flags = ["--checkpoint", str(root / "release"), "--device", "cpu", "--port", str(port),
             "--max_new_tokens", "4", "--max_upload_mb", "1", "--max_duration_s", "20",
             "--max_segment_s", "4", *flags, "--", *TINY, f"llm.tokenizer_path={tokenizer_dir}"]
    command = [str(Path(sys.executable).with_name("mooer-serve")), *flags]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        assert process.poll() is None, log_path.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return process, url, flags
        except httpx.HTTPError:
            time.sleep(0.5)
    process.kill()
    pytest.fail("mooer-serve did not answer in 180 s:\n" + log_path.read_text()[-3000:])


def post(url: str, path: Path, task: str = "asr_ast", num_beams: int = 1):
    import httpx

    with open(path, "rb") as f:
        return httpx.post(f"{url}/api/transcribe", files={"file": (path.name, f)},
                          data={"task": task, "num_beams": str(num_beams)}, timeout=300)
