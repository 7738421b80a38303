"""The LightningModule alone: NaN/inf steps skipped and counted, too many stop the run;
checkpoints keep trainable weights only; the optimizer sees trainable parameters only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from mooer.config import compose_config
from mooer.data.loader import ReadyBatches
from mooer.models.build import build_speech_llm
from mooer.training.module import NonFiniteLossError, SpeechLLMModule


def build_module(tokenizer, *overrides: str) -> SpeechLLMModule:
    """conf/module as train.py instantiates it, over a tiny model."""
    cfg, _ = compose_config("train", ["encoder=paraformer_tiny", "llm=tiny", "encoder.freeze=true",
                                      "module.optimizer._target_=torch.optim.AdamW",
                                      "module.optimizer.lr=1e-3", "module.scheduler.name=constant",
                                      "module.log_interval=0",
                                      "module.max_consecutive_nonfinite=3", *overrides])
    model = build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, tokenizer)
    return instantiate(cfg.module, model=model, _convert_="all")


@pytest.fixture()
def module(tokenizer):
    return build_module(tokenizer)


@pytest.fixture(scope="module")
def batches(shards, tokenizer) -> list[dict]:
    """Four corpus batches of 4 utterances."""
    from mooer.data.datamodule import SpeechDataModule
    from mooer.data.features import ParaformerFrontend
    from tests.conftest import prompt_format

    dm = SpeechDataModule(ParaformerFrontend(None), tokenizer, prompt_format("asr"),
                          val_data_path=str(shards), val_batch_size=4, min_length=0,
                          sort_buffer=0)
    return list(dm.val_dataloader())[:4]


def poisoned(batch: dict) -> dict:
    """The batch with NaN features: its loss is NaN."""
    return {**batch, "features": torch.full_like(batch["features"], float("nan"))}


def fit(module, batches: list[dict]) -> list[dict[str, torch.Tensor]]:
    """Lightning fit on the CPU, one optimizer step a batch; the trainable weights after each."""
    import lightning.pytorch as pl

    after = []

    class Snapshots(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            after.append({n: p.detach().clone() for n, p in pl_module.model.named_parameters()
                          if p.requires_grad})

    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, log_every_n_steps=1,
                         callbacks=[Snapshots()])
    trainer.fit(module, train_dataloaders=ReadyBatches(batches))
    return after


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize("fused", [True, False], ids=["on the device", "on the host"])
def test_nonfinite_loss_is_skipped_counted_and_bounded(tokenizer, batches, fused):
    """A NaN batch leaves every trainable weight as it was, is counted, and too many in a row
    stop the run. A fused optimizer skips on the device (found_inf: nothing read back); others
    read the loss back and skip on the host."""
    module = build_module(tokenizer, f"module.optimizer.fused={str(fused).lower()}")
    weights = fit(module, [batches[0], poisoned(batches[1]), batches[2], batches[3]])
    assert module._device_skip is fused
    assert same(weights[1], weights[0])  # the NaN step changed nothing
    assert not same(weights[2], weights[1]) and not same(weights[3], weights[2])
    assert all(torch.isfinite(w).all() for w in weights[3].values())
    assert module.nonfinite_steps == 1 and module.consecutive_nonfinite == 0
    module = build_module(tokenizer, f"module.optimizer.fused={str(fused).lower()}")
    with pytest.raises(NonFiniteLossError, match="3 consecutive batches"):
        fit(module, [batches[0]] + [poisoned(b) for b in batches[1:]])


def test_step_metrics_are_logged_only_on_the_steps_that_are_read(module, monkeypatch):
    """Loggers write every log_every_n_steps optimizer steps and MooER's line comes every
    log_interval: those steps (counted from 1) log; the others skip Lightning's cost."""
    logged = []
    monkeypatch.setattr(module, "log", lambda name, *a, **k: logged.append((step, name)))
    out = {"loss": torch.tensor(1.5), "accuracy": torch.tensor(0.5), "num_tokens": torch.tensor(3),
           "ctc_loss": torch.tensor(2.0)}
    monkeypatch.setattr(module.model, "forward", lambda batch: out)
    module.log_interval = 6
    for step in range(12):
        module._trainer = SimpleNamespace(strategy=SimpleNamespace(), global_step=step,
                                          log_every_n_steps=4, fast_dev_run=False)
        module.training_step({"keys": ["a"], "audio_seconds": 1.0}, step)
    assert sorted({s + 1 for s, _ in logged}) == [4, 6, 8, 12]
    assert [n for s, n in logged if s == 3] == ["train/loss", "train/acc", "train/ctc_loss"]
    assert int(module._window["tokens"]) == 36 and module._window["samples"] == 12


def test_batch_transfer_moves_tensors_and_keeps_the_rest(module):
    batch = {"keys": ["a", "b"], "features": torch.ones(2, 3), "audio_seconds": 2.5,
             "labels": torch.zeros(2, 4, dtype=torch.long)}
    moved = module.transfer_batch_to_device(batch, torch.device("meta"), 0)
    assert moved["features"].device.type == "meta" and moved["labels"].dtype == torch.long
    assert moved["keys"] == ["a", "b"] and moved["audio_seconds"] == 2.5
    nested = module.transfer_batch_to_device([torch.ones(1)], torch.device("meta"), 0)
    assert nested[0].device.type == "meta"


def test_checkpoint_keeps_only_trainable_weights(module):
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    trainable = {f"model.{n}" for n, p in module.model.named_parameters() if p.requires_grad}
    assert set(checkpoint["state_dict"]) == trainable
    assert not any(k.startswith("model.encoder.") for k in checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)  # complete: no error
    del checkpoint["state_dict"][sorted(trainable)[0]]
    with pytest.raises(KeyError, match="lacks trainable weights"):
        module.on_load_checkpoint(checkpoint)


def test_optimizer_gets_trainable_parameters_only(module):
    config = module.configure_optimizers()
    optimized = {id(p) for group in config["optimizer"].param_groups for p in group["params"]}
    trainable = {id(p) for p in module.model.parameters() if p.requires_grad}
    assert optimized == trainable and len(trainable) < len(list(module.model.parameters()))
    assert config["lr_scheduler"]["interval"] == "step"
    # built as conf/module says: the class, its arguments, and the schedule over it
    optimizer = config["optimizer"]
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.defaults["lr"] == 1e-3 and tuple(optimizer.defaults["betas"]) == (0.9, 0.999)
    assert optimizer.defaults["weight_decay"] == 0.0
    scheduler = config["lr_scheduler"]["scheduler"]
    assert [scheduler.lr_lambdas[0](step) for step in (0, 10**6)] == [1.0, 1.0]  # constant


def test_a_typo_in_the_optimizer_config_is_named(tokenizer):
    module = build_module(tokenizer, "+module.optimizer.l_r=1e-3")
    with pytest.raises(TypeError, match="l_r"):
        module.configure_optimizers()
