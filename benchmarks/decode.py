"""Decoding speed of the tiny model on the CPU: utterances/s at batch 1, 8 and 16, greedy and beam 4,
against greedy at batch 1 (the baseline) in the same run.

    python benchmarks/decode.py [--num 64] [--new_tokens 12]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate

from mooer.config import compose_config, task_config
from mooer.data.features import ParaformerFrontend
from mooer.data.text import read_table
from mooer.demo.corpus import draw_specs, write_corpus
from mooer.demo.tokenizer import train_tokenizer
from mooer.inference.decode import decode, decoding_loader
from mooer.models.build import build_speech_llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--new_tokens", type=int, default=12)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mooer-bench-decode"))
    args = parser.parse_args()
    corpus = args.work / "corpus"
    if not (corpus / "wav.scp").exists():
        write_corpus(corpus, draw_specs(args.num, seed=21), num_workers=2, progress=False)
    prompt = instantiate(task_config("asr"))
    tokenizer = train_tokenizer([t for _, t in read_table(corpus / "text")], 600,
                                prompts=prompt.texts())
    cfg, _ = compose_config("train", ["encoder=paraformer_tiny", "llm=tiny"])
    torch.manual_seed(0)
    model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, tokenizer).eval()
    frontend = ParaformerFrontend(None)
    rows = []
    for beams in (1, 4):
        for batch_size in (1, 8, 16):
            loader = decoding_loader(corpus, model, frontend, prompt, "asr", batch_size)
            options = {"num_beams": beams, "max_new_tokens": args.new_tokens,
                       "min_new_tokens": args.new_tokens, "eos_bias": 0}
            result = decode(model, loader, options, torch.device("cpu"), torch.float32,
                            desc=f"beam {beams} batch {batch_size}")
            rows.append((beams, batch_size, result.utterances_per_second, result.rtf))
    print(f"\n{args.num} utterances, {args.new_tokens} new tokens each, tiny model, "
          f"{torch.get_num_threads()} threads\n", file=sys.stderr)
    print("| decoding | batch | utt/s | RTF | vs greedy batch 1 |\n|---|---|---|---|---|")
    baseline = rows[0][2]  # greedy, batch 1: one utterance at a time, as MooER decodes
    for beams, batch_size, rate, rtf in rows:
        name = "greedy" if beams == 1 else f"beam {beams}"
        label = " (baseline)" if (beams, batch_size) == (1, 1) else ""
        print(f"| {name}{label} | {batch_size} | {rate:.1f} | {rtf:.4f} | {rate / baseline:.2f}x |")


if __name__ == "__main__":
    main()
