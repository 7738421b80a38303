"""Shard packing: round trip, MooER layout, normalization, bad input, interruption, dots in ids."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mooer.data import pack as pack_module
from mooer.data.audio import wav_bytes
from mooer.data.pack import main, pack
from mooer.data.text import read_table


def read_shards(list_path: Path) -> list[tuple[str, str, bytes, str]]:
    """(uttid, text, audio bytes, audio extension) for every utterance, in shard order.

    Members are grouped on the LAST dot of their names, as the data pipeline does.
    """
    out = []
    for shard in list_path.read_text().split():
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
            assert len(members) % 2 == 0
            for txt, audio in zip(members[0::2], members[1::2], strict=True):
                uttid, ext = txt.name.rsplit(".", 1)
                audio_id, audio_ext = audio.name.rsplit(".", 1)
                assert ext == "txt" and audio_id == uttid, "each utterance is .txt then audio"
                out.append((uttid, tar.extractfile(txt).read().decode("utf-8"),
                            tar.extractfile(audio).read(), audio_ext))
    return out


def write_kaldi(directory: Path, wav_rows, text_rows) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    wav_scp, text = directory / "wav.scp", directory / "text"
    wav_scp.write_text("".join(f"{k} {v}\n" for k, v in wav_rows), "utf-8")
    text.write_text("".join(f"{k} {v}\n" for k, v in text_rows), "utf-8")
    return wav_scp, text


def test_round_trip_identical_bytes_and_text(corpus, tmp_path):
    out = tmp_path / "shards"
    summary = pack(corpus / "wav.scp", corpus / "text", out, num_utts_per_shard=10, progress=False)
    assert summary.packed == 24 and not summary.rejects
    shards = (out / "data.list").read_text().split()
    assert shards == [str(out / f"shards_{i:09d}.tar") for i in range(3)]
    packed = read_shards(out / "data.list")
    wavs, texts = dict(read_table(corpus / "wav.scp")), dict(read_table(corpus / "text"))
    assert [u for u, *_ in packed] == [k for k, _ in read_table(corpus / "text")]
    for uttid, text, audio, ext in packed:
        assert ext == "wav"
        assert text == texts[uttid]
        assert audio == Path(wavs[uttid]).read_bytes()
    assert (out / "rejects.tsv").read_text() == ""
    assert not list(out.glob("*.partial"))


def test_parallel_packing_equals_serial(corpus, tmp_path):
    serial = pack(corpus / "wav.scp", corpus / "text", tmp_path / "a", num_utts_per_shard=5,
                  progress=False)
    parallel = pack(corpus / "wav.scp", corpus / "text", tmp_path / "b", num_utts_per_shard=5,
                    num_threads=2, progress=False)
    assert serial.packed == parallel.packed == 24
    assert read_shards(tmp_path / "a" / "data.list") == read_shards(tmp_path / "b" / "data.list")


def test_shuffle_is_seeded_and_loses_nothing(corpus, tmp_path):
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        pack(corpus / "wav.scp", corpus / "text", tmp_path / name, shuffle=True, seed=seed,
             progress=False)
        runs.append([u for u, *_ in read_shards(tmp_path / name / "data.list")])
    assert runs[0] == runs[1] != runs[2]
    assert sorted(runs[0]) == sorted(runs[2]) == sorted(k for k, _ in read_table(corpus / "text"))


def test_text_norm_modes(tmp_path):
    wav = tmp_path / "a.wav"
    wav.write_bytes(wav_bytes(np.zeros(1600, np.float32), 16000))
    wav_scp, text = write_kaldi(tmp_path / "d", [("u1", wav)], [("u1", "Hello big world 你好 呀")])
    for mode, expected in (("true", "HELLO▁BIG▁WORLD你好呀"), ("llm", "Hello big world 你好 呀"),
                           ("false", "Hello big world 你好 呀")):
        pack(wav_scp, text, tmp_path / mode, text_norm=mode, progress=False)
        assert read_shards(tmp_path / mode / "data.list")[0][1] == expected


def test_uttids_with_dots_survive(tmp_path):
    rows = []
    for i, uttid in enumerate(["spk1.utt.001", "spk1.utt.002", "a.b.c.d"]):
        path = tmp_path / f"f{i}.wav"
        path.write_bytes(wav_bytes(np.full(800, 0.1, np.float32), 16000))
        rows.append((uttid, path))
    wav_scp, text = write_kaldi(tmp_path / "d", rows, [(u, f"text {u}") for u, _ in rows])
    pack(wav_scp, text, tmp_path / "out", progress=False)
    assert [(u, t) for u, t, *_ in read_shards(tmp_path / "out" / "data.list")] == [
        (u, f"text {u}") for u, _ in rows]


def test_other_formats_rates_and_channels(tmp_path):
    t = np.arange(44100 * 2) / 44100
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 300 * t)], 1) * 0.3
    sf.write(tmp_path / "stereo44k.flac", stereo, 44100)
    sf.write(tmp_path / "mono16k.flac", stereo[:32000, 0], 16000)
    sf.write(tmp_path / "mono8k.wav", stereo[:8000, 0], 8000, subtype="PCM_16")
    rows = [("a", tmp_path / "stereo44k.flac"), ("b", tmp_path / "mono16k.flac"),
            ("c", tmp_path / "mono8k.wav")]
    wav_scp, text = write_kaldi(tmp_path / "d", rows, [(k, "x") for k, _ in rows])
    summary = pack(wav_scp, text, tmp_path / "out", progress=False)
    assert summary.packed == 3
    packed = {u: (audio, ext) for u, _, audio, ext in read_shards(tmp_path / "out" / "data.list")}
    assert packed["b"] == ((tmp_path / "mono16k.flac").read_bytes(), "flac")  # kept as is
    for uttid, seconds in (("a", 2.0), ("c", 1.0)):
        audio, ext = packed[uttid]
        samples, rate = sf.read(io.BytesIO(audio))
        assert (ext, rate, samples.ndim) == ("wav", 16000, 1)
        assert len(samples) == int(seconds * 16000)
        assert np.abs(samples).max() == pytest.approx(0.3, abs=0.02)
    assert summary.seconds_of_audio == pytest.approx(5.0, abs=0.01)


def test_segments(tmp_path):
    recording = tmp_path / "rec.wav"
    recording.write_bytes(wav_bytes(np.linspace(-0.5, 0.5, 48000).astype(np.float32), 16000))
    wav_scp, text = write_kaldi(tmp_path / "d", [("rec1", recording)],
                                [("seg1", "one"), ("seg2", "two"), ("seg3", "three")])
    segments = tmp_path / "d" / "segments"
    segments.write_text("seg1 rec1 0.0 1.0\nseg2 rec1 1.5 2.5\nseg3 rec9 0 1\n")
    summary = pack(wav_scp, text, tmp_path / "out", segments=segments, progress=False)
    assert summary.packed == 2
    assert summary.rejects == [("seg3", "recording rec9 of segments not in wav.scp")]
    packed = read_shards(tmp_path / "out" / "data.list")
    lengths = [len(sf.read(io.BytesIO(audio))[0]) for _, _, audio, _ in packed]
    assert [(u, t) for u, t, *_ in packed] == [("seg1", "one"), ("seg2", "two")]
    assert lengths == [16000, 16000]


def test_every_bad_input_is_rejected_and_listed(tmp_path):
    good = tmp_path / "good.wav"
    good.write_bytes(wav_bytes(np.full(1600, 0.1, np.float32), 16000))
    truncated = tmp_path / "truncated.wav"
    truncated.write_bytes(good.read_bytes()[:-500])
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(b"this is not audio" * 50)
    empty_file = tmp_path / "empty.wav"
    empty_file.write_bytes(b"")
    no_samples = tmp_path / "nosamples.wav"
    no_samples.write_bytes(wav_bytes(np.zeros(0, np.float32), 16000))
    wav_rows = [("ok1", good), ("ok2", good), ("missing", tmp_path / "nope.wav"),
                ("trunc", truncated), ("garbage", garbage), ("emptyfile", empty_file),
                ("nosamples", no_samples), ("emptytext", good), ("audioonly", good),
                ("dup", good), ("piped", "sox in.wav -t wav - |")]
    text_rows = [("ok1", "one"), ("ok2", "two"), ("missing", "m"), ("trunc", "t"),
                 ("garbage", "g"), ("emptyfile", "e"), ("nosamples", "n"), ("emptytext", "  "),
                 ("textonly", "no audio"), ("dup", "first"), ("dup", "second"), ("piped", "p")]
    wav_scp, text = write_kaldi(tmp_path / "d", wav_rows, text_rows)
    out = tmp_path / "out"
    assert main(["--wav_scp", str(wav_scp), "--text", str(text), "--write_dir", str(out),
                 "--no_progress"]) == 0
    assert [u for u, *_ in read_shards(out / "data.list")] == ["ok1", "ok2"]
    rejects = dict(line.split("\t") for line in (out / "rejects.tsv").read_text().splitlines())
    assert set(rejects) == {"missing", "trunc", "garbage", "emptyfile", "nosamples", "emptytext",
                            "audioonly", "textonly", "dup", "piped"}
    assert rejects["missing"].startswith("audio file not found")
    assert rejects["trunc"].startswith("truncated WAV")
    assert rejects["garbage"].startswith("unreadable audio")
    assert rejects["emptyfile"].startswith("zero-length audio")
    assert rejects["nosamples"].startswith("zero-length audio")
    assert rejects["emptytext"] == "empty transcript"
    assert rejects["audioonly"] == "no transcript: uttid not in text"
    assert rejects["textonly"] == "no audio: uttid not in wav.scp"
    assert rejects["dup"] == "duplicate uttid: 2 lines in text"
    assert rejects["piped"].startswith("wav.scp command pipes are not supported")


def test_nothing_packed_exits_nonzero(tmp_path, capsys):
    wav_scp, text = write_kaldi(tmp_path / "d", [("a", tmp_path / "missing.wav")], [("a", "x")])
    assert main(["--wav_scp", str(wav_scp), "--text", str(text), "--write_dir",
                 str(tmp_path / "out"), "--no_progress"]) == 1
    assert "nothing was packed" in capsys.readouterr().err
    assert main(["--wav_scp", str(tmp_path / "absent"), "--text", str(text), "--write_dir",
                 str(tmp_path / "out")]) == 2


def test_interrupted_run_leaves_no_finished_looking_shard(corpus, tmp_path, monkeypatch):
    real = pack_module.load_audio_member
    calls = {"n": 0}

    def flaky(item, sample_rate, max_seconds):
        calls["n"] += 1
        if calls["n"] == 15:  # in the middle of the second shard
            raise KeyboardInterrupt
        return real(item, sample_rate, max_seconds)

    monkeypatch.setattr(pack_module, "load_audio_member", flaky)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        pack(corpus / "wav.scp", corpus / "text", out, num_utts_per_shard=10, progress=False)
    assert (out / "shards_000000000.tar").exists()
    assert not (out / "shards_000000001.tar").exists()
    assert (out / "shards_000000001.tar.partial").exists()
    assert not (out / "data.list").exists()
    monkeypatch.setattr(pack_module, "load_audio_member", real)
    summary = pack(corpus / "wav.scp", corpus / "text", out, num_utts_per_shard=10, progress=False)
    assert summary.packed == 24 and not list(out.glob("*.partial"))
    assert len(read_shards(out / "data.list")) == 24


def test_write_num_splits_the_list(corpus, tmp_path):
    out = tmp_path / "out"
    pack(corpus / "wav.scp", corpus / "text", out, write_prefix="data.#.list", write_num=2,
         num_utts_per_shard=6, progress=False)
    first, second = ((out / f"data.{i}.list").read_text().split() for i in range(2))
    assert len(first) == len(second) == 2 and not set(first) & set(second)


def test_console_script_and_module_entry_point(corpus, tmp_path):
    script = Path(sys.executable).with_name("mooer-pack")
    for command in ([str(script)], [sys.executable, "-m", "mooer.data.pack"]):
        out = tmp_path / Path(command[-1]).name
        result = subprocess.run(
            [*command, "--wav_scp", str(corpus / "wav.scp"), "--text", str(corpus / "text"),
             "--write_dir", str(out), "--text_norm", "true", "--num_threads", "2",
             "--num_utts_per_shard", "8", "--no_progress"],
            capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "packed 24 utterances" in result.stdout and "into 3 shards" in result.stdout
        assert "rejected 0 utterances" in result.stdout
        assert len((out / "data.list").read_text().split()) == 3
