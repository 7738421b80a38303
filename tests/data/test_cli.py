"""mooer-data stats / show."""

from __future__ import annotations

from mooer.data.cli import main


def test_stats_reports_counts_hours_and_histogram(shards, corpus, capsys):
    """Counts, hours, durations and text lengths as the corpus' own files give them (audio
    headers read with soundfile, transcripts from its text file)."""
    import numpy as np
    import soundfile as sf

    from mooer.data.text import read_table

    durations = np.array([sf.info(path).frames / sf.info(path).samplerate
                          for _, path in read_table(corpus / "wav.scp")])
    lengths = np.array([len(text) for _, text in read_table(corpus / "text")])
    assert main(["stats", str(shards)]) == 0
    out = capsys.readouterr().out
    assert f"{shards}: 5 shards" in out
    assert f"utterances: 24    hours: {durations.sum() / 3600:.3f}" in out
    assert (f"duration (s): min {durations.min():.2f}  mean {durations.mean():.2f}  "
            f"median {np.median(durations):.2f}  max {durations.max():.2f}") in out
    assert (f"text length (chars): min {lengths.min()}  mean {lengths.mean():.1f}  "
            f"max {lengths.max()}") in out
    assert "duration histogram:" in out and "rejected when packed: 0" in out
    bars = [line for line in out.splitlines() if line.strip().endswith("#") or " s " in line]
    assert sum(int(line.split()[2]) for line in bars if line.strip()[0].isdigit()) == 24


def test_show_prints_samples_and_token_layout(shards, tokenizer, capsys):
    tokenizer_dir = tokenizer.name_or_path
    assert main(["show", str(shards), "-n", "2", "--tokenizer", tokenizer_dir]) == 0
    out = capsys.readouterr().out
    assert out.count("    text: ") == 2
    assert "Transcribe speech to text." in out and "'<|im_end|>'" in out


def test_show_uses_the_prompt_format_a_run_recorded(shards, tokenizer, corpus, tmp_path, capsys):
    """A run's own prompt (here the demo's short one, multi-task with the translations table)
    and labels, not a default written in Python."""
    from omegaconf import OmegaConf

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    task = {"_target_": "mooer.data.prompts.PromptFormat", "name": "asr_ast", "template": "{}",
            "instructions": {"asr": "<|im_start|>Transcribe<|im_end|>",
                             "ast": "<|im_start|>Translate<|im_end|>"},
            "replace_text_path": str(corpus / "text.en"), "replace_type": "instruction",
            "weights": {"asr": 0.0, "ast": 1.0}}
    OmegaConf.save({"task": task}, run / ".hydra" / "config.yaml")
    argv = ["show", str(shards), "-n", "3", "--tokenizer", tokenizer.name_or_path]
    assert main([*argv, "--run_dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.count("prompt (task ast, ") == 3
    assert "'<|im_start|>Translate<|im_end|>'" in out and "Transcribe speech" not in out
    assert main([*argv, "--task", "ast"]) == 2  # conf/task/ast.yaml's table is not there
    assert "replace_text_path" in capsys.readouterr().err


def test_missing_list(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "none.list")]) == 2
    assert "does not exist" in capsys.readouterr().err
