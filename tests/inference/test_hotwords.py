"""Hotwords: the context graph's bonuses (partial matches taken back, completed words kept,
fail links, weights), the logits processor, list parsing, and decoding with a list."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from mooer.data.hotword_list import HotwordError, parse_hotwords, split_prompt
from mooer.inference.hotwords import ROOT, ContextGraph, HotwordBias


class CharTokenizer:
    """One token a character: A=1, B=2, ..., a=33, b=34, ...; a space is 27."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [27 if c == " " else ord(c) - 64 for c in text]


def walk(graph: ContextGraph, tokens: list[int]) -> list[float]:
    state, bonuses = ROOT, []
    for token in tokens:
        state, bonus = graph.step(state, token)
        bonuses.append(bonus)
    return bonuses


def bonuses_after(graph: ContextGraph, tokens: list[int], vocab: int) -> torch.Tensor:
    """What step() gives every token of the vocabulary after `tokens` (the processor's
    expected row, found one step at a time)."""
    state = ROOT
    for token in tokens:
        state = graph.step(state, token)[0]
    return torch.tensor([graph.step(state, t)[1] for t in range(vocab)])


def ids(text: str) -> list[int]:
    return CharTokenizer().encode(text)


def test_a_partial_match_is_taken_back_and_a_completed_word_kept():
    graph = ContextGraph.build([("ABC", None)], CharTokenizer(), score=2.0)
    assert walk(graph, ids("ABX")) == [2.0, 2.0, -4.0]  # nothing gained
    assert walk(graph, ids("ABCX")) == [2.0, 2.0, 2.0, 0.0]  # the word keeps 6
    assert walk(graph, ids("ABCABC")) == [2.0] * 6
    assert sum(walk(graph, ids("XAABCAB"))) == 6.0 + 4.0  # the last AB is pending (4)
    assert sum(walk(graph, ids("XAABCAB") + [0])) == 6.0  # then the end (token 0): back


def test_fail_links_find_a_word_inside_a_failed_one():
    """ABD fails at C, but BC (a suffix of ABC) completes: the bonus is BC's, once."""
    graph = ContextGraph.build([("ABD", None), ("BC", None)], CharTokenizer(), score=1.0)
    bonuses = walk(graph, ids("ABC"))
    assert bonuses == [1.0, 1.0, 0.0] and sum(bonuses) == 2.0
    assert sum(walk(graph, ids("ABCX"))) == 2.0  # completed: kept
    assert sum(walk(graph, ids("ABDX"))) == 3.0


def test_weights_per_word_and_a_shared_prefix_takes_the_larger():
    graph = ContextGraph.build(parse_hotwords("AB\t3\nAC\n"), CharTokenizer(), score=1.0)
    assert walk(graph, ids("AB")) == [3.0, 3.0]
    assert walk(graph, ids("AC")) == [3.0, 1.0]  # A is shared at the larger 3; C adds 1
    assert sum(walk(graph, ids("ACX"))) == 4.0
    assert sum(walk(graph, ids("AX"))) == 0.0


def test_a_word_is_matched_with_and_without_a_leading_space_in_either_case():
    graph = ContextGraph.build([("Ab", None)], CharTokenizer(), score=1.0)
    assert sum(walk(graph, ids("Ab"))) == 2.0
    assert sum(walk(graph, ids(" AB"))) == 3.0  # the variant " AB": 3 tokens
    assert sum(walk(graph, ids("ab"))) == 2.0
    assert sum(walk(graph, ids("aB"))) == 0.0  # not a variant: taken back


def test_the_sparse_row_equals_every_single_step():
    """transition(state) gives, for every token of the vocabulary, what step() gives."""
    graph = ContextGraph.build([("ABD", 2.0), ("BC", None), ("CAB", 0.5)], CharTokenizer(),
                               score=1.0)
    states, frontier = {ROOT}, [ROOT]
    for _ in range(3):  # every state three tokens reach
        frontier = [graph.step(s, t)[0] for s in frontier for t in range(1, 60)]
        states.update(frontier)
    assert len(states) > 5
    for state in states:
        row = graph.transition(state)
        dense = torch.full((60,), row.default)
        dense[list(row.token_list)] += torch.tensor(row.value_list)
        expected = torch.tensor([graph.step(state, t)[1] for t in range(60)])
        torch.testing.assert_close(dense, expected)


def test_the_processor_adds_each_rows_bonus():
    graph = ContextGraph.build([("AB", None), ("C", 5.0)], CharTokenizer(), score=2.0)
    bias = HotwordBias(graph)
    rows = torch.tensor([[1], [3], [9]])  # A (pending 2), C (done), X
    scores = bias(rows, torch.zeros(3, 60))
    for r, row in enumerate(rows.tolist()):
        torch.testing.assert_close(scores[r], bonuses_after(graph, row, 60))
    assert scores[0, 2] == 2.0 and scores[0, 9] == -2.0 and scores[1, 3] == 5.0
    # the next step follows each row's own tokens (beam search reorders rows)
    scores = bias(torch.tensor([[3, 1], [1, 2]]), torch.zeros(2, 60))
    assert scores[0, 2] == 2.0 and scores[0, 9] == -2.0  # C, then A: pending 2
    assert scores[1].abs().sum() > 0 and scores[1, 3] == 5.0  # AB done: C starts afresh


def test_the_processor_follows_each_utterances_own_list():
    """One graph per utterance (None: unbiased), two beams each: every row gets what its
    utterance's graph alone gives after its tokens; the unbiased rows nothing."""
    tokenizer = CharTokenizer()
    first = ContextGraph.build([("AB", None)], tokenizer, score=2.0)
    second = ContextGraph.build([("C", 5.0), ("AX", 1.0)], tokenizer, score=2.0)
    bias = HotwordBias([first, None, second])
    rows = torch.tensor([[1], [3], [1], [3], [1], [3]])  # A, C for each utterance's two beams
    scores = bias(rows, torch.zeros(6, 60))
    for r, graph in enumerate([first, first, None, None, second, second]):
        expected = torch.zeros(60)
        if graph is not None:
            expected = bonuses_after(graph, rows[r].tolist(), 60)
        torch.testing.assert_close(scores[r], expected)
    assert scores[0, 2] == 2.0 and scores[4, 2] == -1.0 and scores[4, 24] == 1.0


def test_the_processor_adds_each_steps_own_bonus_step_after_step():
    """Through a decoding's steps (several with every row at the root, beams swapped, partial
    matches begun, completed and failed, the same states on other rows), every row gets on
    that step's own scores what its tokens' state gives: nothing of an earlier step's
    additions is kept or lost. One list for the batch, and one an utterance."""
    tokenizer = CharTokenizer()
    graph = ContextGraph.build([("AB", None), ("ABC", 3.0), ("C", 5.0)], tokenizer, score=2.0)
    other = ContextGraph.build([("BA", None)], tokenizer, score=1.0)
    generator = torch.Generator().manual_seed(4)
    # 9: no word's token. Steps 3 and 4 have A pending on rows 0, 2, then on rows 0, 3
    steps = [[9, 9, 9, 9], [9, 8, 9, 8], [1, 9, 1, 9], [1, 9, 9, 1], [2, 9, 1, 2],
             [3, 3, 9, 1], [9, 9, 9, 9]]
    for graphs, swaps in (([graph], False), ([graph, other], True)):
        bias = HotwordBias(graphs)
        rows: list[list[int]] = [[] for _ in range(4)]  # two utterances, two beams each
        for tokens in steps:
            rows = [rows[r] + [token] for r, token in enumerate(tokens)]
            for first in (0, 2) if swaps else ():  # beam search may swap an utterance's beams
                if torch.rand(1, generator=generator) < 0.5:
                    rows[first], rows[first + 1] = rows[first + 1], rows[first]
            base = torch.randn(4, 60, generator=generator)
            scores = bias(torch.tensor(rows), base.clone())
            for r, row in enumerate(rows):
                expected = base[r] + bonuses_after(graphs[min(r // 2, len(graphs) - 1)], row, 60)
                torch.testing.assert_close(scores[r], expected)


class SpreadTokenizer:
    """Each word three tokens drawn over a vocabulary of 4,000 (a long list's first tokens are
    many: its root state adds thousands of bonuses at every step)."""

    def __init__(self) -> None:
        self.generator = np.random.default_rng(5)
        self.known: dict[str, list[int]] = {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if text not in self.known:
            self.known[text] = [int(t) for t in self.generator.integers(0, 4000, size=3)]
        return self.known[text]


def test_the_processor_adds_a_long_lists_many_bonuses_as_each_step_gives_them():
    """Rows in a state with many tokens that earn more (a list of 400 words' root, several
    utterances sharing the graph) get, token by token, what step() gives, as do rows in states
    with few, in the same call."""
    from mooer.inference.hotwords import MANY_TOKENS

    graph = ContextGraph.build([(f"w{i}", None) for i in range(400)], SpreadTokenizer(),
                               score=1.5)
    assert len(graph.transition(ROOT).token_list) >= MANY_TOKENS
    first = graph.sequences[0]
    bias = HotwordBias([graph, graph, graph])
    # utterance 0: both beams at the root; 1: one beam into the first word, one at the root;
    # 2: one beam two tokens into it, one out of it again
    rows = torch.tensor([[4001, 4002], [4003, 4004], [4001, first[0]], [4001, 4002],
                         [first[0], first[1]], [first[0], 4005]])
    scores = bias(rows, torch.zeros(6, 4010))
    for r, row in enumerate(rows.tolist()):
        torch.testing.assert_close(scores[r], bonuses_after(graph, row, 4010), rtol=0,
                                   atol=1e-6)
    assert int((scores[0] > 0).sum()) >= MANY_TOKENS and scores[4, first[2]] > 0


def test_list_lines_are_checked_naming_the_line():
    assert parse_hotwords("# names\nZHANG  WEI\n\nLI NA\t1.5\n") == [("ZHANG WEI", None),
                                                                    ("LI NA", 1.5)]
    bad = [("A\tB\tC", "hotwords, line 1: expected `word` or `word<TAB>weight`, got 3 "
                       "tab-separated fields: 'A\\tB\\tC'"),
           ("OK\nA\tx", "hotwords, line 2: the weight 'x' of 'A' is not a number"),
           ("A\t-1", "hotwords, line 1: the weight of 'A' must be a number of at least 0, got -1"),
           ("A\tnan", "hotwords, line 1: the weight of 'A' must be a number of at least 0, "
                      "got nan"),
           ("\t2", "hotwords, line 1: a weight without a word")]
    for text, message in bad:
        with pytest.raises(HotwordError, match=re.escape(message)):
            parse_hotwords(text)
    assert split_prompt("张伟, 李娜，SEVENTEENTH\nO'CLOCK") == [
        ("张伟", None), ("李娜", None), ("SEVENTEENTH", None), ("O'CLOCK", None)]


def test_a_list_saved_by_a_windows_editor_reads_as_any_other(tmp_path):
    """A UTF-8 BOM and CRLF line ends (Notepad's) leave the words as they are: the BOM is not
    part of the first word, which would then never match."""
    from mooer.data.hotword_list import read_hotwords

    path = tmp_path / "names.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "张伟\r\nSEVENTEENTH\t2\r\n".encode())
    assert read_hotwords(path) == [("张伟", None), ("SEVENTEENTH", 2.0)]


def test_decoding_with_a_list(tiny_release, corpus):
    """No list (or an empty one): what decoding gives without the option, byte for byte. A list
    whose word has a large bonus: every answer holds the word, greedy and beam."""
    from mooer.config import compose_config
    from mooer.inference.loading import apply_run_dir
    from mooer.inference.recognizer import Recognizer
    from tests.conftest import TINY

    root, tokenizer_dir = tiny_release
    cfg, _ = compose_config("evaluate", [*TINY, f"llm.tokenizer_path={tokenizer_dir}",
                                         f"checkpoint={root / 'release'}"])
    recognizer = Recognizer.from_config(apply_run_dir(cfg), device="cpu", precision="fp32",
                                        batch_size=4, decoding={"max_new_tokens": 6,
                                                                "eos_bias": 0})
    tokenizer = recognizer.model.tokenizer
    word = "二十七"  # three tokens of the test tokenizer
    for beams in (1, 3):
        plain = recognizer.decode(corpus, "asr", num_beams=beams, progress=False).hypotheses
        empty = ContextGraph.build([], tokenizer)
        same = recognizer.decode(corpus, "asr", num_beams=beams, progress=False,
                                 hotwords=empty).hypotheses
        assert same == plain
        biased = recognizer.decode(corpus, "asr", num_beams=beams, progress=False,
                                   hotwords=ContextGraph.build([(word, 50.0)], tokenizer))
        assert all(word in text for text in biased.hypotheses.values()), biased.hypotheses
        assert not all(word in text for text in plain.values())
        # each utterance its own list, decoded in the same batches: what each list gives alone
        keys = sorted(plain)
        other = "三十"
        lists = {key: ContextGraph.build([([word, other][i % 2], 50.0)], tokenizer)
                 for i, key in enumerate(keys) if i % 3 != 2}
        mixed = recognizer.decode(corpus, "asr", num_beams=beams, progress=False,
                                  hotwords=lists).hypotheses
        for key in keys:
            alone = (recognizer.decode(corpus, "asr", num_beams=beams, progress=False,
                                       keys=frozenset([key]), hotwords=lists[key]).hypotheses
                     if key in lists else {key: plain[key]})
            assert mixed[key] == alone[key], key
        assert {key for key in keys if word in mixed[key]} >= set(keys[0::6])


def test_b_wer_and_u_wer_count_list_words_apart(tmp_path, capsys):
    """Counted by hand, list 张伟 and SEVENTEENTH: u1's biased tokens are 张 伟 SEVENTEENTH (3),
    of which the hypothesis drops 伟 and says SEVENTH (2 errors); u2's hypothesis inserts 张伟,
    a list word: 2 more biased errors, so B-WER is 4/3. The unbiased tokens (去 了 STREET 你 好)
    are all right."""
    from mooer.evaluation.scoring import biased_score, score
    from mooer.evaluation.scoring import main as mooer_score

    refs = {"u1": "张伟去了 SEVENTEENTH STREET", "u2": "你好"}
    hyps = {"u1": "张去了 SEVENTH STREET", "u2": "你好张伟"}
    result = score(refs, hyps)
    counts = biased_score(result, ["张伟", "SEVENTEENTH"])
    b, u = counts.biased, counts.unbiased
    assert (b.num_ref, b.correct, b.substitutions, b.deletions, b.insertions) == (3, 1, 1, 1, 2)
    assert (u.num_ref, u.correct, u.substitutions, u.deletions, u.insertions) == (5, 5, 0, 0, 0)
    assert counts.b_wer == pytest.approx(100 * 4 / 3) and counts.u_wer == 0.0
    # a list per utterance: u2's list is empty, so its insertion counts as unbiased
    per_utt = biased_score(result, {"u1": ["张伟", "SEVENTEENTH"], "u2": []})
    assert (per_utt.biased.insertions, per_utt.unbiased.insertions) == (0, 2)
    (tmp_path / "ref").write_text("".join(f"{k} {v}\n" for k, v in refs.items()))
    (tmp_path / "hyp").write_text("".join(f"{k}\t{v}\n" for k, v in hyps.items()))
    (tmp_path / "list").write_text("张伟\nseventeenth\t3\n")  # case as the scorer folds it
    assert mooer_score([str(tmp_path / "ref"), str(tmp_path / "hyp"), "--v", "0",
                        "--hotwords", str(tmp_path / "list")]) == 0
    out = capsys.readouterr().out
    assert "B-WER -> 133.33 % N=3 C=1 S=1 D=1 I=2\nU-WER -> 0.00 % N=5 C=5 S=0 D=0 I=0" in out


def test_transcribe_with_a_hotword_list(tiny_release, corpus, tmp_path, capsys):
    """mooer-transcribe --hotwords: the transcript holds the heavy word, the translation is
    decoded as without a list; a bad list or score is a usage error before the model loads."""
    from mooer.data.text import read_table
    from mooer.inference.transcribe import main as transcribe
    from tests.conftest import TINY

    root, tokenizer_dir = tiny_release
    wav = read_table(corpus / "wav.scp")[0][1]
    options = ["--wav_path", wav, "--checkpoint", str(root / "release"), "--device", "cpu",
               "--max_new_tokens", "5", "--num_beams", "2", "--task", "asr_ast", "--format",
               "text", "--", *TINY, f"llm.tokenizer_path={tokenizer_dir}"]
    assert transcribe(options) == 0
    plain = capsys.readouterr().out.split("\t")
    listed = tmp_path / "list.txt"
    listed.write_text("二十七\t40\n", encoding="utf-8")
    assert transcribe(["--hotwords", str(listed), *options]) == 0
    biased = capsys.readouterr().out.split("\t")
    assert "二十七" in biased[1] and "二十七" not in plain[1]
    assert biased[2] == plain[2]  # the translation is not biased
    # no CTC head here: rewriting (on by default) has nothing to hear with, off is the same
    assert transcribe(["--hotwords", str(listed), "--hotword_rewrite", "off", *options]) == 0
    assert capsys.readouterr().out.split("\t") == biased
    with pytest.raises(SystemExit):
        transcribe(["--hotwords", str(listed), "--hotword_rewrite", "loud", *options])
    assert "--hotword_rewrite: invalid" in capsys.readouterr().err
    # nor a check: every word is biased, checked or not ('off')
    assert transcribe(["--hotwords", str(listed), "--hotword_check", "off", *options]) == 0
    assert capsys.readouterr().out.split("\t") == biased
    with pytest.raises(SystemExit):
        transcribe(["--hotwords", str(listed), "--hotword_check", "loud", *options])
    assert "--hotword_check: invalid" in capsys.readouterr().err
    listed.write_text("ok\nA\tB\tC\n", encoding="utf-8")
    assert transcribe(["--hotwords", str(listed), *options]) == 2
    assert (f"error: {listed}, line 2: expected `word` or `word<TAB>weight`, got 3 "
            "tab-separated fields") in capsys.readouterr().err
    assert transcribe(["--hotwords", str(tmp_path / "absent.txt"), *options]) == 2
    assert f"hotword list {tmp_path / 'absent.txt'} not found" in capsys.readouterr().err
    assert transcribe(["--hotword_score", "-1", *options]) == 2
    assert "the hotword score must be a number of at least 0, got -1.0" in capsys.readouterr().err


def _spot_by_enumeration(log_probs: torch.Tensor, ids: list[int], blank: int) -> float:
    """The best score of a labelling of some stretch of frames that collapses to `ids` (CTC),
    less the stretch's best labels: every stretch and labelling tried (tiny sizes only)."""
    import itertools

    relative = log_probs - log_probs.max(-1, keepdim=True).values
    labels = sorted({blank, *ids})
    best = -math.inf
    frames = log_probs.shape[0]
    for start in range(frames):
        for end in range(start + 1, frames + 1):
            for path in itertools.product(labels, repeat=end - start):
                collapsed = [c for i, c in enumerate(path)
                             if c != blank and (i == 0 or c != path[i - 1])]
                if collapsed == ids:
                    best = max(best, sum(float(relative[start + t, c])
                                         for t, c in enumerate(path)))
    return best


def test_spotting_scores_each_sequence_anywhere_in_the_audio():
    """Keyword spotting on CTC posteriors: 0 for a sequence the best labels spell, the cost of
    the cheapest change otherwise; checked against every labelling of every stretch."""
    from mooer.inference.hotwords import spot

    blank = 4
    sure, rest = 0.9, 0.1 / 4
    probs = torch.full((6, 5), rest)
    for t, token in enumerate([blank, 1, 1, blank, 2, blank]):
        probs[t, token] = sure
    found = spot(probs.log().numpy(), [[1], [1, 2], [2, 1], [3], [1, 1]], blank)
    cost = math.log(rest / sure)  # one frame labelled other than its best
    assert found[0] == pytest.approx(0.0) and found[1] == pytest.approx(0.0)
    assert found[3] == pytest.approx(cost)
    assert found[4] == pytest.approx(cost)  # 1 blank 1: frame 2 becomes a blank
    generator = torch.Generator().manual_seed(1)
    random = torch.randn(5, 4, generator=generator).log_softmax(-1)
    sequences = [[0], [1, 2], [2, 2], [0, 1, 0]]
    found = spot(random.numpy(), sequences, 3)
    for ids, value in zip(sequences, found, strict=True):
        assert value == pytest.approx(_spot_by_enumeration(random, ids, 3), abs=1e-5), ids


def _stretches_by_enumeration(relative: np.ndarray, ids: list[int], blank: int
                              ) -> tuple[float, set[tuple[int, int]]]:
    """The best score of a labelling of some stretch of frames that collapses to `ids`, on
    scores already relative to each frame's best (`relative` [T, V]), and the (first, last)
    frames its tokens take in every labelling that scores it: every stretch and labelling
    tried (tiny sizes only; integer scores, so that ties are exact)."""
    import itertools

    best, where = -math.inf, set()
    frames = relative.shape[0]
    for start in range(frames):
        for end in range(start + 1, frames + 1):
            for path in itertools.product(sorted({blank, *ids}), repeat=end - start):
                collapsed = [c for i, c in enumerate(path)
                             if c != blank and (i == 0 or c != path[i - 1])]
                if collapsed != ids:
                    continue
                score = sum(float(relative[start + t, c]) for t, c in enumerate(path))
                tokens = [start + t for t, c in enumerate(path) if c != blank]
                if score > best:
                    best, where = score, set()
                if score == best:
                    where.add((tokens[0], tokens[-1]))
    return best, where


def test_spotting_says_where_by_the_earliest_end_of_the_best_stretches():
    """Where a sequence is heard (`spot_stretches`), against every labelling of every
    stretch, on scores with ties: its best stretch's score; its last token's frame, the
    earliest of the best stretches'; and a first frame that one of the best stretches with
    that end has."""
    from mooer.inference.hotwords import spot_rows

    generator = np.random.default_rng(3)
    blank, checked = 3, 0
    for _ in range(40):
        frames = int(generator.integers(1, 7))
        relative = -generator.integers(0, 3, size=(frames, 4)).astype(np.float32)
        relative[np.arange(frames), generator.integers(0, 4, size=frames)] = 0.0  # a best
        sequences = [[int(t) for t in generator.integers(0, 3, size=int(generator.integers(1, 3)))]
                     for _ in range(3)]
        other = -generator.integers(0, 3, size=(2, 4)).astype(np.float32)
        other[:, 0] = 0.0
        found, first, last = spot_rows([relative, other], sequences, blank)
        for s, ids in enumerate(sequences):
            best, where = _stretches_by_enumeration(relative, ids, blank)
            if best == -math.inf:
                assert (found[0, s], first[0, s], last[0, s]) == (-math.inf, -1, -1)
                continue
            checked += 1
            assert found[0, s] == best, ids
            assert last[0, s] == min(b for _, b in where), ids
            assert (first[0, s], last[0, s]) in where, ids
    assert checked > 60


def test_a_checked_graph_keeps_the_words_the_audio_holds():
    """Only the words the CTC posteriors spell (within the threshold) stay, at CHECKED_SCORE
    unless a score was asked; none heard: no graph."""
    from mooer.inference.hotwords import CHECKED_SCORE

    tokenizer = CharTokenizer()
    blank = 59
    probs = torch.full((6, 60), 0.1 / 59)
    for t, token in enumerate([blank, 1, blank, 2, blank, blank]):  # A B
        probs[t, token] = 0.9
    posteriors = probs.log().numpy()
    graph = ContextGraph.build([("AB", None), ("C", None), ("A", 3.0)], tokenizer)
    kept = graph.checked(posteriors, blank)
    assert kept is not None and kept.words == ["AB", "A"]
    assert walk(kept, [1, 2]) == [3.0, CHECKED_SCORE]  # A (its weight) then B (the default)
    assert walk(graph, [1, 2]) == [3.0, 1.0]  # unchecked: DEFAULT_SCORE
    asked = ContextGraph.build([("AB", None)], tokenizer, score=2.0).checked(posteriors, blank)
    assert asked is not None and walk(asked, [1, 2]) == [2.0, 2.0]
    assert ContextGraph.build([("C", None)], tokenizer).checked(posteriors, blank) is None
    assert graph.checked(posteriors, blank) is kept  # the same words: the same graph


def test_decoding_checks_the_list_against_the_audio_on_a_ctc_head(tokenizer, shards):
    """On a model with a CTC head, decoding biases only the listed words the head hears: with
    a threshold nothing can pass, the output is the plain one; with one everything passes, it
    is the unchecked one (the same asked score)."""
    from mooer.data.features import ParaformerFrontend
    from mooer.inference.decode import decode, decoding_loader
    from tests.conftest import prompt_format
    from tests.models.test_speech_llm import tiny_model

    model = tiny_model(tokenizer, 3, "encoder.ctc_weight=0.3").eval()
    loader = decoding_loader(shards, model, ParaformerFrontend(None), prompt_format("asr"),
                             "asr", 4)
    word = "二十七"
    graph = ContextGraph.build([(word, 50.0)], tokenizer)
    options = {"num_beams": 1, "max_new_tokens": 6, "eos_bias": 0}

    def run(**extra) -> dict[str, str]:
        return decode(model, loader, {**options, **extra}, torch.device("cpu"), torch.float32,
                      progress=False).hypotheses

    plain = run()
    unchecked = run(hotwords=graph, hotword_check=None, hotword_rewrite=None)
    assert all(word in text for text in unchecked.values())
    # above 0, nothing is ever heard (nor rewritten here: test_rewrite)
    assert run(hotwords=graph, hotword_check=1.0, hotword_rewrite=None) == plain
    assert run(hotwords=graph, hotword_check=-1e9, hotword_rewrite=None) == unchecked


def test_a_list_on_a_model_without_a_ctc_head_says_once_how_to_check_it(tokenizer, shards,
                                                                         caplog):
    """Decoding transcripts with a list on a model without a CTC head warns, once a
    recognizer, that the words go unchecked and how to give it a head; translations (no list
    applies) and a model with a head say nothing."""
    import logging

    from mooer.data.features import ParaformerFrontend
    from mooer.inference.recognizer import Recognizer
    from tests.conftest import prompt_format
    from tests.models.test_speech_llm import tiny_model

    graph = ContextGraph.build([("二十七", None)], tokenizer)
    options = {"num_beams": 1, "max_new_tokens": 3, "eos_bias": 0}

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "no CTC head" in r.getMessage()]

    for setting, expected in (("encoder.ctc_weight=0", 1), ("encoder.ctc_weight=0.3", 0)):
        model = tiny_model(tokenizer, 3, setting).eval()
        recognizer = Recognizer(model, prompt_format("asr_ast"), ParaformerFrontend(None),
                                torch.device("cpu"), torch.float32, 8, dict(options))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mooer.inference.recognizer"):
            recognizer.decode(shards, "ast", progress=False, hotwords=graph)
            assert warnings() == []
            for _ in range(2):
                recognizer.decode(shards, "asr", progress=False, hotwords=graph)
            recognizer.decode(shards, "asr", progress=False)
        said = warnings()
        assert len(said) == expected, setting
        if expected:
            assert "experiment=ctc_head" in said[0] and "--ctc_head" in said[0]


def test_a_model_trained_with_lists_reads_the_list_in_its_prompt(tiny_release, corpus):
    """A prompt format that shows hotwords (task/context=hotwords): the decoders give each
    utterance its list (one graph for all, or one an uttid; none: the plain prompt), before
    the audio or after the instruction; decoding so equals decoding with that text written
    into the instruction; at score 0 nothing is biased at decoding."""
    from hydra.utils import instantiate

    from mooer.config import compose_config
    from mooer.data.text import read_table
    from mooer.inference.loading import apply_run_dir
    from mooer.inference.recognizer import Recognizer
    from tests.conftest import TINY

    root, tokenizer_dir = tiny_release
    keys = sorted(key for key, _ in read_table(corpus / "text"))
    instruction = "Transcribe speech to text. "
    shown = "Hotwords: 二十七, olivia. "
    for position in ("before_audio", "in_instruction"):
        cfg, _ = compose_config("evaluate", [*TINY, f"llm.tokenizer_path={tokenizer_dir}",
                                             f"checkpoint={root / 'release'}",
                                             "task/context=hotwords",
                                             f"task.context.position={position}"])
        recognizer = Recognizer.from_config(apply_run_dir(cfg), device="cpu", precision="fp32",
                                            batch_size=4, decoding={"max_new_tokens": 6,
                                                                    "eos_bias": 0})
        tokenizer = recognizer.model.tokenizer
        graph = ContextGraph.build([("二十七", None), ("olivia", None)], tokenizer, 0.0)
        assert not graph.biases and ContextGraph.build([("olivia", None)], tokenizer).biases
        plain_prompt = cfg.task.template.format(instruction)
        listed = (shown + plain_prompt if position == "before_audio"
                  else cfg.task.template.format(instruction + shown))
        for lists in (graph, {keys[0]: graph, keys[5]: graph}):
            prompts, before = {}, {}
            for batch in recognizer.loader(corpus, "asr", hotwords=lists):
                for row, key in enumerate(batch["keys"]):
                    slots = batch["audio_slot_mask"][row]
                    part = batch["attention_mask"][row].bool() & ~slots
                    prompts[key] = tokenizer.decode(batch["input_ids"][row][part])
                    before[key] = int(part[:int(slots.nonzero()[0])].sum())
            for key in keys:
                given = isinstance(lists, ContextGraph) or key in lists
                assert prompts[key] == (listed if given else plain_prompt), key
                assert (before[key] > 0) == (given and position == "before_audio")

        plain = recognizer.decode(corpus, "asr", progress=False).hypotheses
        assert recognizer.decode(corpus, "asr", progress=False,
                                 hotwords=ContextGraph.build([], tokenizer)).hypotheses == plain
        read = recognizer.decode(corpus, "asr", progress=False, hotwords=graph).hypotheses
        assert read != plain
        if position == "in_instruction":
            written = cfg.copy()
            written.task.context = {"text": None}
            written.task.instructions.asr = instruction + shown
            recognizer.prompt = instantiate(written.task)
            assert recognizer.decode(corpus, "asr", progress=False).hypotheses == read


def test_a_long_lists_spotting_searches_what_can_reach_the_floor_and_finds_it_all():
    """Spotting skips a sequence whose tokens' best scores on any frame add up to less than
    the floor (it cannot reach it), asking that only of those whose first token reaches it
    alone; every other sequence scores, and is placed, as a spotting of it alone does."""
    from mooer.inference.hotwords import spot_stretches

    rng = np.random.default_rng(3)
    words = list(dict.fromkeys("".join(rng.choice(list("ABCDEFG"), size=rng.integers(1, 5)))
                               for _ in range(400)))
    graph = ContextGraph.build([(word, None) for word in words], CharTokenizer())
    generator = torch.Generator().manual_seed(4)
    log_probs = (torch.randn(10, 60, generator=generator) * 3).log_softmax(-1).numpy()
    peaks = (log_probs - log_probs.max(1, keepdims=True)).max(0)
    bounds = np.array([peaks[ids].sum() for ids in graph.sequences])
    floor = float(np.median(bounds))
    spotted = graph.spotted(log_probs, 59, floor)
    alone, first, last = spot_stretches(log_probs, graph.sequences, 59)
    reachable = bounds >= floor
    assert 50 < reachable.sum() < len(bounds) - 50  # both kinds, many of each
    np.testing.assert_allclose(spotted.scores[reachable], alone[reachable], rtol=0, atol=1e-6)
    assert (spotted.first[reachable] == first[reachable]).all()
    assert (spotted.last[reachable] == last[reachable]).all()
    assert np.isneginf(spotted.scores[~reachable]).all() and (alone[~reachable] < floor).all()


def test_spotting_reads_the_frames_summaries_computed_where_the_posteriors_are():
    """Each frame's best score and each class's best relative one, computed by torch on the
    batch's tensor (as on an accelerator, in decoding) over each utterance's own frames, are
    what numpy computes on the host, and spotting with them finds what it finds without them
    (an utterance of no frames included)."""
    from mooer.inference.hotwords import device_frame_summaries, frame_summaries

    rng = np.random.default_rng(7)
    words = list(dict.fromkeys("".join(rng.choice(list("ABCDEFG"), size=rng.integers(1, 4)))
                               for _ in range(120)))
    graph = ContextGraph.build([(word, None) for word in words], CharTokenizer())
    generator = torch.Generator().manual_seed(8)
    batch = (torch.randn(3, 9, 60, generator=generator) * 3).log_softmax(-1)
    lengths = [9, 5, 0]
    summaries = device_frame_summaries(batch, lengths)
    rows = [batch[r, :n].numpy() for r, n in enumerate(lengths)]
    for (top, peaks), (host_top, host_peaks) in zip(summaries, frame_summaries(batch, lengths),
                                                    strict=True):
        np.testing.assert_array_equal(top, host_top)
        np.testing.assert_array_equal(peaks, host_peaks)
    for (top, peaks), row in zip(summaries, rows, strict=True):
        np.testing.assert_array_equal(top, row.max(1) if len(row) else np.zeros(0))
        expected = (row - row.max(1, keepdims=True)).max(0) if len(row) else np.full(60, -np.inf)
        np.testing.assert_array_equal(peaks, expected)
    alone = graph.spotted_rows(rows, 59, -3.0)
    given = graph.spotted_rows(rows, 59, -3.0, summaries)
    for a, b in zip(alone, given, strict=True):
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.first, b.first)
        np.testing.assert_array_equal(a.last, b.last)
    assert np.isfinite(given[0].scores).sum() > 10 and np.isneginf(given[2].scores).all()
    # the bound is the summaries': where they say no class is heard, nothing is searched
    deaf = graph.spotted_rows(rows, 59, -3.0, [(top, np.full_like(peaks, -np.inf))
                                                for top, peaks in summaries])
    assert all(np.isneginf(spotting.scores).all() for spotting in deaf)
