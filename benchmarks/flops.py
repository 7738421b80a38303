"""The FLOP count of a training step at MooER's shapes, part by part, against torch's
FlopCounterMode (on the meta device: no memory, no GPU).

    python benchmarks/flops.py                 # experiment=mt5k, 8 x 10 s, 28 + 30 tokens
    python benchmarks/flops.py --llm qwen2_1_5b --seconds 5

The formula is `mooer.models.flops` (its docstring writes it out); this prints what each part
contributes a sample and the formula over what FlopCounterMode counts in one forward and
backward (the baseline).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from mooer.config import compose_config
from mooer.data.collate import collate, move_batch
from mooer.data.synthetic import SyntheticTokenizer, synthetic_samples
from mooer.models.build import build_speech_llm
from mooer.models.flops import StepFlops, flop_counter


def parts(flops: StepFlops, tokens: int, scored: int, frames: int) -> dict[str, float]:
    """Each part's FLOPs for one utterance, by switching the others off."""
    zero = {f.name: 0 for f in dataclasses.fields(flops)
            if f.type in ("int", int) and f.name not in ("downsample", "layers",
                                                         "encoder_layers")}

    def only(**keep) -> float:
        return dataclasses.replace(flops, **{**zero, **keep}).step([tokens], scored, [frames])

    return {"LLM frozen layers (4 W T)": only(frozen=flops.frozen),
            "LoRA (6 W T)": only(lora=flops.lora),
            "output head at the scored positions (4 W A)": only(head=flops.head),
            "attention (12 L d T^2)": only(attention_width=flops.attention_width),
            "encoder forward (2 W F + 4 L d F^2)": only(encoder=flops.encoder,
                                                        encoder_width=flops.encoder_width),
            "projector": only(projector_first=flops.projector_first,
                              projector_rest=flops.projector_rest),
            "CTC head": only(ctc=flops.ctc)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", default="qwen2_7b")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--prompt_tokens", type=int, default=28)
    parser.add_argument("--answer_tokens", type=int, default=30)
    args = parser.parse_args()
    cfg, _ = compose_config("train", ["experiment=mt5k", f"llm={args.llm}", "llm.path=null",
                                      "encoder.model.checkpoint=null",
                                      "encoder.frontend.cmvn_path=null"])
    vocab = cfg.llm.architecture.vocab_size
    with torch.device("meta"):
        model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, SyntheticTokenizer(vocab))
    model.train()
    samples = synthetic_samples([args.seconds] * args.batch, [args.answer_tokens] * args.batch,
                                args.prompt_tokens, cfg.projector.downsample, vocab)
    batch = move_batch(collate(samples, pad_id=0), torch.device("meta"), torch.bfloat16)
    flops = StepFlops.of(model)
    with flop_counter() as counter:
        model(batch)["loss"].backward()
    tokens, frames = batch["utterance_tokens"][0], batch["feature_frames"][0]
    print(f"\nexperiment=mt5k with llm={args.llm}, {args.batch} x {args.seconds:g} s "
          f"({frames} encoder frames, {tokens} LLM tokens: {batch['num_audio_slots'][0]} audio "
          f"slots + {args.prompt_tokens} prompt + {args.answer_tokens} answer)\n")
    print("| part | TFLOP a sample |\n|---|---|")
    for name, value in parts(flops, tokens, args.answer_tokens, frames).items():
        print(f"| {name} | {value / 1e12:.4f} |")
    formula = flops.executed(batch)
    print(f"| **total (formula)** | **{formula / args.batch / 1e12:.3f}** |")
    print(f"| FlopCounterMode (baseline), one forward and backward | "
          f"{counter.get_total_flops() / args.batch / 1e12:.3f} |")
    print(f"\nformula / FlopCounterMode: {formula / counter.get_total_flops():.4f}")


if __name__ == "__main__":
    main()
