"""SpeechLLM on tiny random-init models: encoders, projector, splicing, loss, decoding, export."""

from __future__ import annotations

import json

import pytest
import torch

from mooer.checkpoints import export_mooer, load_adapter_project, load_lora, load_mooer
from mooer.data.collate import conv_output_frames
from mooer.data.datamodule import SpeechDataModule
from mooer.data.features import (
    HFFeatureExtractorFrontend,
    ParaformerFrontend,
    WaveformFrontend,
    WhisperFrontend,
)
from mooer.data.prompts import IGNORE_INDEX
from mooer.models.build import build_speech_llm
from mooer.models.encoders.hf import HubertEncoder, W2vBert2Encoder, WhisperEncoder
from mooer.models.encoders.paraformer import ParaformerEncoder
from mooer.models.projector import ConvProjector, LinearProjector
from mooer.models.weights import CheckpointError
from tests.conftest import StubTokenizer, prompt_format
from tests.test_config import _compose


def tiny_model(tokenizer, seed: int = 0, *overrides: str):
    cfg, _ = _compose("train", ["encoder=paraformer_tiny", "llm=tiny", *overrides])
    torch.manual_seed(seed)
    return build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, tokenizer)


@pytest.fixture(scope="module")
def batch(shards, tokenizer):
    dm = SpeechDataModule(ParaformerFrontend(None), tokenizer, prompt_format("asr"),
                          val_data_path=str(shards), val_batch_size=4, min_length=0, sort_buffer=0)
    return next(iter(dm.val_dataloader()))


HF_ENCODERS = {
    "whisper": (WhisperEncoder, WhisperFrontend(80), {
        "d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
        "num_mel_bins": 80, "max_source_positions": 1500, "decoder_layers": 1}),
    "hubert": (HubertEncoder, WaveformFrontend(), {
        "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2}),
}


@pytest.mark.parametrize("name", list(HF_ENCODERS) + ["w2v_bert2", "paraformer"])
def test_every_encoder_builds_tiny_runs_forward_and_backward(name, corpus):
    import soundfile as sf

    from mooer.data.text import read_table

    wave = torch.from_numpy(sf.read(read_table(corpus / "wav.scp")[0][1], dtype="float32")[0])
    if name == "paraformer":
        encoder, frontend = ParaformerEncoder(output_size=32, linear_units=48, num_blocks=2), \
            ParaformerFrontend(None)
    elif name == "w2v_bert2":
        from transformers import SeamlessM4TFeatureExtractor

        frontend = HFFeatureExtractorFrontend(extractor=SeamlessM4TFeatureExtractor())
        encoder = W2vBert2Encoder(config=W2V_BERT2)
    else:
        cls, frontend, config = HF_ENCODERS[name]
        encoder = cls(config=config)
    features = frontend(wave, 16000)
    padded = torch.cat([features, torch.zeros(7, features.shape[1])])[None].repeat(2, 1, 1)
    lengths = torch.tensor([len(padded[0]), len(features)])
    states, out_lengths = encoder(padded, lengths)
    expected = [conv_output_frames(int(n), encoder.length_convs) for n in lengths]
    assert out_lengths.tolist() == expected  # the data side's slot arithmetic holds
    assert states.shape[:2] == (2, max(expected)) and states.shape[2] == encoder.output_size
    states.square().mean().backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


W2V_BERT2 = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64, "feature_projection_input_dim": 160,
             "conv_depthwise_kernel_size": 3, "output_hidden_size": 32}


@pytest.mark.parametrize("name", ["hubert", "w2v_bert2"])
@pytest.mark.parametrize("source", ["config", "saved model"])
def test_hf_encoders_train_every_layer_every_step(name, source, tmp_path):
    """The released HuBERT and w2v-BERT 2.0 configs set LayerDrop 0.1: a layer skipped at
    random gets no gradient on that step, which DDP and DeepSpeed take for an error. Built from
    a config asking LayerDrop 0.5 or loaded from a model saved with it, every layer trains on
    every one of 10 steps (with 4 layers at 0.5, a skip would come on ~all of them)."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2BertConfig, Wav2Vec2BertModel

    if name == "hubert":
        cls, hf_model, hf_config, config = HubertEncoder, HubertModel, HubertConfig, \
            HF_ENCODERS["hubert"][2]
        features = torch.randn(2, 16000, 1)  # 1 s: longer than SpecAugment's mask
    else:
        cls, hf_model, hf_config, config = W2vBert2Encoder, Wav2Vec2BertModel, \
            Wav2Vec2BertConfig, W2V_BERT2
        features = torch.randn(2, 12, 160)
    config = {**config, "num_hidden_layers": 4, "layerdrop": 0.5}
    if source == "config":
        encoder = cls(config=config)
    else:
        hf_model(hf_config(**config)).save_pretrained(tmp_path / name)
        assert json.loads((tmp_path / name / "config.json").read_text())["layerdrop"] == 0.5
        encoder = cls(path=tmp_path / name)
    encoder.train()
    torch.manual_seed(0)
    for _ in range(10):
        encoder.zero_grad(set_to_none=True)
        states, _ = encoder(features, torch.tensor([features.shape[1]] * 2))
        states.square().mean().backward()
        for i, layer in enumerate(encoder.blocks):
            missing = [n for n, p in layer.named_parameters() if p.grad is None]
            assert not missing, f"layer {i} was skipped: {missing[:3]}"


def test_hf_encoders_need_a_source(tmp_path):
    with pytest.raises(ValueError, match="give `path`"):
        WhisperEncoder()
    with pytest.raises(FileNotFoundError, match="nothing is fetched"):
        HubertEncoder(path=tmp_path / "absent")


@pytest.mark.parametrize("cls", [LinearProjector, ConvProjector])
@pytest.mark.parametrize("time", [1, 2, 7, 10, 11])
def test_projector_shapes_for_odd_lengths(cls, time):
    projector = cls(encoder_dim=8, llm_dim=12, downsample=2, hidden_dim=16)
    out = projector(torch.randn(3, time, 8))
    assert out.shape == (3, time // 2, 12)
    assert projector.output_lengths(torch.tensor([time])).item() == time // 2


def test_linear_projector_concatenates_consecutive_frames():
    projector = LinearProjector(encoder_dim=2, llm_dim=2, downsample=3, hidden_dim=6)
    assert set(projector.state_dict()) == {"linear1.weight", "linear1.bias", "linear2.weight",
                                           "linear2.bias"}
    with torch.no_grad():
        projector.linear1.weight.copy_(torch.eye(6))
        projector.linear1.bias.zero_()
    states = torch.arange(14, dtype=torch.float).reshape(1, 7, 2)  # frame 6 is dropped
    hidden = projector.relu(projector.linear1(states[:, :6].reshape(1, 2, 6)))
    assert hidden[0, 1].tolist() == [6, 7, 8, 9, 10, 11]


def test_only_projector_and_lora_train_by_default(tokenizer, batch):
    model = tiny_model(tokenizer, 0, "encoder.freeze=true")
    trainable = model.trainable_parameter_names()
    assert trainable and all(n.startswith("projector.") or "lora_" in n for n in trainable)
    assert any(n.startswith("projector.") for n in trainable) and any("lora_" in n for n in trainable)
    model.train()
    model(batch)["loss"].backward()
    for name, parameter in model.named_parameters():
        if name in trainable:
            assert parameter.grad is not None, name
        else:
            assert parameter.grad is None, name
    assert not model.encoder.training  # a frozen encoder stays in eval mode


def test_audio_is_spliced_at_the_slots(tokenizer, batch):
    model = tiny_model(tokenizer).eval()
    embedded = model.embed(batch)
    tokens = model.llm.get_input_embeddings()(batch["input_ids"])
    slots = batch["audio_slot_mask"]
    torch.testing.assert_close(embedded[~slots], tokens[~slots])
    audio, _ = model.encode_audio(batch["features"], batch["feature_lengths"])
    row = 1
    n = int(batch["num_audio_slots"][row])
    torch.testing.assert_close(embedded[row][slots[row]], audio[row, :n])


def test_loss_counts_only_answer_tokens(tokenizer, batch):
    model = tiny_model(tokenizer).eval()
    out = model(batch)
    logits = model.llm(inputs_embeds=model.embed(batch), attention_mask=batch["attention_mask"],
                       position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)).logits
    targets = batch["labels"][:, 1:]
    labelled = targets != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][labelled], targets[labelled])
    torch.testing.assert_close(out["loss"], manual, rtol=1e-5, atol=1e-5)
    hf_loss = model.llm(inputs_embeds=model.embed(batch), attention_mask=batch["attention_mask"],
                        position_ids=(batch["attention_mask"].cumsum(-1) - 1).clamp_min(0),
                        labels=batch["labels"]).loss  # transformers' own loss over all logits
    torch.testing.assert_close(out["loss"], hf_loss, rtol=1e-5, atol=1e-5)
    assert out["num_tokens"] == sum(len(t) for t in batch["labels"][batch["labels"] != -100]
                                    .split(1)) == labelled.sum()
    expected_accuracy = (logits[:, :-1].argmax(-1)[labelled] == targets[labelled]).float().mean()
    torch.testing.assert_close(out["accuracy"], expected_accuracy)


def samples_of(batch, rows) -> list[dict]:
    """The tokenized utterances of a padded batch's `rows`, as the pipeline gives them to the
    collate (read back from the batch's rows, trimmed of padding)."""
    samples = []
    for row in rows:
        mask = batch["attention_mask"][row].bool()
        slots = batch["audio_slot_mask"][row]
        start = int(mask.nonzero()[0])
        width = batch["prompt_width"]
        answer = batch["labels"][row][batch["labels"][row] != IGNORE_INDEX]
        samples.append({
            "key": batch["keys"][row], "target": batch["targets"][row], "task": "asr",
            "num_audio_slots": int(slots.sum()),
            "prompt_ids": batch["input_ids"][row, start + int(slots.sum()):width],
            "answer_ids": answer,
            "features": batch["features"][row, :batch["feature_lengths"][row]],
            "wav": torch.zeros(1), "sample_rate": 16000})
    return samples


def _rows(batch, rows):
    """The sub-batch of `rows`, trimmed of padding columns, as the collate would build it."""
    from mooer.data.collate import collate

    return collate(samples_of(batch, rows), pad_id=0)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_decoding_equals_one_by_one(tokenizer, batch, num_beams):
    model = tiny_model(tokenizer, 3).eval()
    together = model.generate(batch, num_beams=num_beams, max_new_tokens=8)
    for row in range(len(batch["keys"])):
        alone = model.generate(_rows(batch, [row]), num_beams=num_beams, max_new_tokens=8)
        assert alone.texts[0] == together.texts[row]
        assert alone.token_ids[0] == together.token_ids[row]
    assert len(set(together.texts)) > 1  # rows differ: audio reaches the decoder


def test_the_beams_other_hypotheses_come_with_the_same_answers(tokenizer, batch):
    """`others`: each row's answer as without it, and the token ids of its other finished
    beams (what transformers returns as its next best sequences), best first."""
    model = tiny_model(tokenizer, 3).eval()
    plain = model.generate(batch, num_beams=3, max_new_tokens=8)
    with_others = model.generate(batch, num_beams=3, max_new_tokens=8, others=True)
    assert with_others.texts == plain.texts and with_others.token_ids == plain.token_ids
    assert plain.others is None and with_others.others is not None
    every = model.generate(batch, num_beams=3, max_new_tokens=8, num_return_sequences=3)
    rows = len(batch["keys"])
    assert len(every.texts) == 3 * rows
    assert with_others.others == [every.token_ids[3 * row + 1:3 * row + 3]
                                  for row in range(rows)]
    assert any(ids != plain.token_ids[row] for row in range(rows)
               for ids in with_others.others[row])  # other hypotheses, not copies
    # greedy search holds no other hypotheses
    assert model.generate(batch, num_beams=1, max_new_tokens=4, others=True).others is None


def _sequence_logprob(model, batch, row, ids):
    single = _rows(batch, [row])
    prompt = model.embed({**single, "input_ids": single["input_ids"],
                          "audio_slot_mask": single["audio_slot_mask"]})
    tail = model.llm.get_input_embeddings()(torch.tensor([ids]))
    logits = model.llm(inputs_embeds=torch.cat([prompt, tail], 1)).logits[0]
    start = prompt.shape[1] - 1
    logprobs = logits[start:start + len(ids)].log_softmax(-1)
    return logprobs[torch.arange(len(ids)), torch.tensor(ids)].sum().item()


def test_beam_search_scores_at_least_greedy(tokenizer, batch):
    model = tiny_model(tokenizer, 5).eval()
    for row in range(2):
        single = _rows(batch, [row])
        eos = tokenizer.eos_token_id
        greedy = model.generate(single, num_beams=1, max_new_tokens=6, eos_bias=0)
        beam = model.generate(single, num_beams=4, max_new_tokens=6, eos_bias=0,
                              length_penalty=0.0)
        # with length_penalty 0 beam search maximizes the summed log-probability
        scores = [_sequence_logprob(model, batch, row, ids + ([eos] if len(ids) < 6 else []))
                  for ids in (beam.token_ids[0], greedy.token_ids[0])]
        assert scores[0] >= scores[1] - 1e-4


def test_seeded_sampling_is_reproducible_and_differs_from_greedy(tokenizer, batch):
    """do_sample draws from the distribution: the same seed gives the same answers, another
    seed or greedy decoding other ones (if do_sample were ignored, all would be greedy's)."""
    model = tiny_model(tokenizer, 5).eval()

    def sample(seed: int) -> list[list[int]]:
        torch.manual_seed(seed)
        return model.generate(batch, num_beams=1, do_sample=True, temperature=1.5,
                              max_new_tokens=8, eos_bias=0).token_ids

    greedy = model.generate(batch, num_beams=1, max_new_tokens=8, eos_bias=0).token_ids
    first = sample(0)
    assert sample(0) == first
    assert first != greedy
    assert sample(1) != first


def _greedy_with_penalty(model, embeds: torch.Tensor, penalty: float, steps: int,
                         eos: int, eos_bias: float) -> list[int]:
    """Greedy decoding of one unpadded prompt written out step by step (no cache, no
    transformers generate): the penalty divides a generated token's positive logit and
    multiplies a negative one; the eos logit gets eos_bias."""
    table = model.llm.get_input_embeddings()
    ids: list[int] = []
    for _ in range(steps):
        inputs = torch.cat([embeds, table(torch.tensor(ids, dtype=torch.long))]) if ids else embeds
        logits = model.llm(inputs_embeds=inputs[None]).logits[0, -1].float()
        for token in set(ids):
            logits[token] = logits[token] / penalty if logits[token] > 0 else logits[token] * penalty
        logits[eos] += eos_bias
        token = int(logits.argmax())
        if token == eos:
            break
        ids.append(token)
    return ids


def test_repetition_penalty_counts_every_generated_token_on_padded_rows(tokenizer, batch):
    """With a penalty, each row of a padded batch decodes as the penalty defines on its own
    prompt: transformers' processor, given embeddings, skipped a left-padded row's first
    generated tokens. A penalty in the model's generation_config does not leak in."""
    model = tiny_model(tokenizer, 5).eval()
    width = batch["prompt_width"]
    mask = batch["attention_mask"][:, :width]
    assert len(set(mask.sum(1).tolist())) > 1  # rows of different lengths: some are padded
    penalty, steps = 5.0, 10
    got = model.generate(batch, num_beams=1, repetition_penalty=penalty, max_new_tokens=steps,
                         eos_bias=-0.2).token_ids
    with torch.no_grad():
        embeds = model.embed({**batch, "input_ids": batch["input_ids"][:, :width],
                              "audio_slot_mask": batch["audio_slot_mask"][:, :width]})
        for row, ids in enumerate(got):
            want = _greedy_with_penalty(model, embeds[row][mask[row].bool()], penalty, steps,
                                        tokenizer.eos_token_id, -0.2)
            assert ids == want, f"row {row}"
    plain = model.generate(batch, num_beams=1, max_new_tokens=steps).token_ids
    assert plain != got  # the penalty changed something
    model.llm.generation_config.repetition_penalty = 5.0
    assert model.generate(batch, num_beams=1, max_new_tokens=steps).token_ids == plain


def test_export_import_round_trip_gives_identical_logits(tokenizer, batch, tmp_path):
    trained = tiny_model(tokenizer, 0).eval()
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if "lora_B" in name or name.startswith("projector."):
                parameter.add_(torch.randn_like(parameter) * 0.1)
    out = export_mooer(trained, tmp_path / "release")
    assert (out / "adapter_project.pt").is_file()
    assert json.loads((out / "lora_weights" / "adapter_config.json").read_text())["r"] == 8
    keys = torch.load(out / "adapter_project.pt", weights_only=True)
    assert {"encoder_projector.linear1.weight", "encoder_projector.linear2.bias"} <= set(keys)
    fresh = tiny_model(tokenizer, 0).eval()  # same base weights, untrained adapters
    before = fresh(batch)["loss"]
    load_mooer(fresh, out / "adapter_project.pt", out / "lora_weights")
    expected = trained.llm(inputs_embeds=trained.embed(batch)).logits
    actual = fresh.llm(inputs_embeds=fresh.embed(batch)).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    assert before != fresh(batch)["loss"]
    # merging LoRA keeps the outputs
    load_mooer(fresh, merge=True)
    torch.testing.assert_close(fresh.llm(inputs_embeds=fresh.embed(batch)).logits, expected,
                               rtol=1e-4, atol=1e-4)


def test_bad_release_files_give_clear_errors(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    foreign = tmp_path / "foreign.pt"
    torch.save({"model.layer.weight": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a MooER adapter_project.pt"):
        load_adapter_project(model, foreign)
    wrong = tmp_path / "wrong.pt"
    torch.save({"encoder_projector.linear1.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_adapter_project(model, wrong)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_adapter_project(model, corrupt)
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        load_lora(model, tmp_path)
    other = tiny_model(tokenizer, 0, "llm.lora.r=4")
    export_mooer(other, tmp_path / "r4")
    with pytest.raises(CheckpointError, match="r=4"):
        load_lora(model, tmp_path / "r4" / "lora_weights")


def test_half_precision_keeps_layernorms_in_fp32(tokenizer, batch):
    encoder = ParaformerEncoder(output_size=32, linear_units=48, num_blocks=2).eval()
    reference, _ = encoder(batch["features"], batch["feature_lengths"])
    half, _ = encoder.to(torch.bfloat16)(batch["features"].bfloat16(), batch["feature_lengths"])
    assert half.dtype == torch.bfloat16
    valid = torch.arange(half.shape[1])[None] < batch["feature_lengths"][:, None]
    assert (half.float() - reference)[valid].abs().max() < 0.25  # bf16 rounding, 2 blocks
    norm = encoder.after_norm
    x = torch.randn(4, 32, dtype=torch.bfloat16) * 100
    expected = torch.nn.functional.layer_norm(x.float(), (32,), norm.weight.float(),
                                              norm.bias.float(), norm.eps).bfloat16()
    assert norm(x).dtype == torch.bfloat16 and torch.equal(norm(x), expected)


def test_ctc_auxiliary_loss(tokenizer, shards):
    dm = SpeechDataModule(ParaformerFrontend(None), tokenizer, prompt_format("asr"),
                          val_data_path=str(shards), val_batch_size=4, min_length=0, sort_buffer=0,
                          transcripts=True)
    batch = next(iter(dm.val_dataloader()))
    lengths = batch["transcript_lengths"]
    for row in range(len(batch["keys"])):
        ids = batch["transcript_ids"][row, :lengths[row]]
        assert tokenizer.decode(ids) == batch["targets"][row]  # ASR task: the transcript
    model = tiny_model(tokenizer, 0, "encoder.ctc_weight=0.5").train()
    out = model(batch)
    assert out["ctc_loss"] > 0
    torch.testing.assert_close(out["loss"], out["llm_loss"] + 0.5 * out["ctc_loss"])
    out["loss"].backward()
    assert model.ctc_head.weight.grad is not None and model.ctc_head.weight.grad.abs().sum() > 0
    assert "ctc_head.weight" not in export_keys(model)


def export_keys(model) -> set[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        export_mooer(model, tmp)
        return set(torch.load(f"{tmp}/adapter_project.pt", weights_only=True))


def test_trained_encoder_round_trips_in_mooers_key_layout(tokenizer, batch, tmp_path):
    """MooER's MooerModel names encoder weights `encoder.model.<SANM key>` in adapter_project.pt:
    we write them so (MooER's non-strict load would drop `encoder.<key>`) and read them back."""
    trained = tiny_model(tokenizer, 0, "encoder.freeze=false").eval()
    with torch.no_grad():
        for parameter in trained.encoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    out = export_mooer(trained, tmp_path / "release")
    state = torch.load(out / "adapter_project.pt", weights_only=True)
    encoder_keys = {k for k in state if not k.startswith("encoder_projector.")}
    assert encoder_keys == {f"encoder.model.{k}" for k in trained.encoder.state_dict()}
    fresh = tiny_model(tokenizer, 1, "encoder.freeze=false").eval()  # other random weights
    load_adapter_project(fresh, out / "adapter_project.pt")
    for key, value in trained.encoder.state_dict().items():
        torch.testing.assert_close(fresh.encoder.state_dict()[key], value, rtol=0, atol=0)
    features, lengths = batch["features"], batch["feature_lengths"]
    torch.testing.assert_close(fresh.encoder(features, lengths)[0],
                               trained.encoder(features, lengths)[0], rtol=0, atol=0)
    old = tmp_path / "old_layout.pt"  # what mooer wrote before: named, not silently dropped
    torch.save({(k.replace("encoder.model.", "encoder.", 1) if k in encoder_keys else k): v
                for k, v in state.items()}, old)
    with pytest.raises(CheckpointError, match="MooER names them `encoder.model.<key>`"):
        load_adapter_project(fresh, old)


@pytest.mark.parametrize(("llm", "llm_base", "lora", "projector"), [
    ("qwen2_7b", 7_615_616_512, 161_480_704, 9_442_816),
    ("qwen2_1_5b", 1_543_714_304, 73_859_072, 5_246_464),
])
def test_mt5k_full_shapes_on_the_meta_device(llm, llm_base, lora, projector):
    """experiment=mt5k at full size without memory: Paraformer-large, the projector and a Qwen2
    of the real model's config.json shape (1.5B ties its embeddings), LoRA r=64 on all seven
    projections."""
    cfg, _ = _compose("train", ["experiment=mt5k", f"llm={llm}", "encoder.model.checkpoint=null",
                                "encoder.frontend.cmvn_path=null", "llm.path=null"])
    tokenizer = StubTokenizer(1000)  # no tokenizer files needed
    with torch.device("meta"):
        model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, tokenizer)

    def count(named, trainable=None):
        return sum(p.numel() for n, p in named if trainable is None or p.requires_grad == trainable)

    assert count(model.encoder.named_parameters()) == 157_975_648
    assert count(model.encoder.named_parameters(), True) == 0  # frozen, as MooER trains it
    assert count(model.projector.named_parameters(), True) == projector
    llm_params = list(model.llm.named_parameters())
    assert count([(n, p) for n, p in llm_params if "lora_" not in n]) == llm_base
    assert count([(n, p) for n, p in llm_params if "lora_" in n], True) == lora
    assert count(llm_params, True) == lora  # the base is frozen


def test_a_part_that_breaks_its_contract_is_named_at_build():
    from mooer.models.protocols import Projector, SpeechEncoder, check_contract

    check_contract("encoder.model", ParaformerEncoder(output_size=8, linear_units=8,
                                                      num_blocks=1), SpeechEncoder)
    check_contract("projector", LinearProjector(8, 8), Projector)
    with pytest.raises(TypeError, match="encoder.model Linear does not keep the SpeechEncoder "
                                        "contract .* it lacks blocks, length_convs, output_size"):
        check_contract("encoder.model", torch.nn.Linear(2, 2), SpeechEncoder)
    with pytest.raises(TypeError, match="lacks downsample, output_lengths"):
        check_contract("projector", torch.nn.Linear(2, 2), Projector)
