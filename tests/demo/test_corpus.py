"""The synthesized corpus: plausible audio in both languages, Kaldi files that agree, seeds."""

from __future__ import annotations

import re

import numpy as np
import pytest
import soundfile as sf

from mooer.data.text import read_table
from mooer.demo import espeak as espeak_module
from mooer.demo.corpus import draw_specs, main
from mooer.demo.grammar import en_number, en_ordinal, zh_number

CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.mark.parametrize(("n", "zh", "en"), [
    (0, "零", "zero"), (15, "十五", "fifteen"), (101, "一百零一", "one hundred one"),
    (110, "一百一十", "one hundred ten"), (1005, "一千零五", "one thousand five"),
    (30520, "三万零五百二十", "thirty thousand five hundred twenty"),
    (100000, "十万", "one hundred thousand"),
    (12345678, "一千二百三十四万五千六百七十八",
     "twelve million three hundred forty five thousand six hundred seventy eight"),
])
def test_number_readings(n, zh, en):
    assert zh_number(n) == zh and en_number(n) == en


def test_ordinals():
    assert [en_ordinal(d) for d in (1, 12, 21, 30)] == ["first", "twelfth", "twenty first",
                                                       "thirtieth"]


def test_specs_are_seeded():
    assert draw_specs(50, seed=3) == draw_specs(50, seed=3)
    assert draw_specs(50, seed=3) != draw_specs(50, seed=4)


def test_kaldi_files_agree(corpus):
    tables = {name: read_table(corpus / name) for name in ("wav.scp", "text", "text.en", "utt2spk")}
    keys = [k for k, _ in tables["wav.scp"]]
    assert len(keys) == 24 and keys == sorted(keys)
    for rows in tables.values():
        assert [k for k, _ in rows] == keys
    for key, spk in tables["utt2spk"]:
        assert key.startswith(spk + "-")


def test_both_languages_with_plausible_audio(corpus):
    texts = dict(read_table(corpus / "text"))
    translations = dict(read_table(corpus / "text.en"))
    languages, durations, lengths = set(), [], []
    for key, path in read_table(corpus / "wav.scp"):
        audio, rate = sf.read(path, dtype="float32")
        info = sf.info(path)
        assert (rate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        duration = len(audio) / rate
        assert 0.4 < duration < 10, (key, duration)
        rms_db = 20 * np.log10(np.sqrt(np.mean(audio**2)))
        assert -40 < rms_db < -3, (key, rms_db)
        # speech is not flat: loud and quiet 25 ms frames both exist
        frames = audio[: len(audio) // 400 * 400].reshape(-1, 400)
        frame_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
        assert frame_db.max() - frame_db.min() > 20
        chinese = bool(CJK.search(texts[key]))
        languages.add("zh" if chinese else "en")
        assert translations[key].isascii() and not CJK.search(translations[key])
        if not chinese:
            assert texts[key] == translations[key]
        durations.append(duration)
        lengths.append(len(texts[key]) if chinese else len(texts[key].split()) * 2)
    assert languages == {"zh", "en"}
    assert np.corrcoef(durations, lengths)[0, 1] > 0.5  # longer sentences take longer to say


def test_missing_library_says_how_to_fix(monkeypatch, tmp_path, capsys):
    import espeakng_loader

    monkeypatch.setattr(espeak_module.Espeak, "_instance", None)
    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: str(tmp_path / "nope.so"))
    assert main(["--out", str(tmp_path / "c"), "--num", "2", "--num_workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "could not load libespeak-ng" in err and "pip install espeakng-loader" in err


def test_name_sentences_hold_one_proper_name_and_the_default_corpus_none():
    """`--kinds name`: each sentence holds one of the grammar's names, in its text and its
    translation; the default kinds (the demo corpus) never draw one."""
    import random

    from mooer.demo.grammar import NAMES, sample_sentence

    rng = random.Random(0)
    named = [sample_sentence(rng, ("name",)) for _ in range(200)]
    for sentence in named:
        held = [n for n in NAMES if n in sentence.en.split()]
        assert len(held) == 1 and held[0] in sentence.zh, sentence
    assert {n for s in named for n in NAMES if n in s.en.split()} == set(NAMES)
    default = draw_specs(500, seed=3)
    assert not any(n in spec.translation.split() for spec in default for n in NAMES)
    with pytest.raises(ValueError, match="unknown sentence kinds"):
        sample_sentence(rng, ("names",))


def test_mandarin_name_sentences_hold_a_han_name_and_its_pinyin():
    """`--kinds zh_name`: each sentence holds one of twelve Han names in its Mandarin text and
    the same name in pinyin in its translation; the Mandarin corpus made for hotwords draws them
    all, and the default kinds never one."""
    import random

    from mooer.demo.grammar import ZH_NAMES, sample_sentence

    pinyin = {"王芳": "wang fang", "李娜": "li na", "刘洋": "liu yang", "陈静": "chen jing",
              "杨磊": "yang lei", "赵敏": "zhao min", "周杰": "zhou jie", "吴昊": "wu hao",
              "徐丽": "xu li", "孙浩": "sun hao", "林海": "lin hai", "马明": "ma ming"}
    assert pinyin == ZH_NAMES
    rng = random.Random(0)
    drawn = set()
    for _ in range(300):
        sentence = sample_sentence(rng, ("zh_name",))
        held = [name for name in pinyin if name in sentence.zh]
        assert len(held) == 1 and sentence.kind == "zh_name", sentence
        assert f" {pinyin[held[0]]} " in f" {sentence.en} ", sentence
        assert sentence.zh.startswith(held[0]) or sentence.zh.startswith("我"), sentence
        drawn.add(held[0])
    assert drawn == set(pinyin)
    specs = draw_specs(40, seed=5, english_ratio=0.0, kinds=("zh_name",))
    assert all(spec.lang == "zh" and any(name in spec.text for name in pinyin) for spec in specs)
    default = draw_specs(500, seed=3)
    assert not any(name in spec.text for spec in default for name in pinyin)


def test_made_up_name_sentences_hold_a_new_name_each():
    """`--kinds made_up_name`: the name sentences with a made-up name, of letters only, none of
    the grammar's names and few of them twice (a name is heard about once)."""
    import random
    import re

    from mooer.demo.grammar import NAMES, sample_sentence

    rng = random.Random(0)
    made = [sample_sentence(rng, ("made_up_name",)) for _ in range(300)]
    names = []
    for sentence in made:
        words = sentence.en.split()
        name = words[2] if words[:2] == ["i", "meet"] else words[0]
        assert re.fullmatch(r"[a-z]{4,}", name) and name not in NAMES, sentence
        assert name in sentence.zh and sentence.kind == "made_up_name"
        names.append(name)
    assert len(set(names)) > 280
