"""Bad input on the data path, as a careless or hostile user gives it: each case is rejected with
a reason or counted, never lost in silence and never fatal to the rest."""

from __future__ import annotations

import errno
import io
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from mooer.data import pack as pack_module
from mooer.data.audio import AudioError, decode_audio, parse_pcm_wav, wav_bytes
from mooer.data.cli import stats
from mooer.data.pack import main as pack_main
from mooer.data.pack import pack
from mooer.data.pipeline import DataErrors, decode, open_shards, tar_samples

TONE = (np.sin(np.arange(16000) / 5) * 0.3).astype(np.float32)


def wav_header(rate: int, channels: int, bits: int, data_size: int, riff_size: int | None = None
               ) -> bytes:
    block = channels * max(bits, 8) // 8
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", riff_size if riff_size is not None
                       else 36 + data_size, b"WAVE", b"fmt ", 16, 1, channels, rate, rate * block,
                       block, bits, b"data", data_size)


def kaldi(tmp_path: Path, rows: list[tuple[str, bytes | str, str]]) -> tuple[Path, Path]:
    """wav.scp and text for (uttid, wav bytes or a path, transcript) rows."""
    scp, text = [], []
    for uttid, audio, transcript in rows:
        if isinstance(audio, bytes):
            path = tmp_path / f"{len(scp)}.wav"
            path.write_bytes(audio)
            audio = str(path)
        scp.append(f"{uttid} {audio}")
        text.append(f"{uttid} {transcript}")
    (tmp_path / "wav.scp").write_text("\n".join(scp) + "\n")
    (tmp_path / "text").write_text("\n".join(text) + "\n")
    return tmp_path / "wav.scp", tmp_path / "text"


def rejects_of(out: Path) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in (out / "rejects.tsv").read_text().splitlines())


def test_wav_with_fewer_than_8_bits_is_an_audio_error():
    data = wav_header(16000, 1, 4, 100) + b"\0" * 100
    with pytest.raises(AudioError, match="bits per sample"):
        parse_pcm_wav(data)
    with pytest.raises(AudioError):
        decode_audio(data)


def test_streamed_wav_with_unknown_size_reads_to_the_end():
    pcm = (TONE * 32767).astype("<i2").tobytes()
    streamed = wav_header(16000, 1, 16, 0xFFFFFFFF, riff_size=0xFFFFFFFF) + pcm
    audio, rate = decode_audio(streamed)
    assert rate == 16000 and audio.shape == (16000, 1)
    assert np.allclose(audio[:, 0], TONE, atol=1e-4)


def test_pack_rejects_each_bad_file_and_keeps_the_rest(tmp_path, caplog):
    low_bits = wav_header(16000, 1, 4, 100) + b"\0" * 100
    one_hz = wav_header(1, 1, 16, 4000) + b"\1\0" * 2000
    nan = io.BytesIO()
    import soundfile as sf

    sf.write(nan, np.array([0.1, np.nan, 0.2] * 4000, dtype=np.float32), 16000, format="WAV",
             subtype="FLOAT")
    long_wave = wav_bytes(np.zeros(16000 * 31, dtype=np.float32), 16000)
    rows = [("good", wav_bytes(TONE, 16000), "一二三"), ("lowbits", low_bits, "四"),
            ("onehz", one_hz, "五"), ("nan", nan.getvalue(), "六"), ("long", long_wave, "七"),
            ("ctrl\x01id", wav_bytes(TONE, 16000), "八")]
    wav_scp, text = kaldi(tmp_path, rows)
    summary = pack(wav_scp, text, tmp_path / "out", progress=False)
    assert summary.packed == 1  # good
    rejects = rejects_of(tmp_path / "out")
    assert "bits per sample" in rejects["lowbits"]
    assert "sample rate 1 Hz" in rejects["onehz"]
    assert "NaN or infinite" in rejects["nan"]
    assert "control character" in rejects["ctrl\\x01id"]
    # what training would drop anyway (data.max_length: 20 s), refused with the file named
    assert rejects["long"].startswith("longer than --max_seconds (31.0 s > 20 s)")
    assert rejects["long"].endswith(f"({tmp_path / '4.wav'})")  # (kaldi() names files by row)
    for row, name in ((1, "lowbits"), (2, "onehz"), (3, "nan")):  # every reason names its file
        assert str(tmp_path / f"{row}.wav") in rejects[name], rejects[name]


def test_a_non_utf8_path_rejects_its_line_only(tmp_path):
    good = tmp_path / "good.wav"
    good.write_bytes(wav_bytes(TONE, 16000))
    (tmp_path / "wav.scp").write_bytes(b"good " + str(good).encode() + b"\n"
                                       + b"latin caf\xe9.wav\n")
    (tmp_path / "text").write_text("good 一二三\nlatin 四五\n")
    summary = pack(tmp_path / "wav.scp", tmp_path / "text", tmp_path / "out", progress=False)
    assert summary.packed == 1
    assert "not UTF-8" in rejects_of(tmp_path / "out")["wav.scp:2"]


def test_pack_options_are_checked_before_any_shard_is_written(tmp_path, capsys):
    wav_scp, text = kaldi(tmp_path, [("a", wav_bytes(TONE, 16000), "一")])
    for flags, message in ((["--write_num", "0"], "--write_num"),
                           (["--write_prefix", "a/b"], "--write_prefix")):
        out = tmp_path / f"out{len(flags[1])}"
        code = pack_main(["--wav_scp", str(wav_scp), "--text", str(text), "--write_dir",
                          str(out), "--no_progress", *flags])
        assert code == 2 and message in capsys.readouterr().err
        assert not list(out.glob("*.tar")) if out.exists() else True


def test_unwritable_dir_and_full_disk_give_a_message(tmp_path, capsys, monkeypatch):
    wav_scp, text = kaldi(tmp_path, [("a", wav_bytes(TONE, 16000), "一")])
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    code = pack_main(["--wav_scp", str(wav_scp), "--text", str(text), "--write_dir",
                      str(blocker / "out"), "--no_progress"])
    assert code == 2 and "cannot write" in capsys.readouterr().err

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pack_module, "_add_member", full)
    code = pack_main(["--wav_scp", str(wav_scp), "--text", str(text), "--write_dir",
                      str(tmp_path / "full"), "--no_progress"])
    assert code == 2 and "No space left on device" in capsys.readouterr().err
    assert not list((tmp_path / "full").glob("*.partial"))


def test_an_interrupted_repack_leaves_no_list_mixing_old_and_new_shards(tmp_path, monkeypatch):
    rows = [(f"u{i}", wav_bytes(TONE, 16000), "一二") for i in range(4)]
    wav_scp, text = kaldi(tmp_path, rows)
    out = tmp_path / "out"
    pack(wav_scp, text, out, num_utts_per_shard=1, progress=False)
    assert len((out / "data.list").read_text().split()) == 4
    written = []
    real = pack_module.write_shard

    def interrupted(job):
        if written:
            raise KeyboardInterrupt
        written.append(job)
        return real(job)

    monkeypatch.setattr(pack_module, "write_shard", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pack(wav_scp, text, out, num_utts_per_shard=2, progress=False)
    assert not (out / "data.list").exists()  # no list naming a mix of old and new shards


def _shard(path: Path, count: int) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for index in range(count):
            for extension, data in (("txt", "一二三".encode()), ("wav", wav_bytes(TONE, 16000))):
                info = tarfile.TarInfo(f"utt{index:02d}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_a_damaged_header_loses_one_utterance_counted_not_the_rest_of_the_shard(tmp_path):
    shard = _shard(tmp_path / "s.tar", 32)
    raw = bytearray(shard.read_bytes())
    with tarfile.open(shard) as tar:
        member = next(m for m in tar.getmembers() if m.name == "utt10.wav")
    raw[member.offset + 148:member.offset + 156] = b"garbage!"  # the header's checksum field
    shard.write_bytes(bytes(raw))
    (tmp_path / "data.list").write_text("s.tar\n")
    errors = DataErrors()
    keys = [s["key"] for s in decode(tar_samples(open_shards([str(shard)], errors), errors),
                                     errors)]
    assert len(keys) == 31 and "utt10" not in keys and "utt31" in keys
    assert errors["damaged tar header"] == 1
    assert errors["incomplete utterance (needs .txt and audio)"] == 1
    report = stats(tmp_path / "data.list")
    assert "utterances: 31" in report and "damaged tar header: 1" in report


def test_symlink_members_are_counted(tmp_path):
    shard = _shard(tmp_path / "s.tar", 2)
    with tarfile.open(shard, "a") as tar:
        link = tarfile.TarInfo("evil.wav")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    errors = DataErrors()
    keys = [s["key"] for s in tar_samples(open_shards([str(shard)], errors), errors)]
    assert keys == ["utt00", "utt01"] and errors["member is not a regular file"] == 1


def test_an_unreachable_http_shard_is_skipped_and_counted(tmp_path):
    good = _shard(tmp_path / "good.tar", 3)
    errors = DataErrors()
    urls = ["http://127.0.0.1:9/missing.tar", str(good)]
    keys = [s["key"] for s in tar_samples(open_shards(urls, errors), errors)]
    assert keys == ["utt00", "utt01", "utt02"]
    assert errors["unreadable shard"] == 1 and sum(errors.values()) == 1


def test_nan_audio_in_a_shard_is_skipped_by_name(tmp_path, caplog):
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.array([0.1, np.nan] * 8000, dtype=np.float32), 16000, format="WAV",
             subtype="FLOAT")
    shard = tmp_path / "nan.tar"
    with tarfile.open(shard, "w") as tar:
        for name, data in (("bad.txt", "一".encode()), ("bad.wav", buffer.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    errors = DataErrors()
    with caplog.at_level("WARNING"):
        assert not list(decode(tar_samples(open_shards([str(shard)], errors), errors), errors))
    assert errors["undecodable audio"] == 1
    assert any("nan.tar:bad" in r.message and "NaN" in r.message for r in caplog.records)


def test_pack_streams_a_huge_file_and_refuses_it_from_its_header(tmp_path):
    """A 2-hour WAV (230 MB) is refused from its header, not read into memory (it took 4.2 GB of
    memory for a 4 GB file), while a segment of it is packed by seeking to it."""
    import subprocess
    import sys

    hours = tmp_path / "meeting.wav"
    samples = 16000 * 3600 * 2
    with open(hours, "wb") as f:  # a header, then two hours of zeros written in blocks
        f.write(wav_header(16000, 1, 16, samples * 2))
        block = bytes(1 << 22)
        for _ in range(samples * 2 // len(block)):
            f.write(block)
        f.write(bytes(samples * 2 % len(block)))
    (tmp_path / "wav.scp").write_text(f"meeting {hours}\n")
    (tmp_path / "text").write_text("whole 一二三\npart 四五六\n")
    (tmp_path / "segments").write_text("whole meeting 0 7200\npart meeting 3600.5 3603.0\n")
    # peak memory as VmHWM (ru_maxrss would carry this process's own peak across the exec)
    script = (f"from pathlib import Path; from mooer.data.pack import pack; "
              f"s = pack(Path({str(tmp_path / 'wav.scp')!r}), Path({str(tmp_path / 'text')!r}), "
              f"Path({str(tmp_path / 'out')!r}), segments=Path({str(tmp_path / 'segments')!r}), "
              f"progress=False); print(s.packed, next(line.split()[1] for line in "
              f"open('/proc/self/status') if line.startswith('VmHWM')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    packed, peak_kib = (int(v) for v in result.stdout.split())
    assert packed == 1  # the 2.5 s segment
    assert peak_kib * 1024 < 150 * 2**20 < hours.stat().st_size  # far below the file
    assert rejects_of(tmp_path / "out")["whole"].startswith(
        "longer than --max_seconds (7200.0 s > 20 s)")
