"""Servers the serving tests share: one a worker, and a patient one a module."""

from __future__ import annotations

import pytest

from tests.inference.serving import start_server


@pytest.fixture(scope="session")  # one server a worker
def server(tiny_release, tmp_path_factory):
    """mooer-serve on the tiny release model, its URL, the Transcriber that gives the expected
    results in-process, its log and Gradio's cache dir."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    cache = tmp_path_factory.mktemp("gradio-cache")  # Gradio's uploads and the files it serves
    process, url, flags = start_server(tiny_release, log_path,
                                       env={"GRADIO_TEMP_DIR": str(cache)})

    from mooer.inference.serve import Transcriber, build_parser

    # the server's own transcriber, in-process
    expected = Transcriber.from_args(build_parser().parse_args(flags))
    yield url, expected, log_path, cache
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def patient_server(tiny_release, tmp_path_factory):
    """A server whose batches wait 3 s to fill and that lets 2 requests wait: what waits
    and what is refused is then certain."""
    log_path = tmp_path_factory.mktemp("patient") / "serve.log"
    process, url, _ = start_server(tiny_release, log_path, "--batch_wait_ms", "3000",
                                   "--max_queue", "2")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def head_server(tiny_release, tmp_path_factory):
    """A server on the tiny release with a CTC head given apart (`--ctc_head`, a random head):
    word times on the page and the APIs. Its URL and the head's file."""
    import torch

    from mooer.config import compose_config
    from mooer.models.build import build_speech_llm
    from tests.conftest import TINY

    root, tokenizer_dir = tiny_release
    cfg, _ = compose_config("train", [*TINY, f"llm.tokenizer_path={tokenizer_dir}"])
    model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm)
    torch.manual_seed(5)
    model.train_ctc_head_only()
    head = tmp_path_factory.mktemp("head") / "last.ckpt"
    torch.save({"state_dict": {f"model.ctc_head.{k}": v
                               for k, v in model.ctc_head.state_dict().items()}}, head)
    log_path = tmp_path_factory.mktemp("head_server") / "serve.log"
    process, url, _ = start_server(tiny_release, log_path, "--ctc_head", str(head))
    yield url, head
    process.terminate()
    process.wait(timeout=30)
