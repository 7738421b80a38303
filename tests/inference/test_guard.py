"""The hallucination guard: what it flags, that flagged answers are decoded again as the retry
options decode them alone, and how every output format marks what it still doubts."""

from __future__ import annotations

import json

import pytest

from mooer.inference.formats import Segment, render, subtitles
from mooer.inference.guard import Guard


def test_what_the_guard_flags():
    guard = Guard()
    assert guard.cap(0.5) == 12 and guard.cap(2.0) == 30
    assert guard.check(list(range(30)), "x", 2.0) is None  # 30 tokens in 2 s: the cap
    assert guard.check(list(range(31)), "x", 2.0) == "over-long"
    assert guard.check([1, 2, 3, 4] * 4, "x", 10.0) == "loop"  # 1 2 3 4 four times
    assert guard.check([1, 2, 3, 4] * 3 + [1, 2, 3], "x", 10.0) is None  # three times
    assert guard.check([5] * 7, "x", 10.0) == "loop"  # one token seven times: 5555 x4
    number = [ord(c) for c in "一千一百一十一万一千一百一十一"]  # repeats, but no loop
    assert guard.check(number, "一千一百一十一万一千一百一十一", 3.0) is None
    instruction = "<|im_start|>user\nTranscribe speech to text.<|im_end|>"
    assert guard.check([1, 2], "transcribe speech to text", 3.0, [instruction]) == "instruction"
    assert guard.check([1, 2], "user transcribe speech to text. 你好", 3.0,
                       [instruction]) == "instruction"
    assert guard.check([1, 2], "TRANSCRIBE", 3.0, [instruction]) is None  # a word of it
    assert guard.check([1, 2], "I'm sorry, I can't hear anything", 3.0) == "refusal"
    assert guard.check([1, 2], "抱歉，我听不清", 3.0) == "refusal"
    assert Guard(enabled=False).check([5] * 40, "x", 1.0) is None
    # what still fails after the retry is cut: to the cap, and before the repeat that loops
    assert guard.trim(list(range(40)), 2.0) == list(range(30))
    assert guard.trim([7, 1, 2, 3, 4] * 5, 10.0) == [7, 1, 2, 3, 4] * 3  # 7 1 2 3: 4th at 15
    assert guard.check(guard.trim([7, 1, 2, 3, 4] * 5, 10.0), "x", 10.0) is None


def test_every_format_marks_a_flagged_text():
    segments = {"rec": [Segment(0.0, 1.5, ["你好", "hello"]),
                        Segment(1.5, 3.0, ["好好好好", "fine"], ["loop", ""])]}
    tsv = render(segments, "tsv", ["asr", "ast"]).splitlines()
    assert tsv[1:] == ["rec\t0.00\t1.50\t你好\thello",
                       "rec\t1.50\t3.00\t[unreliable: loop] 好好好好\tfine"]
    data = json.loads(render(segments, "json", ["asr", "ast"]))["rec"]
    assert "flagged" not in data["segments"][0]
    assert data["segments"][1]["flagged"] == {"asr": "loop"}
    assert render(segments, "text", ["asr", "ast"]) == "rec\t你好好好好好\thello fine\n"
    srt = subtitles(segments["rec"], "srt")
    assert "[unreliable: loop] 好好好好\nfine" in srt and "你好\nhello" in srt


def test_flagged_answers_are_decoded_again_and_still_doubtful_ones_named(tiny_release, corpus):
    """On the untrained tiny model with room for 40 tokens, answers run on and loop: exactly
    the answers the guard flags in an unguarded decode are decoded again, each getting what the
    retry options (beam 4, repetition penalty 1.3) give it unguarded; those whose retry still
    fails are named with why."""
    from mooer.config import compose_config
    from mooer.inference.loading import apply_run_dir
    from mooer.inference.recognizer import Recognizer
    from tests.conftest import TINY

    root, tokenizer_dir = tiny_release
    cfg, _ = compose_config("evaluate", [*TINY, f"llm.tokenizer_path={tokenizer_dir}",
                                         f"checkpoint={root / 'release'}"])
    recognizer = Recognizer.from_config(apply_run_dir(cfg), device="cpu", precision="fp32",
                                        batch_size=8, decoding={"max_new_tokens": 40,
                                                                "eos_bias": 0, "num_beams": 1})
    guard = recognizer.guard
    assert guard == Guard()  # evaluate.yaml's guard is the default one
    recognizer.guard = Guard(enabled=False)
    plain = recognizer.decode(corpus, "asr", progress=False)
    instruction = [recognizer.prompt.instructions["asr"]]
    want = {k for k in plain.hypotheses if guard.check(plain.tokens[k], plain.hypotheses[k],
                                                       plain.durations[k], instruction)}
    assert want, "the untrained model should run on"
    retry = recognizer.decode(corpus, "asr", progress=False, num_beams=4,
                              repetition_penalty=1.3)
    recognizer.guard = guard
    guarded = recognizer.decode(corpus, "asr", progress=False)
    assert set(guarded.retried) == want
    still = {k: guard.check(retry.tokens[k], retry.hypotheses[k], retry.durations[k],
                            instruction) for k in want}
    assert guarded.flagged == {k: why for k, why in still.items() if why}
    tokenizer = recognizer.model.tokenizer
    for key, text in guarded.hypotheses.items():
        if key not in want:
            assert text == plain.hypotheses[key], key
        elif still[key] in ("loop", "over-long"):  # cut, and no longer loops or runs on
            cut = guard.trim(retry.tokens[key], retry.durations[key])
            # less the bytes of a character the cut left unfinished (at most 3 tokens), each
            # dropped because the text up to it ended in U+FFFD
            kept = guarded.tokens[key]
            assert kept == cut[:len(kept)] and len(cut) - len(kept) <= 3, key
            assert all(tokenizer.decode(cut[:n], skip_special_tokens=True).endswith("\ufffd")
                       for n in range(len(kept) + 1, len(cut) + 1)), key
            assert len(cut) - len(kept) == 3 or not text.endswith("\ufffd"), key
            assert text == tokenizer.decode(kept, skip_special_tokens=True), key
            assert guard.check(kept, text, retry.durations[key]) is None
        else:
            assert text == retry.hypotheses[key], key


def test_a_misspelt_guard_key_is_named(tiny_release):
    from mooer.config import compose_config
    from mooer.inference.loading import apply_run_dir
    from mooer.inference.recognizer import Recognizer
    from tests.conftest import TINY

    root, tokenizer_dir = tiny_release
    cfg, _ = compose_config("evaluate", [*TINY, f"llm.tokenizer_path={tokenizer_dir}",
                                         f"checkpoint={root / 'release'}",
                                         "+guard.max_token_per_s=3"])
    with pytest.raises(ValueError, match="guard: .*max_token_per_s.*; it takes enabled, "
                                         "max_tokens_per_s"):
        Recognizer.from_config(apply_run_dir(cfg), device="cpu", precision="fp32")
