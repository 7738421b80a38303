"""The FLOP count of a training step (mooer.models.flops) against torch's own FlopCounterMode:
on the tiny model on the CPU, and at MooER's full mt5k shapes on the meta device."""

from __future__ import annotations

import pytest
import torch

from mooer.data.collate import collate, collate_packed, move_batch
from mooer.data.synthetic import synthetic_samples
from mooer.models.build import build_speech_llm
from mooer.models.flops import StepFlops, flop_counter
from tests.conftest import StubTokenizer
from tests.models.test_fast_paths import trained_adapters
from tests.test_config import _compose


def counted(model, batch) -> int:
    """FLOPs torch counts for one forward and backward."""
    with flop_counter() as counter:
        model(batch)["loss"].backward()
    return counter.get_total_flops()


def test_the_formula_counts_what_runs_on_the_tiny_model(tokenizer, samples):
    model = trained_adapters(tokenizer)
    flops = StepFlops.of(model)
    padded = collate(samples[:6], pad_id=tokenizer.pad_token_id)
    assert flops.executed(padded) == pytest.approx(counted(model, padded), rel=0.03)
    # the real work: less than what the padded kernels run
    assert flops.real(padded) < flops.executed(padded)
    packed = collate_packed([samples[:3], samples[3:6]], pad_id=tokenizer.pad_token_id)
    assert flops.executed(packed) == pytest.approx(counted(model, packed), rel=0.03)
    assert flops.real(packed) == pytest.approx(flops.real(padded))  # the same utterances


def test_the_formula_at_mt5k_shapes_on_the_meta_device():
    """MooER's recipe at full size, 8 utterances of 10 s with 28 prompt and 30 answer tokens:
    about 3.97 TFLOP a sample, what FlopCounterMode counts within 3 %."""
    cfg, _ = _compose("train", ["experiment=mt5k", "encoder.model.checkpoint=null",
                                "encoder.frontend.cmvn_path=null", "llm.path=null"])
    vocab = cfg.llm.architecture.vocab_size
    with torch.device("meta"):
        model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, StubTokenizer(vocab))
    model.train()
    samples = synthetic_samples([10.0] * 8, [30] * 8, 28, cfg.projector.downsample, vocab)
    batch = move_batch(collate(samples, pad_id=0), torch.device("meta"), torch.bfloat16)
    assert batch["input_ids"].shape == (8, 83 + 28 + 30)
    flops = StepFlops.of(model)
    assert flops.real(batch) == flops.executed(batch)  # no padding
    assert flops.real(batch) / 8 == pytest.approx(3.97e12, rel=0.01)
    assert flops.executed(batch) == pytest.approx(counted(model, batch), rel=0.03)
