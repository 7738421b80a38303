"""The evaluation recipe behind evaluate.py: decode every test set, score it, summarize."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from mooer.config import as_dict
from mooer.data.hotword_list import check_score, read_hotwords
from mooer.data.pipeline import utterance_seconds
from mooer.data.text import one_line, read_table
from mooer.evaluation.scoring import Biased, biased_score, bleu_chrf, format_wer, score
from mooer.inference.decode import Decoded
from mooer.inference.distributed import (
    Rank,
    attempt,
    current_rank,
    deal_by_duration,
    gather,
    join,
    relaunch,
)
from mooer.inference.formats import join_texts
from mooer.inference.hotwords import ContextGraph
from mooer.inference.loading import apply_run_dir
from mooer.inference.longform import has_long_recordings
from mooer.inference.recognizer import Recognizer, prompt_for
from mooer.inference.segment import check_max_segment_s
from mooer.models.weights import CheckpointError

log = logging.getLogger(__name__)


class UnknownTestSet(ValueError):
    """A requested test set has no data under test_data_dir."""


@dataclass
class TestSet:
    name: str
    source: Path          # a data.list, or a Kaldi dir with wav.scp
    references: Path | None
    metric: str           # cer | wer | mer | bleu
    task: str             # asr | ast
    hotwords: list[tuple[str, float | None]] | None = None  # a list to bias towards (ASR)


@dataclass
class SetResult:
    name: str
    metric: str
    value: float
    utterances: int
    rtf: float
    utterances_per_second: float
    chrf: float | None = None
    b_wer: float | None = None  # with a hotword list: errors on its words, and on the others
    u_wer: float | None = None
    retried: int = 0  # answers the hallucination guard flagged and had decoded again
    flagged: int = 0  # of those, still flagged (kept, and listed in the wer file)


def found_sets(test_data_dir: Path) -> list[str]:
    """Subdirectories of test_data_dir that hold a data.list or a wav.scp."""
    if not test_data_dir.is_dir():
        return []
    return sorted(d.name for d in test_data_dir.iterdir()
                  if (d / "data.list").is_file() or (d / "wav.scp").is_file())


def resolve_sets(cfg: DictConfig) -> list[TestSet]:
    """The configured sets (group `testsets` plus `extra_testsets`), checked before decoding."""
    root = Path(cfg.test_data_dir)
    wanted = {name: dict(meta) for name, meta in (cfg.get("testsets") or {}).items()}
    for name in cfg.get("extra_testsets") or []:
        wanted.setdefault(name, {"dir": name, "metric": "mer", "task": "asr"})
    sets, missing = [], []
    for name, meta in wanted.items():
        directory = root / meta.get("dir", name)
        if (directory / "data.list").is_file():
            source = directory / "data.list"
        elif (directory / "wav.scp").is_file():
            source = directory
        else:
            missing.append(f"{name} (looked in {directory})")
            continue
        reference_file = directory / meta.get("references", "text")
        if meta.get("references") and not reference_file.is_file():
            missing.append(f"{name} (no reference file {reference_file})")
            continue
        references = reference_file if reference_file.is_file() else None
        task = meta.get("task", "asr")
        hotwords = None
        listed = meta.get("hotwords") or cfg.get("hotwords")
        if listed and task == "asr":  # (translations are not biased)
            path = Path(listed)
            if not path.is_absolute() and (directory / path).is_file():
                path = directory / path  # a set's own list, beside its data
            hotwords = read_hotwords(path)
        sets.append(TestSet(name, source, references, meta.get("metric", "mer"), task,
                            hotwords))
    if missing:
        found = found_sets(root)
        raise UnknownTestSet(
            f"no test data for {', '.join(missing)}. Sets found in {root}: "
            f"{', '.join(found) if found else 'none'}. Each set is a directory holding data.list "
            "(+ text) or wav.scp + text; set test_data_dir, or list your own with "
            "extra_testsets=[name,...]")
    if not sets:
        raise UnknownTestSet("no test sets configured: testsets=[...] or extra_testsets=[...]")
    return sets


def write_set(out_dir: Path, test_set: TestSet, hypotheses: dict[str, str],
              references: dict[str, str], duplicates: Sequence[str] = (),
              flagged: dict[str, str] | None = None
              ) -> tuple[float, float | None, Biased | None]:
    """`text` (uttid<TAB>hyp) and `wer` (or `bleu`) files; returns the score (and chrF, and
    with a hotword list B-WER and U-WER, also written under the totals of `wer`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "text").write_text(
        "".join(f"{k}\t{one_line(hypotheses[k])}\n" for k in sorted(hypotheses)), encoding="utf-8")
    result = score(references, hypotheses)
    if result.extra:
        log.warning("%s: %d hypotheses have no reference and are not scored (listed in %s): %s",
                    test_set.name, len(result.extra), out_dir / "wer", " ".join(result.extra[:10]))
    biased = (biased_score(result, [word for word, _ in test_set.hotwords])
              if test_set.hotwords else None)
    report = format_wer(result, duplicates, under_totals=biased.line() if biased else "")
    if flagged:
        report += (f"Flagged by the hallucination guard (decoded again, still doubtful): "
                   f"{len(flagged)}: " + " ".join(f"{k} ({v})" for k, v in sorted(flagged.items()))
                   + "\n")
    (out_dir / "wer").write_text(report, encoding="utf-8")
    if test_set.metric == "bleu":
        bleu, chrf = bleu_chrf(references, hypotheses)
        (out_dir / "bleu").write_text(f"BLEU {bleu:.2f}\nchrF {chrf:.2f}\n", encoding="utf-8")
        return bleu, chrf, biased
    return result.error_rate, None, biased


def summary_table(results: list[SetResult]) -> str:
    """The summary as a Markdown table (B-WER and U-WER columns when a set had a hotword list;
    the hallucination guard's counts when it flagged any answer)."""
    biased = any(r.b_wer is not None for r in results)
    guarded = any(r.retried for r in results)
    lines = ["| test set | metric | score | utterances | RTF | utt/s |"
             + (" B-WER | U-WER |" if biased else "")
             + (" guard: retried / still flagged |" if guarded else ""),
             "|---|---|---|---|---|---|" + ("---|---|" if biased else "")
             + ("---|" if guarded else "")]
    for r in results:
        value = f"{r.value:.2f}" + (f" (chrF {r.chrf:.2f})" if r.chrf is not None else "")
        line = (f"| {r.name} | {r.metric.upper()} | {value} | {r.utterances} | "
                f"{r.rtf:.4f} | {r.utterances_per_second:.1f} |")
        if biased:
            line += "".join(f" {'-' if x is None else f'{x:.2f}'} |" for x in (r.b_wer, r.u_wer))
        if guarded:
            line += f" {r.retried} / {r.flagged} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def decode_long(test_set: TestSet, recognizer: Recognizer, max_segment_s: float,
                recordings: list[tuple[str, str]], hotwords: ContextGraph | None = None
                ) -> Decoded:
    """Recordings of a Kaldi-dir set holding some over `max_segment_s`: each is cut where
    silero-vad finds speech, decoded in segments and joined (mooer.inference.longform)."""
    decoded = recognizer.decode_long(recordings, [test_set.task], max_segment_s,
                                     hotwords=hotwords)
    prepared, (run,) = decoded.prepared, decoded.runs
    for what, names in (("unreadable", prepared.unreadable), ("too short", prepared.too_short),
                        ("no speech", prepared.no_speech)):
        if names:
            log.warning("%s: %d recordings not decoded (%s): %s", test_set.name, len(names),
                        what, " ".join(names[:10]))
    hypotheses = {name: join_texts([s.texts[0] for s in segments])
                  for name, segments in decoded.recordings.items()}
    log.info("%s: %d recordings decoded in %d segments", test_set.name, len(hypotheses),
             len(run.hypotheses))
    return Decoded(hypotheses, {}, run.audio_seconds, run.elapsed, retried=run.retried,
                   flagged=prepared.by_recording(run.flagged))


def decode_set(test_set: TestSet, recognizer: Recognizer, max_segment_s: float, rank: Rank,
               total: int | None, hotwords: ContextGraph | None = None) -> Decoded:
    """This rank's share of a set, dealt by duration (all of it on one process), biased
    towards `hotwords` if given."""
    long = test_set.source.is_dir() and has_long_recordings(test_set.source / "wav.scp",
                                                            max_segment_s)
    if long:
        recordings = read_table(test_set.source / "wav.scp")
        if rank.many:
            seconds = dict(utterance_seconds(test_set.source))
            share = set(deal_by_duration([(k, seconds.get(k, 0.0)) for k, _ in recordings],
                                         rank.world_size)[rank.rank])
            recordings = [(k, p) for k, p in recordings if k in share]
            log.info("%s: rank %d of %d: %d recordings, %.1f s of audio", test_set.name,
                     rank.rank, rank.world_size, len(recordings),
                     sum(seconds.get(k, 0.0) for k, _ in recordings))
        return decode_long(test_set, recognizer, max_segment_s, recordings, hotwords)
    keys = None
    if rank.many:
        items = utterance_seconds(test_set.source)
        keys = frozenset(deal_by_duration(items, rank.world_size)[rank.rank])
        log.info("%s: rank %d of %d: %d utterances, %.1f s of audio", test_set.name, rank.rank,
                 rank.world_size, len(keys), sum(s for k, s in items if k in keys))
        total = len(keys)
    return recognizer.decode(test_set.source, test_set.task, desc=test_set.name, total=total,
                             keys=keys, hotwords=hotwords)


def merged(shares: list[Decoded]) -> Decoded:
    """The ranks' shares of a set as one: every hypothesis, the audio summed, the longest
    rank's time (they ran side by side)."""
    if len(shares) == 1:
        return shares[0]
    return Decoded({k: v for d in shares for k, v in d.hypotheses.items()},
                   {k: v for d in shares for k, v in d.references.items()},
                   sum(d.audio_seconds for d in shares), max(d.elapsed for d in shares),
                   [k for d in shares for k in d.duplicates],
                   retried=[k for d in shares for k in d.retried],
                   flagged={k: v for d in shares for k, v in d.flagged.items()})


def evaluate(cfg: DictConfig) -> list[SetResult]:
    """Decode and score every configured test set; writes <decode_path>/<set>/{text,wer} and
    <decode_path>/summary.{md,json}. With `devices=N` (or under torchrun) the sets are decoded
    on N processes, each taking a share dealt by duration; rank 0 writes the files."""
    rank = current_rank()
    if cfg.get("devices", 1) > 1 and not rank.many:
        return launch(cfg.devices)
    cfg = apply_run_dir(cfg)
    try:
        sets = resolve_sets(cfg)
        max_segment_s = check_max_segment_s(cfg.max_segment_s)
        score = cfg.get("hotword_score")
        hotword_score = None if score is None else check_score(float(score))
    except (UnknownTestSet, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    prompt = prompt_for(cfg)
    for test_set in sets:  # every set's task needs an instruction in the prompt format
        try:
            prompt.require(test_set.task)
        except ValueError as err:
            raise SystemExit(f"error: test set {test_set.name} is decoded as {test_set.task}, "
                             f"but {err}") from None
    decoding = as_dict(cfg.decoding)
    batch_size = decoding.pop("batch_size")
    try:
        recognizer = Recognizer.from_config(cfg, cfg.device, cfg.precision, batch_size,
                                            decoding, prompt=prompt)
    except CheckpointError as err:  # weights that do not fit this config, named
        raise SystemExit(f"error: {err}") from None
    join(rank, recognizer.device)
    decode_path = Path(cfg.decode_path)
    results = []
    for test_set in sets:
        references = dict(read_table(test_set.references)) if test_set.references else None
        graph = (ContextGraph.build(test_set.hotwords, recognizer.model.tokenizer, hotword_score)
                 if test_set.hotwords else None)
        share = attempt(rank, decode_set, test_set, recognizer, max_segment_s, rank,
                        len(references) if references else None, graph)
        shares = gather(rank, share)
        if shares is None:  # another rank writes
            continue
        decoded = merged(shares)
        value, chrf, biased = write_set(
            decode_path / test_set.name, test_set, decoded.hypotheses,
            references if references is not None else decoded.references, decoded.duplicates,
            decoded.flagged)
        results.append(SetResult(test_set.name, test_set.metric, value, len(decoded.hypotheses),
                                 decoded.rtf, decoded.utterances_per_second, chrf,
                                 biased.b_wer if biased else None,
                                 biased.u_wer if biased else None,
                                 len(decoded.retried), len(decoded.flagged)))
        log.info("%s: %s %.2f", test_set.name, test_set.metric, value)
    if not rank.is_first:
        return results
    decode_path.mkdir(parents=True, exist_ok=True)
    table = summary_table(results)
    (decode_path / "summary.md").write_text(table, encoding="utf-8")
    (decode_path / "summary.json").write_text(
        json.dumps([asdict(r) for r in results], indent=2), encoding="utf-8")
    print(table, end="")
    return results


def launch(devices: int) -> list[SetResult]:
    """evaluate.py devices=N: this command again as N ranks, in this run's directory (each
    rank logging to evaluate_rank<R>.log); this process waits for them."""
    output_dir = HydraConfig.get().runtime.output_dir
    status = relaunch(devices, [f"hydra.run.dir={output_dir}", "hydra.output_subdir=null",
                                "hydra.job.name=evaluate_rank{rank}"])
    if status:
        raise SystemExit(f"error: decoding on {devices} processes failed (exit {status}): see "
                         f"{output_dir}/evaluate_rank*.log")
    return []
