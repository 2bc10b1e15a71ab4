"""Loading the original layout builds the model on the meta device and assigns model.pt's tensors: the result
must be bit-identical to building the model whole and copying model.pt into it (the loader before)."""

from __future__ import annotations

import torch
from transformers.initialization import no_init_weights

from funasr_nano_hf import load_pretrained
from funasr_nano_hf.conversion.loading import read_model_pt
from funasr_nano_hf.conversion.meta_init import FilePages, cast_like_model
from funasr_nano_hf.conversion.original_layout import layout_from_config, original_to_hf
from funasr_nano_hf.models.modeling_funasr_nano import FunAsrNanoHfForConditionalGeneration


def _copied_loader(folder, config) -> FunAsrNanoHfForConditionalGeneration:
    """The whole-model-then-copy loader, written out."""
    ours, _ = original_to_hf(read_model_pt(folder / "model.pt"), layout_from_config(config.funasr_config))
    head = ours.pop("lm_head.weight", None)
    if head is not None:
        ours["model.language_model.embed_tokens.weight"] = head
    with no_init_weights():
        model = FunAsrNanoHfForConditionalGeneration(config)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ours.items()}, strict=False)
    model.tie_weights()
    return model.eval()


def test_meta_loading_is_bit_identical_to_copying(tiny_original_dir):
    model, _ = load_pretrained(tiny_original_dir)
    reference = _copied_loader(tiny_original_dir, model.config)
    for kind in ("named_parameters", "named_buffers"):
        ours = dict(getattr(model, kind)(remove_duplicate=False))
        theirs = dict(getattr(reference, kind)(remove_duplicate=False))
        assert ours.keys() == theirs.keys() and ours
        for name, tensor in ours.items():
            assert not tensor.is_meta, name
            assert tensor.dtype == theirs[name].dtype and tensor.device == theirs[name].device, name
            assert torch.equal(tensor, theirs[name]), name
    # the non-persistent buffers (computed, not in model.pt) are among those compared
    persistent = set(model.state_dict())
    computed = [name for name, _ in model.named_buffers() if name not in persistent]
    assert any(name.endswith("inv_freq") for name in computed), computed
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    assert model.funasr_extra_state.keys() == {"ctc_decoder.linear1.weight", "ctc.ctc_lo.weight", "ctc.ctc_lo.bias"}


def test_tensors_already_in_the_models_dtype_are_taken_not_copied(tiny_model):
    """What makes the meta path copy-free: a model.pt tensor in the right dtype becomes the parameter as it is;
    another dtype is converted (bf16 LLM weights into an fp32 model: one converted copy, tensor by tensor)."""
    model, _ = tiny_model
    name = "model.audio_tower.layers.0.mlp.fc1.weight"
    same = model.state_dict()[name].clone()
    assert cast_like_model(model, {name: same})[name] is same
    other = same.to(torch.bfloat16)
    converted = cast_like_model(model, {name: other})[name]
    assert converted.dtype == torch.float32 and torch.equal(converted, other.float())


def _rss_file_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssFile:")) / 1024


def test_pages_of_converted_tensors_leave_the_process(tmp_path):
    """A bf16 tensor read from the mapped file and converted stays resident (counted in RSS) while the file is
    mapped -- as it is for as long as any tensor taken as is lives; FilePages drops it, and a tensor the model
    keeps (mapped, same dtype) keeps its pages and its values."""
    path = tmp_path / "model.pt"
    torch.save({"converted": torch.randn(4096, 4096).to(torch.bfloat16), "kept": torch.randn(1024, 1024)}, path)
    state = torch.load(path, mmap=True, weights_only=True)
    keep = torch.nn.Linear(1024, 1024, bias=False)
    keep.weight = torch.nn.Parameter(state["kept"], requires_grad=False)
    converted = state["converted"].float()  # touches the 32 MB of bf16 pages
    before = _rss_file_mb()
    released = FilePages(path).release_unused(state.values(), keep)
    after = _rss_file_mb()
    assert released > 30 * 2**20
    assert before - after > 25, (before, after)
    assert torch.equal(state["converted"].float(), converted)  # re-read from the file if touched again
    assert FilePages(tmp_path / "other.pt").release_unused(state.values(), keep) == 0  # not mapped: nothing
    assert torch.equal(keep.weight, torch.load(path, weights_only=True)["kept"])
