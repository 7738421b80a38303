"""A shortened `make demo` end to end, and the notebooks executed on its outputs."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # (make test's --dist loadscope keeps a module on one worker)


@pytest.fixture(scope="session")  # built once a worker, whatever order its tests run in
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = subprocess.run(
        [sys.executable, "-m", "mooer.demo.run", "--out", str(out), "--num", "400",
         "--max_steps", "500", "--dev_num", "20", "--test_num", "40",
         "--unseen_voices_num", "20"],
        cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return out, result.stdout


def test_short_demo_produces_files_and_a_table_and_learns(demo):
    out, stdout = demo
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in stdout
    table = (out / "summary.md").read_text()
    assert table in stdout
    for row in ("held-out ASR CER", "ASR CER, unseen voices", "held-out AST BLEU",
                "training time", "total time", "checkpoint", "mooer-transcribe said"):
        assert f"| {row}" in table
    assert (out / "run" / "curves.png").stat().st_size > 10_000
    assert (out / "run" / "checkpoints" / "last.ckpt").is_file()
    for name in ("demo_test", "demo_unseen_voices", "demo_test_ast"):
        assert (out / "decode" / name / "text").is_file() and (out / "decode" / name / "wer").is_file()
    cer = float(table.split("| held-out ASR CER (unseen sentences)")[1].split("|")[1].split()[0])
    untrained = untrained_error_rate(out)
    assert untrained > 90  # random weights: (nearly) every token wrong
    assert cer < 0.7 * untrained, (cer, untrained, table)


def untrained_error_rate(out) -> float:
    """The held-out error rate of the same model before training (random weights)."""
    import torch
    from hydra.utils import instantiate

    from mooer.config import compose_config
    from mooer.evaluation.scoring import score
    from mooer.inference.decode import decode, decoding_loader
    from mooer.inference.loading import apply_run_dir, load_for_decoding

    cfg = apply_run_dir(compose_config("evaluate", [f"run_dir={out / 'run'}",
                                                    f"paths.data_dir={out / 'data'}"])[0])
    cfg.checkpoint = None
    model, dtype = load_for_decoding(cfg, torch.device("cpu"), "fp32")
    loader = decoding_loader(out / "data" / "demo" / "test" / "demo_test" / "data.list", model,
                             instantiate(cfg.encoder.frontend), instantiate(cfg.task), "asr", 16)
    decoded = decode(model, loader, {"num_beams": 1, "max_new_tokens": 48},
                     torch.device("cpu"), dtype)
    return score(decoded.references, decoded.hypotheses).error_rate


@pytest.mark.parametrize("name", ["01_data.ipynb", "02_decode.ipynb"])
def test_notebooks_execute(demo, name, tmp_path, monkeypatch):
    out, _ = demo
    monkeypatch.setenv("MOOER_NB_WORK", str(tmp_path / "nb"))
    monkeypatch.setenv("MOOER_NB_NUM", "20")
    monkeypatch.setenv("MOOER_NB_RUN", str(out / "run"))
    monkeypatch.setenv("MOOER_NB_TEST", str(out / "data" / "demo" / "test" / "demo_test"))
    monkeypatch.setenv("MOOER_NB_DATA", str(out / "data"))
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells
                      for o in cell.get("outputs", []))
    if name == "01_data.ipynb":
        assert "packed 20 utterances" in outputs
        assert (tmp_path / "nb" / "features.png").is_file()
    else:
        assert "error rate" in outputs and "logged training steps" in outputs
        assert (out / "run" / "notebook_curves.png").is_file()
