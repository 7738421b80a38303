"""SpeechLLM speed: training step (forward + backward) and decoding, on synthetic batches.

    python benchmarks/model.py                        # tiny model on CPU
    python benchmarks/model.py --recipe mt5k --device cuda --batch 8 --seconds 10
        # MooER's shapes at random init: Paraformer-large + Qwen2-7B-shaped LLM in bf16, LoRA r=64
    python benchmarks/model.py --recipe mt5k --llm qwen2_1_5b --dtype fp32 --batch 2 --steps 2
        # real shapes on a CPU: Paraformer-large + Qwen2-1.5B-shaped LLM, LoRA r=64 (fits 24 GB)

Prints, for the plain eager fp32 step (the baseline), the config's dtype (if not fp32) and, with
`--compile`, compiled regions: the step time, samples/s, speed against the baseline, achieved
TFLOP/s and MFU (model FLOPs from `mooer.models.flops`); then peak memory and the real-time factor
of decoding, greedy (the baseline) and beam 4, on the eager model of the config's dtype.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from omegaconf import OmegaConf

from mooer.config import compose_config
from mooer.data.collate import collate, move_batch
from mooer.data.synthetic import SyntheticTokenizer, synthetic_samples
from mooer.models.build import build_speech_llm
from mooer.models.flops import StepFlops
from mooer.models.llm import torch_dtype
from mooer.training.module import compile_regions


def synthetic_batch(batch: int, seconds: float, slots_per_frame: int, vocab: int, device,
                    prompt_tokens: int = 28, answer_tokens: int = 30) -> dict:
    """`batch` utterances of `seconds` (LFR features) with random prompt and answer ids."""
    samples = synthetic_samples([seconds] * batch, [answer_tokens] * batch, prompt_tokens,
                                slots_per_frame, vocab)
    return move_batch(collate(samples, pad_id=vocab - 2), device)


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=["tiny", "mt5k"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--new_tokens", type=int, default=30)
    parser.add_argument("--peak_tflops", type=float, default=989.0,
                        help="the device's dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--llm", default=None, help="another llm config (e.g. qwen2_1_5b)")
    parser.add_argument("--dtype", default=None, help="fp32 | bf16 | fp16 (default: the config's)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the step with compiled regions (module.compile=true)")
    args = parser.parse_args()
    overrides = (["encoder=paraformer_tiny", "llm=tiny"] if args.recipe == "tiny" else
                 ["experiment=mt5k", "encoder.model.checkpoint=null",
                  "encoder.frontend.cmvn_path=null", "llm.path=null"])
    overrides += [f"llm={args.llm}"] if args.llm else []
    overrides += [f"llm.dtype={args.dtype}"] if args.dtype else []
    cfg, _ = compose_config("train", overrides)
    vocab = cfg.llm.architecture.vocab_size
    device = torch.device(args.device)
    batch = synthetic_batch(args.batch, args.seconds, cfg.projector.downsample, vocab, device)

    def build(dtype_name: str):
        torch.manual_seed(0)
        with device:
            model = build_speech_llm(cfg.encoder, cfg.projector,
                                     OmegaConf.merge(cfg.llm, {"dtype": dtype_name}),
                                     SyntheticTokenizer(vocab))
        dtype = torch_dtype(dtype_name)
        model.encoder.to(dtype)
        model.projector.to(dtype)
        return model, {**batch, "features": batch["features"].to(dtype)}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step_seconds(model, batch) -> float:
        """The mean of `--steps` training steps (forward, backward, AdamW) after one warm-up
        (which also compiles)."""
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-5)
        model.train()
        for step in range(args.steps + 1):
            if step == 1:
                sync()
                started = time.perf_counter()
            model(batch)["loss"].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()
        return (time.perf_counter() - started) / args.steps

    # the baseline: the plain eager step in fp32; then the config's dtype, eager and compiled
    rows = [("eager, fp32 (baseline)", *build("fp32"), False)]
    if cfg.llm.dtype != "fp32":
        rows.append((f"eager, {cfg.llm.dtype}", *build(cfg.llm.dtype), False))
    if args.compile:
        rows.append((f"compiled regions, {cfg.llm.dtype}", *build(cfg.llm.dtype), True))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timed = []
    for name, model, model_batch, compiled in rows:
        if compiled:
            compile_regions(model)
        timed.append((name, model, model_batch, step_seconds(model, model_batch)))
    # decoding on the eager model of the config's dtype (compiled regions recompile for every
    # length a decode step has)
    decoded_row = [row for row, (*_, compiled) in zip(timed, rows, strict=True) if not compiled][-1]
    decoded_name, model, model_batch, _ = decoded_row
    model.eval()
    decode = {}
    for beams in (1, 4):
        sync()
        started = time.perf_counter()
        model.generate(model_batch, num_beams=beams, max_new_tokens=args.new_tokens,
                       min_new_tokens=args.new_tokens, eos_bias=0)
        sync()
        decode[beams] = (time.perf_counter() - started) / (args.batch * args.seconds)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"  # else the process's RSS
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tokens = batch["input_ids"].numel()
    flops = StepFlops.of(model).real(model_batch)
    print(f"\nrecipe {args.recipe} on {device}, dtype {cfg.llm.dtype}, batch {args.batch} x "
          f"{args.seconds:.0f} s, {tokens // args.batch} tokens/row, encoder "
          f"{count(model.encoder) / 1e6:.1f} M, LLM {count(model.llm) / 1e6:.1f} M, trainable "
          f"{trainable / 1e6:.2f} M parameters, {args.steps} timed steps a row\n")
    print("| training step (fwd + bwd + AdamW) | ms | samples/s | vs baseline | achieved TFLOP/s "
          f"| MFU (peak {args.peak_tflops:.0f}) |\n|---|---|---|---|---|---|")
    baseline = timed[0][3]
    for name, _, _, seconds in timed:
        achieved = flops / seconds / 1e12
        print(f"| {name} | {seconds * 1000:.0f} | {args.batch / seconds:.1f} | "
              f"{baseline / seconds:.2f}x | {achieved:.4g} | {100 * achieved / args.peak_tflops:.3g} % |")
    print(f"\n| measure ({decoded_name}) | value |\n|---|---|")
    print(f"| peak memory ({'allocated' if device.type == 'cuda' else 'process RSS'}) | "
          f"{peak:.1f} GiB |")
    print(f"| decode RTF, greedy, {args.new_tokens} tokens (baseline) | {decode[1]:.4f} |")
    print(f"| decode RTF, beam 4, {args.new_tokens} tokens | {decode[4]:.4f} "
          f"({decode[4] / decode[1]:.2f}x greedy's time) |")


if __name__ == "__main__":
    main()
