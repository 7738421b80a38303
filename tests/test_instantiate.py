"""Every option of every config group is instantiated, not only composed (as
lightning-hydra-template's test_configs.py): the 7B shapes on the meta device, encoders that need
model files at tiny random-init shapes. A misspelt key in any group is an error naming it."""

from __future__ import annotations

import re

import pytest
import torch
import yaml
from hydra.utils import instantiate
from lightning.pytorch.strategies import DeepSpeedStrategy

from mooer.config import CONF_DIR, compose_config
from mooer.data.prompts import PromptFormat
from mooer.models.build import build_speech_llm
from mooer.training.module import SpeechLLMModule
from mooer.training.run import build_strategy
from tests.conftest import StubTokenizer

# random-init shapes for the encoders that otherwise load a local model directory
TINY_HF = {
    "whisper": {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2,
                "encoder_ffn_dim": 64, "num_mel_bins": 128, "max_source_positions": 1500,
                "decoder_layers": 1},
    "hubert": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
               "intermediate_size": 64, "conv_dim": [16] * 7, "num_conv_pos_embeddings": 16,
               "num_conv_pos_embedding_groups": 2},
    "w2v_bert2": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "intermediate_size": 64, "feature_projection_input_dim": 160,
                  "conv_depthwise_kernel_size": 3, "output_hidden_size": 32},
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _compose(*overrides: str):
    """The train config, with no file to read: no encoder checkpoint, CMVN or LLM directory
    (random init), HF encoders at tiny shapes."""
    cfg = compose_config("train", list(overrides), output_dir="/tmp/mooer-test-run")[0]
    if "checkpoint" in cfg.encoder.model:
        cfg.encoder.model.checkpoint = None
    if "cmvn_path" in cfg.encoder.frontend:
        cfg.encoder.frontend.cmvn_path = None
    if cfg.encoder.name in TINY_HF:
        cfg.encoder.model.path = None
        cfg.encoder.model.config = TINY_HF[cfg.encoder.name]
    cfg.llm.path = None
    return cfg


def _model(cfg):
    """The configured SpeechLLM on the meta device (no memory for the 7B shapes)."""
    with torch.device("meta"):
        return build_speech_llm(cfg.encoder, cfg.projector, cfg.llm,
                                StubTokenizer(cfg.llm.architecture.vocab_size))


@pytest.mark.parametrize(("group", "option"),
                         [(g, o) for g in ("encoder", "projector", "llm") for o in _options(g)])
def test_every_model_option_builds_with_sizes_read_from_the_models(group, option):
    overrides = ["encoder=paraformer_tiny", "llm=tiny", f"{group}={option}"]
    cfg = _compose(*overrides)
    model = _model(cfg)
    projector = model.projector
    width = model.encoder.output_size * (projector.downsample if option != "conv" else 1)
    assert projector.linear1.in_features == width
    assert projector.linear2.out_features == model.llm.config.hidden_size
    assert model.llm.config.hidden_size == cfg.llm.architecture.hidden_size
    assert isinstance(model.encoder.length_convs, list)
    if cfg.encoder.name in ("whisper", "hubert"):  # time-shortening convs, read from the model
        assert model.encoder.length_convs
    if cfg.encoder.name not in TINY_HF or cfg.encoder.name == "whisper":
        frontend = instantiate(cfg.encoder.frontend)  # needs no model directory
        assert callable(frontend)


@pytest.mark.parametrize("option", _options("experiment"))
def test_every_recipe_instantiates_its_model_module_prompt_and_strategy(option):
    cfg = _compose(f"experiment={option}")
    model = _model(cfg)
    module = instantiate(cfg.module, model=model, _convert_="all")
    assert isinstance(module, SpeechLLMModule)
    prompt = instantiate(cfg.task)
    assert isinstance(prompt, PromptFormat) and prompt.name == cfg.task.name
    strategy = build_strategy(cfg, "cpu")
    assert strategy == "auto" or isinstance(strategy, DeepSpeedStrategy) == (
        cfg.strategy.name.startswith("zero"))


def test_module_builds_its_optimizer_and_schedule():
    cfg = _compose("encoder=paraformer_tiny", "llm=tiny")
    module = instantiate(cfg.module, model=_model(cfg), _convert_="all")
    optimizers = module.configure_optimizers()
    assert type(optimizers["optimizer"]) is torch.optim.Adam
    assert optimizers["optimizer"].defaults["lr"] == 1e-4
    schedule = optimizers["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert schedule(0) == 0.0 and schedule(500) < 1.0 and schedule(1000) == 1.0  # log warmup
    assert schedule(1_000_000) == 0.0  # linear decay to the end
    assert (module.log_interval, module.val_decode_batches, module.val_max_new_tokens,
            module.max_consecutive_nonfinite) == (100, 2, 64, 20)


@pytest.mark.parametrize("option", _options("task"))
def test_every_prompt_format_instantiates(option):
    prompt = instantiate(_compose(f"task={option}").task)
    assert prompt.name == option and prompt.task in ("asr", "ast", "instruction")
    for task in prompt.instructions:
        assert prompt.text(task).count(prompt.instructions[task]) == 1


@pytest.mark.parametrize("option", _options("data"))
def test_every_data_option_instantiates(option, tokenizer, shards):
    cfg = _compose(f"data={option}", "encoder=paraformer_tiny", f"data.val_data_path={shards}")
    datamodule = instantiate(cfg.data, frontend=instantiate(cfg.encoder.frontend),
                             tokenizer=tokenizer, prompt=instantiate(cfg.task), _convert_="all")
    assert len(next(iter(datamodule.val_dataloader()))["keys"]) == cfg.data.val_batch_size


@pytest.mark.parametrize("option", _options("strategy"))
def test_every_strategy_instantiates(option):
    cfg = _compose(f"strategy={option}")
    strategy = build_strategy(cfg, "cpu")
    if option == "auto":
        assert strategy == "auto"
    elif option.startswith("zero"):
        zero = strategy.config["zero_optimization"]
        assert zero["stage"] == cfg.strategy.stage
        assert ("offload_param" in zero) == bool(cfg.strategy.get("offload_parameters"))
    else:
        assert type(strategy).__name__ == "DDPStrategy"


def _yaml(group: str, option: str) -> dict:
    """A config group option read straight from its file (its `defaults` merged in first), so
    what a test expects does not come from the composition it checks."""
    node = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text()) or {}
    merged: dict = {}
    for parent in node.pop("defaults", []):
        if parent != "_self_":
            merged.update(_yaml(group, parent))
    return {**merged, **node}


@pytest.mark.parametrize("option", _options("trainer"))
def test_every_trainer_option_instantiates_with_its_settings(option, tmp_path):
    """Each trainer option builds a Trainer with the settings its file names. Without a GPU
    here, cuda and musa are built on the CPU: their accelerator names are checked against
    Lightning's registry (musa registers when torch_musa imports) and the rest on the CPU."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    want = _yaml("trainer", option)
    cfg = _compose(f"trainer={option}")
    if want["accelerator"] not in ("cpu", "auto"):
        # "gpu" is Lightning's alias for cuda (or mps)
        assert want["accelerator"] in {*AcceleratorRegistry, "gpu", "musa"}
        cfg.trainer.accelerator, cfg.trainer.devices = "cpu", 1
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert type(trainer.accelerator).__name__ == "CPUAccelerator"
    if want["accelerator"] == "cpu":
        assert trainer.num_devices == want["devices"]
    assert trainer.precision == want["precision"]
    assert trainer.default_root_dir == "/tmp/mooer-test-run"
    for name in ("num_nodes", "max_epochs", "max_steps", "accumulate_grad_batches",
                 "gradient_clip_val", "check_val_every_n_epoch", "limit_val_batches",
                 "log_every_n_steps"):
        assert getattr(trainer, name) == want[name], name
    assert trainer.val_check_interval == (want["val_check_interval"] or 1.0)


@pytest.mark.parametrize("group", ["logger", "callbacks"])
def test_every_logger_and_callback_option_instantiates_what_its_file_names(group):
    """Each option builds the classes its file names, with their settings (save_dir, name,
    logging_interval); `none` builds nothing."""
    for option in _options(group):
        want = _yaml(group, option)
        if option == "many":  # its defaults name the others
            want = {**_yaml(group, "csv"), **_yaml(group, "tensorboard")}
        cfg = _compose(f"{group}={option}")
        built = {key: instantiate(node) for key, node in (cfg.get(group) or {}).items()}
        assert set(built) == set(want), option
        for key, node in want.items():
            obj = built[key]
            assert f"{type(obj).__module__}.{type(obj).__name__}".startswith(
                node["_target_"].rsplit(".", 1)[0]), (option, key)
            assert type(obj).__name__ == node["_target_"].rsplit(".", 1)[1], (option, key)
            for field, value in node.items():
                if field == "_target_":
                    continue
                if value == "${paths.output_dir}":
                    value = "/tmp/mooer-test-run"
                assert getattr(obj, field) == value, (option, key, field)


@pytest.mark.parametrize(("override", "message"), [
    ("+encoder.freez=true",
     "encoder: unknown key(s) freez; the encoder group has ctc_weight, freeze, frontend, model, "
     "name"),
    ("+llm.dtyp=fp32", "build_llm() got an unexpected keyword argument 'dtyp'"),
    ("+projector.hiden_dim=8",
     "LinearProjector.__init__() got an unexpected keyword argument 'hiden_dim'"),
    ("+task.instruction=x",
     "PromptFormat.__init__() got an unexpected keyword argument 'instruction'"),
    ("+module.log_intervall=1",
     "SpeechLLMModule.__init__() got an unexpected keyword argument 'log_intervall'"),
    ("+data.batchsize=2",
     "data: unknown key(s) batchsize; the data group has allow_pipe, batch_size, "),
    ("+strategy.stage3_max_live_paramters=1",
     "strategy: DeepSpeed's zero_optimization does not take stage3_max_live_paramters "
     "(Extra inputs are not permitted)"),
])
def test_a_misspelt_key_is_an_error_naming_it(override, message, tokenizer):
    group = override[1:].split(".")[0]
    strategy = ["strategy=zero3"] if group == "strategy" else []
    cfg = _compose("encoder=paraformer_tiny", "llm=tiny", *strategy, override)
    with pytest.raises(Exception, match=re.escape(message)):
        if group in ("encoder", "llm", "projector"):
            _model(cfg)
        elif group == "task":
            instantiate(cfg.task)
        elif group == "module":
            instantiate(cfg.module, model=_model(cfg), _convert_="all")
        elif group == "data":
            instantiate(cfg.data, frontend=None, tokenizer=tokenizer,
                        prompt=instantiate(cfg.task), _convert_="all")
        else:
            build_strategy(cfg, "cpu")


def test_a_tokenizer_larger_than_the_embedding_is_refused():
    cfg = _compose("encoder=paraformer_tiny", "llm=tiny")
    with torch.device("meta"), pytest.raises(
            ValueError, match="the tokenizer has 2000 tokens but the LLM's embedding has 1024 rows"):
        build_speech_llm(cfg.encoder, cfg.projector, cfg.llm, StubTokenizer(2000))


def test_run_dir_gives_the_prompt_format_the_run_trained_with(tmp_path):
    from omegaconf import OmegaConf

    from mooer.inference.loading import apply_run_dir

    trained = compose_config("train", ["task=asr_ast", "task.template='<{}>'"],
                             output_dir=str(tmp_path))[0]
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(trained, tmp_path / ".hydra" / "config.yaml")  # as train.py records it
    cfg = compose_config("evaluate", [f"run_dir={tmp_path}"])[0]  # evaluate's default: task=asr
    prompt = instantiate(apply_run_dir(cfg).task)
    assert prompt.name == "asr_ast" and prompt.text("ast") == "<Translate speech to english text. >"
