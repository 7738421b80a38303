"""Every option of every config group composes and instantiates (tiny shapes, or the meta device
for the 7B ones), a misspelt key anywhere is an error naming it, recipes hold their numbers,
sweeps expand."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from mooer.config import CONF_DIR as CONF
from mooer.config import compose_config
from tests.conftest import REPO

TRAIN_GROUPS = ["encoder", "projector", "llm", "module", "task", "data", "strategy", "trainer",
                "logger", "callbacks", "paths", "experiment"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(config_name: str, overrides: list[str]):
    return compose_config(config_name, overrides, output_dir="/tmp/mooer-test-run")


@pytest.mark.parametrize(("group", "option"),
                         [(g, o) for g in TRAIN_GROUPS for o in _options(g)])
def test_every_train_option_composes(group, option):
    cfg, choices = _compose("train", [f"{group}={option}"])
    assert choices[group] == option
    # sizes have one owner, the built models: no copies of them in the groups
    assert "encoder_dim" not in cfg.projector and "llm_dim" not in cfg.projector
    assert "output_dim" not in cfg.encoder and "hidden_size" not in cfg.llm
    assert "length_convs" not in cfg.encoder and "encoder_convs" not in cfg.data


def test_every_group_has_options():
    for group in TRAIN_GROUPS + ["testsets"]:
        assert _options(group), f"conf/{group} has no options"
    assert {"paraformer", "whisper", "w2v_bert2", "hubert"} <= set(_options("encoder"))
    assert {"zero2", "zero3", "ddp"} <= set(_options("strategy"))
    assert {"default", "cpu", "cuda", "musa"} <= set(_options("trainer"))
    assert {"asr", "ast", "asr_ast"} <= set(_options("task"))


@pytest.mark.parametrize("option", _options("testsets"))
def test_every_testset_composes(option):
    cfg, _ = _compose("evaluate", [f"testsets=[{option}]"])
    assert list(cfg.testsets) == [option]
    assert cfg.testsets[option].metric in {"cer", "wer", "mer", "bleu"}


def test_evaluate_two_testsets():
    cfg, _ = _compose("evaluate", ["testsets=[aishell,test-clean]"])
    assert cfg.testsets.aishell.metric == "cer"
    assert cfg.testsets["test-clean"].metric == "wer"
    assert cfg.decoding.num_beams == 4 and cfg.decoding.length_penalty == 0.8


def test_mt5k_recipe_values():
    cfg, choices = _compose("train", ["experiment=mt5k"])
    assert choices["encoder"] == "paraformer" and choices["llm"] == "qwen2_7b"
    assert choices["strategy"] == "auto"  # measured: ZeRO-2 on one rank costs 30-50 %
    assert cfg.projector.downsample == 2 and cfg.projector.hidden_dim == 2048
    assert cfg.llm.architecture.hidden_size == 3584
    lora = cfg.llm.lora
    assert (lora.r, lora.alpha, lora.dropout) == (64, 16, 0.05)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                        "up_proj", "down_proj"}
    optimizer, scheduler = cfg.module.optimizer, cfg.module.scheduler
    assert optimizer._target_ == "torch.optim.Adam" and optimizer.lr == 1e-4
    assert (scheduler.name, scheduler.warmup_steps, scheduler.total_steps) == (
        "warmup_decay", 1000, 1_000_000)
    # MooER's 16 samples an optimizer step (8 x 2), as one micro-batch (measured faster)
    assert cfg.data.batch_size == 16 and cfg.trainer.accumulate_grad_batches == 1
    assert cfg.trainer.precision == "bf16-mixed" and cfg.module.optimizer.fused is True
    mooer, _ = _compose("train", ["experiment=mt5k", "strategy=zero2"])  # MooER's, on request
    assert mooer.strategy.stage == 2
    assert cfg.save_interval == 20000 and cfg.trainer.max_epochs == 10
    assert (cfg.data.min_length, cfg.data.max_length) == (20, 2000)


def test_paraformer_large_shape():
    cfg, _ = _compose("train", ["encoder=paraformer"])
    model = cfg.encoder.model
    assert (model.input_size, model.output_size, model.attention_heads, model.linear_units,
            model.num_blocks, model.kernel_size, model.sanm_shift) == (560, 512, 4, 2048, 50, 11, 0)


def test_ddp_finds_unused_parameters_only_when_encoder_trains():
    frozen, _ = _compose("train", ["strategy=ddp"])
    training, _ = _compose("train", ["strategy=ddp", "encoder.freeze=false"])
    assert frozen.strategy.find_unused_parameters is False
    assert training.strategy.find_unused_parameters is True


def _run(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli_prints_composed_configs():
    train_cfg = OmegaConf.create(_run("train.py", "--cfg", "job", "encoder=paraformer",
                                      "llm=qwen2_7b"))
    assert train_cfg.encoder.model.num_blocks == 50 and train_cfg.llm.name == "qwen2_7b"
    eval_cfg = OmegaConf.create(_run("evaluate.py", "--cfg", "job", "testsets=[aishell,test-clean]"))
    assert set(eval_cfg.testsets) == {"aishell", "test-clean"}


def test_multirun_sweep_composes_each_job(tmp_path):
    _run("train.py", "-m", "dry_run=true", "llm=qwen2_7b,qwen2_1_5b", "strategy=zero2,zero3",
         f"paths.log_dir={tmp_path}")
    jobs = sorted(tmp_path.glob("train/multiruns/*/*/.hydra/config.yaml"))
    assert len(jobs) == 4
    combos = set()
    for path in jobs:
        cfg = OmegaConf.load(path)
        combos.add((cfg.llm.name, cfg.strategy.name))
        assert cfg.dry_run is True
    assert combos == {(llm, s) for llm in ("qwen2_7b", "qwen2_1_5b") for s in ("zero2", "zero3")}


# config.json of the released models (Hugging Face Qwen/Qwen2-7B-Instruct, Qwen2-1.5B-Instruct)
QWEN2_CONFIG_JSON = {
    "qwen2_7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                 "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
                 "max_position_embeddings": 32768, "rope_theta": 1000000.0,
                 "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
    "qwen2_1_5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                   "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
                   "max_position_embeddings": 32768, "rope_theta": 1000000.0,
                   "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
}


@pytest.mark.parametrize("name", sorted(QWEN2_CONFIG_JSON))
def test_llm_configs_have_the_released_models_shape(name):
    cfg, _ = compose_config("train", [f"llm={name}"])
    assert dict(cfg.llm.architecture) == {"model_type": "qwen2", **QWEN2_CONFIG_JSON[name]}
