"""`mooer-data`: look at packed data before training on it.

    mooer-data stats data/train/data.list       # utterances, hours, durations, text lengths
    mooer-data show data/train/data.list -n 3 --tokenizer DIR [--task ast | --run_dir RUN]
                                                # decoded samples as the LLM sees them: the
                                                # prompt of conf/task (or of a training run)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from hydra.utils import instantiate

from mooer.config import task_config, task_options
from mooer.data.loader import read_replace_table
from mooer.data.pipeline import (
    DataErrors,
    attach_targets,
    decode,
    open_shards,
    read_data_list,
    tar_samples,
)
from mooer.data.prompts import PromptBuilder, PromptFormat


def _samples(data_list: Path, errors: DataErrors, allow_pipe: bool):
    urls = read_data_list(data_list)
    return decode(tar_samples(open_shards(urls, errors, allow_pipe), errors), errors)


def histogram(values: list[float], edges: list[float], width: int = 40) -> list[str]:
    """A text histogram: one line per bin with its count and a bar."""
    counts, _ = np.histogram(values, bins=edges)
    top = max(counts.max(), 1)
    return [f"  {lo:6.1f}-{hi:<6.1f} s {count:8d} {'#' * round(width * count / top)}"
            for lo, hi, count in zip(edges[:-1], edges[1:], counts, strict=True)]


def stats(data_list: Path, allow_pipe: bool = False) -> str:
    """A report of a data.list: counts, hours, duration histogram, text lengths, rejects."""
    errors = DataErrors()
    durations, text_lengths = [], []
    for sample in _samples(data_list, errors, allow_pipe):
        durations.append(len(sample["wav"]) / sample["sample_rate"])
        text_lengths.append(len(sample["txt"]))
    lines = [f"{data_list}: {len(read_data_list(data_list))} shards"]
    if not durations:
        lines.append("no readable utterances")
    else:
        d, t = np.array(durations), np.array(text_lengths)
        lines += [
            f"utterances: {len(d)}    hours: {d.sum() / 3600:.3f}",
            f"duration (s): min {d.min():.2f}  mean {d.mean():.2f}  median {np.median(d):.2f}  "
            f"max {d.max():.2f}",
            "duration histogram:",
            *histogram(durations, [e for e in (0, 1, 2, 3, 5, 10, 20, 30) if e < d.max()]
                       + [float(d.max()) + 1e-6]),
            f"text length (chars): min {t.min()}  mean {t.mean():.1f}  max {t.max()}",
        ]
    rejects = Path(data_list).parent / "rejects.tsv"
    if rejects.is_file():
        lines.append(f"rejected when packed: {len(rejects.read_text().splitlines())} "
                     f"(listed in {rejects})")
    if errors:
        lines.append("unreadable now: " + ", ".join(f"{k}: {v}" for k, v in sorted(errors.items())))
    return "\n".join(lines)


def show(data_list: Path, num: int, tokenizer_path: str | None, prompt: PromptFormat,
         allow_pipe: bool = False) -> str:
    """The first `num` utterances: text, duration and, with a tokenizer, the model's view (the
    prompt and labels `prompt` gives them, as in training's first epoch)."""
    errors = DataErrors()
    samples = _samples(data_list, errors, allow_pipe)
    builder = None
    if tokenizer_path:
        from transformers import AutoTokenizer

        builder = PromptBuilder(AutoTokenizer.from_pretrained(tokenizer_path, local_files_only=True),
                                prompt)
        samples = attach_targets(samples, read_replace_table(prompt.replace_text_path),
                                 prompt.replace_type, errors)
    lines = []
    for index, sample in enumerate(samples):
        if index == num:
            break
        seconds = len(sample["wav"]) / sample["sample_rate"]
        lines.append(f"[{index}] {sample['key']}  ({seconds:.2f} s, from {sample['shard']})")
        lines.append(f"    text: {sample['txt']}")
        if builder is not None:
            prompted = builder(sample["target"], sample["key"])
            tok = builder.tokenizer
            if len(prompted.prefix_ids):
                lines.append(f"    hotwords ({len(prompted.prefix_ids)} tokens, before the audio "
                             f"slots): {tok.decode(prompted.prefix_ids)!r}")
            lines.append(f"    prompt (task {prompted.task}, {len(prompted.prompt_ids)} tokens, "
                         f"after the audio slots): {tok.decode(prompted.prompt_ids)!r}")
            pieces = [tok.decode([i]) for i in prompted.answer_ids.tolist()]
            lines.append(f"    labels ({len(pieces)} tokens): {pieces}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mooer-data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_stats = sub.add_parser("stats", help="utterances, hours, durations, text lengths, rejects")
    p_stats.add_argument("data_list", type=Path)
    p_show = sub.add_parser("show", help="print a few decoded samples and their token layout")
    p_show.add_argument("data_list", type=Path)
    p_show.add_argument("-n", "--num", type=int, default=3)
    p_show.add_argument("--tokenizer", default=None, help="a local tokenizer (LLM) directory")
    prompt = p_show.add_mutually_exclusive_group()
    prompt.add_argument("--task", default="asr", choices=task_options(),
                        help="the prompt format of conf/task/<TASK>.yaml")
    prompt.add_argument("--run_dir", help="the prompt format a training run recorded")
    for p in (p_stats, p_show):
        p.add_argument("--allow_pipe", action="store_true", help="allow pipe: urls")
    args = parser.parse_args(argv)
    if not args.data_list.is_file():
        print(f"error: {args.data_list} does not exist", file=sys.stderr)
        return 2
    if args.command == "stats":
        print(stats(args.data_list, args.allow_pipe))
    else:
        try:
            prompt = instantiate(task_config(args.task, args.run_dir))
            print(show(args.data_list, args.num, args.tokenizer, prompt, args.allow_pipe))
        except FileNotFoundError as err:  # no run config, or no replace_text table
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
