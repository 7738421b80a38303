"""Paraformer SANM encoder: the released key list and size, FunASR parity, masking, loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mooer.models.encoders.paraformer import ParaformerEncoder
from mooer.models.weights import CheckpointError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "paraformer_reference.safetensors"


def test_paraformer_large_has_the_released_keys_and_size():
    state = ParaformerEncoder().state_dict()
    assert len(state) == 652
    assert sum(v.numel() for v in state.values()) == 157_975_648
    block = ["self_attn.linear_q_k_v.weight", "self_attn.linear_q_k_v.bias",
             "self_attn.linear_out.weight", "self_attn.linear_out.bias",
             "self_attn.fsmn_block.weight", "feed_forward.w_1.weight", "feed_forward.w_1.bias",
             "feed_forward.w_2.weight", "feed_forward.w_2.bias", "norm1.weight", "norm1.bias",
             "norm2.weight", "norm2.bias"]
    expected = [f"encoders0.0.{k}" for k in block]
    expected += [f"encoders.{i}.{k}" for i in range(49) for k in block]
    expected += ["after_norm.weight", "after_norm.bias"]
    assert sorted(state) == sorted(expected)
    assert state["encoders0.0.self_attn.linear_q_k_v.weight"].shape == (1536, 560)
    assert state["encoders.48.self_attn.fsmn_block.weight"].shape == (512, 1, 11)


def _reference():
    with safe_open(str(FIXTURE), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iter)
        config = {k: int(v) for k, v in f.metadata().items()}
    weights = {k[len("weight."):]: v for k, v in tensors.items() if k.startswith("weight.")}
    return config, weights, tensors


def test_matches_funasr_sanm_encoder_on_stored_reference(tmp_path):
    """Outputs FunASR's SANMEncoder gave on random weights and features, stored by
    tests/fixtures/make_paraformer_reference.py (run it where funasr is installed to renew)."""
    config, weights, tensors = _reference()
    path = tmp_path / "encoder.pth"
    torch.save(weights, path)
    encoder = ParaformerEncoder(**config, checkpoint=path).eval()
    with torch.no_grad():
        output, lengths = encoder(tensors["features"], tensors["lengths"])
    valid = torch.arange(output.shape[1])[None, :] < tensors["lengths"][:, None]
    torch.testing.assert_close(output[valid], tensors["output"][valid], atol=1e-4, rtol=1e-4)
    assert lengths.tolist() == tensors["output_lengths"].tolist()


def test_padding_does_not_change_outputs():
    encoder = ParaformerEncoder(output_size=32, linear_units=48, num_blocks=3).eval()
    features = torch.randn(2, 40, 560)
    with torch.no_grad():
        batched, _ = encoder(features, torch.tensor([40, 25]))
        alone, _ = encoder(features[1:, :25], torch.tensor([25]))
    torch.testing.assert_close(batched[1, :25], alone[0], atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = ParaformerEncoder(output_size=32, linear_units=48, num_blocks=3, dropout_rate=0.0,
                              attention_dropout_rate=0.0)
    checkpointed = ParaformerEncoder(output_size=32, linear_units=48, num_blocks=3,
                                     dropout_rate=0.0, attention_dropout_rate=0.0,
                                     gradient_checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    features, lengths = torch.randn(2, 20, 560), torch.tensor([20, 12])
    for model in (plain, checkpointed):
        model(features, lengths)[0].square().mean().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(),
                                 strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_mismatched_or_corrupt_checkpoint_says_what_is_wrong(tmp_path):
    small = ParaformerEncoder(output_size=32, linear_units=48, num_blocks=2)
    path = tmp_path / "small.pth"
    torch.save(small.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"unexpected keys: encoders\.0\..*\(13 in all\)"):
        ParaformerEncoder(output_size=32, linear_units=48, num_blocks=1, checkpoint=path)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        ParaformerEncoder(output_size=32, linear_units=64, num_blocks=2, checkpoint=path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        ParaformerEncoder(output_size=32, linear_units=48, num_blocks=2, checkpoint=garbage)
    with pytest.raises(CheckpointError, match="not found"):
        ParaformerEncoder(checkpoint=tmp_path / "missing.pth")
