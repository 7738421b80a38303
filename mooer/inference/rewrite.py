"""Hotword rewriting: listed words the beam missed, tried in its answer and kept where the
model itself prefers them.

A bonus in beam search (`mooer.inference.hotwords`) finds a hotword only when the decoder
already half expects its first token: a name heard a few times in training loses to one heard
more often (`i meet priya` for `yusuf`) however the audio sounds. So after decoding, each
listed word the encoder's CTC head hears somewhere in the utterance (its tokens spelled within
`threshold` nats of the head's best path: `ContextGraph.spotted`) is tried where the head hears
it: in place of the answer's words on those frames (the answer aligned on the head), or between
them. Where a candidate's joint score is higher than the answer's, the beam's other
hypotheses are scored too, and the best of them all is written: the candidate, or a hypothesis
of the beam the model itself prefers to it (such as the one without a word that the beam's
bonus, not the model, put in the answer). The joint score:

    decoder log-likelihood (teacher forced, end of answer included)
    + REWRITE_WEIGHT * CTC log-likelihood
    + REWRITE_SHARE * the word's bonus per token * tokens, where it may be a respelling of the
      words it replaces (`respelling`: `olia` for `olivia`), else nothing

A candidate the decoder finds more than REWRITE_DROP nats less likely than the answer is not
written, however well it fits the audio (`i meet home` for `i meet marcus`).

The list proposes; the audio and the decoder decide. The bonus may make a listed word win over
the decoder's spelling of it, never over another word: a name the model heard a few times often
sounds as close to the audio as the one spoken, and a list of other names would put one of them
in its place. A word that sounds like nothing in the audio is never tried, and one the joint
score does not prefer is never written, so a list of distractors changes next to nothing
(benchmarks/hotwords.py measures it).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from mooer.data.hotword_list import (
    RESPELLING,
    REWRITE_DROP,
    REWRITE_SHARE,
    REWRITE_TOP,
    REWRITE_WEIGHT,
)
from mooer.data.text import WORD_JOINER
from mooer.inference.align import HAN, matched_words, token_pieces, viterbi_batch
from mooer.inference.hotwords import ContextGraph, Spotting, encode_all
from mooer.inference.posteriors import Posteriors

__all__ = ["Option", "Placed", "Try", "candidates", "ctc_log_likelihoods", "gaining", "glue",
           "join", "placed", "proposals", "respelling", "rewrite", "rewritings", "scored_on",
           "substitutions", "to_try", "units"]

UNIT = re.compile(f"[{HAN}]|[^\\s{HAN}]+")
IS_HAN = re.compile(f"[{HAN}]")


def units(text: str) -> list[str]:
    """The words of a transcript: each Han character, and each run of other characters
    between spaces."""
    return UNIT.findall(text.replace(WORD_JOINER, " "))


def join(pieces: Sequence[str]) -> str:
    """`units` back into text: a space between two words unless one of them is Han."""
    text = ""
    for piece in pieces:
        if text and not IS_HAN.match(piece) and not IS_HAN.match(text[-1]):
            text += " "
        text += piece
    return text


@dataclass(frozen=True)
class Placed:
    """An answer's text and its words (`units`), each with its first and last frame on the
    CTC head and where it stands in the text (start, end)."""

    text: str
    words: list[tuple[str, int, int, int, int]]


def placed(ids: Sequence[int], spans: Sequence[tuple[int, int]], tokenizer) -> Placed:
    """An answer's words placed by its tokens (`ids`) and their Viterbi frames (`spans`)."""
    pieces = token_pieces(ids, tokenizer)
    matches = matched_words([piece.replace(WORD_JOINER, " ") for piece in pieces], UNIT)
    return Placed("".join(pieces), [(match.group(), spans[tokens[0]][0], spans[tokens[-1]][1],
                                     match.start(), match.end()) for match, tokens in matches])


def glue(left: str, middle: str, right: str) -> str:
    """`middle` between `left` and `right`, with a space where two words would touch (neither
    side a space or Han)."""
    def touching(a: str, b: str) -> bool:
        return not (a.isspace() or b.isspace() or a == WORD_JOINER or b == WORD_JOINER
                    or IS_HAN.match(a) or IS_HAN.match(b))
    if left and middle and touching(left[-1], middle[0]):
        middle = " " + middle
    if right and middle and touching(middle[-1], right[0]):
        middle += " "
    return left + middle + right


def substitutions(answer: Placed, word: str, first: int, last: int) -> dict[str, str]:
    """The answer with `word`, heard from frame `first` to `last`, in place of each run of
    the words those frames overlap, with or without the word before or after (runs of up to
    one word more than `word` has: a stretch a frame too long or too short overlaps one word
    more or less); where it overlaps none, put between the words around it, or in place of
    one of them: each such text, and the text it replaces ('' where it goes between). The rest
    of the text stays as it was (its spacing too)."""
    words, text = answer.words, answer.text
    overlap = [i for i, (_, a, b, _, _) in enumerate(words) if a <= last and b >= first]
    if overlap:
        low, high = max(overlap[0] - 1, 0), min(overlap[-1] + 2, len(words))
        longest = len(units(word)) + 1
        runs = {(a, b) for a in range(low, high) for b in range(a + 1, high + 1)
                if b - a <= longest and any(a <= i < b for i in overlap)}
    else:
        at = sum(1 for _, _, b, _, _ in words if b < first)
        runs = {(at, at), (max(at - 1, 0), at), (at, min(at + 1, len(words)))}
    found: dict[str, str] = {}
    for a, b in sorted(runs):
        if a < b:  # in place of words a..b-1
            start, end = words[a][3], words[b - 1][4]
            candidate = glue(text[:start], word, text[end:])
            replaced = text[start:end]
        else:  # between words a-1 and a
            cut = words[a - 1][4] if a else 0
            candidate, replaced = glue(text[:cut], word, text[cut:]), ""
        if candidate != text and (candidate not in found or (
                not respelling(found[candidate], word) and respelling(replaced, word))):
            found[candidate] = replaced
    return found


def respelling(replaced: str, word: str) -> bool:
    """Whether `word` may be a spelling of what an answer wrote as `replaced` (`olia` for
    `olivia`, `camile` for `camille`): at least RESPELLING of their letters in common (difflib's
    ratio, case and spacing aside); a Han word, where as many Han characters stand (a
    homophone written wrong)."""
    if not replaced:
        return False
    old = "".join(replaced.replace(WORD_JOINER, " ").split()).lower()
    new = "".join(word.replace(WORD_JOINER, " ").split()).lower()
    if not old or not new:
        return False
    if IS_HAN.search(new):
        return len(old) == len(new) and all(IS_HAN.match(c) for c in old)
    return similar(old, new)


def similar(old: str, new: str) -> bool:
    """Whether two spellings have at least RESPELLING of their letters in common (difflib's
    ratio; its bounds first, by length and by letters, which settle most pairs)."""
    total = len(old) + len(new)
    if 2 * min(len(old), len(new)) < RESPELLING * total:
        return False
    common = sum(min(old.count(c), new.count(c)) for c in set(old) & set(new))
    if 2 * common < RESPELLING * total:  # difflib's quick_ratio
        return False
    return difflib.SequenceMatcher(None, old, new, autojunk=False).ratio() >= RESPELLING


def ctc_log_likelihoods(log_probs: torch.Tensor, frames: int,
                        token_lists: Sequence[Sequence[int]]) -> torch.Tensor:
    """log P_ctc(tokens | audio) of each token list on one utterance's CTC log-posteriors
    [T, V] (blank last), its first `frames` frames; -inf where a list cannot be aligned."""
    count = len(token_lists)
    if not count:
        return torch.zeros(0)
    targets = torch.tensor([t for ids in token_lists for t in ids], dtype=torch.long)
    lengths = torch.tensor([len(ids) for ids in token_lists], dtype=torch.long)
    inputs = log_probs[:frames, None, :].expand(frames, count, log_probs.shape[-1])
    return -torch.nn.functional.ctc_loss(
        inputs, targets, torch.full((count,), frames, dtype=torch.long), lengths,
        blank=log_probs.shape[-1] - 1, reduction="none", zero_infinity=False)


def holds(text: str, word: str) -> bool:
    """Whether `text` already says `word` (as whole words)."""
    return f" {word} " in f" {text} " if not IS_HAN.search(word) else word in text


class Try(NamedTuple):
    """A listed word to try in an answer (`to_try`): in the form (case, spacing) the CTC head
    heard best, with the bonus it would earn and the first and last frame where it was
    heard."""

    form: str
    bonus: float
    first: int
    last: int


def to_try(text: str, graph: ContextGraph, spotted: Spotting, threshold: float, tokenizer
           ) -> list[Try]:
    """The words of `graph` heard at `threshold` that the answer `text` does not say yet."""
    said = join(units(text))
    found = []
    sequences = graph.sequences
    for entry, best in graph.heard(spotted, threshold):
        ids = sequences[best]
        form = graph.form(best, tokenizer)
        weight = graph.entries[entry][1]
        bonus = REWRITE_SHARE * (graph.default_score if weight is None else weight) * len(ids)
        if form and bonus > 0 and not holds(said, form):
            found.append(Try(form, bonus, int(spotted.first[best]), int(spotted.last[best])))
    return found


def candidates(answer: Placed, tries: Sequence[Try]) -> dict[str, tuple[str, str, float]]:
    """Each rewriting of an answer (`placed`) with a word `to_try` where it was heard: the
    word, the text it replaces there and the word's bonus (which it earns only where it may be
    a respelling of that text: `respelling`)."""
    found: dict[str, tuple[str, str, float]] = {}
    for form, bonus, first, last in tries:
        for candidate, replaced in substitutions(answer, form, first, last).items():
            if candidate not in found or found[candidate][2] < bonus:
                found[candidate] = form, replaced, bonus
    return found


@dataclass
class Option:
    """What `rewrite` scores in its decoder passes: an answer, a candidate, or another
    hypothesis of the beam, with its CTC log-likelihood, the bonus it earns and the decoder's
    log-likelihood (NaN until a pass has scored it)."""

    text: str
    ids: list[int]
    ctc: float
    bonus: float
    candidate: bool
    decoder: float = math.nan

    @property
    def total(self) -> float:
        """The joint score: decoder + REWRITE_WEIGHT * CTC + bonus (NaN until scored)."""
        return self.decoder + REWRITE_WEIGHT * self.ctc + self.bonus


def proposals(text: str, answer: Sequence[int], tries: Sequence[Try],
              spans: Sequence[tuple[int, int]] | None, tokenizer
              ) -> tuple[list[str], dict[str, tuple[str, str, float]], list[list[int]]]:
    """An answer (`text`, its ids as the CTC head spells them, and their frames: `viterbi`)
    rewritten with each of its words `to_try` where it was heard (`candidates`): the answer's
    text and then the candidates', their token ids, and each candidate's word, the text it
    replaces and the word's bonus; nothing where there are none."""
    if not tries or spans is None:  # no frames (more tokens than frames): nothing to place
        return [], {}, []
    options = candidates(placed(answer, spans, tokenizer), tries)
    if not options:
        return [], {}, []
    listed = [text, *options]
    return listed, options, encode_all(tokenizer, listed)


def gaining(listed: Sequence[str], options: dict[str, tuple[str, str, float]],
            ids: Sequence[list[int]], acoustic: Sequence[float]
            ) -> list[tuple[str, list[int], float, float]]:
    """Of an answer's `proposals`, with their CTC log-likelihoods (`acoustic`, the answer's
    first), the answer and then the candidates that gain on it by the audio and the bonus
    (at most REWRITE_TOP, the most gain first), each as its text, ids, CTC log-likelihood and
    the bonus it earns; nothing where no candidate gains."""
    # what the audio and the bonus give a candidate over the answer: one that gains nothing
    # could win only where the decoder prefers it, and it preferred the answer. The bonus
    # counts where the word may be a respelling of what it replaces (asked only where it
    # would make the difference)
    gains, earned = {}, {}
    for i in range(1, len(listed)):
        word, replaced, bonus = options[listed[i]]
        gain = REWRITE_WEIGHT * (acoustic[i] - acoustic[0])
        earned[i] = bonus if gain + bonus > 0 and respelling(replaced, word) else 0.0
        gains[i] = gain + earned[i]
    better = sorted((i for i, gain in gains.items() if gain > 0),
                    key=lambda i: -gains[i])[:REWRITE_TOP]
    if not better:
        return []
    return [(listed[i], ids[i], acoustic[i], earned.get(i, 0.0)) for i in (0, *better)]


def rewritings(text: str, answer: Sequence[int], tries: Sequence[Try],
               spans: Sequence[tuple[int, int]] | None, log_probs: torch.Tensor, tokenizer
               ) -> list[tuple[str, list[int], float, float]]:
    """An answer (`text`, its ids as the CTC head spells them, and their frames: `viterbi`)
    rewritten with each of its words `to_try` that gains on it by the audio and the bonus, on
    one utterance's CTC log-posteriors [frames, V]: the answer first, then those candidates
    (at most REWRITE_TOP, the most gain first), each as its text, ids, CTC log-likelihood and
    the bonus it earns; nothing where no candidate gains (`proposals`, then `gaining`)."""
    listed, options, ids = proposals(text, answer, tries, spans, tokenizer)
    if not options:
        return []
    return gaining(listed, options, ids,
                   ctc_log_likelihoods(log_probs, log_probs.shape[0], ids).tolist())


def rewrite(model: Any, batch: dict[str, Any], encoded: tuple,
            ctc: Posteriors | tuple[torch.Tensor, torch.Tensor], texts: Sequence[str],
            answers: Sequence[Sequence[int]], graphs: Sequence[ContextGraph | None],
            spotted: Sequence[Spotting | None], threshold: float,
            alternatives: Sequence[Sequence[Sequence[int]]] | None = None,
            prompt_cache: Any = None) -> list[tuple[str, list[int]] | None]:
    """Each answer of a batch (its text and token ids) rewritten with the words of its graph
    heard at `threshold` (`spotted`: each row's `ContextGraph.spotted`), as its text and
    token ids, or None where the answer stands.

    The answer is aligned on the CTC head (its words' frames: `placed`), and the candidates
    that gain most on it by the audio and the bonus (`rewritings`) are scored with it in one
    decoder pass. Where one beats the answer, the row's `alternatives` (the token ids of the
    beam's other hypotheses, read as text only there) are scored in a second pass, and the best
    of the candidate and those is written (a hypothesis of the beam with the ids the beam gave
    it). A candidate the decoder finds more than REWRITE_DROP nats less likely than the answer
    is not written: there the best of the answer and those hypotheses is. Where no candidate
    beats the answer, it stands, and nothing more is scored. The decoder passes read the
    prompts from the decoding's `prompt_cache` where it is given (`Generated.prompt_cache`).
    `ctc`: the CTC head's log-posteriors and frames of the batch (`SpeechLLM.ctc_log_probs`,
    or those as `Posteriors`), read by the columns of the answers' and candidates' tokens."""
    posteriors = Posteriors.of(ctc)
    tokenizer = model.tokenizer
    blank = posteriors.blank
    tries: list[list[Try]] = []  # each row's words to try, and its answer as the head spells it
    spelt: list[list[int]] = []
    for text, answer, graph, found in zip(texts, answers, graphs, spotted, strict=True):
        tries.append([] if graph is None or found is None or not text
                     else to_try(text, graph, found, threshold, tokenizer))
        if tries[-1] and (not answer or max(answer) >= blank):  # a token it has no class for
            answer = encode_all(tokenizer, [text])[0]
        spelt.append(list(answer) if tries[-1] else [])
    # the answers' frames, the batch's rows at once (on the host: their tokens' columns)
    log_probs, columns = posteriors.columns(spelt)
    paths = viterbi_batch(log_probs, posteriors.frames, columns, log_probs.shape[-1] - 1)
    proposed = {row: proposals(text, spelt[row], tries[row], paths[row], tokenizer)
                for row, text in enumerate(texts)}
    proposed = {row: found for row, found in proposed.items() if found[1]}
    # the candidates' CTC log-likelihoods, each row on its own frames and columns
    rows: list[int] = []  # the decoder's pass: each option's row, and the option
    scored: list[Option] = []
    acoustics = scored_on(posteriors, {row: ids for row, (_, _, ids) in proposed.items()})
    for row, acoustic in zip(proposed, acoustics, strict=True):
        listed, options, ids = proposed[row]
        for n, (written, tokens, score, bonus) in enumerate(gaining(listed, options, ids,
                                                                   acoustic)):
            rows.append(row)
            scored.append(Option(written, tokens, score, bonus, n > 0))
    contested = best_candidates(model, batch, encoded, rows, scored, prompt_cache)
    # the beam's other hypotheses of the rows where a candidate beat the answer, scored with
    # the candidate to write (or, where the decoder vetoed it, the answer)
    rows, scored = [], []
    generated: dict[tuple[int, str], list[int]] = {}  # a hypothesis' ids as the beam made them
    rivals: dict[int, tuple[list[str], list[list[int]]]] = {}
    for row, kept in contested.items():
        seen = {kept.text, texts[row]}
        others = []
        for hypothesis in alternatives[row] if alternatives else ():
            text = tokenizer.decode(hypothesis, skip_special_tokens=True)
            if text and text not in seen:
                seen.add(text)
                others.append(text)
                generated[(row, text)] = list(hypothesis)
        if others:
            rivals[row] = others, encode_all(tokenizer, others)
    acoustics = scored_on(posteriors, {row: ids for row, (_, ids) in rivals.items()})
    for (row, (others, other_ids)), scores in zip(rivals.items(), acoustics, strict=True):
        rows += [row, *[row] * len(others)]
        scored += [contested[row], *[Option(other, tokens, score, 0.0, False)
                                     for other, tokens, score in zip(others, other_ids, scores,
                                                                     strict=True)]]
    score_options(model, batch, encoded, rows, scored, prompt_cache)
    chosen: list[tuple[str, list[int]] | None] = [None] * len(texts)
    for row, kept in contested.items():
        # what the model's joint score prefers of all the row's options: the candidate (or the
        # answer), or a hypothesis of the beam that beats it by the model alone
        best = max((option for r, option in zip(rows, scored, strict=True) if r == row),
                   key=lambda option: option.total, default=kept)
        if best.candidate or (row, best.text) in generated:
            chosen[row] = best.text, generated.get((row, best.text), best.ids)
    return chosen


def scored_on(posteriors: Posteriors, token_lists: dict[int, list[list[int]]]
              ) -> list[list[float]]:
    """The CTC log-likelihoods of each batch row's token lists (`token_lists`: row -> lists)
    on that row's own frames, in the dict's order: the rows' columns brought to the host
    together (`Posteriors.rows`)."""
    if not token_lists:
        return []
    found, renumbered = posteriors.rows(list(token_lists), [ids for lists in token_lists.values()
                                                             for ids in lists])
    scores, at = [], 0
    for log_probs, lists in zip(found, token_lists.values(), strict=True):
        mine = renumbered[at:at + len(lists)]
        at += len(lists)
        scores.append(ctc_log_likelihoods(log_probs, log_probs.shape[0], mine).tolist())
    return scores


def score_options(model: Any, batch: dict[str, Any], encoded: tuple, rows: list[int],
                  scored: list[Option], prompt_cache: Any = None) -> None:
    """Each option's decoder log-likelihood (`Option.decoder`, which makes its joint score
    `Option.total`): one teacher-forced pass over the options of the batch's `rows` not
    scored yet (over the prompts' keys and values in `prompt_cache`, where given)."""
    todo = [n for n, option in enumerate(scored) if math.isnan(option.decoder)]
    if todo:
        end = [] if model.tokenizer.eos_token_id is None else [model.tokenizer.eos_token_id]
        decoder = model.answer_log_probs(batch, [scored[n].ids + end for n in todo], encoded,
                                         rows=[rows[n] for n in todo],
                                         prompt_cache=prompt_cache)
        for n, log_likelihoods in zip(todo, decoder, strict=True):
            scored[n].decoder = sum(log_likelihoods)


def best_candidates(model: Any, batch: dict[str, Any], encoded: tuple, rows: list[int],
                    scored: list[Option], prompt_cache: Any = None) -> dict[int, Option]:
    """The rows where a candidate among `scored` (the options of the batch's `rows`: its
    answer first) has a joint score (`score_options`) higher than every other option's of its
    row, each with the candidate to write: the best whose decoder log-likelihood is at most
    REWRITE_DROP nats below the answer's, where it too beats them all; else the answer (the
    decoder vetoed the candidate, but the answer is in doubt: the beam's other hypotheses may
    still beat it)."""
    score_options(model, batch, encoded, rows, scored, prompt_cache)
    found = {}
    for row in dict.fromkeys(rows):
        mine = [option for r, option in zip(rows, scored, strict=True) if r == row]
        rival = max(option.total for option in mine if not option.candidate)
        if max(option.total for option in mine if option.candidate) > rival:
            best = max((option for option in mine if option.candidate
                        and option.decoder >= mine[0].decoder - REWRITE_DROP),
                       key=lambda o: o.total, default=None)
            found[row] = best if best is not None and best.total > rival else mine[0]
    return found
