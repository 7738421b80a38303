"""Scoring on hand-worked cases, the wer file format, BLEU/chrF against sacrebleu."""

from __future__ import annotations

import pytest
import sacrebleu

from mooer.evaluation.scoring import align, bleu_chrf, format_wer, main, score, tokenize


def test_tokenize_chars_words_and_normalization():
    assert tokenize("今天 天气") == ["今", "天", "天", "气"]
    # as compute-wer.py --char=1: punctuation is dropped only where a token would start
    assert tokenize("hello▁World, ok !") == ["HELLO", "WORLD,", "OK"]
    assert tokenize("我爱 you all 123") == ["我", "爱", "YOU", "ALL", "123"]
    assert tokenize("你好，世界。") == ["你", "好", "世", "界"]
    assert tokenize("") == []


@pytest.mark.parametrize(("text", "tokens"), [
    ("价格 3.5 元", ["价", "格", "3.5", "元"]),          # numbers keep their dot
    ("涨了50%", ["涨", "了", "50%"]),
    ("GPU3.5版本", ["GPU3.5", "版", "本"]),
    ("DON'T stop it's", ["DON'T", "STOP", "IT'S"]),     # LibriSpeech's apostrophes
    ("hello;world", ["HELLO;WORLD"]),
    ("hello world.", ["HELLO", "WORLD."]),              # trailing punctuation counts
    ("<noise>今天<unk>", ["今", "天"]),                  # tags removed
    ("<unk><noise> ok", ["OK"]),
    ("café", ["CAF", "É"]),                             # letters beyond ASCII stand alone
    ("ＡＢＣ", ["Ａ", "Ｂ", "Ｃ"]),
])
def test_tokenize_as_compute_wer_char_mode(text, tokens):
    assert tokenize(text) == tokens


@pytest.mark.parametrize(("ref", "hyp", "counts"), [  # (N, C, S, D, I), worked by hand
    ("价格 3.5 元", "价格 3 5 元", (4, 3, 1, 0, 1)),
    ("涨了50%", "涨了50", (3, 2, 1, 0, 0)),
    ("DON'T do it's", "don t do its", (3, 1, 2, 0, 1)),
    ("hello;world", "hello world", (1, 0, 1, 0, 1)),
    ("hello world.", "hello world", (2, 1, 1, 0, 0)),
    ("<noise>今天", "今天", (2, 2, 0, 0, 0)),
    ("café", "cafe", (2, 0, 1, 1, 0)),
    ("ＡＢＣ", "ABC", (3, 0, 1, 2, 0)),
])
def test_counts_as_compute_wer(ref, hyp, counts):
    a = align(tokenize(ref), tokenize(hyp))
    assert (a.num_ref, a.correct, a.substitutions, a.deletions, a.insertions) == counts


def test_word_mode_case_and_ignore_flags(tmp_path, capsys):
    (tmp_path / "ref").write_text("u1 今天 Hello <unk> world\nu2 gone here\n")
    (tmp_path / "hyp").write_text("u1 今天 hello world\n")
    (tmp_path / "ignore").write_bytes(b"\xef\xbb\xbfworld\r\n")  # with Notepad's BOM and CRLF
    args = [str(tmp_path / "ref"), str(tmp_path / "hyp")]
    assert main(["--char=0", "--v=0", *args]) == 0  # words: 今天 HELLO WORLD
    out = capsys.readouterr().out
    assert "Overall -> 40.00 % N=5 C=3 S=0 D=2 I=0" in out and "utt:" not in out
    assert "compute-wer.py, which skips utterances without hypothesis: 0.00 % N=3 C=3" in out
    assert main(["--char=0", "--v=0", "--cs=1", *args]) == 0
    assert "Overall -> 60.00 % N=5 C=2 S=1 D=2 I=0" in capsys.readouterr().out
    assert main(["--char=0", "--v=0", f"--ig={tmp_path / 'ignore'}", *args]) == 0
    assert "Overall -> 50.00 % N=4 C=2 S=0 D=2 I=0" in capsys.readouterr().out
    assert main(["--char=0", "--v=0", "--rt=0", *args]) == 0  # tags kept: <UNK> is deleted
    assert "Overall -> 50.00 % N=6 C=3 S=0 D=3 I=0" in capsys.readouterr().out


@pytest.mark.parametrize(("ref", "hyp", "counts"), [
    ("a b c d", "a b c d", (4, 0, 0, 0)),
    ("a b c d", "a x c d", (3, 1, 0, 0)),        # one substitution
    ("a b c d", "a c d", (3, 0, 1, 0)),          # one deletion
    ("a b c d", "a b y c d", (4, 0, 0, 1)),      # one insertion
    ("a b c d", "", (0, 0, 4, 0)),               # empty hypothesis
    ("", "a b", (0, 0, 0, 2)),
    ("今天天气很好", "今天天汽很好啊", (5, 1, 0, 1)),  # Chinese: CER
    ("我有 three apples", "我有 tree apples", (3, 1, 0, 0)),  # mixed: MER
])
def test_alignment_counts(ref, hyp, counts):
    a = align(tokenize(ref), tokenize(hyp))
    assert (a.correct, a.substitutions, a.deletions, a.insertions) == counts
    assert len(a.ref) == len(a.hyp)


def test_score_rates_and_missing_keys():
    refs = {"u1": "今天天气很好", "u2": "hello world", "u3": "gone"}
    hyps = {"u1": "今天天汽很好啊", "u2": "hello word", "extra": "ignored"}
    result = score(refs, hyps)
    # N = 6 + 2 + 1, errors = (1 S + 1 I) + 1 S + 1 D
    assert (result.total.num_ref, result.total.errors) == (9, 4)
    assert result.error_rate == pytest.approx(400 / 9)
    assert result.missing == ["u3"]
    report = format_wer(result)
    assert "utt: u1\nWER: 33.33 % N=6 C=5 S=1 D=0 I=1\n" in report
    # compute-wer.py's layout: every token, the last too, followed by its padding and a space
    assert "lab: 今 天 天 气 很 好    \nrec: 今 天 天 汽 很 好 啊 \n" in report
    assert "Overall -> 44.44 % N=9 C=6 S=2 D=1 I=1" in report
    assert "Missing hypotheses (scored as deletions): 1: u3" in report


def test_bleu_and_chrf_equal_sacrebleu():
    refs = {"a": "the cat sat on the mat", "b": "i have forty six cars", "c": "see you"}
    hyps = {"a": "the cat sat on a mat", "b": "i have forty cars", "c": "see you"}
    bleu, chrf = bleu_chrf(refs, hyps)
    keys = list(refs)
    assert bleu == pytest.approx(sacrebleu.corpus_bleu([hyps[k] for k in keys],
                                                       [[refs[k] for k in keys]]).score)
    assert chrf == pytest.approx(sacrebleu.corpus_chrf([hyps[k] for k in keys],
                                                       [[refs[k] for k in keys]]).score)
    assert 0 < bleu < 100


def test_cli_writes_wer_file(tmp_path, capsys):
    (tmp_path / "ref").write_text("u1 a b c\nu2 d e\n")
    (tmp_path / "hyp").write_text("u1\ta b x\n")
    assert main([str(tmp_path / "ref"), str(tmp_path / "hyp"), "--out", str(tmp_path / "wer")]) == 0
    text = (tmp_path / "wer").read_text()
    assert "Overall -> 60.00 % N=5 C=2 S=1 D=2 I=0" in text
    assert main([str(tmp_path / "nope"), str(tmp_path / "hyp")]) == 2


@pytest.mark.parametrize("bleu", [[], ["--bleu"]])
def test_cli_refuses_an_empty_reference_file(tmp_path, capsys, bleu):
    (tmp_path / "ref").write_text("\n")
    (tmp_path / "hyp").write_text("u1 a\n")
    assert main([str(tmp_path / "ref"), str(tmp_path / "hyp"), *bleu]) == 2
    assert "holds no references" in capsys.readouterr().err


def test_cli_names_non_utf8_input_and_directories(tmp_path, capsys):
    (tmp_path / "ref").write_text("u1 a b\n")
    (tmp_path / "hyp").write_bytes(b"u1 caf\xe9\n")
    assert main([str(tmp_path / "ref"), str(tmp_path / "hyp")]) == 2
    assert "hyp:1 is not UTF-8" in capsys.readouterr().err
    assert main([str(tmp_path / "ref"), str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_extra_hypotheses_are_listed_not_scored(tmp_path, capsys):
    (tmp_path / "ref").write_text("u1 a b\n")
    (tmp_path / "hyp").write_text("u1 a b\nu9 x\n")
    assert main([str(tmp_path / "ref"), str(tmp_path / "hyp"), "--out", str(tmp_path / "wer")]) == 0
    out = capsys.readouterr().out
    assert "Overall -> 0.00 % N=2 C=2" in out
    assert "Hypotheses without a reference (not scored): 1: u9" in out


def test_word_classes_and_cluster_file_as_compute_wer(tmp_path, capsys):
    (tmp_path / "ref").write_text("u1 今天 hello 123\n")
    (tmp_path / "hyp").write_text("u1 今天 hallo 123 ok\n")
    (tmp_path / "clusters").write_bytes(b"\xef\xbb\xbf<Greeting> hello hi </Greeting>\n")  # a BOM
    assert main([str(tmp_path / "ref"), str(tmp_path / "hyp"),
                 f"--cluster={tmp_path / 'clusters'}"]) == 0
    out = capsys.readouterr().out
    tail = out[out.index("Overall -> "):].splitlines()
    # classes in order of first appearance (hypothesis tokens, then reference tokens)
    assert tail[:6] == ["Overall -> 50.00 % N=4 C=3 S=1 D=0 I=1",
                        "Mandarin -> 0.00 % N=2 C=2 S=0 D=0 I=0",
                        "English -> 200.00 % N=1 C=0 S=1 D=0 I=1",  # HELLO -> HALLO, OK inserted
                        "Number -> 0.00 % N=1 C=1 S=0 D=0 I=0",
                        "Greeting -> 100.00 % N=1 C=0 S=1 D=0 I=0", ""]


def test_concat_all_scores_one_joined_utterance(tmp_path, capsys):
    (tmp_path / "ref").write_text("rec_2 三\nrec_1 一 二\n")
    (tmp_path / "hyp").write_text("rec_1 一\nrec_2 三\n")
    assert main([str(tmp_path / "ref"), str(tmp_path / "hyp"), "--concat-all=1", "--v=0"]) == 0
    assert "Overall -> 33.33 % N=3 C=2 S=0 D=1 I=0" in capsys.readouterr().out
    (tmp_path / "bad").write_text("recording 一\n")
    assert main([str(tmp_path / "bad"), str(tmp_path / "hyp"), "--concat-all=1"]) == 2
    assert "does not end in _<number>" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "merged"), [
    ("G P U 三 个", "GPU三个"),
    ("I have a G P U", "I have aGPU"),            # as compute-wer.py glues them
    ("a b cd", "ab cd"),                           # a run, then a word of letters: a space
    ("买 A B 股", "买AB股"),
    ("x 5", None),                                 # compute-wer.py stops on a lone digit
])
def test_merge_single_letters_as_compute_wer(text, merged):
    from mooer.evaluation.scoring import merge_single_letters

    if merged is None:
        with pytest.raises(ValueError):
            merge_single_letters(text)
    else:
        assert merge_single_letters(text) == merged


def test_merge_en_single_flag(tmp_path, capsys):
    (tmp_path / "ref").write_text("u1 买 GPU 三 个\n")
    (tmp_path / "hyp").write_text("u1 买 G P U 三 个\n")
    assert main([str(tmp_path / "ref"), str(tmp_path / "hyp"), "--v=0"]) == 0
    assert "Overall -> 75.00 % N=4 C=3 S=1 D=0 I=2" in capsys.readouterr().out  # G + P, U
    assert main([str(tmp_path / "ref"), str(tmp_path / "hyp"), "--v=0",
                 "--merge_en_single=1"]) == 0
    assert "Overall -> 0.00 % N=4 C=4" in capsys.readouterr().out


def test_reference_lines_with_only_an_id_are_named_and_all_empty_is_an_error(tmp_path, capsys):
    from mooer.evaluation.scoring import main

    ref, hyp = tmp_path / "ref", tmp_path / "hyp"
    hyp.write_text("a 今天\nb 好\nc hello\n", encoding="utf-8")
    ref.write_text("a 今天\nb\nc hello\n", encoding="utf-8")
    assert main([str(ref), str(hyp), "--v", "0"]) == 0
    out, err = capsys.readouterr()
    assert f"1 reference line(s) of {ref} hold only an id (scored as empty references): b" in err
    # N: 今 天 and HELLO; b's 好 is an insertion against its empty reference
    assert "Overall -> 33.33 % N=3 C=3 S=0 D=0 I=1" in out
    ref.write_text("a\nb  \nc\n", encoding="utf-8")
    assert main([str(ref), str(hyp)]) == 2
    assert f"every line of {ref} holds only an id" in capsys.readouterr().err
