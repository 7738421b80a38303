"""The training step's fast paths equal the plain one: packed rows give the padded batch's
per-utterance losses and gradients; the step reads nothing back from the device (it compiles
with fullgraph=True); under bf16 autocast every matmul, the adapters' too, runs in bf16 over fp32
master weights; compiled regions give the eager loss, keep the state-dict keys and recompile only
per length bucket."""

from __future__ import annotations

import contextlib

import pytest
import torch

from mooer.data.collate import collate, collate_packed, round_up, sequence_length
from mooer.data.datamodule import SpeechDataModule
from mooer.data.features import ParaformerFrontend
from mooer.data.synthetic import synthetic_samples
from mooer.training.module import compile_regions, lora_input_casting
from tests.conftest import prompt_format
from tests.models.test_speech_llm import tiny_model


def trained_adapters(tokenizer, *overrides: str):
    """The tiny model (fp32, frozen encoder) with non-zero LoRA B, so every adapter weight has a
    gradient."""
    model = tiny_model(tokenizer, 0, "encoder.freeze=true", *overrides)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    return model.train()


def per_utterance(out, batch) -> torch.Tensor:
    """Each utterance's mean token loss, from the forward's token losses."""
    count = len(batch["keys"])
    sums = torch.zeros(count).index_add(0, batch["scored_utterance"], out["token_loss"])
    tokens = torch.zeros(count).index_add(0, batch["scored_utterance"],
                                          torch.ones_like(out["token_loss"]))
    return sums / tokens


def gradients(model, batch) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(batch)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()
             if p.requires_grad and (n.startswith("projector.") or "lora_" in n)}
    return out, grads


@contextlib.contextmanager
def hidden_of_projector(model):
    """Records the input of the projector's ReLU (the output of its linear1) on each forward."""
    seen: list[torch.Tensor] = []
    hook = model.projector.linear1.register_forward_hook(
        lambda module, args, output: seen.append(output.detach().clone()))
    try:
        yield seen
    finally:
        hook.remove()


def test_packed_rows_give_the_padded_batchs_losses_and_gradients(tokenizer, samples):
    model = trained_adapters(tokenizer)
    padded = collate(samples, pad_id=tokenizer.pad_token_id)
    # 8 utterances in 3 rows, unevenly, in another order than the padded batch's
    rows = [[samples[5], samples[0], samples[3]], [samples[7], samples[1]],
            [samples[2], samples[6], samples[4]]]
    packed = collate_packed(rows, pad_id=tokenizer.pad_token_id)
    order = [5, 0, 3, 7, 1, 2, 6, 4]
    assert packed["keys"] == [samples[i]["key"] for i in order]
    assert packed["input_ids"].shape[0] == 3
    assert packed["input_ids"].numel() < padded["input_ids"].numel()  # less padding
    out_padded, grads_padded = gradients(model, padded)
    out_packed, grads_packed = gradients(model, packed)
    torch.testing.assert_close(per_utterance(out_packed, packed),
                               per_utterance(out_padded, padded)[order], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_packed["loss"], out_padded["loss"], rtol=1e-5, atol=1e-5)
    assert out_packed["num_tokens"] == out_padded["num_tokens"] == sum(
        len(s["answer_ids"]) for s in samples)
    assert set(grads_packed) == set(grads_padded) and any("lora_A" in n for n in grads_packed)
    for name, grad in grads_padded.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-5, atol=1e-5)


def test_a_list_before_the_audio_gives_the_same_losses_padded_packed_and_alone(tokenizer,
                                                                              samples):
    """Prefixes (a hotword list before the audio slots, trained biasing) of different lengths:
    each utterance's loss and the gradients are the same padded, packed and decoded alone, the
    prefix sits just before the audio slots, and it changes the loss of the utterances that
    have one."""
    model = trained_adapters(tokenizer)
    generator = torch.Generator().manual_seed(3)
    lengths = [0, 5, 12, 0, 3, 7, 1, 9]
    listed = [{**s, "prefix_ids": torch.randint(0, len(tokenizer) - 2, (n,),
                                                generator=generator)}
              for s, n in zip(samples, lengths, strict=True)]
    pad = tokenizer.pad_token_id
    padded = collate(listed, pad_id=pad)
    packed = collate_packed([listed[:3], listed[3:]], pad_id=pad)
    for batch in (padded, packed):  # each list just before its utterance's audio slots
        for utterance, sample in enumerate(listed):
            mine = batch["audio_frame_index"][0] == utterance
            row, first = (int(index[mine][0]) for index in batch["audio_slot_index"])
            before = batch["input_ids"][row, first - len(sample["prefix_ids"]):first]
            assert before.tolist() == sample["prefix_ids"].tolist()
    out_padded, grads_padded = gradients(model, padded)
    out_packed, grads_packed = gradients(model, packed)
    torch.testing.assert_close(per_utterance(out_packed, packed),
                               per_utterance(out_padded, padded), rtol=1e-5, atol=1e-5)
    for name, grad in grads_padded.items():
        torch.testing.assert_close(grads_packed[name], grad, rtol=1e-5, atol=1e-5)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        alone = torch.stack([per_utterance(model(collate([s], pad_id=pad)), collate([s], pad))[0]
                             for s in listed])
        without = per_utterance(model(collate(samples, pad_id=pad)), collate(samples, pad))
    torch.testing.assert_close(alone, per_utterance(out_padded, padded).detach(), rtol=1e-5,
                               atol=1e-5)
    changed = (alone - without).abs() > 1e-4
    assert changed.tolist() == [n > 0 for n in lengths]


def test_packed_row_layout(tokenizer, samples):
    rows = [[samples[0], samples[1]], [samples[2]]]
    budget = sum(map(sequence_length, rows[0])) + 5
    packed = collate_packed(rows, pad_id=tokenizer.pad_token_id, row_tokens=budget)
    assert packed["input_ids"].shape == (2, budget)
    first = sequence_length(samples[0])
    # positions restart at the second utterance; segments 1, 2, then padding (0)
    positions = packed["position_ids"][0]
    assert positions[:first].tolist() == list(range(first))
    assert positions[first:first + 3].tolist() == [0, 1, 2]
    segments = packed["segment_ids"][0].tolist()
    second = sequence_length(samples[1])
    assert segments == [1] * first + [2] * second + [0] * (budget - first - second)
    # the scored targets are each utterance's answer, in order
    answers = [t for s in (samples[0], samples[1], samples[2]) for t in s["answer_ids"].tolist()]
    assert packed["scored_targets"].tolist() == answers
    rows_, columns = packed["scored_index"]
    assert (packed["input_ids"][rows_, columns + 1] == packed["scored_targets"]).all()
    with pytest.raises(ValueError, match="over row_tokens"):
        collate_packed(rows, pad_id=0, row_tokens=budget - 6)


def test_the_training_step_reads_nothing_back_from_the_device(tokenizer, samples):
    """Forward, loss and backward on the meta device, where tensors hold no values: any op that
    reads a value back to the host (.item(), .tolist(), .nonzero(), a boolean-mask index, a
    branch on a tensor) raises there. Then torch.compile(fullgraph=True), which fails on a graph
    break, over forward and loss."""
    from mooer.data.collate import move_batch

    padded = collate(samples[:4], pad_id=tokenizer.pad_token_id)
    packed = collate_packed([samples[:2], samples[2:4]], pad_id=tokenizer.pad_token_id)
    even = collate(synthetic_samples([3.0] * 4, [9] * 4, 12, 2, len(tokenizer)), pad_id=0)
    assert not even["needs_mask"]  # no padding: plain causal attention
    with torch.device("meta"):
        meta_model = tiny_model(tokenizer, 0, "encoder.freeze=true").train()
    meta = torch.device("meta")
    for batch in (padded, packed, even):
        out = meta_model(move_batch(batch, meta))
        out["loss"].backward()
        assert out["loss"].device == meta and out["num_tokens"] == batch["num_scored"]
    assert all(p.grad is not None for p in meta_model.parameters() if p.requires_grad)
    # the check can fail: each of these reads a value
    for sync in (lambda b: b["features"].sum().item(), lambda b: b["features"][0, 0].tolist(),
                 lambda b: b["input_ids"].nonzero(), lambda b: b["features"][b["features"] > 0]):
        with pytest.raises((RuntimeError, NotImplementedError)):
            sync(move_batch(padded, meta))

    model = trained_adapters(tokenizer)
    step = torch.compile(lambda batch: model(batch)["loss"], fullgraph=True, backend="eager")
    for batch in (padded, packed, even):
        torch._dynamo.reset()
        torch.testing.assert_close(step(batch), model(batch)["loss"])
    breaking = torch.compile(lambda batch: model(batch)["loss"] * len(batch["features"].tolist()),
                             fullgraph=True, backend="eager")
    with pytest.raises(torch._dynamo.exc.Unsupported):
        breaking(padded)


def test_adapter_matmuls_run_in_bf16_over_fp32_master_weights(tokenizer, samples):
    """What Lightning's bf16-mixed runs: autocast over a bf16 base with fp32 adapters."""
    from lightning.pytorch.plugins.precision import MixedPrecision
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.matmuls, self.upcasts = [], 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default,
                        torch.ops.aten.bmm.default):
                self.matmuls.append(tuple(a.dtype for a in args if isinstance(a, torch.Tensor)))
            if (func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.float32
                    and args[0].dtype == torch.bfloat16 and args[0].dim() == 3):
                self.upcasts += 1  # an activation cast up to fp32
            return func(*args, **kwargs)

    model = trained_adapters(tokenizer, "llm.dtype=bf16")
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)  # fp32 master weights
    batch = collate(samples[:4], pad_id=tokenizer.pad_token_id)
    precision = MixedPrecision("bf16-mixed", "cpu")
    counted = {}
    for casting in (True, False):
        lora_input_casting(model, casting)
        with Ops() as ops, precision.forward_context():
            loss = model(batch)["loss"]
        with Ops() as backward_ops:
            loss.backward()
        counted[casting] = ops.upcasts
        if not casting:
            matmuls = ops.matmuls + backward_ops.matmuls
            assert len(matmuls) > 2 * len(lora)  # the adapters' among them
            assert all(dtypes == (torch.bfloat16,) * len(dtypes) for dtypes in matmuls), matmuls
            assert all(p.grad.dtype == torch.float32 for p in lora)
    # peft's casts of each adapter's input to fp32 are what turning casting off removes
    assert counted[True] - counted[False] >= len(lora) // 2


@pytest.mark.slow
def test_compiled_regions_give_the_eager_loss_and_keep_checkpoint_keys(tokenizer, samples):
    eager = trained_adapters(tokenizer)
    compiled = trained_adapters(tokenizer)
    keys = list(compiled.state_dict())
    assert compile_regions(compiled) == 2 + 2  # tiny: 2 decoder layers, 2 encoder blocks
    assert list(compiled.state_dict()) == keys  # a checkpoint loads compiled or not
    batch = collate(samples[:4], pad_id=tokenizer.pad_token_id)
    with hidden_of_projector(eager) as hidden_eager, hidden_of_projector(compiled) as hidden_compiled:
        out_eager, grads_eager = gradients(eager, batch)
        out_compiled, grads_compiled = gradients(compiled, batch)
    torch.testing.assert_close(out_compiled["loss"], out_eager["loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden_compiled[0], hidden_eager[0], rtol=1e-4, atol=1e-5)
    # A compiled kernel rounds in another order: a hidden unit of the projector's ReLU whose input
    # is within rounding of 0 may pass a frame in one path and block it in the other. That
    # changes the unit's own row of linear1's gradient, and nothing else. So such units (found
    # by comparing the two paths' inputs to the ReLU, and only ones at the kink) are left out of
    # linear1's rows; every other value must agree.
    eager_in, compiled_in = hidden_eager[0].flatten(0, -2), hidden_compiled[0].flatten(0, -2)
    flips = (eager_in > 0) != (compiled_in > 0)  # [frames, units]
    assert int(flips.sum()) <= 2 and bool((eager_in[flips].abs() < 1e-5).all())
    flipped = flips.any(0)
    for name, grad in grads_eager.items():
        keep = ~flipped if name.startswith("projector.linear1.") else slice(None)
        torch.testing.assert_close(grads_compiled[name][keep], grad[keep], rtol=1e-4, atol=1e-5)
    eager.load_state_dict(compiled.state_dict())  # compiled -> eager
    compiled.load_state_dict(eager.state_dict())  # and back


def test_recompiles_stay_within_the_length_buckets(tokenizer, shards):
    """An epoch of mixed lengths through compiled regions (static shapes): with lengths padded
    to multiples of 32, each region compiles once a bucket; unpadded, once a length."""
    model = trained_adapters(tokenizer)
    graphs = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compile_regions(model, backend=counting, dynamic=False)

    def epoch(multiple: int) -> tuple[int, int]:
        torch._dynamo.reset()
        graphs.clear()
        dm = SpeechDataModule(ParaformerFrontend(None), tokenizer, prompt_format("asr"),
                              train_data_path=str(shards), batch_size=4, min_length=0,
                              sort_buffer=0, shuffle_buffer=0, pad_to_multiple=multiple)
        dm.match_model(model)
        widths, frames = set(), set()
        for batch in dm.train_dataloader():
            model(batch)["loss"].backward()
            rows = len(batch["keys"])
            # the buckets, from the utterances' own lengths (not the collated shapes)
            longest_prompt = max(n + len(p) for n, p in zip(
                batch["num_audio_slots"], _prompts(batch), strict=True))
            longest_answer = max(len(t) for t in _answers(batch))
            widths.add((rows, round_up(longest_prompt + longest_answer, multiple)))
            frames.add((rows, round_up(max(batch["feature_frames"]), multiple)))
        # a decoder-layer graph a width; an encoder graph a frame count for the first SANM block
        # (it changes width) and one for the others
        return len(graphs), len(widths) + 2 * len(frames)

    compiles, buckets = epoch(32)
    assert compiles <= buckets, (compiles, buckets)
    unpadded_compiles, lengths = epoch(1)
    assert unpadded_compiles > compiles and lengths > buckets  # the check can fail


def _prompts(batch) -> list[list[int]]:
    """Each row's prompt token ids (between its audio slots and its answer)."""
    rows, width = [], batch["prompt_width"]
    for row in range(len(batch["keys"])):
        slots = batch["audio_slot_mask"][row].nonzero()
        rows.append(batch["input_ids"][row, int(slots[-1]) + 1:width].tolist())
    return rows


def _answers(batch) -> list[list[int]]:
    labels = batch["labels"]
    return [labels[row][labels[row] >= 0].tolist() for row in range(len(batch["keys"]))]


@pytest.mark.slow
def test_flex_attention_masks_packed_rows_as_sdpa_does(tokenizer, samples):
    """FlexAttention's block mask (llm.attn_implementation=flex_attention) gives the dense
    mask's per-token losses on packed rows (forward only: its CPU backward does not exist;
    training with it needs CUDA)."""
    sdpa = trained_adapters(tokenizer)
    flex = trained_adapters(tokenizer, "llm.attn_implementation=flex_attention")
    assert flex.llm.config._attn_implementation == "flex_attention"
    packed = collate_packed([samples[:3], samples[3:5]], pad_id=tokenizer.pad_token_id)
    with torch.no_grad():
        expected, got = sdpa(packed)["token_loss"], flex(packed)["token_loss"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
