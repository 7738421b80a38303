"""A CTC head trained alone on a frozen model (conf/experiment/ctc_head.yaml) and added to any
model for word times; the decoder's own token posteriors of an answer."""

from __future__ import annotations

import pytest
import torch

from mooer.checkpoints import load_ctc_head
from mooer.data.datamodule import SpeechDataModule
from mooer.data.features import ParaformerFrontend
from mooer.models.weights import CheckpointError
from tests.conftest import prompt_format
from tests.models.test_speech_llm import _rows, tiny_model


@pytest.fixture(scope="module")
def ctc_batch(shards, tokenizer):
    dm = SpeechDataModule(ParaformerFrontend(None), tokenizer, prompt_format("asr"),
                          val_data_path=str(shards), val_batch_size=4, min_length=0, sort_buffer=0,
                          transcripts=True)
    return next(iter(dm.val_dataloader()))


def test_a_head_trained_alone_runs_the_encoder_and_ctc_only(tokenizer, ctc_batch):
    """Only the fresh head trains; the step never runs the LLM; its loss is the transcript's
    CTC on the encoder states (computed here from the encoder and head apart)."""
    model = tiny_model(tokenizer, 0)
    assert not model.has_ctc_head
    model.train_ctc_head_only()
    model.train()
    assert model.trainable_parameter_names() == ["ctc_head.weight", "ctc_head.bias"]
    assert model.ctc_head.out_features == len(tokenizer) + 1

    def refuse(*args, **kwargs):
        raise AssertionError("the LLM ran")

    model.llm.forward = refuse
    model.llm.get_decoder().forward = refuse
    out = model(ctc_batch)
    with torch.no_grad():
        states, lengths = model.encoder(ctc_batch["features"], ctc_batch["feature_lengths"])
    log_probs = torch.log_softmax(states @ model.ctc_head.weight.T + model.ctc_head.bias, -1)
    expected = torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1), ctc_batch["transcript_ids"], lengths,
        ctc_batch["transcript_lengths"], blank=len(tokenizer), zero_infinity=True)
    torch.testing.assert_close(out["loss"], expected)
    assert out["num_tokens"] == int(ctc_batch["transcript_lengths"].sum())
    assert float(out["accuracy"]) == 0.0  # a random head spells no transcript
    out["loss"].backward()
    assert model.ctc_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("ctc_"))


def test_best_path_merges_repeats_and_drops_blanks(tokenizer):
    model = tiny_model(tokenizer, 0, "encoder.ctc_weight=0.3")
    blank = 5
    frames = [[1, 1, 5, 1, 2, 5, 5, 3, 3], [4, 5, 4, 4, 2, 2, 2, 2, 2]]
    scores = torch.nn.functional.one_hot(torch.tensor(frames), blank + 1).float()
    assert model.best_path(scores, torch.tensor([9, 4])) == [[1, 1, 2, 3], [4, 4]]


def test_a_head_saved_apart_is_added_to_any_model(tokenizer, ctc_batch, tmp_path):
    """The head of a run (its checkpoint's `model.ctc_head.*`) or a bare state dict is added;
    the model's CTC posteriors are then that head's; a wrong shape or a file without a head
    is refused, naming the file."""
    trained = tiny_model(tokenizer, 1)
    trained.train_ctc_head_only()
    weight, bias = trained.ctc_head.weight.detach().clone(), trained.ctc_head.bias.detach().clone()
    run_ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"model.ctc_head.weight": weight, "model.ctc_head.bias": bias},
                "global_step": 7}, run_ckpt)
    model = tiny_model(tokenizer, 1).eval()
    load_ctc_head(model, run_ckpt)
    assert model.has_ctc_head
    log_probs, lengths = model.ctc_log_probs(ctc_batch)
    states, _ = model.encoder(ctc_batch["features"], ctc_batch["feature_lengths"])
    torch.testing.assert_close(log_probs, torch.log_softmax(states @ weight.T + bias, -1))
    bare = tmp_path / "head.pt"
    torch.save({"ctc_head.weight": weight * 2, "ctc_head.bias": bias}, bare)
    load_ctc_head(model, bare)
    torch.testing.assert_close(model.ctc_head.weight, weight * 2)

    torch.save({"ctc_head.weight": weight[:, :10], "ctc_head.bias": bias}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt holds .* trained on another encoder"):
        load_ctc_head(model, tmp_path / "bad.pt")
    torch.save({"state_dict": {"model.projector.x": bias}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match=r"other\.ckpt holds no CTC head"):
        load_ctc_head(model, tmp_path / "other.ckpt")


def test_answer_log_probs_are_the_decoders_own_on_padded_rows(tokenizer, ctc_batch):
    """Teacher-forced posteriors of answers of different lengths on left-padded rows equal
    each row's alone, computed token by token on its unpadded prompt."""
    model = tiny_model(tokenizer, 4).eval()
    answers = [[11, 12, 13], [20], [30, 31, 32, 33, 34], [40, 41]]
    batch = ctc_batch
    found = model.answer_log_probs(batch, answers)
    assert [len(row) for row in found] == [3, 1, 5, 2]
    widths = {int(batch["attention_mask"][row, :batch["prompt_width"]].sum()) for row in range(4)}
    assert len(widths) > 1  # rows are padded differently
    for row, ids in enumerate(answers):
        single = _rows(batch, [row])
        prompt = model.embed(single)[:, :single["prompt_width"]]
        for step, token in enumerate(ids):
            tail = model.llm.get_input_embeddings()(torch.tensor([ids[:step]], dtype=torch.long))
            logits = model.llm(inputs_embeds=torch.cat([prompt, tail], 1)).logits[0, -1]
            assert found[row][step] == pytest.approx(float(logits.log_softmax(-1)[token]),
                                                     abs=1e-4)


def test_answer_log_probs_of_several_answers_a_row(tokenizer, ctc_batch):
    """`rows` scores answers against the rows named: the same posteriors as each answer scored
    in its own row (a beam's candidates of one utterance in one pass)."""
    model = tiny_model(tokenizer, 4).eval()
    answers = [[11, 12, 13], [20], [30, 31], [40, 41, 42, 43]]
    alone = model.answer_log_probs(ctc_batch, answers)
    found = model.answer_log_probs(ctc_batch, [answers[2], answers[0], answers[2], answers[3]],
                                   rows=[2, 0, 2, 3])
    for got, want in zip(found, [alone[2], alone[0], alone[2], alone[3]], strict=True):
        assert got == pytest.approx(want, abs=1e-5)
    other = model.answer_log_probs(ctc_batch, [answers[2]], rows=[1])[0]
    assert other != pytest.approx(alone[2], abs=1e-3)  # another utterance's audio
    single = model.answer_log_probs(ctc_batch, [[20], [20]], rows=[1, 3])
    assert single[0] == pytest.approx(alone[1], abs=1e-5)  # answers of one token
    assert single[1] == pytest.approx(
        model.answer_log_probs(ctc_batch, [[5], [5], [5], [20]])[3], abs=1e-5)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_answers_scored_on_the_decodings_prompt_cache(tokenizer, ctc_batch, num_beams):
    """The prompts' keys and values a decoding kept (`keep_prompt`) score answers as the whole
    pass does: the same posteriors, on left-padded rows, with several answers a row, and the
    same answers as a decoding without it; the pass then runs over the answers and the
    prompts' last position only."""
    model = tiny_model(tokenizer, 4).eval()
    plain = model.generate(ctc_batch, num_beams=num_beams, max_new_tokens=5)
    kept = model.generate(ctc_batch, num_beams=num_beams, max_new_tokens=5, keep_prompt=True)
    assert kept.token_ids == plain.token_ids and plain.prompt_cache is None
    cache = kept.prompt_cache
    assert cache is not None
    width = ctc_batch["prompt_width"]
    layers = model.llm.config.num_hidden_layers
    assert len(cache.layers) == layers
    assert all(keys.shape[0] == 4 and keys.shape[2] == width - 1 and values.shape == keys.shape
               for keys, values in cache.layers)
    answers = [[11, 12, 13], [20], [30, 31, 32, 33, 34], [40, 41]]
    rows = [2, 0, 2, 3, 1]
    chosen = [answers[0], answers[1], answers[2], answers[3], answers[2]]
    lengths = []
    forward = model.llm.forward

    def counting(*args, **kwargs):
        lengths.append(kwargs["inputs_embeds"].shape[1])
        return forward(*args, **kwargs)

    model.llm.forward = counting
    found = model.answer_log_probs(ctc_batch, chosen, rows=rows, prompt_cache=cache)
    del model.llm.forward
    assert lengths == [1 + 5]  # the prompts' last position and the longest answer
    for (row, ids), got in zip(zip(rows, chosen, strict=True), found, strict=True):
        single = _rows(ctc_batch, [row])
        prompt = model.embed(single)[:, :single["prompt_width"]]
        for step, token in enumerate(ids):
            tail = model.llm.get_input_embeddings()(torch.tensor([ids[:step]], dtype=torch.long))
            logits = model.llm(inputs_embeds=torch.cat([prompt, tail], 1)).logits[0, -1]
            assert got[step] == pytest.approx(float(logits.log_softmax(-1)[token]), abs=1e-4)


def test_a_prompt_cache_is_kept_only_from_a_dynamic_cache_of_the_expected_shape():
    """One row a prompt (the first of its beams), its first width - 1 positions, copied; a
    cache of another shape or kind is not kept (the prompts are then scored again)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicSlidingWindowLayer

    from mooer.models.speech_llm import PromptCache

    keys = torch.arange(6 * 2 * 5 * 3, dtype=torch.float32).reshape(6, 2, 5, 3)
    cache = DynamicCache(ddp_cache_data=[(keys, -keys), (keys + 1, keys - 1)])
    kept = PromptCache.kept(cache, rows=3, width=4, step=2)
    assert kept is not None and len(kept.layers) == 2
    torch.testing.assert_close(kept.layers[0][0], keys[[0, 2, 4], :, :3])
    torch.testing.assert_close(kept.layers[1][1], (keys - 1)[[0, 2, 4], :, :3])
    cache.layers[0].keys[0] += 100  # a copy: the generation's cache can go
    assert float(kept.layers[0][0][0, 0, 0, 0]) == 0.0
    assert PromptCache.kept(cache, rows=4, width=4, step=2) is None  # 6 rows, not 8
    assert PromptCache.kept(cache, rows=3, width=7, step=2) is None  # 5 positions, not 6
    assert PromptCache.kept(None, rows=3, width=4, step=2) is None
    sliding = DynamicCache(ddp_cache_data=[(keys, keys)])
    sliding.layers[0] = DynamicSlidingWindowLayer(sliding_window=8)
    sliding.layers[0].update(keys, keys)
    assert PromptCache.kept(sliding, rows=3, width=4, step=2) is None
