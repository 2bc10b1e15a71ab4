"""Mixed precision and devices as GPU users train, proven on CPU (no GPU in CI):

* fp16 = autocast + a GradScaler, on CPU too: a real fine-tune (real Trainer, tiny model, real audio) started with a
  huge loss scale overflows, the scaler skips those steps and lowers its scale, the non-finite guard does not call
  it a fault, and training goes on with finite updates;
* under ``--bf16`` the audio encoder and adaptor compute in fp32 (forward hooks) while the LLM computes in bf16, and
  the frozen-path cache gives the very features the uncached path computes under autocast;
* ``--llm_dtype`` resolution (``auto``: the checkpoint's on CUDA, fp32 on CPU), the flags it turns on, refusals
  (contradictions, DeepSpeed fp16), fp32 master weights for what trains;
* a GPU machine whose GPUs torch cannot use stops with the remedy (facts as arguments);
* the LLM's attention implementation is selectable, the audio encoder keeps SDPA.
"""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.data.collator import FunAsrNanoCollator
from funasr_nano_hf.data.featurize import DataConfig, build_dataset
from funasr_nano_hf.training.arguments import ModelArguments, OptionError, parse_args
from funasr_nano_hf.training.frozen_cache import add_audio_embeddings
from funasr_nano_hf.training.model_setup import prepare_model_for_finetuning
from funasr_nano_hf.training.precision import apply_precision, gpu_visibility_problem, resolve_llm_dtype
from funasr_nano_hf.training.trainer import FunAsrNanoTrainer


@pytest.fixture(scope="module")
def train_set(tiny_original_dir, data_dir, tmp_path_factory):
    _, processor = load_pretrained(tiny_original_dir)
    config = DataConfig(cache_dir=str(tmp_path_factory.mktemp("cache")))
    dataset, _ = build_dataset([str(data_dir / "train.jsonl")], processor, config, precompute_features=True)
    return dataset.select(range(8)), processor


def _prepared(model_dir, llm_dtype: str, **options):
    model, processor = load_pretrained(model_dir)
    args = ModelArguments(model_dir=str(model_dir), llm_dtype=llm_dtype, lora_dropout=0.0, **options)
    return prepare_model_for_finetuning(model, args), processor


class _Dtypes:
    """Forward hooks: the dtype of what the audio encoder, the adaptor and an LLM attention projection output."""

    def __init__(self, model):
        base = model.get_base_model()
        self.seen: dict[str, set[str]] = {"audio_tower": set(), "adaptor": set(), "llm": set()}
        modules = {
            "audio_tower": base.model.audio_tower.layers[-1],
            "adaptor": base.model.multi_modal_projector,
            "llm": base.model.language_model.layers[0].mlp.down_proj,
        }
        for key, module in modules.items():
            module.register_forward_hook(lambda _m, _a, out, key=key: self._record(key, out))

    def _record(self, key, output):
        tensor = output[0] if isinstance(output, tuple) else output
        self.seen[key].add(str(tensor.dtype).removeprefix("torch."))


def _train(model, processor, dataset, out, *, steps: int, **args):
    training_args = TrainingArguments(
        str(out),
        max_steps=steps,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        use_cpu=True,
        report_to=[],
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=1,
        remove_unused_columns=False,
        **args,
    )
    collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    return training_args, collator


def test_fp16_gradscaler_overflow_lowers_the_scale_and_training_goes_on(tiny_original_dir, train_set, tmp_path):
    dataset, _ = train_set
    model, processor = _prepared(tiny_original_dir, "fp16")
    dtypes = _Dtypes(model)
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if p.requires_grad)  # master weights
    args = ModelArguments(model_dir=str(tiny_original_dir), llm_dtype="fp16")
    training_args, collator = _train(model, processor, dataset, tmp_path, steps=24)
    apply_precision(args, training_args, "bf16")  # llm_dtype fp16 turns on --fp16
    assert training_args.fp16 and training_args.mixed_precision == "fp16"
    init_scale = 2.0**36  # fp16 activation gradients overflow until the scaler has halved it ~20 times
    trainer = FunAsrNanoTrainer(
        model,
        training_args,
        collator,
        dataset,
        processor=processor,
        scheduler="hf",
        grad_scaler_kwargs={"init_scale": init_scale},
    )
    scaler = trainer.accelerator.scaler
    assert isinstance(scaler, torch.amp.GradScaler) and trainer.nonfinite.grad_scaler
    trainer.train()  # --on_nonfinite stop (the default): an overflow the scaler handles is no fault
    overflows = round(torch.log2(torch.tensor(init_scale / scaler.get_scale())).item())
    assert 1 <= overflows < 24, overflows  # steps skipped by the scaler, and steps that updated
    assert trainer.nonfinite.skipped == []
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert all(torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(lora[n], after[n]) for n in lora)  # the steps after the overflows updated
    # grad_norm is the unscaled norm: finite and of the size of real gradients on the updating steps
    norms = [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry]
    finite = [n for n in norms if n == n and n != float("inf")]
    assert len(finite) >= 24 - overflows and max(finite) < 1e4, norms
    # the LLM computed in fp16, the audio encoder and adaptor in fp32
    assert dtypes.seen == {"audio_tower": {"float32"}, "adaptor": {"float32"}, "llm": {"float16"}}


def test_bf16_audio_path_is_fp32_and_cached_equals_uncached(tiny_original_dir, train_set, tmp_path):
    dataset, _ = train_set
    model, processor = _prepared(tiny_original_dir, "bf16")
    dtypes = _Dtypes(model)
    args = ModelArguments(model_dir=str(tiny_original_dir), llm_dtype="bf16")
    training_args, collator = _train(model, processor, dataset, tmp_path, steps=2)
    apply_precision(args, training_args, "bf16")
    assert training_args.bf16 and not training_args.fp16
    FunAsrNanoTrainer(model, training_args, collator, dataset, processor=processor, scheduler="hf").train()
    assert dtypes.seen == {"audio_tower": {"float32"}, "adaptor": {"float32"}, "llm": {"bfloat16"}}

    # the frozen-path cache (computed without autocast) == the uncached path under bf16 autocast, same batch
    rows = dataset.select(range(4))
    cached = add_audio_embeddings(rows, model, batch_size=4)
    base = model.get_base_model().eval()
    padded = collator([dict(r) for r in rows])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        live = base.model.get_audio_features(padded["input_features"], padded["input_features_mask"])
    assert live.adaptor_hidden_states.dtype == torch.float32
    for i, row in enumerate(cached):
        n = int(live.audio_token_lengths[i])
        assert torch.equal(torch.tensor(row["audio_embeds"]), live.adaptor_hidden_states[i, :n])


def test_llm_dtype_resolution_and_refusals(tmp_path):
    assert resolve_llm_dtype("auto", "bf16", "cuda") == "bf16"  # the checkpoint's own on CUDA
    assert resolve_llm_dtype("auto", "bf16", "cpu") == "fp32"
    assert resolve_llm_dtype("fp16", "bf16", "cpu") == "fp16"
    with pytest.raises(OptionError, match="--llm_dtype 'fp8'"):
        resolve_llm_dtype("fp8", "bf16", "cpu")

    def args(**kw):
        return TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], **kw)

    model_args = ModelArguments(model_dir="m")  # auto
    training_args = args()
    assert apply_precision(model_args, training_args, "bf16") == ("fp32", [])
    assert model_args.llm_dtype == "fp32" and not training_args.bf16 and not training_args.fp16
    with pytest.raises(OptionError, match="--llm_dtype bf16 with --fp16"):
        apply_precision(ModelArguments(model_dir="m", llm_dtype="bf16"), args(fp16=True), "bf16")
    training_args = args()
    _, notes = apply_precision(ModelArguments(model_dir="m", llm_dtype="bf16"), training_args, "fp32")
    assert training_args.bf16 and training_args.mixed_precision == "bf16" and "--bf16 on" in notes[0]


def test_deepspeed_fp16_is_refused(tiny_original_dir, tmp_path):
    from helpers import REPO

    base = ["--model_dir", str(tiny_original_dir), "--train_data", "t.jsonl", "--output_dir", str(tmp_path)]
    with pytest.raises(OptionError, match="DeepSpeed fp16 .* the audio adaptor included"):
        parse_args([*base, "--deepspeed", str(REPO / "examples" / "deepspeed" / "zero2.json"), "--fp16", "true"])


def test_trained_parameters_keep_fp32_master_weights(tiny_original_dir):
    model, _ = _prepared(tiny_original_dir, "bf16", freeze_llm=False, freeze_audio_adaptor=False)
    trained = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert any(".language_model." in n for n in trained) and set(trained.values()) == {torch.float32}
    model, _ = _prepared(tiny_original_dir, "bf16")  # LoRA on the frozen LLM: the base weights stay bf16
    base = model.get_base_model().model.language_model.layers[0].self_attn.q_proj.base_layer.weight
    assert base.dtype == torch.bfloat16 and not base.requires_grad


def test_gpus_torch_cannot_see_stop_the_run():
    facts = dict(nvidia_gpus=2, torch_sees_gpu=False, torch_version="2.11.0+cpu", torch_cuda=None)
    message = gpu_visibility_problem(**facts)
    assert "2 NVIDIA GPU(s) but torch cannot use them" in message and "CPU-only build" in message
    assert "TORCH_INDEX_URL" in message and "--use_cpu true" in message
    message = gpu_visibility_problem(**{**facts, "torch_version": "2.11.0", "torch_cuda": "13.0", "driver": "535.1"})
    assert "built for CUDA 13.0, which driver 535.1 does not support" in message
    assert gpu_visibility_problem(**facts, use_cpu=True) is None  # CPU asked for
    assert gpu_visibility_problem(**facts, cuda_visible_devices="") is None  # GPUs hidden on purpose
    assert gpu_visibility_problem(**{**facts, "nvidia_gpus": 0}) is None  # a CPU machine
    assert gpu_visibility_problem(**{**facts, "torch_sees_gpu": True, "torch_cuda": "12.6"}) is None
    seen = {**facts, "torch_sees_gpu": True, "torch_cuda": "12.6"}
    assert "Unset DS_ACCELERATOR" in gpu_visibility_problem(**seen, ds_accelerator="cpu")


def test_attn_implementation_applies_to_the_llm_only(tiny_original_dir):
    model, _ = load_pretrained(tiny_original_dir, attn_implementation="eager")
    assert model.model.language_model.config._attn_implementation == "eager"
    assert model.config.audio_config._attn_implementation == "sdpa"
    assert model.config.adaptor_config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="--attn_implementation flash_attention_2 \\(the LLM's attention\\)"):
        load_pretrained(tiny_original_dir, attn_implementation="flash_attention_2")


@pytest.mark.parametrize(
    "options",
    [{}, {"freeze_audio_encoder": False, "freeze_audio_adaptor": False, "freeze_llm": False}, {"use_lora": False}],
    ids=["lora", "lora+all-trained", "full"],
)
def test_every_trained_parameter_gets_a_gradient(tiny_original_dir, train_set, options):
    """Why ``ddp_find_unused_parameters false`` is the run default: whatever trains, one forward + backward gives
    every trainable parameter a gradient (DDP would otherwise fail at its second step)."""
    dataset, _ = train_set
    if options.get("use_lora") is False:
        options = {"use_lora": False, "freeze_llm": False}
    model, processor = _prepared(tiny_original_dir, "fp32", **options)
    collator = FunAsrNanoCollator(pad_token_id=processor.tokenizer.pad_token_id)
    model.train()
    model(**collator([dict(row) for row in dataset.select(range(2))])).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    assert sum(p.requires_grad for p in model.parameters()) > 0
