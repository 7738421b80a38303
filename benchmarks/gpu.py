"""MooER's recipe on one GPU, counted honestly: training throughput and MFU, batching of a long
tail, decoding RTF. One table, and every row as JSON.

    python benchmarks/gpu.py --json gpu.json              # experiment=mt5k shapes, CUDA
    python benchmarks/gpu.py --tiny --device cpu          # every row the CPU can run (a test)

Training rows (micro-batch 8 of 10 s, 28 prompt + 30 answer tokens, random init):
- `lightning, <strategy>, <precision> (recipe)`: the headline, what `train.py experiment=mt5k`
  runs: Lightning's `trainer.fit` with the recipe's precision and strategy on one device;
- `lightning, zero2`: MooER's own strategy (a second model, since DeepSpeed casts the module);
- `lightning, ..., compiled regions`: `module.compile=true` (each decoder layer and encoder block
  compiled; the first steps' compile time is reported apart);
- `lightning, ..., micro-batch 16 x 1` against the recipe's 8 x 2: the same samples a step;
- `bare loop, autocast`: plain PyTorch with the same numerics (bf16 autocast, fused optimizer),
  a diagnostic of what Lightning's hooks cost; on CUDA with liger-kernel installed, the same
  with Liger's RMSNorm and SwiGLU kernels (a model of its own), to measure that lever.
Each row is timed over `--steps` steps after `--warmup`, with CUDA events (a clock on the CPU),
the rows interleaved over `--repeats` repeats: the median and the spread are printed.

Long tail: `--tail_utterances` utterances of 0.5-20 s (log-normal, median 3 s), answers growing
with duration (3 tokens a second), one pass each under the same token budget (the memory of the
worst fixed batch): fixed batches of 8, bucketed dynamic batches (2-D: frames and tokens), packed
rows (`data.packing`), and on CUDA packed rows with FlexAttention (`llm.attn_implementation`).

Decoding: beam 4, batch 1 and 16, 30 new tokens, LoRA as adapters and merged.

Hotwords (`--only hotwords` alone): the same batch of 16 decoded with a list, checked and
rewritten (the decoders' default) and checked alone, against no list: what biasing costs at a
151k vocabulary and a 7B decoder (`hotword_rows`: the model is at random init, so the list's
words are taken from its CTC head's own best path, beside 100 random distractors), a list of
`--long_list` random words biased unchecked (as on a model without a CTC head, MooER's release
among them: every listed word's first token earns its bonus at every step), and rewriting's
decoder pass over the decoding's prompt cache against over the prompts again.

FLOPs per sample come from each batch's real lengths (`mooer.models.flops`, whose docstring
writes the formula out: about 3.97 TFLOP a sample at these shapes), MFU from those over the
GPU's dense bf16 peak (H100 and H200 SXM: 989 TFLOP/s; --peak_tflops for others); achieved
TFLOP/s counts the padded work the kernels run. `flop_counter_ratio` is the formula over torch's
FlopCounterMode on the tiny model; `packed_vs_padded_max_abs_diff` the largest difference of the
per-utterance losses of a packed and a padded batch of the same utterances (fp32, tiny model).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import os
import random
import socket
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mooer.config import compose_config
from mooer.data.collate import collate, collate_packed, move_batch
from mooer.data.loader import ReadyBatches
from mooer.data.pipeline import batch_dynamic, pack_rows
from mooer.data.synthetic import SyntheticTokenizer, synthetic_samples
from mooer.models.build import build_speech_llm
from mooer.models.flops import StepFlops, flop_counter
from mooer.models.llm import torch_dtype

PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
PROMPT_TOKENS, ANSWER_TOKENS = 28, 30
TINY = ["encoder=paraformer_tiny", "llm=tiny", "llm.lora.enabled=true", "llm.freeze=true",
        "encoder.freeze=true", "strategy=auto"]
MT5K = ["experiment=mt5k", "encoder.model.checkpoint=null", "encoder.frontend.cmvn_path=null",
        "llm.path=null"]


@dataclass
class Row:
    """One measured configuration: a figure per repeat, and what every repeat shares."""

    name: str
    kind: str  # train | tail | decode
    per_repeat: list[dict[str, float]] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def value(self, key: str) -> float | None:
        values = [r[key] for r in self.per_repeat if key in r]
        return statistics.median(values) if values else None

    def spread(self, key: str) -> str:
        values = [r[key] for r in self.per_repeat if key in r]
        if len(values) < 2:
            return ""
        return f" ({min(values):.3g}-{max(values):.3g})"

    def record(self) -> dict[str, Any]:
        keys = sorted({k for r in self.per_repeat for k in r})
        return {"name": self.name, "kind": self.kind, **self.fixed,
                **{k: self.value(k) for k in keys},
                **{f"{k}_repeats": [r[k] for r in self.per_repeat if k in r] for k in keys},
                "note": self.note}


class Clock:
    """Elapsed seconds between marks: CUDA events on a GPU (read once, at the end), the host's
    clock elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self, first: int, last: int) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return self.marks[first].elapsed_time(self.marks[last]) / 1000
        return self.marks[last] - self.marks[first]


def build(tiny: bool, device: torch.device, seed: int = 0):
    """The model of the run at random init on `device`, its config and dtype."""
    cfg, _ = compose_config("train", TINY if tiny else MT5K)
    torch.manual_seed(seed)
    with device:
        model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm,
                                 SyntheticTokenizer(cfg.llm.architecture.vocab_size))
    dtype = torch_dtype(cfg.llm.dtype)
    model.encoder.to(dtype)  # frozen: its weights in the LLM's dtype, as decoding loads them
    return model, cfg, dtype


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")


def training_batches(cfg, count: int, batch: int, seconds: float, seed: int = 0) -> list[dict]:
    """`count` collated batches of the issue's shapes (on the host, as a loader gives them)."""
    vocab = cfg.llm.architecture.vocab_size
    return [collate(synthetic_samples([seconds] * batch, [ANSWER_TOKENS] * batch, PROMPT_TOKENS,
                                      cfg.projector.downsample, vocab, seed=seed + i),
                    pad_id=vocab - 2) for i in range(count)]


def throughput(batches: list[dict], seconds: float, flops: StepFlops, peak: float | None,
               device: torch.device) -> dict[str, float]:
    """What `batches` hold, over `seconds`: samples, tokens, audio, FLOPs a second."""
    samples = sum(len(b["keys"]) for b in batches)
    real = sum(flops.real(b) for b in batches)
    executed = sum(flops.executed(b) for b in batches)
    tokens = sum(sum(b["utterance_tokens"]) for b in batches)
    padded_tokens = sum(b["input_ids"].numel() for b in batches)
    frames = sum(sum(b["feature_frames"]) for b in batches)
    padded_frames = sum(b["features"].shape[0] * b["features"].shape[1] for b in batches)
    figures = {"samples_per_s": samples / seconds, "real_tokens_per_s": tokens / seconds,
               "answer_tokens_per_s": sum(b["num_scored"] for b in batches) / seconds,
               "audio_s_per_s": sum(b["audio_seconds"] for b in batches) / seconds,
               "achieved_tflops": executed / seconds / 1e12,
               "flops_per_sample": real / samples,
               "token_efficiency": tokens / padded_tokens,
               "frame_efficiency": frames / padded_frames,
               "step_s": seconds / len(batches)}
    figures["mfu"] = real / seconds / (peak * 1e12) if peak else float("nan")
    if device.type == "cuda":
        figures["peak_gib"] = peak_gib(device)
    return figures


# -- the training loops ---------------------------------------------------------------------
def bare_loop(model, cfg, device: torch.device, autocast: torch.dtype | None):
    """Plain PyTorch: forward under autocast (Lightning's bf16-mixed), backward, the recipe's
    optimizer (fused)."""
    from hydra.utils import instantiate

    optimizer = instantiate(cfg.module.optimizer)([p for p in model.parameters()
                                                   if p.requires_grad])

    def run(batches: list[dict], clock: Clock, warmup: int) -> None:
        model.train()
        for index, batch in enumerate(batches):
            if index == warmup:
                clock.mark()
            batch = move_batch(batch, device, torch_dtype(cfg.llm.dtype))
            context = (torch.autocast(device.type, autocast) if autocast
                       else contextlib.nullcontext())
            with context:
                loss = model(batch)["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        clock.mark()
    return run


def lightning_loop(model, cfg, device: torch.device, strategy: str, precision: str,
                   accumulate: int = 1, compile_regions: bool = False):
    """Lightning's trainer.fit as train.py runs it (conf/module's module, the strategy's class),
    without loggers or checkpoints; a clock mark at every optimizer step's first batch."""
    import lightning.pytorch as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mooer.training.run import build_strategy

    module_cfg = OmegaConf.to_container(cfg.module, resolve=True)
    module_cfg.update(log_interval=0, compile=compile_regions)
    module = instantiate(module_cfg, model=model, _convert_="all")
    strategy_cfg = OmegaConf.create({"strategy": OmegaConf.to_container(
        compose_config("train", [f"strategy={strategy}"])[0].strategy)})
    if strategy != "auto":
        one_rank_environment()

    def run(batches: list[dict], clock: Clock, warmup: int) -> None:
        class Marks(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if batch_idx >= warmup and batch_idx % accumulate == 0:
                    clock.mark()

            def on_train_end(self, trainer, pl_module):
                clock.mark()

        trainer = pl.Trainer(
            accelerator=device.type, devices=1, precision=precision,
            strategy=build_strategy(strategy_cfg, device.type),
            max_steps=len(batches) // accumulate, accumulate_grad_batches=accumulate,
            logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
            log_every_n_steps=50, callbacks=[Marks()])
        trainer.fit(module, train_dataloaders=ReadyBatches(batches))
    return run


def one_rank_environment() -> None:
    """A one-process group of our own for DeepSpeed: any free port."""
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(free.getsockname()[1])
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")


# -- the rows -------------------------------------------------------------------------------
@dataclass
class Plan:
    """A training row: how to build its loop (once), and its batches' shape."""

    name: str
    make: Callable[[], Callable]
    batch: int = 8
    accumulate: int = 1
    loop: Callable | None = None
    row: Row | None = None


def training_rows(model, cfg, device: torch.device, args, flops: StepFlops) -> list[Row]:
    precision = cfg.trainer.precision
    recipe = cfg.strategy.name
    autocast = torch.bfloat16 if precision.startswith("bf16") else None
    plans = [Plan(f"lightning, {recipe}, {precision} (recipe)",
                  lambda: lightning_loop(model, cfg, device, recipe, precision,
                                         cfg.trainer.accumulate_grad_batches),
                  accumulate=cfg.trainer.accumulate_grad_batches),
             Plan(f"lightning, {recipe}, {precision}, micro-batch 16 x 1",
                  lambda: lightning_loop(model, cfg, device, recipe, precision), batch=16),
             Plan(f"lightning, {recipe}, {precision}, compiled regions",
                  lambda: lightning_loop(model, cfg, device, recipe, precision,
                                         cfg.trainer.accumulate_grad_batches, True),
                  accumulate=cfg.trainer.accumulate_grad_batches),
             Plan("bare loop, autocast, fused optimizer",
                  lambda: bare_loop(model, cfg, device, autocast))]
    if not args.skip_zero2:
        # DeepSpeed casts the module it wraps to bf16: a model of its own
        plans.append(Plan(f"lightning, zero2, {precision} (MooER's strategy)",
                          lambda: lightning_loop(build(args.tiny, device, seed=1)[0], cfg, device,
                                                 "zero2", precision,
                                                 cfg.trainer.accumulate_grad_batches),
                          accumulate=cfg.trainer.accumulate_grad_batches))
    if device.type == "cuda" and importlib.util.find_spec("liger_kernel"):
        plans.append(Plan("bare loop, autocast, Liger RMSNorm and SwiGLU kernels",
                          lambda: bare_loop(liger_model(args, device), cfg, device, autocast)))
    for plan in plans:
        plan.row = Row(plan.name, "train", fixed={"micro_batch": plan.batch,
                                                  "accumulate": plan.accumulate})
    for repeat in range(args.repeats):  # interleaved: each repeat runs every row once
        for plan in plans:
            if plan.row.note.startswith("failed"):
                continue
            steps = (args.warmup + args.steps) * plan.accumulate
            batches = training_batches(cfg, steps, plan.batch, args.seconds, seed=repeat * 1000)
            clock = Clock(device)
            reset_peak(device)
            # compiled regions stay compiled: every other row runs them eagerly
            stance = ("default" if "compiled" in plan.name else "force_eager")
            try:
                with torch.compiler.set_stance(stance):
                    if plan.loop is None:
                        plan.loop = plan.make()
                    started = time.perf_counter()
                    plan.loop(batches, clock, args.warmup * plan.accumulate)
                wall = time.perf_counter() - started
            except Exception as error:  # noqa: BLE001 - reported in the table, the rest stand
                traceback.print_exc()
                plan.row.note = f"failed: {type(error).__name__}: {error}"[:200]
                continue
            timed = batches[args.warmup * plan.accumulate:]
            figures = throughput(timed, clock.seconds(0, -1), flops, args.peak_tflops, device)
            if repeat == 0 and "compiled" in plan.name:  # compilation happens in the warm-up
                warm = wall - clock.seconds(0, -1)
                plan.row.fixed["warmup_and_compile_s"] = round(warm, 1)
            plan.row.per_repeat.append(figures)
            show(plan.row)
    return [plan.row for plan in plans]


def liger_model(args, device: torch.device):
    """A model of its own with Liger-Kernel's Triton RMSNorm and SwiGLU in its decoder (patched
    per instance; its RoPE patch would change every Qwen2 of the process, so it stays off). A
    row to measure, not a training option: its kernels are not bitwise the plain ones."""
    from liger_kernel.transformers import apply_liger_kernel_to_qwen2

    model = build(args.tiny, device, seed=2)[0]
    apply_liger_kernel_to_qwen2(rope=False, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=False,
                                model=model.llm.get_base_model())
    return model


def long_tail(count: int, seed: int = 0) -> tuple[list[float], list[int]]:
    """Durations of 0.5-20 s (log-normal, median 3 s) and answers of 3 tokens a second."""
    rng = random.Random(seed)
    seconds = [min(20.0, max(0.5, rng.lognormvariate(math.log(3.0), 0.8))) for _ in range(count)]
    return seconds, [max(2, round(3 * s)) for s in seconds]


def tail_rows(model, cfg, device: torch.device, args, flops: StepFlops) -> list[Row]:
    """One pass over the same long-tail utterances three ways, under the token budget of the
    worst fixed batch of 8 (the same peak memory)."""
    seconds, answers = long_tail(args.tail_utterances)
    vocab, pad = cfg.llm.architecture.vocab_size, cfg.llm.architecture.vocab_size - 2
    samples = synthetic_samples(seconds, answers, PROMPT_TOKENS, cfg.projector.downsample, vocab)
    random.Random(1).shuffle(samples)
    fixed = [collate(samples[i:i + 8], pad) for i in range(0, len(samples), 8)]
    budget = max(b["input_ids"].numel() for b in fixed)
    frames = max(b["features"].shape[0] * b["features"].shape[1] for b in fixed)
    bucketed = [collate(group, pad) for group in batch_dynamic(
        iter(samples), max_frames=frames, max_tokens=budget, bucket_ratio=1.2)]
    row_tokens = max(args.row_tokens, max(max(b["utterance_tokens"]) for b in fixed))
    rows_per_batch = max(1, budget // row_tokens)
    packed = [collate_packed(rows, pad, row_tokens=row_tokens) for rows in pack_rows(
        iter(samples), row_tokens=row_tokens, rows_per_batch=rows_per_batch, buffer_size=512)]
    run = bare_loop(model, cfg, device, torch.bfloat16 if cfg.llm.dtype == "bf16" else None)
    passes = [(f"long tail, fixed batches of 8 ({len(fixed)})", fixed, "sdpa"),
              (f"long tail, bucketed 2-D ({len(bucketed)} batches)", bucketed, "sdpa"),
              (f"long tail, packed rows of {row_tokens} tokens ({len(packed)} batches of "
               f"{rows_per_batch})", packed, "sdpa")]
    if device.type == "cuda":  # FlexAttention's backward needs a GPU
        passes.append((passes[-1][0] + ", flex attention", packed, "flex_attention"))
    rows = []
    for name, batches, attention in passes:
        row = Row(name, "tail", fixed={"utterances": len(samples), "token_budget": budget})
        clock = Clock(device)
        reset_peak(device)
        try:
            model.llm.set_attn_implementation(attention)
            run(batches, clock, 1)
        except Exception as error:  # noqa: BLE001 - reported in the table, the rest stand
            traceback.print_exc()
            row.note = f"failed: {type(error).__name__}: {error}"[:200]
            rows.append(show(row))
            continue
        finally:
            model.llm.set_attn_implementation("sdpa")
        row.per_repeat.append(throughput(batches[1:], clock.seconds(0, -1), flops,
                                         args.peak_tflops, device))
        rows.append(show(row))
    return rows


def prompt_batch(cfg, size: int, seconds: float, device: torch.device) -> dict:
    """A padded batch of `size` synthetic utterances of `seconds` whose answer is the eos
    alone (what generate decodes from), on `device` in the LLM's dtype."""
    vocab = cfg.llm.architecture.vocab_size
    return move_batch(collate(synthetic_samples(
        [seconds] * size, [1] * size, PROMPT_TOKENS, cfg.projector.downsample, vocab),
        pad_id=vocab - 2), device, torch_dtype(cfg.llm.dtype))


def decoding_rows(model, cfg, device: torch.device, args) -> list[Row]:
    model.eval()
    rows = []
    for batch_size, merged in ((1, False), (16, False), (1, True), (16, True)):
        name = (f"decode, beam 4, batch {batch_size}, {args.new_tokens} new tokens"
                + (", LoRA merged" if merged else ""))
        batch = prompt_batch(cfg, batch_size, args.seconds, device)
        generate = {"num_beams": 4, "max_new_tokens": args.new_tokens,
                    "min_new_tokens": args.new_tokens, "eos_bias": 0}
        row = Row(name, "decode")
        try:
            with lora_merged(model) if merged else contextlib.nullcontext():
                model.generate(batch, **generate)  # warm-up
                sync(device)
                started = time.perf_counter()
                model.generate(batch, **generate)
                sync(device)
                elapsed = time.perf_counter() - started
        except Exception as error:  # noqa: BLE001 - reported in the table, the rest stand
            traceback.print_exc()
            row.note = f"failed: {type(error).__name__}: {error}"[:200]
            rows.append(show(row))
            continue
        row.per_repeat.append({"rtf": elapsed / (batch_size * args.seconds),
                               "utterances_per_s": batch_size / elapsed})
        rows.append(show(row))
    return rows


def hotword_rows(model, cfg, device: torch.device, args) -> list[Row]:
    """Decoding a batch of 16 (beam 4) with a hotword list, against no list, on the same batch:
    the cost of checking (spotting over the CTC head's classes, the beam's bonus) and of
    rewriting (alignment, CTC and decoder passes) at these shapes. The model is at random init,
    with a fresh CTC head (made as peaked as a trained one): the list's "heard" words are pairs
    of tokens on its own best path (heard at 0 nats, so they are biased, tried and scored as a
    true word is), its distractors random pairs (the note says how many rows heard a word).
    Each condition `--repeats` times, interleaved; the ratio is the median of each repeat's own
    ratio to no list."""
    from mooer.inference.decode import generate_batch, hearing
    from mooer.inference.hotwords import CHECK_THRESHOLD, REWRITE_THRESHOLD, ContextGraph

    model.eval()
    vocab = cfg.llm.architecture.vocab_size
    batch = prompt_batch(cfg, 16, args.seconds, device)
    generate = {"num_beams": 4, "max_new_tokens": args.new_tokens, "eos_bias": 0}
    with torch.no_grad():
        encoded = model.encode(batch)
        if not model.has_ctc_head:  # a fresh head, as peaked as a trained one (logits of
            model.add_ctc_head()    # spread 8: a random word is far from its best path)
            spread = model.ctc_head(encoded[0]).float().std()
            model.ctc_head.weight.mul_(8 / spread)
            model.ctc_head.bias.mul_(8 / spread)
        log_probs, lengths = model.ctc_log_probs(batch, encoded)
    blank = log_probs.shape[-1] - 1
    heard = []  # two tokens of each row's best path, a word
    for row in range(log_probs.shape[0]):
        path = log_probs[row, :int(lengths[row])].argmax(-1).tolist()
        tokens = [t for i, t in enumerate(path) if t != blank and (i == 0 or t != path[i - 1])]
        heard += [f"{a} {b}" for a, b in zip(tokens[:6:2], tokens[1:6:2], strict=False)]
    rng = random.Random(0)

    def random_words(count: int) -> list[str]:  # two random tokens a word
        return [f"{rng.randrange(vocab - 2)} {rng.randrange(vocab - 2)}" for _ in range(count)]

    distractors = random_words(100)
    tokenizer = model.tokenizer
    lists = {"heard words + 100 distractors": heard + distractors,
             "100 distractors only": distractors}
    long_list = f"{args.long_list} random words"  # biased unchecked: a model without a CTC head
    graphs = {name: ContextGraph.build([(w, None) for w in words], tokenizer)
              for name, words in {**lists, long_list: random_words(args.long_list)}.items()}
    conditions = [("no list", None, {})]
    for name in lists:
        conditions += [(f"{name}, checked and rewritten (default)", name, {}),
                       (f"{name}, checked", name, {"rewriting": None})]
    conditions.append((f"{long_list}, unchecked (a model without a CTC head)", long_list,
                       {"check": None, "rewriting": None}))
    rows = [Row(f"hotwords, beam 4, batch 16, {label}", "hotwords") for label, _, _ in conditions]
    for name in lists:  # how many rows hear a listed word (check, rewriting)
        graph = graphs[name]
        spotted = hearing((log_probs, lengths), [graph] * 16, REWRITE_THRESHOLD)
        for row, (_, listed, _) in zip(rows, conditions, strict=True):
            if listed == name:
                row.fixed.update(words=len(graph), rows_checked=sum(
                    bool(graph.heard(found, CHECK_THRESHOLD)) for found in spotted),
                                 rows_tried=sum(bool(graph.heard(found, REWRITE_THRESHOLD))
                                                for found in spotted))

    def once(listed: str | None, options: dict) -> float:
        graph = graphs[listed] if listed else None
        sync(device)
        started = time.perf_counter()
        with torch.no_grad():
            generate_batch(model, batch, [graph] * 16 if graph else [], generate, **options)
        sync(device)
        return time.perf_counter() - started

    try:
        for _, listed, options in conditions:  # warm-up
            once(listed, options)
        for _ in range(args.repeats):
            seconds = []
            for row, (_, listed, options) in zip(rows, conditions, strict=True):
                reset_peak(device)
                seconds.append(once(listed, options))
                row.per_repeat.append({"rtf": seconds[-1] / (16 * args.seconds),
                                       "utterances_per_s": 16 / seconds[-1],
                                       "vs_no_list": seconds[-1] / seconds[0],
                                       "peak_gib": peak_gib(device)})
    except Exception as error:  # noqa: BLE001 - reported in the table, the rest stand
        traceback.print_exc()
        for row in rows:
            row.note = f"failed: {type(error).__name__}: {error}"[:200]
    rows[-1].fixed.update(words=len(graphs[long_list]))
    for row in rows:
        if row.per_repeat and "rows_checked" in row.fixed:
            row.note = (f"{row.value('vs_no_list'):.2f}x no list; {row.fixed['words']} words, "
                        f"{row.fixed['rows_checked']} of 16 rows biased, "
                        f"{row.fixed['rows_tried']} tried")
        elif row.per_repeat and "words" in row.fixed:
            row.note = (f"{row.value('vs_no_list'):.2f}x no list; {row.fixed['words']} words, "
                        f"every row biased")
        show(row)
    return [*rows, posteriors_row(log_probs, lengths, graphs[next(iter(lists))], device, args),
            prompt_cache_row(model, batch, generate, device, args)]


def posteriors_row(log_probs: torch.Tensor, lengths: torch.Tensor, graph, device: torch.device,
                   args) -> Row:
    """What the host reads of a batch's CTC posteriors for spotting, rewriting and word
    times: the whole [16, T, V] brought over (as before session 17) against the columns of
    the list's tokens, 16 answers of `--new_tokens` random tokens and 80 candidates a row
    (the answer with a listed word in place of some of its tokens) (`Posteriors.columns`,
    what decoding now copies from an accelerator): seconds, the columns, and whether they
    hold the same values. (On a CPU the whole is read in place: no copy to time.)"""
    from mooer.inference.posteriors import Posteriors

    row = Row("CTC posteriors to the host, batch 16: whole vs the columns read", "hotwords")
    rng = random.Random(2)
    blank = log_probs.shape[-1] - 1
    listed = list(graph.sequences)
    answers = [[rng.randrange(blank) for _ in range(args.new_tokens)] for _ in range(16)]
    tokens = listed + answers
    for answer in answers:  # 80 candidates a row: a listed word in place of some of its tokens
        for _ in range(80):
            word, at = rng.choice(listed), rng.randrange(len(answer))
            tokens.append(answer[:at] + word + answer[at + len(word):])
    posteriors = Posteriors(log_probs, lengths)
    posteriors.in_place = False  # as from an accelerator, on a CPU too
    try:
        def once(whole: bool) -> tuple[float, torch.Tensor, list[list[int]]]:
            sync(device)
            started = time.perf_counter()
            if whole:
                host, lists = log_probs.cpu(), tokens
            else:
                host, lists = posteriors.columns(tokens)
            return time.perf_counter() - started, host, lists

        once(True), once(False)  # warm-up
        for _ in range(args.repeats):
            whole, full, _ = once(True)
            columns, host, lists = once(False)
            row.per_repeat.append({"seconds_whole": whole, "seconds_columns": columns,
                                   "columns_vs_whole": columns / whole})
        read = {(t, k) for ids, numbered in zip(tokens, lists, strict=True)
                for t, k in zip(ids, numbered, strict=True)} | {(blank, host.shape[-1] - 1)}
        pairs = torch.tensor(sorted(read))
        row.fixed.update(classes=log_probs.shape[-1], columns=host.shape[-1],
                         same=len({k for _, k in read}) == len(read) and torch.equal(
                             host[..., pairs[:, 1]], full[..., pairs[:, 0]]))
        row.note = (f"{row.value('columns_vs_whole'):.3f}x the time: {row.fixed['columns']} "
                    f"of {row.fixed['classes']} columns; the same values: {row.fixed['same']}")
    except Exception as error:  # noqa: BLE001 - reported in the table, the rest stand
        traceback.print_exc()
        row.note = f"failed: {type(error).__name__}: {error}"[:200]
    return show(row)


def prompt_cache_row(model, batch: dict, generate: dict, device: torch.device, args) -> Row:
    """Rewriting's decoder pass (3 answers a row of the batch, as many tokens as
    `--new_tokens`), over the whole prompts again against over the decoding's cache of them
    (`Generated.prompt_cache`): seconds, peak memory, and the largest difference of their
    log-probabilities (the same values, to the dtype's rounding)."""
    row = Row("rewriting's decoder pass, 3 answers a row of 16, prompt cached vs again",
              "hotwords")
    size = batch["input_ids"].shape[0]
    rng = random.Random(1)
    vocab = model.llm.config.vocab_size
    answers = [[rng.randrange(vocab - 2) for _ in range(args.new_tokens)] for _ in range(size * 3)]
    rows = [r for r in range(size) for _ in range(3)]
    try:
        with torch.no_grad():
            cache = model.generate(batch, keep_prompt=True, **generate).prompt_cache
            if cache is None:
                raise RuntimeError("the decoder's cache is of a kind not kept")

            def once(kept) -> tuple[float, float, list[list[float]]]:
                reset_peak(device)
                sync(device)
                started = time.perf_counter()
                found = model.answer_log_probs(batch, answers, rows=rows, prompt_cache=kept)
                sync(device)
                return time.perf_counter() - started, peak_gib(device), found

            once(None), once(cache)  # warm-up
            for _ in range(args.repeats):
                again, again_peak, plain = once(None)
                cached, cached_peak, reused = once(cache)
                row.per_repeat.append({"seconds_again": again, "seconds_cached": cached,
                                       "cached_vs_again": cached / again,
                                       "peak_gib_again": again_peak,
                                       "peak_gib_cached": cached_peak})
        row.fixed["max_abs_diff"] = max(abs(a - b) for x, y in zip(plain, reused, strict=True)
                                        for a, b in zip(x, y, strict=True))
        row.note = (f"{row.value('cached_vs_again'):.2f}x the time of scoring the prompts "
                    f"again; |diff| {row.fixed['max_abs_diff']:.2e}")
    except Exception as error:  # noqa: BLE001 - reported in the table, the rest stand
        traceback.print_exc()
        row.note = f"failed: {type(error).__name__}: {error}"[:200]
    return show(row)


@contextlib.contextmanager
def lora_merged(model):
    """LoRA folded into the base weights for the `with` block (peft merge/unmerge)."""
    model.llm.merge_adapter()
    try:
        yield
    finally:
        model.llm.unmerge_adapter()


# -- checks of the count and of packing (tiny model, fp32) ----------------------------------
def checks(device: torch.device) -> dict[str, float]:
    """The FLOP formula over torch's FlopCounterMode, and the largest difference between the
    per-utterance losses of a packed and a padded batch of the same utterances."""
    model, cfg, _ = build(True, device)
    model.train()
    vocab = cfg.llm.architecture.vocab_size
    samples = synthetic_samples([1.0, 2.5, 1.7, 3.2, 0.8, 2.0], [4, 9, 6, 11, 3, 7], 12,
                                cfg.projector.downsample, vocab, seed=5)
    padded = move_batch(collate(samples, vocab - 2), device)
    packed = move_batch(collate_packed([samples[:3], samples[3:]], vocab - 2), device)
    with flop_counter() as counter:
        out_padded = model(padded)
        out_padded["loss"].backward()
    ratio = StepFlops.of(model).executed(padded) / counter.get_total_flops()
    out_packed = model(packed)

    def per_utterance(out, batch):
        index = batch["scored_utterance"]
        sums = torch.zeros(len(batch["keys"]), device=device).index_add(0, index, out["token_loss"])
        return sums / torch.bincount(index, minlength=len(batch["keys"]))

    difference = (per_utterance(out_packed, packed) - per_utterance(out_padded, padded)).abs()
    return {"flop_counter_ratio": ratio, "packed_vs_padded_max_abs_diff": float(difference.max())}


def top_kernels(model, cfg, device: torch.device, args) -> list[dict[str, Any]]:
    """The profiler's ten most expensive kernels of the recipe's bare step (CUDA only)."""
    if device.type != "cuda":
        return []
    from torch.profiler import ProfilerActivity, profile

    run = bare_loop(model, cfg, device, torch.bfloat16)
    batches = training_batches(cfg, 3, 8, args.seconds)
    run(batches[:2], Clock(device), 1)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run(batches[2:], Clock(device), 0)
        sync(device)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=10)
    print(table)
    events = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)[:10]
    return [{"name": e.key, "device_ms": e.device_time_total / 1000, "calls": e.count}
            for e in events]


# -- output -------------------------------------------------------------------------------
COLUMNS = [("samples/s", "samples_per_s", "{:.2f}"), ("real tok/s", "real_tokens_per_s", "{:.0f}"),
           ("answer tok/s", "answer_tokens_per_s", "{:.0f}"), ("audio s/s", "audio_s_per_s",
                                                                "{:.1f}"),
           ("MFU", "mfu", "{:.1%}"), ("TFLOP/s run", "achieved_tflops", "{:.1f}"),
           ("tokens real", "token_efficiency", "{:.0%}"), ("frames real", "frame_efficiency",
                                                           "{:.0%}"),
           ("peak GiB", "peak_gib", "{:.1f}"), ("RTF", "rtf", "{:.4f}"),
           ("utt/s", "utterances_per_s", "{:.2f}")]


def show(row: Row) -> Row:
    """Print each row as it is measured, so a run cut short still reports what it measured."""
    print(f"measured: {row.name}: {row.per_repeat[-1] if row.per_repeat else row.note}",
          flush=True)
    return row


def cell(row: Row, key: str, form: str) -> str:
    value = row.value(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return form.format(value) + (row.spread(key) if key == "samples_per_s" else "")


def table(rows: Iterable[Row]) -> str:
    lines = ["| run | " + " | ".join(c[0] for c in COLUMNS) + " | note |",
             "|---|" + "---|" * (len(COLUMNS) + 1)]
    for row in rows:
        note = row.note or ", ".join(f"{k} {v}" for k, v in row.fixed.items()
                                     if k.endswith("_s"))
        lines.append(f"| {row.name} | " + " | ".join(cell(row, k, f) for _, k, f in COLUMNS)
                     + f" | {note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU check)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=30, help="timed steps a row and repeat")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new_tokens", type=int, default=30)
    parser.add_argument("--long_list", type=int, default=5000,
                        help="hotwords: the words of the list biased unchecked")
    parser.add_argument("--tail_utterances", type=int, default=2000)
    parser.add_argument("--row_tokens", type=int, default=2048,
                        help="packed rows' length (data.max_tokens_in_row)")
    parser.add_argument("--skip_zero2", action="store_true")
    parser.add_argument("--only", choices=["train", "tail", "decode", "hotwords"], default=None)
    parser.add_argument("--peak_tflops", type=float, default=None,
                        help="dense bf16 peak; by default from the GPU's name (H100/H200: 989)")
    parser.add_argument("--json", type=Path, default=None, help="write every row here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    if args.peak_tflops is None:
        args.peak_tflops = next((v for k, v in PEAKS.items() if k in name), None)
    started = time.perf_counter()
    result: dict[str, Any] = {"device": name, "torch": torch.__version__, **checks(device)}
    print(f"checks: {result}", flush=True)
    model, cfg, _ = build(args.tiny, device)
    flops = StepFlops.of(model)
    print(f"built on {name} in {time.perf_counter() - started:.0f} s", flush=True)
    rows: list[Row] = []
    if args.only in (None, "train"):
        rows += training_rows(model, cfg, device, args, flops)
    with torch.compiler.set_stance("force_eager"):  # the compiled row's regions: eager here
        if args.only in (None, "tail"):
            rows += tail_rows(model, cfg, device, args, flops)
        if args.only in (None, "decode"):
            rows += decoding_rows(model, cfg, device, args)
        if args.only in (None, "hotwords"):
            rows += hotword_rows(model, cfg, device, args)
        result["top_kernels"] = top_kernels(model, cfg, device, args) if args.only is None else []
    result.update(rows=[row.record() for row in rows], seconds=time.perf_counter() - started,
                  shapes=f"{'tiny' if args.tiny else 'experiment=mt5k'}, LLM {cfg.llm.dtype}, "
                         f"LoRA r={cfg.llm.lora.r}, {args.seconds:g} s utterances, "
                         f"{PROMPT_TOKENS} prompt + {ANSWER_TOKENS} answer tokens")
    print(f"\n{result['shapes']} on {name}, torch {torch.__version__}; FLOP formula / "
          f"FlopCounterMode {result['flop_counter_ratio']:.4f}; packed vs padded losses: max "
          f"|diff| {result['packed_vs_padded_max_abs_diff']:.2e}; {args.repeats} repeats of "
          f"{args.steps} steps, median (spread)\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
