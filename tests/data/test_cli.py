"""mooer-data stats / show."""

from __future__ import annotations

from mooer.data.cli import main


def test_stats_reports_counts_hours_and_histogram(shards, corpus, capsys):
    assert main(["stats", str(shards)]) == 0
    out = capsys.readouterr().out
    assert f"{shards}: 5 shards" in out and "utterances: 24" in out
    assert "duration histogram:" in out and "rejected when packed: 0" in out
    bars = [line for line in out.splitlines() if line.strip().endswith("#") or " s " in line]
    assert sum(int(line.split()[2]) for line in bars if line.strip()[0].isdigit()) == 24


def test_show_prints_samples_and_token_layout(shards, tokenizer, capsys):
    tokenizer_dir = tokenizer.name_or_path
    assert main(["show", str(shards), "-n", "2", "--tokenizer", tokenizer_dir]) == 0
    out = capsys.readouterr().out
    assert out.count("    text: ") == 2
    assert "Transcribe speech to text." in out and "'<|im_end|>'" in out


def test_missing_list(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "none.list")]) == 2
    assert "does not exist" in capsys.readouterr().err
