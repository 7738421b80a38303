"""evaluate.py end to end on a tiny model and corpus test sets (shard and raw Kaldi forms),
mooer-transcribe, and the unknown-set error."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from mooer.config import compose_config
from mooer.data.text import read_table
from mooer.evaluation.run import evaluate
from mooer.models.build import build_speech_llm
from tests.conftest import REPO, TINY


def overrides(root: Path, tokenizer_dir: str, *extra: str) -> list[str]:
    return [*TINY, f"llm.tokenizer_path={tokenizer_dir}", f"test_data_dir={root / 'test'}",
            f"checkpoint={root / 'release'}", "device=cpu", "decoding.max_new_tokens=4",
            *extra]


def reference_tokens(text: str) -> int:
    """What a mixed error rate counts, written apart from the scorer: each Chinese character
    and each English word."""
    return len(re.findall(r"[\u4e00-\u9fff]|[A-Za-z0-9']+", text))


def test_evaluate_script_writes_every_file(tiny_release, corpus):
    root, tokenizer_dir = tiny_release
    decode_path = root / "decode"
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "evaluate.py", *overrides(root, tokenizer_dir, "task=asr_ast",
                                                   "testsets=[demo_test,demo_test_ast]",
                                                   "extra_testsets=[raw]",
                                                   f"decode_path={decode_path}",
                                                   f"paths.log_dir={root / 'logs'}")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-3000:]
    keys = sorted(k for k, _ in read_table(corpus / "text"))
    for name in ("demo_test", "demo_test_ast", "raw"):
        lines = (decode_path / name / "text").read_text().splitlines()
        assert [line.split("\t")[0] for line in lines] == keys
        assert all(line.count("\t") == 1 for line in lines)
        wer = (decode_path / name / "wer").read_text()
        assert wer.count("\nutt: ") == 24 and "\nOverall -> " in wer
    # N counts every reference token: each Chinese character, each English word
    tokens = sum(reference_tokens(t) for _, t in read_table(corpus / "text"))
    overall = (decode_path / "raw" / "wer").read_text().split("Overall -> ")[1]
    assert int(overall.split("N=")[1].split()[0]) == tokens
    assert "BLEU" in (decode_path / "demo_test_ast" / "bleu").read_text()
    summary = json.loads((decode_path / "summary.json").read_text())
    assert [s["name"] for s in summary] == ["demo_test", "demo_test_ast", "raw"]
    # rtf = decoding time / audio time: positive, and below the whole run's wall time over audio
    audio_s = sum(sf.info(p).frames / sf.info(p).samplerate for _, p in read_table(corpus / "wav.scp"))
    assert all(s["utterances"] == 24 and 0 < s["rtf"] < wall / audio_s for s in summary)
    assert [s["metric"] for s in summary] == ["mer", "bleu", "mer"]
    table = (decode_path / "summary.md").read_text()
    assert "| demo_test_ast | BLEU |" in table and table in result.stdout


def test_batched_evaluation_equals_batch_size_one(tiny_release):
    root, tokenizer_dir = tiny_release
    texts = []
    for batch_size in (1, 6):
        cfg, _ = compose_config("evaluate", overrides(
            root, tokenizer_dir, "testsets=[demo_test]", f"decoding.batch_size={batch_size}",
            f"checkpoint={root / 'full.ckpt'}",
            "decoding.num_beams=2", f"decode_path={root / f'bs{batch_size}'}"))
        evaluate(cfg)
        texts.append((root / f"bs{batch_size}" / "demo_test" / "text").read_text())
    assert texts[0] == texts[1]


def test_unknown_test_set_stops_before_decoding(tiny_release):
    root, tokenizer_dir = tiny_release
    cfg, _ = compose_config("evaluate", overrides(root, tokenizer_dir, "testsets=[aishell]",
                                                  "extra_testsets=[nothere]"))
    with pytest.raises(SystemExit, match=r"no test data for aishell .*nothere .*Sets found in "
                                         r".*: demo_test, raw"):
        evaluate(cfg)


def test_a_set_whose_task_has_no_prompt_stops_before_the_model_loads(tiny_release, monkeypatch):
    """evaluate.py's default task=asr holds no AST instruction: an AST set is refused, naming
    what to do, instead of decoding with a prompt written in Python."""
    import mooer.inference.recognizer as recognizer

    root, tokenizer_dir = tiny_release
    monkeypatch.setattr(recognizer, "load_for_decoding",
                        lambda *a, **k: pytest.fail("model loaded"))
    cfg, _ = compose_config("evaluate", overrides(root, tokenizer_dir, "testsets=[demo_test_ast]"))
    with pytest.raises(SystemExit, match=r"demo_test_ast is decoded as ast, but task 'ast' has no "
                                         r"prompt in task=asr \(it has asr\).*run_dir="):
        evaluate(cfg)


def test_transcribe_cli(tiny_release, corpus, tmp_path):
    root, tokenizer_dir = tiny_release
    stereo = tmp_path / "stereo44k.flac"
    audio, rate = sf.read(read_table(corpus / "wav.scp")[0][1])
    from scipy.signal import resample_poly

    sf.write(stereo, np.stack([resample_poly(audio, 441, 160)] * 2, 1), 44100)
    command = [str(Path(sys.executable).with_name("mooer-transcribe")), "--wav_path",
               read_table(corpus / "wav.scp")[1][1], str(stereo), "--task", "asr_ast",
               "--checkpoint", str(root / "release"), "--device", "cpu",
               "--max_new_tokens", "3", "--", *TINY, f"llm.tokenizer_path={tokenizer_dir}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # the default --format tsv: a header, then a segment a row (each file is one segment)
    header, *rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert header == ["recording", "start", "end", "asr", "ast"]
    assert [row[0] for row in rows] == [Path(read_table(corpus / "wav.scp")[1][1]).stem,
                                        "stereo44k"]
    assert all(len(row) == 5 and 0 <= float(row[1]) < float(row[2]) for row in rows)
    missing = subprocess.run([*command[:2], str(tmp_path / "none.wav"), *command[4:]],
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_a_checkpoint_matching_nothing_is_refused(tiny_release, tmp_path):
    from mooer.checkpoints import load_trainable
    from mooer.models.weights import CheckpointError

    root, tokenizer_dir = tiny_release
    empty = tmp_path / "empty.ckpt"
    torch.save({"state_dict": {}}, empty)
    cfg, _ = compose_config("evaluate", overrides(root, tokenizer_dir, f"checkpoint={empty}"))
    model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, None)
    with pytest.raises(CheckpointError, match="lacks .* of the weights this config trains"):
        load_trainable(model, empty)


def test_duplicate_and_extra_hypotheses_are_listed(tiny_release, corpus, tmp_path, caplog):
    root, tokenizer_dir = tiny_release
    test_dir = tmp_path / "test" / "dup"
    test_dir.mkdir(parents=True)
    first = Path((root / "test" / "demo_test" / "data.list").read_text().split()[0])
    (test_dir / "data.list").write_text(f"{first}\n{first}\n")  # the same shard twice
    with tarfile.open(first) as tar:
        keys = sorted({m.name.rpartition(".")[0] for m in tar.getmembers()})
    texts = dict(read_table(corpus / "text"))
    (test_dir / "text").write_text("".join(f"{k} {texts[k]}\n" for k in keys[1:]))
    cfg, _ = compose_config("evaluate", [*overrides(root, tokenizer_dir, "testsets=[]",
                                                    "extra_testsets=[dup]"),
                                         f"test_data_dir={tmp_path / 'test'}",
                                         f"decode_path={tmp_path / 'decode'}"])
    with caplog.at_level("WARNING"):
        evaluate(cfg)
    wer = (tmp_path / "decode" / "dup" / "wer").read_text()
    assert f"Hypotheses without a reference (not scored): 1: {keys[0]}" in wer
    assert f"Uttids decoded more than once (the last hypothesis kept): {len(keys)}: " in wer
    assert any("no reference" in r.message for r in caplog.records)


def test_run_dir_works_from_another_directory(tiny_release, tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from mooer.inference.loading import apply_run_dir

    root, tokenizer_dir = tiny_release
    started_in = Path(tokenizer_dir).parent
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    cfg, _ = compose_config("train", [*TINY, f"llm.tokenizer_path={Path(tokenizer_dir).name}"])
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    OmegaConf.save({"hydra": {"runtime": {"cwd": str(started_in)}}}, run / ".hydra" / "hydra.yaml")
    monkeypatch.chdir(tmp_path)  # elsewhere: the relative tokenizer path is not here
    evaluated = apply_run_dir(compose_config("evaluate", [f"run_dir={run}"])[0])
    assert evaluated.llm.tokenizer_path == str(started_in / Path(tokenizer_dir).name)
    assert Path(evaluated.llm.tokenizer_path).is_dir()


def test_transcribe_names_with_spaces_and_too_short_files(tiny_release, corpus, tmp_path, capsys):
    from mooer.inference.transcribe import main as transcribe

    root, tokenizer_dir = tiny_release
    spaced, plain = tmp_path / "sp ace.wav", tmp_path / "plain.wav"
    for copy in (spaced, plain):
        shutil.copy(read_table(corpus / "wav.scp")[0][1], copy)
    short = tmp_path / "short.wav"
    sf.write(short, np.zeros(160, dtype=np.float32), 16000)
    options = ["--checkpoint", str(root / "release"), "--device", "cpu", "--max_new_tokens", "3",
               "--num_beams", "1", "--", *TINY, f"llm.tokenizer_path={tokenizer_dir}"]
    assert transcribe(["--wav_path", str(spaced), str(short), str(plain), "--format", "text",
                       *options]) == 1
    out, err = capsys.readouterr()
    names_and_texts = [line.split("\t") for line in out.splitlines()]
    assert [name for name, _ in names_and_texts] == ["sp ace", "plain"]
    assert names_and_texts[0][1] == names_and_texts[1][1]  # the same audio, the same transcript
    assert names_and_texts[0][1]  # and not the empty text a lost file gave
    assert "skipped, shorter than 0.1 s: short (0.010 s)" in err
    assert transcribe(["--wav_path", str(short), *options]) == 2
    assert "nothing to transcribe" in capsys.readouterr().err


def test_transcribe_skips_and_names_bad_inputs_and_renames_twice_given_names(tiny_release,
                                                                             corpus, tmp_path,
                                                                             capsys):
    """One bad file in a list does not stop the others: each is skipped and named with why
    (exit 1); a name given twice in a wav.scp is renamed and said so, not merged."""
    from mooer.inference.transcribe import main as transcribe

    root, tokenizer_dir = tiny_release
    good = [path for _, path in read_table(corpus / "wav.scp")[:2]]
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio at all\n" * 50)
    nan = tmp_path / "nan.wav"
    samples = np.full(16000, 0.1, np.float32)
    samples[100] = np.nan
    sf.write(nan, samples, 16000, subtype="FLOAT")
    cut = tmp_path / "cut.wav"
    sf.write(tmp_path / "whole.wav", np.zeros(32000, np.float32), 16000, subtype="PCM_16")
    cut.write_bytes((tmp_path / "whole.wav").read_bytes()[:44 + 1000])
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    scp = tmp_path / "wav.scp"
    scp.write_text(f"a {good[0]}\nb {notes}\na {good[1]}\nc {nan}\nd {cut}\ne {folder}\n")
    options = ["--checkpoint", str(root / "release"), "--device", "cpu", "--max_new_tokens", "3",
               "--num_beams", "1", "--", *TINY, f"llm.tokenizer_path={tokenizer_dir}"]
    assert transcribe(["--wav_scp", str(scp), "--format", "text", *options]) == 1
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == ["a", "a_"]
    assert f"names given twice, renamed: a -> a_ ({good[1]})" in err
    skipped = err.split("skipped, unreadable: ")[1].splitlines()[0]
    assert f"b ({notes} is not audio that soundfile reads" in skipped
    assert f"c ({nan}: audio holds NaN or infinite samples)" in skipped
    assert f"d ({cut}: truncated WAV: header says 64000 data bytes, file has 1000)" in skipped
    assert f"e ({folder} is a directory, not an audio file)" in skipped


def test_transcribe_checks_out_dir_first_and_writes_each_recording_as_it_finishes(
        tiny_release, corpus, tmp_path, capsys, monkeypatch):
    from mooer.inference import transcribe as module
    from mooer.inference.recognizer import Recognizer

    root, tokenizer_dir = tiny_release
    options = ["--checkpoint", str(root / "release"), "--device", "cpu", "--max_new_tokens", "3",
               "--num_beams", "1", "--", *TINY, f"llm.tokenizer_path={tokenizer_dir}"]
    occupied = tmp_path / "results"
    occupied.write_text("a file where the directory should go")
    loaded = []
    monkeypatch.setattr(Recognizer, "from_config", lambda *a, **k: loaded.append(1))
    assert module.main(["--wav_scp", str(corpus / "wav.scp"), "--out_dir", str(occupied),
                        *options]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err and not loaded
    monkeypatch.undo()

    # 24 recordings in chunks of 16 (batch 1): the job is cut during the second chunk
    calls = []
    original = Recognizer.decode_prepared

    def cut_short(self, prepared, tasks, progress=True, **options):
        calls.append(len(prepared.names))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, prepared, tasks, progress, **options)

    monkeypatch.setattr(Recognizer, "decode_prepared", cut_short)
    out_dir = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        module.main(["--wav_scp", str(corpus / "wav.scp"), "--out_dir", str(out_dir),
                     "--format", "tsv", "--batch_size", "1", *options])
    names = [name for name, _ in read_table(corpus / "wav.scp")]
    assert calls == [16, 8]
    assert sorted(p.stem for p in out_dir.glob("*.tsv")) == sorted(names[:16])  # kept


def test_evaluate_with_a_hotword_list_biases_and_scores_it(tiny_release, corpus, tmp_path,
                                                           capsys):
    """hotwords=FILE: the ASR set is decoded towards the list (a heavy word lands in every
    answer of this untrained model), the wer file and the summary hold B-WER and U-WER, and
    the B-WER equals mooer-score's on the same files; a bad line stops before decoding."""
    from mooer.evaluation.scoring import main as mooer_score

    root, tokenizer_dir = tiny_release
    word = "二十七"
    hotwords = tmp_path / "hotwords.txt"
    hotwords.write_text(f"# a name\n{word}\t50\n", encoding="utf-8")
    cfg, _ = compose_config("evaluate", overrides(
        root, tokenizer_dir, "testsets=[demo_test]", f"hotwords={hotwords}",
        f"decode_path={tmp_path / 'decode'}", "decoding.num_beams=2"))
    [result] = evaluate(cfg)
    lines = (tmp_path / "decode" / "demo_test" / "text").read_text().splitlines()
    assert len(lines) == 24 and all(word in line.split("\t")[1] for line in lines)
    wer = (tmp_path / "decode" / "demo_test" / "wer").read_text()
    b_line = next(line for line in wer.splitlines() if line.startswith("B-WER -> "))
    assert float(b_line.split()[2]) == pytest.approx(result.b_wer, abs=0.005)
    assert result.u_wer is not None and "| B-WER | U-WER |" in (
        tmp_path / "decode" / "summary.md").read_text()
    references = tmp_path / "decode" / "demo_test" / "text.ref"
    references.write_text((root / "test" / "demo_test" / "text").read_text(encoding="utf-8"),
                          encoding="utf-8")
    assert mooer_score([str(references), str(tmp_path / "decode" / "demo_test" / "text"), "--v",
                        "0", "--hotwords", str(hotwords)]) == 0
    assert b_line in capsys.readouterr().out
    hotwords.write_text(f"{word}\tmany\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=re.escape(
            f"{hotwords}, line 1: the weight 'many' of '{word}' is not a number")):
        evaluate(cfg)
