"""MooER's recipe on one GPU: training throughput, MFU and memory, batching, decoding RTF.

    python benchmarks/gpu.py                              # experiment=mt5k shapes, CUDA, random init
    python benchmarks/gpu.py --tiny --device cpu          # the same table at tiny shapes (a test)

One table. Training: micro-batch 8 of 10 s utterances (28 prompt + 30 answer tokens), the LLM in
its config's dtype with LoRA; steady-state samples/s, audio s/s, tokens/s, MFU and peak memory
under `strategy=auto` (plain PyTorch on one device) with and without gradient checkpointing, with
LoRA dropout off, at twice the micro-batch, with SDPA and (where installed) FlashAttention 2,
under ZeRO-2 on one rank (DeepSpeed engine), and with the per-step host sync SpeechLLM.forward
used to have (`.nonzero()` on the labels) put back, to show what removing it saved; the first row
also says how much of a step the GPU spends in kernels. Then fixed batch 8 against bucketed
dynamic batches at the same memory on a long-tail duration mix, and decoding (beam 4, batch 1 and
16, 30 new tokens) with LoRA as adapters and merged into the weights.

Model FLOPs per sample (counted as a dense model would be, not what kernels skip):
    LLM, frozen base + LoRA: forward 2 P_llm T and backward through activations 2 P_llm T
        -> 4 P_llm T, plus attention scores and values 4 L T^2 d (fwd) x 2 (bwd)
    encoder, frozen, forward only: 2 P_enc F + 4 L_enc F^2 d_enc
    projector, trained: 6 P_proj F / k
with T tokens a row, F encoder frames, k the projector's frame stacking. MFU = FLOPs/s over the
GPU's dense bf16 peak (H100 and H200 SXM: 989 TFLOP/s; --peak_tflops for others).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Any

import torch
from model import _Tokenizer, count, synthetic_batch  # benchmarks/model.py, beside this file

from mooer.config import compose_config
from mooer.data.pipeline import batch_dynamic
from mooer.data.prompts import IGNORE_INDEX
from mooer.models.build import build_speech_llm
from mooer.models.llm import torch_dtype

PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


@dataclass
class Row:
    name: str
    values: dict[str, str]


def build(tiny: bool, device: torch.device):
    overrides = (["encoder=paraformer_tiny", "llm=tiny", "llm.lora.enabled=true", "llm.freeze=true",
                  "encoder.freeze=true"] if tiny else
                 ["experiment=mt5k", "encoder.model.checkpoint=null",
                  "encoder.frontend.cmvn_path=null", "llm.path=null"])
    cfg, _ = compose_config("train", overrides)
    vocab = cfg.llm.architecture.vocab_size
    with device:
        model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, _Tokenizer(vocab))
    dtype = torch_dtype(cfg.llm.dtype)
    model.encoder.to(dtype)
    model.projector.to(dtype)
    return model, cfg, dtype


def flops_per_sample(model, cfg, tokens: int, frames: int) -> float:
    arch, enc = cfg.llm.architecture, model.encoder
    enc_layers = sum(1 for _ in enc.modules() if type(_).__name__.endswith("EncoderLayer")) or 1
    enc_dim = getattr(enc, "output_size", arch.hidden_size)
    projector = sum(p.numel() for p in model.projector.parameters())
    return (4 * count(model.llm) * tokens + 8 * arch.num_hidden_layers * tokens ** 2 * arch.hidden_size
            + 2 * count(enc) * frames + 4 * enc_layers * frames ** 2 * enc_dim
            + 6 * projector * frames / cfg.projector.downsample)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def timed_steps(step, batches: list[dict], warmup: int, device: torch.device) -> float:
    """Seconds per step over `batches` after `warmup` untimed steps."""
    for batch in batches[:warmup]:
        step(batch)
    sync(device)
    started = time.perf_counter()
    for batch in batches[warmup:]:
        step(batch)
    sync(device)
    return (time.perf_counter() - started) / max(1, len(batches) - warmup)


def plain_step(model, optimizer, host_sync: bool = False):
    def step(batch: dict) -> None:
        if host_sync:  # what SpeechLLM.forward did before: the GPU waits for this number
            int((batch["labels"] != IGNORE_INDEX).any(0).nonzero()[0])
        model(batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def zero2_step(model, device: torch.device):
    """One-rank DeepSpeed ZeRO-2 with conf/strategy/zero2.yaml's settings (MooER's) and the
    client optimizer training uses (torch AdamW), so no DeepSpeed op is compiled. DeepSpeed casts
    the module to bf16, so this runs after every other row."""
    import deepspeed

    if "MASTER_PORT" not in os.environ:  # one rank of our own: any free port
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(free.getsockname()[1])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    trainable = [p for p in model.parameters() if p.requires_grad]
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": 2, "allgather_partitions": True,
                                    "allgather_bucket_size": 2e8, "reduce_scatter": True,
                                    "reduce_bucket_size": 2e8, "overlap_comm": True,
                                    "contiguous_gradients": True},
              "bf16": {"enabled": next(model.llm.parameters()).dtype == torch.bfloat16},
              "zero_allow_untested_optimizer": True}
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

    def step(batch: dict) -> None:
        engine.backward(engine(batch)["loss"])
        engine.step()
    return step


@contextlib.contextmanager
def lora_dropout_off(model):
    """peft's LoRA dropout (the recipe's 0.05) replaced by identity for the `with` block."""
    saved = []
    for module in model.llm.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for key in list(dropouts):
                saved.append((dropouts, key, dropouts[key]))
                dropouts[key] = torch.nn.Identity()
    try:
        yield
    finally:
        for dropouts, key, original in saved:
            dropouts[key] = original


@contextlib.contextmanager
def lora_merged(model):
    """LoRA folded into the base weights for the `with` block (peft merge/unmerge)."""
    model.llm.merge_adapter()
    try:
        yield
    finally:
        model.llm.unmerge_adapter()


def kernel_share(step, batch: dict, device: torch.device) -> str:
    """Share of one step's wall time the GPU spends in kernels, and how many it launches:
    a low share with thousands of kernels means the step waits on Python and launches."""
    if device.type != "cuda":
        return "CUDA only"
    from torch.profiler import ProfilerActivity, profile

    step(batch)
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        started = time.perf_counter()
        step(batch)
        sync(device)
        wall = time.perf_counter() - started
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e6
    return f"{busy / wall:.0%} of the step in kernels, {len(kernels)} kernels a step"


def set_attention(model, implementation: str) -> bool:
    """Switch the LLM's attention kernel; False where it is not installed or not supported."""
    try:
        model.llm.set_attn_implementation(implementation)
    except (ImportError, ValueError, AttributeError):
        return False
    return True


def training_batches(model, cfg, dtype, device, args) -> tuple[list[dict], int, float]:
    """warmup + steps batches of the issue's shapes; tokens a row; model FLOPs a sample."""
    vocab = cfg.llm.architecture.vocab_size
    batches = []
    for _ in range(args.warmup + args.steps):
        batch = synthetic_batch(args.batch, args.seconds, cfg.projector.downsample, vocab, device)
        batch["features"] = batch["features"].to(dtype)
        batches.append(batch)
    tokens, frames = batches[0]["input_ids"].shape[1], batches[0]["features"].shape[1]
    return batches, tokens, flops_per_sample(model, cfg, tokens, frames)


def training_rows(model, cfg, dtype, device, args) -> list[Row]:
    batches, tokens, per_sample = training_batches(model, cfg, dtype, device, args)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    runs = [("auto, SDPA", "sdpa", False, False), ("auto, SDPA, gradient checkpointing", "sdpa",
                                                     True, False),
            ("auto, SDPA, with the old .nonzero() host sync", "sdpa", False, True),
            ("auto, SDPA, LoRA dropout off", "sdpa", False, False),
            ("auto, FlashAttention 2", "flash_attention_2", False, False)]
    rows = []
    model.train()
    for name, attention, checkpointing, host_sync in runs:
        if not set_attention(model, attention):
            rows.append(show(Row(name, {"note": f"{attention} not available here"})))
            continue
        if checkpointing:
            model.llm.gradient_checkpointing_enable()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step = plain_step(model, optimizer, host_sync)
        with lora_dropout_off(model) if "dropout off" in name else contextlib.nullcontext():
            seconds = timed_steps(step, batches, args.warmup, device)
        if checkpointing:
            model.llm.gradient_checkpointing_disable()
        row = train_row(name, seconds, per_sample, tokens, args, device)
        if name == "auto, SDPA":
            row.values["note"] = kernel_share(step, batches[0], device)
        rows.append(show(row))
    set_attention(model, "sdpa")
    double = argparse.Namespace(**{**vars(args), "batch": 2 * args.batch})
    batches, tokens, per_sample = training_batches(model, cfg, dtype, device, double)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed_steps(plain_step(model, optimizer), batches, args.warmup, device)
    rows.append(show(train_row(f"auto, SDPA, micro-batch {double.batch}", seconds, per_sample,
                               tokens, double, device)))
    return rows


def zero2_rows(model, cfg, dtype, device, args) -> list[Row]:
    """The same steps under a one-rank DeepSpeed ZeRO-2 engine; a failure is a row, not a crash."""
    name = "zero2, one rank, SDPA"
    if args.skip_zero2:
        return []
    batches, tokens, per_sample = training_batches(model, cfg, dtype, device, args)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        seconds = timed_steps(zero2_step(model, device), batches, args.warmup, device)
    except Exception as error:  # noqa: BLE001 - reported in the table, the other rows stand
        return [failed(name, error)]
    return [show(train_row(name, seconds, per_sample, tokens, args, device))]


def failed(name: str, error: Exception) -> Row:
    """A row that failed: its traceback on stderr, the error in the table; the others stand."""
    traceback.print_exc()
    return show(Row(name, {"note": f"failed: {type(error).__name__}: {error}"[:200]}))


def show(row: Row) -> Row:
    """Print each row as it is measured, so a run cut short still reports what it measured."""
    print(f"measured: {row.name}: {row.values}", flush=True)
    return row


def train_row(name: str, seconds: float, per_sample: float, tokens: int, args, device) -> Row:
    samples = args.batch / seconds
    mfu = (f"{samples * per_sample / (args.peak_tflops * 1e12):.1%}" if args.peak_tflops
           else "n/a")
    return Row(name, {"samples/s": f"{samples:.2f}", "audio s/s": f"{samples * args.seconds:.1f}",
                      "tokens/s": f"{samples * tokens:.0f}", "MFU": mfu,
                      "peak GiB": f"{peak_gib(device):.1f}"})


def long_tail(count_: int, rng: random.Random) -> list[float]:
    return [min(20.0, max(0.5, rng.lognormvariate(math.log(3.0), 0.8))) for _ in range(count_)]


def batching_rows(model, cfg, dtype, device, args) -> list[Row]:
    """Fixed batch 8 and bucketed dynamic batches over the same long-tail utterances, the
    dynamic frame budget being the padded size of 8 of the longest (the same peak memory)."""
    rng = random.Random(0)
    seconds = long_tail(args.tail_utterances, rng)
    vocab = cfg.llm.architecture.vocab_size
    frames_of = [int(s * 100) // 6 + 1 for s in seconds]
    fake = [{"features": torch.empty(f, 0), "num_audio_slots": f // cfg.projector.downsample,
             "prompt_ids": [0] * 28, "answer_ids": [0] * 30, "seconds": s}
            for f, s in zip(frames_of, seconds, strict=True)]
    fixed = [fake[i:i + args.batch] for i in range(0, len(fake), args.batch)]
    dynamic = list(batch_dynamic(iter(fake), max_frames=args.batch * max(frames_of)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    rows = []
    for name, groups in (("fixed batch 8", fixed), ("bucketed dynamic, same memory", dynamic)):
        batches = []
        for group in groups:
            longest = max(s["seconds"] for s in group)
            batch = synthetic_batch(len(group), longest, cfg.projector.downsample, vocab, device)
            batch["features"] = batch["features"].to(dtype)
            batches.append(batch)
        real = sum(len(s["features"]) for g in groups for s in g)
        padded = sum(max(len(s["features"]) for s in g) * len(g) for g in groups)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        plain = plain_step(model, optimizer)
        plain(batches[0])  # warm-up
        sync(device)
        started = time.perf_counter()
        for batch in batches:
            plain(batch)
        sync(device)
        elapsed = time.perf_counter() - started
        rows.append(show(Row(f"{name} ({len(groups)} batches, {real / padded:.0%} frames real)",
                        {"samples/s": f"{len(fake) / elapsed:.2f}",
                         "audio s/s": f"{sum(seconds) / elapsed:.1f}",
                         "peak GiB": f"{peak_gib(device):.1f}"})))
    return rows


def decoding_rows(model, cfg, dtype, device, args) -> list[Row]:
    model.eval()
    rows = []
    # static: transformers' static KV cache, which generate compiles (CUDA graphs) on a GPU
    for batch_size, merged, static in ((1, False, False), (16, False, False), (1, True, False),
                                       (16, True, False), (16, True, True)):
        name = (f"decode, beam 4, batch {batch_size}, {args.new_tokens} new tokens"
                + (", LoRA merged" if merged else "")
                + (", static cache" + (" (compiled)" if device.type == "cuda" else "")
                   if static else ""))
        batch = synthetic_batch(batch_size, args.seconds, cfg.projector.downsample,
                                cfg.llm.architecture.vocab_size, device)
        batch["features"] = batch["features"].to(dtype)
        generate: dict[str, Any] = {"num_beams": 4, "max_new_tokens": args.new_tokens,
                                    "min_new_tokens": args.new_tokens, "eos_bias": 0}
        if static:
            generate["cache_implementation"] = "static"
        try:
            with lora_merged(model) if merged else contextlib.nullcontext():
                for _ in range(2 if static else 1):  # warm-up (and compilation)
                    model.generate(batch, **generate)
                sync(device)
                started = time.perf_counter()
                model.generate(batch, **generate)
                sync(device)
                elapsed = time.perf_counter() - started
        except Exception as error:  # noqa: BLE001 - reported in the table, the other rows stand
            rows.append(failed(name, error))
            continue
        rows.append(show(Row(name, {"RTF": f"{elapsed / (batch_size * args.seconds):.4f}",
                                    "utt/s": f"{batch_size / elapsed:.2f}"})))
    return rows


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU check)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--new_tokens", type=int, default=30)
    parser.add_argument("--tail_utterances", type=int, default=256)
    parser.add_argument("--skip_zero2", action="store_true")
    parser.add_argument("--decoding_only", action="store_true", help="only the decoding rows")
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="dense bf16 peak; by default from the GPU's name (H100/H200: 989)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if args.peak_tflops is None:
        args.peak_tflops = next((v for k, v in PEAKS.items() if k in name), None)
    torch.manual_seed(0)
    built = time.perf_counter()
    model, cfg, dtype = build(args.tiny, device)
    started = time.perf_counter()
    print(f"built on {name} in {started - built:.0f} s", flush=True)
    if args.decoding_only:
        rows = decoding_rows(model, cfg, dtype, device, args)
    else:
        rows = training_rows(model, cfg, dtype, device, args)
        batching = batching_rows(model, cfg, dtype, device, args)
        decoding = decoding_rows(model, cfg, dtype, device, args)
        rows += zero2_rows(model, cfg, dtype, device, args) + batching + decoding  # ZeRO-2: last
    print(f"measured in {time.perf_counter() - started:.0f} s", flush=True)
    columns = ["samples/s", "audio s/s", "tokens/s", "MFU", "peak GiB", "RTF", "utt/s", "note"]
    print(f"\n{'tiny shapes' if args.tiny else 'experiment=mt5k shapes'} on {name}, LLM "
          f"{cfg.llm.dtype}, LoRA r={cfg.llm.lora.r}, micro-batch {args.batch} x "
          f"{args.seconds:.0f} s, torch {torch.__version__}\n")
    print("| run | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for row in rows:
        print(f"| {row.name} | " + " | ".join(row.values.get(c, "") for c in columns) + " |")
    return rows


if __name__ == "__main__":
    main()
