"""`mooer-transcribe`: speech to text (ASR) or to English (AST) for audio files or a wav.scp, of
any length.

    mooer-transcribe --wav_path a.wav meeting.flac --task asr \
        --encoder_path pretrained_models/paraformer_encoder/paraformer-encoder.pth \
        --cmvn_path pretrained_models/paraformer_encoder/am.mvn \
        --llm_path pretrained_models/Qwen2-7B-Instruct \
        --adapter_path pretrained_models/asr/adapter_project.pt \
        --lora_dir pretrained_models/asr/lora_weights

A recording longer than --max_segment_s (30) is cut where silero-vad finds speech, each piece at
most that long (mooer.inference.segment), decoded in batches and joined. --format tsv (the
default) prints a header and a row per segment, `recording<TAB>start<TAB>end<TAB>text` (with
--task asr_ast: the transcript and the translation); text prints Kaldi text, a recording a line
(`name<TAB>text`), what scorers read; json both; srt and vtt subtitles (into --out_dir, a file
per recording, each written as soon as it is transcribed). The name of a --wav_path file is its
name without extension; a name given twice is renamed (`_` appended) and said so. Inputs that
cannot be transcribed (unreadable, a directory, damaged, NaN samples, shorter than 0.1 s, no
speech) are skipped, named on stderr with why, and the exit status is 1 (2 when nothing was).
Extra Hydra overrides (e.g. `llm=qwen2_1_5b`) go after `--`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import soundfile as sf
from omegaconf import DictConfig
from tqdm import tqdm

from mooer.config import compose_config
from mooer.data.hotword_list import check_score, read_hotwords, threshold_or_off
from mooer.data.text import read_table
from mooer.files import writable_dir
from mooer.inference.distributed import (
    Rank,
    attempt,
    current_rank,
    deal_by_duration,
    gather,
    join,
    relaunch,
)
from mooer.inference.formats import FORMATS, Segment, render, subtitles
from mooer.inference.hotwords import (
    CHECK_THRESHOLD,
    CHECKED_SCORE,
    DEFAULT_SCORE,
    REWRITE_THRESHOLD,
    ContextGraph,
)
from mooer.inference.loading import apply_run_dir
from mooer.inference.longform import Prepared, prepare
from mooer.inference.recognizer import MIN_AUDIO_SECONDS, Recognizer, prompt_for
from mooer.inference.segment import MIN_SILENCE_MS, check_max_segment_s
from mooer.models.weights import CheckpointError


def _inputs(args: argparse.Namespace) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, path) of each input, and the renames that made the names unique: a --wav_path
    file goes by its stem, a --wav_scp line by its first field; a name seen before gets `_`
    appended (two lines of one name would otherwise be merged into one recording)."""
    if args.wav_scp:
        rows = read_table(args.wav_scp)
    else:
        rows = [(Path(path).stem, str(Path(path).resolve())) for path in args.wav_path]
    unique, seen, renamed = [], set(), []
    for name, path in rows:
        key = name
        while key in seen:
            key += "_"
        if key != name:
            renamed.append(f"{name} -> {key} ({path})")
        seen.add(key)
        unique.append((key, path))
    return unique, renamed


class Output:
    """Where transcripts go, a recording as soon as it is done: stdout in --format (JSON at the
    end: one document), or a file per recording in --out_dir, which is checked (made, written
    to) before anything is decoded, so a long job keeps what it finished."""

    def __init__(self, fmt: str, out_dir: Path | None, tasks: list[str], stdout: bool = True,
                 write_files: bool = True, word_level: bool = False) -> None:
        """`stdout`: print as recordings finish (not on the ranks of a multi-process run, whose
        rank 0 prints every rank's in input order); `write_files`: write --out_dir's files
        (already written by the ranks)."""
        self.fmt, self.out_dir, self.tasks = fmt, out_dir, tasks
        self.stdout, self.write_files, self.word_level = stdout, write_files, word_level
        self.done: dict[str, list[Segment]] = {}
        if out_dir is not None and write_files:
            if out_dir.exists() and not out_dir.is_dir():
                raise ValueError(f"--out_dir {out_dir} is a file, not a directory")
            writable_dir(out_dir, "--out_dir")  # before anything is decoded

    def add(self, recordings: dict[str, list[Segment]]) -> None:
        first = not self.done
        self.done.update(recordings)
        if self.out_dir is not None:
            if self.write_files:
                for name, segments in recordings.items():
                    (self.out_dir / f"{name}.{self.fmt}").write_text(
                        self.render(name, segments), encoding="utf-8")
        elif not self.stdout:
            return
        elif self.fmt in ("srt", "vtt"):
            for segments in recordings.values():
                print(subtitles(segments, self.fmt, self.word_level), end="", flush=True)
        elif self.fmt != "json":
            print(render(recordings, self.fmt, self.tasks, header=first,
                         word_level=self.word_level), end="", flush=True)

    def render(self, name: str, segments: list[Segment]) -> str:
        if self.fmt in ("srt", "vtt"):
            return subtitles(segments, self.fmt, self.word_level)
        return render({name: segments}, self.fmt, self.tasks, word_level=self.word_level)

    def close(self) -> None:
        if self.out_dir is not None:
            print(f"wrote {len(self.done)} {self.fmt} files to {self.out_dir}", file=sys.stderr)
        elif self.fmt == "json" and self.stdout:
            print(render(self.done, "json", self.tasks), end="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mooer-transcribe",
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 3)[3])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav_path", nargs="+", help="audio files (any rate and channels)")
    source.add_argument("--wav_scp", type=Path, help="a Kaldi wav.scp (uttid path)")
    parser.add_argument("--task", choices=["asr", "ast", "asr_ast"], default="asr")
    add_model_arguments(parser)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_beams", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--hotwords", type=Path,
                        help="a hotword list (a word or phrase a line, optionally <TAB>weight) "
                             "to bias transcripts towards")
    parser.add_argument("--word_timestamps", action="store_true",
                        help="word start, end and confidence in --format json (forced "
                             "alignment on the encoder's CTC head; the model needs one)")
    parser.add_argument("--word_level", action="store_true",
                        help="with --format srt or vtt: a cue a word; with tsv: a row a word "
                             "(start, end, word, confidence); implies --word_timestamps")
    parser.add_argument("--hotword_score", type=float, default=None,
                        help="the bonus per hotword token, in log-probability (default: "
                             f"{CHECKED_SCORE} on a model with a CTC head, which first checks "
                             f"the words against the audio; {DEFAULT_SCORE} without)")
    parser.add_argument("--hotword_check", type=threshold_or_off, default=CHECK_THRESHOLD,
                        help="with a CTC head, only the listed words whose tokens its best path "
                             "spells within this many nats are biased; 'off': all of them "
                             f"(default {CHECK_THRESHOLD:g})")
    parser.add_argument("--hotword_rewrite", type=threshold_or_off, default=REWRITE_THRESHOLD,
                        help="with a CTC head, the listed words it hears within this many nats "
                             "are tried in each transcript after decoding, and kept where the "
                             "model scores them higher (decoder + CTC head); 'off': not "
                             f"(default {REWRITE_THRESHOLD:g})")
    add_segment_arguments(parser)
    parser.add_argument("--devices", type=int, default=1,
                        help="decode on N processes (a GPU each), recordings dealt by duration; "
                             "or launch with torchrun and leave this at 1")
    parser.add_argument("--format", choices=FORMATS, default="tsv",
                        help="tsv: a segment a row with its start and end; text: Kaldi text, "
                             "name<TAB>text; json; srt/vtt: subtitles")
    parser.add_argument("--out_dir", type=Path,
                        help="write <name>.<format> per recording here instead of printing")
    return parser


def segment_seconds(value: str) -> float:
    """--max_segment_s: a number of seconds, at least 1 (NaN refused)."""
    try:
        return check_max_segment_s(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_segment_arguments(parser: argparse.ArgumentParser) -> None:
    """How long recordings are cut: shared by mooer-transcribe and mooer-serve."""
    parser.add_argument("--max_segment_s", type=segment_seconds, default=30.0,
                        help="longer recordings are cut where silero-vad finds speech")
    parser.add_argument("--min_silence_ms", type=int, default=MIN_SILENCE_MS,
                        help="in long recordings, a pause this long ends a segment")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the model comes from (MooER release paths, a checkpoint or a run dir), the device
    and precision, and Hydra overrides after `--`: shared by mooer-transcribe and mooer-serve."""
    parser.add_argument("--encoder_path", help="paraformer-encoder.pth")
    parser.add_argument("--cmvn_path", help="am.mvn")
    parser.add_argument("--llm_path", help="LLM directory (Qwen2-7B-Instruct)")
    parser.add_argument("--adapter_path", help="adapter_project.pt")
    parser.add_argument("--lora_dir", help="LoRA directory (adapter_config.json + weights)")
    parser.add_argument("--checkpoint", help="a MooER-layout dir or one of our checkpoints")
    parser.add_argument("--ctc_head", help="a CTC head trained apart (the checkpoint of a run of "
                        "experiment=ctc_head): word times for a model trained without one")
    parser.add_argument("--run_dir", help="a training run dir (its config and last checkpoint)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides after --")


def model_config(args: argparse.Namespace) -> DictConfig:
    """The evaluate config for `args.task` (conf/task/<task>.yaml: the prompt format) with the
    model paths of `add_model_arguments`; a run dir brings its own config and prompt."""
    overrides = [f"task={args.task}", *args.overrides]
    for flag, key in (("encoder_path", "encoder.model.checkpoint"),
                      ("cmvn_path", "encoder.frontend.cmvn_path"), ("llm_path", "llm.path"),
                      ("adapter_path", "model.adapter_path"), ("lora_dir", "model.lora_dir"),
                      ("checkpoint", "checkpoint"), ("run_dir", "run_dir"),
                      ("ctc_head", "model.ctc_head")):
        if getattr(args, flag):
            overrides.append(f"{key}={getattr(args, flag)}")
    return apply_run_dir(compose_config("evaluate", overrides)[0])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rank = current_rank()
    if args.devices > 1 and not rank.many:
        return relaunch(args.devices)  # this command as N ranks; this process waits
    multiple = args.wav_scp is not None or len(args.wav_path) > 1
    if args.format in ("srt", "vtt") and multiple and args.out_dir is None:
        print(f"error: --format {args.format} for several recordings needs --out_dir (a file "
              "per recording)", file=sys.stderr)
        return 2
    # the prompt format: conf/task/<--task> (asr_ast holds both instructions), or the run's own
    cfg = model_config(args)
    tasks = ["asr", "ast"] if args.task == "asr_ast" else [args.task]
    try:
        prompt = prompt_for(cfg, tasks)
        hotwords = read_hotwords(args.hotwords) if args.hotwords else None
        check_score(args.hotword_score)
        inputs, renamed = _inputs(args)
        output = Output(args.format, args.out_dir, tasks, stdout=not rank.many,
                        word_level=args.word_level)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if renamed and rank.is_first:
        print(f"names given twice, renamed: {'; '.join(renamed)}", file=sys.stderr)
    mine = _share(inputs, rank)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare(mine, Path(tmp), args.max_segment_s, MIN_AUDIO_SECONDS,
                           args.min_silence_ms)
        for what, names in (("unreadable", prepared.unreadable),
                            (f"shorter than {MIN_AUDIO_SECONDS} s", prepared.too_short),
                            ("no speech found", prepared.no_speech)):
            if names:
                print(f"skipped, {what}: {', '.join(names)}", file=sys.stderr)
        if not prepared.spans and not rank.many:
            print("error: nothing to transcribe", file=sys.stderr)
            return 2
        try:
            recognizer = Recognizer.from_config(
                cfg, args.device, args.precision, args.batch_size,
                {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens,
                 "hotword_check": args.hotword_check, "hotword_rewrite": args.hotword_rewrite},
                prompt=prompt)
        except (CheckpointError, ValueError) as err:  # weights that do not fit, named
            print(f"error: {err}", file=sys.stderr)
            return 2
        if hotwords:
            recognizer.hotwords = ContextGraph.build(hotwords, recognizer.model.tokenizer,
                                                     args.hotword_score)
        if args.word_timestamps or args.word_level:
            if not recognizer.model.has_ctc_head:
                print("error: --word_timestamps needs the encoder's CTC head, which this model "
                      "has not: train one on its frozen encoder (python train.py experiment=ctc_head "
                      "init_from=...) and give it with --ctc_head",
                      file=sys.stderr)
                return 2
            recognizer.timestamps = True
        join(rank, recognizer.device)
        undecoded = attempt(rank, _decode_all, recognizer, prepared, tasks, output,
                            args.batch_size)
    shares = gather(rank, (output.done, len(prepared.spans), prepared.skipped, undecoded))
    if shares is None:
        return 0  # rank 0 writes and tells the status
    spans = sum(share[1] for share in shares)
    skipped = [name for share in shares for name in share[2]]
    undecoded = [name for share in shares for name in share[3]]
    if rank.many:
        if not spans:
            print("error: nothing to transcribe", file=sys.stderr)
            return 2
        done = {name: segments for share in shares for name, segments in share[0].items()}
        order = {name: index for index, (name, _) in enumerate(inputs)}
        output = Output(args.format, None if args.out_dir is None else args.out_dir, tasks,
                        write_files=False, word_level=args.word_level)
        output.add(dict(sorted(done.items(), key=lambda item: order[item[0]])))
    output.close()
    doubtful = [f"{name} {s.start:.2f}-{s.end:.2f} s ({', '.join(s.flagged(tasks).values())})"
                for name, segments in output.done.items() for s in segments if s.flagged(tasks)]
    if doubtful:
        print(f"flagged by the hallucination guard (decoded again, still doubtful; marked in "
              f"tsv, json, srt and vtt): {'; '.join(doubtful)}", file=sys.stderr)
    if undecoded:
        print(f"not transcribed (see the warnings above): {', '.join(undecoded)}",
              file=sys.stderr)
    return 1 if skipped or undecoded else 0


def _share(inputs: list[tuple[str, str]], rank: Rank) -> list[tuple[str, str]]:
    """This rank's recordings, dealt by duration (all of them on one process), in input order."""
    if not rank.many:
        return inputs
    seconds = [(index, _seconds(path)) for index, (_, path) in enumerate(inputs)]
    share = set(deal_by_duration(seconds, rank.world_size)[rank.rank])
    mine = [item for index, item in enumerate(inputs) if index in share]
    print(f"rank {rank.rank} of {rank.world_size}: {len(mine)} recordings, "
          f"{sum(s for index, s in seconds if index in share):.1f} s of audio", file=sys.stderr)
    return mine


def _seconds(path: str) -> float:
    try:
        return float(sf.info(path).duration)
    except (RuntimeError, sf.LibsndfileError):  # (prepare names it as unreadable)
        return 0.0


def _decode_all(recognizer: Recognizer, prepared: Prepared, tasks: list[str], output: Output,
                batch_size: int) -> list[str]:
    """Every recording of `prepared`, a batch's worth of recordings at a time, each written as
    it finishes; the recordings none of whose segments came back."""
    undecoded: list[str] = []
    with tqdm(total=len(prepared.spans) * len(tasks), desc="transcribing", unit="segment",
              disable=len(prepared.spans) <= batch_size) as bar:
        for chunk in prepared.chunks(batch_size * 16):
            decoded = recognizer.decode_prepared(chunk, tasks, progress=False)
            output.add(decoded.recordings)
            undecoded += decoded.undecoded
            bar.update(len(chunk.spans) * len(tasks))
    return undecoded


if __name__ == "__main__":
    sys.exit(main())
