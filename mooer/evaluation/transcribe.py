"""`mooer-transcribe`: speech to text (ASR) or to English (AST) for wav files or a wav.scp.

    mooer-transcribe --wav_path a.wav b.flac --task asr \
        --encoder_path pretrained_models/paraformer_encoder/paraformer-encoder.pth \
        --cmvn_path pretrained_models/paraformer_encoder/am.mvn \
        --llm_path pretrained_models/Qwen2-7B-Instruct \
        --adapter_path pretrained_models/asr/adapter_project.pt \
        --lora_dir pretrained_models/asr/lora_weights

Prints `uttid<TAB>text` (with --task asr_ast: `uttid<TAB>transcript<TAB>translation`); the uttid
of a --wav_path file is its name without extension. Inputs that cannot be transcribed (shorter
than 0.1 s) are named on stderr and the exit status is 1.
Extra Hydra overrides (e.g. `llm=qwen2_1_5b`) go after `--`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import soundfile as sf

from mooer.config import compose_config
from mooer.data.text import one_line, read_table
from mooer.evaluation.decode import decode, decoding_loader
from mooer.evaluation.model_loading import apply_run_dir, load_for_decoding
from mooer.training.accelerators import resolve_device

log = logging.getLogger(__name__)
LONG_AUDIO_SECONDS = 30.0
MIN_AUDIO_SECONDS = 0.1  # shorter audio gives the encoder no frame to attend to


def _kaldi_dir(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, str], list[str]]:
    """A Kaldi dir for the inputs under internal uttids (`utt000001`...: file names may hold
    spaces), the name each is printed as, and the inputs too short to decode."""
    if args.wav_scp:
        rows = read_table(args.wav_scp)
    else:
        rows, seen = [], set()
        for path in args.wav_path:
            key = Path(path).stem
            while key in seen:
                key += "_"
            seen.add(key)
            rows.append((key, str(Path(path).resolve())))
    names, too_short, lines = {}, [], []
    for index, (key, path) in enumerate(rows):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{key}: audio file {path} not found")
        try:
            seconds = sf.info(path).duration
        except RuntimeError as err:
            raise ValueError(f"{key}: cannot read {path} ({err})") from err
        if seconds < MIN_AUDIO_SECONDS:
            too_short.append(f"{key} ({seconds:.3f} s)")
            continue
        if seconds > LONG_AUDIO_SECONDS:
            log.warning("%s is %.0f s long; the models were trained on utterances under %.0f s, "
                        "so split long audio first", key, seconds, LONG_AUDIO_SECONDS)
        uttid = f"utt{index:06d}"
        names[uttid] = key
        lines.append(f"{uttid} {path}\n")
    (work / "wav.scp").write_text("".join(lines), encoding="utf-8")
    return work, names, too_short


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mooer-transcribe",
                                     description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav_path", nargs="+", help="audio files (any rate and channels)")
    source.add_argument("--wav_scp", type=Path, help="a Kaldi wav.scp (uttid path)")
    parser.add_argument("--task", choices=["asr", "ast", "asr_ast"], default="asr")
    parser.add_argument("--encoder_path", help="paraformer-encoder.pth")
    parser.add_argument("--cmvn_path", help="am.mvn")
    parser.add_argument("--llm_path", help="LLM directory (Qwen2-7B-Instruct)")
    parser.add_argument("--adapter_path", help="adapter_project.pt")
    parser.add_argument("--lora_dir", help="LoRA directory (adapter_config.json + weights)")
    parser.add_argument("--checkpoint", help="a MooER-layout dir or one of our checkpoints")
    parser.add_argument("--run_dir", help="a training run dir (its config and last checkpoint)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_beams", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides after --")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # the prompt format: conf/task/<--task> (asr_ast holds both instructions), or the run's own
    overrides = [f"task={args.task}", *args.overrides]
    for flag, key in (("encoder_path", "encoder.model.checkpoint"),
                      ("cmvn_path", "encoder.frontend.cmvn_path"), ("llm_path", "llm.path"),
                      ("adapter_path", "model.adapter_path"), ("lora_dir", "model.lora_dir"),
                      ("checkpoint", "checkpoint"), ("run_dir", "run_dir")):
        if getattr(args, flag):
            overrides.append(f"{key}={getattr(args, flag)}")
    from hydra.utils import instantiate

    cfg = apply_run_dir(compose_config("evaluate", overrides)[0])
    tasks = ["asr", "ast"] if args.task == "asr_ast" else [args.task]
    prompt = instantiate(cfg.task)
    try:
        for task in tasks:
            prompt.require(task)
    except ValueError as err:
        print(f"error: --task {args.task}: {err}", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            source, names, too_short = _kaldi_dir(args, Path(tmp))
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if too_short:
            print(f"skipped, shorter than {MIN_AUDIO_SECONDS} s: {', '.join(too_short)}",
                  file=sys.stderr)
        if not names:
            print("error: nothing to transcribe", file=sys.stderr)
            return 2
        model, dtype = load_for_decoding(cfg, device, args.precision)
        frontend = instantiate(cfg.encoder.frontend)  # built once for both tasks
        decoding = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}
        columns = []
        for task in tasks:
            loader = decoding_loader(source, model, frontend, prompt, task, args.batch_size)
            columns.append(decode(model, loader, decoding, device, dtype, total=len(names),
                                  desc=task).hypotheses)
    undecoded = [name for uttid, name in names.items() if uttid not in columns[0]]
    for uttid, name in names.items():
        if uttid in columns[0]:
            print("\t".join([name, *(one_line(column.get(uttid, "")) for column in columns)]))
    if undecoded:
        print(f"not transcribed (see the warnings above): {', '.join(undecoded)}",
              file=sys.stderr)
    return 1 if too_short or undecoded else 0


if __name__ == "__main__":
    sys.exit(main())
