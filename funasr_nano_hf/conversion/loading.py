"""Loading: `load_pretrained`, one entry point for the ORIGINAL FunASR folder and for our HF folders.

The original folder is `config.yaml` + `model.pt` (`{"state_dict": ...}`) + `Qwen3-0.6B/` (LLM config and
tokenizer; its weights live in model.pt) + optional `configuration.json`; `load_original` reads it
(original -> HF, names mapped by `original_layout`), and `export.export_funasr` writes one back (HF -> original).
An HF folder is what `save_hf_folder` (or `funasr-nano-hf convert`) writes; `load_hf` reads it. A model id on a
hub (``FunAudioLLM/Fun-ASR-Nano-2512``, in either layout) is downloaded first by `resolve_model_dir`: from the
Hugging Face Hub with huggingface_hub (its cache, ``HF_HUB_CACHE``; offline, ``HF_HUB_OFFLINE=1``, the cache
only), or from ModelScope with the modelscope package (what FunASR's own download uses). Every failure names the
file and, for weights, the key and shapes; a failed download says what to download where.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import re
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoTokenizer
from transformers.initialization import no_init_weights

from ..errors import CheckpointError
from ..models.configuration_funasr_nano import FunAsrNanoHfConfig
from ..models.feature_extraction_funasr_nano import FunAsrNanoHfFeatureExtractor
from ..models.modeling_funasr_nano import FunAsrNanoHfForConditionalGeneration
from ..models.processing_funasr_nano import FunAsrNanoHfProcessor
from .meta_init import FilePages, cast_like_model, parameters_on_meta, require_materialized
from .original_layout import feature_extractor_kwargs, hf_config_from_original, layout_from_config, original_to_hf

logger = logging.getLogger(__name__)

# The placeholder token FunASR's prompt puts where the audio goes (one per audio frame the LLM sees).
AUDIO_TOKEN = "<|object_ref_start|>"


HUBS = ("hf", "ms")
# A model id as both hubs spell it: "Org/Name" (letters, digits, "-", "_", "."), which no existing path matched.
_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def resolve_model_dir(
    model: str | Path, *, hub: str = "hf", revision: str | None = None, cache_dir: str | Path | None = None
) -> Path:
    """The local folder of `model`: a folder as it is; a hub model id (``Org/Name``) downloaded into the hub's
    cache, or found there, and its snapshot folder returned.

    ``hub="hf"``: `huggingface_hub.snapshot_download` (cache ``cache_dir`` or ``HF_HUB_CACHE``; with
    ``HF_HUB_OFFLINE=1`` only the cache is looked at). ``hub="ms"``: ModelScope's ``snapshot_download`` from the
    modelscope package, as FunASR downloads (revision "master" unless given); modelscope is optional and is
    imported only here. A failure raises `CheckpointError` saying what to download where.
    """
    if hub not in HUBS:
        raise CheckpointError(
            f"hub {hub!r}: not a known hub; use one of {list(HUBS)} (hf: Hugging Face, ms: ModelScope)"
        )
    path = Path(model)
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: not a directory (expected a FunASR model folder or an HF folder)")
    name = str(model)
    if not _MODEL_ID.match(name):
        raise CheckpointError(
            f"{path}: no such folder (expected a FunASR model folder, an HF folder, or a hub model id such as "
            "FunAudioLLM/Fun-ASR-Nano-2512)"
        )
    if hub == "ms":
        return _download_from_modelscope(name, revision, cache_dir)
    return _download_from_hf(name, revision, cache_dir)


def _download_from_hf(repo_id: str, revision: str | None, cache_dir: str | Path | None) -> Path:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    at = f" at revision {revision}" if revision else ""
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    where = (
        f"Download it where there is network with `{fetch}` into that cache (HF_HUB_CACHE={cache}; or copy its "
        f"{cache.name}/models--{repo_id.replace('/', '--')} folder here), or download it to a folder "
        f"(`{fetch} --local-dir DIR`) and pass that folder"
    )
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir)
    except (RepositoryNotFoundError, GatedRepoError) as err:
        raise CheckpointError(
            f"{repo_id}: no such local folder, and the Hugging Face Hub gives no model repository of that name"
            f"{at} ({type(err).__name__}; private or gated repositories need `hf auth login`). A ModelScope id "
            "needs hub='ms' (--hub ms)"
        ) from err
    except RevisionNotFoundError as err:
        raise CheckpointError(f"{repo_id}: the Hugging Face Hub has no revision {revision!r} of it") from err
    except LocalEntryNotFoundError as err:
        if constants.HF_HUB_OFFLINE:
            reason = "HF_HUB_OFFLINE=1 forbids downloading it"
        else:
            reason = f"the Hub could not be reached ({err.__cause__ or err})"
        raise CheckpointError(
            f"{repo_id}: no such local folder, not in the Hugging Face cache {cache}{at}, and {reason}. {where}"
        ) from err
    except (HfHubHTTPError, OSError) as err:
        raise CheckpointError(f"{repo_id}: downloading from the Hugging Face Hub failed ({err}). {where}") from err
    logger.info("%s: using %s", repo_id, folder)
    return Path(folder)


def _download_from_modelscope(model_id: str, revision: str | None, cache_dir: str | Path | None) -> Path:
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError as err:
        raise CheckpointError(
            f"{model_id}: hub='ms' downloads from ModelScope with the modelscope package, which is not installed "
            "(pip install modelscope; FunASR downloads with it too), or use hub='hf' for the same id on the "
            "Hugging Face Hub"
        ) from err
    try:
        folder = snapshot_download(model_id, revision=revision or "master", cache_dir=cache_dir)
    except Exception as err:  # modelscope raises its own error types (and requests' / OS errors) for each failure
        raise CheckpointError(
            f"{model_id}: downloading from ModelScope failed ({type(err).__name__}: {err}). Download it where "
            f"there is network (`modelscope download --model {model_id} --local_dir DIR`) and pass that folder"
        ) from err
    logger.info("%s: using %s", model_id, folder)
    return Path(folder)


def detect_layout(path: str | Path) -> str:
    """ "original" (FunASR: config.yaml + model.pt) or "hf" (config.json of our model type)."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a directory (expected a FunASR model folder or an HF folder)")
    if original_config_path(folder).is_file() and (folder / "model.pt").is_file():
        return "original"
    if (folder / "config.json").is_file():
        config = _read_json(folder / "config.json")
        if config.get("model_type") == FunAsrNanoHfConfig.model_type:
            return "hf"
        raise CheckpointError(
            f"{folder / 'config.json'}: model_type {config.get('model_type')!r} is not "
            f"{FunAsrNanoHfConfig.model_type!r}; convert the original FunASR folder with `funasr-nano-hf convert`"
        )
    present = sorted(p.name for p in folder.iterdir())
    raise CheckpointError(
        f"{folder}: neither an original FunASR folder (config.yaml + model.pt) nor an HF folder (config.json); "
        f"found {present[:12]}"
    )


def original_config_path(folder: str | Path) -> Path:
    """The FunASR config of an original folder: the file its ``configuration.json`` names
    (``file_path_metas.config``, which FunASR's AutoModel reads first), else ``config.yaml``. A fine-tuning
    run's output folder names ``funasr_config.yaml``: its ``config.yaml`` holds the run's options."""
    folder = Path(folder)
    meta = folder / "configuration.json"
    if meta.is_file():
        try:
            name = json.loads(meta.read_text(encoding="utf-8"))["file_path_metas"]["config"]
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            name = None
        if isinstance(name, str) and (folder / name).is_file():
            return folder / name
    return folder / "config.yaml"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable JSON ({err})") from err


def read_config_yaml(path: str | Path) -> dict[str, Any]:
    """FunASR's config.yaml as a dict (safe YAML: no Python objects); unreadable or non-mapping files are refused."""
    path = Path(path)
    try:
        conf = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"{path}: unreadable YAML ({err})") from err
    if not isinstance(conf, dict):
        raise CheckpointError(f"{path}: expected a mapping at the top level, got {type(conf).__name__}")
    return conf


# The keys FunASR's classes read in the sections of config.yaml that build the model (FunASR 1.4.16:
# SenseVoiceEncoderSmall.__init__ + FunASRNano.__init__ for the encoder, adaptor.Transformer + FunASRNano for
# the adaptor, WavFrontend.__init__, FunASRNano's llm_conf reads). A key outside these is a typo FunASR itself
# would swallow through **kwargs (`use_lowframe_rate` silently means "all frames"): refused, naming the
# closest known key. Keys read by FunASR that change nothing in the HF model are `IGNORED_KEYS`, logged once.
MODEL_SECTIONS: dict[str, frozenset[str]] = {
    "audio_encoder_conf": frozenset(
        "output_size attention_heads linear_units num_blocks tp_blocks dropout_rate positional_dropout_rate "
        "attention_dropout_rate stochastic_depth_rate input_layer pos_enc_class normalize_before concat_after "
        "positionwise_layer_type positionwise_conv_kernel_size padding_idx kernel_size sanm_shfit "
        "selfattention_layer_type hub activation_checkpoint freeze".split()
    ),
    "audio_adaptor_conf": frozenset(
        "downsample_rate encoder_dim llm_dim ffn_dim n_layer attention_heads attention_dropout_rate dropout_rate "
        "freeze use_low_frame_rate".split()
    ),
    "frontend_conf": frozenset(
        "cmvn_file fs window n_mels frame_length frame_shift filter_length_min filter_length_max lfr_m lfr_n "
        "dither snip_edges upsacle_samples".split()
    ),
    "llm_conf": frozenset(
        "hub init_param_path load_kwargs freeze activation_checkpoint llm_dtype use_lora lora_conf".split()
    ),
}
IGNORED_KEYS = (
    "audio_encoder_conf: hub activation_checkpoint freeze stochastic_depth_rate; audio_adaptor_conf: freeze; "
    "frontend_conf: dither; llm_conf: hub load_kwargs freeze activation_checkpoint use_lora lora_conf; "
    "model_conf, tokenizer_conf, dataset_conf, train_conf, optim_conf, scheduler_conf and the CTC branch's keys "
    "(training options of FunASR's recipe; fine-tuning takes them as options)"
)
_ignored_listed: set[str] = set()


def check_config_keys(yaml_conf: dict[str, Any], path: str | Path) -> None:
    """Refuse keys of config.yaml's model sections that FunASR's classes do not read (typos FunASR would
    swallow silently), naming the closest known key; list the keys without effect here once per folder."""
    import difflib

    for section, known in MODEL_SECTIONS.items():
        conf = yaml_conf.get(section)
        if conf is None:
            continue
        if not isinstance(conf, dict):
            raise CheckpointError(f"{path}: {section} must be a mapping, got {type(conf).__name__}")
        for key in conf:
            if key in known:
                continue
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean {section}.{close[0]}?" if close else f"known keys: {', '.join(sorted(known))}"
            raise CheckpointError(
                f"{path}: unknown key {section}.{key}: FunASR would ignore it silently and build a different model "
                f"than intended; {hint}"
            )
    if str(path) not in _ignored_listed:
        _ignored_listed.add(str(path))
        logger.info("%s: keys without effect on the loaded model: %s", path, IGNORED_KEYS)


def pickle_globals(path: str | Path) -> list[str]:
    """The ``module.name`` globals a plain (non-zip) pickle file references, read with `pickletools` (which
    only parses: nothing is imported or run); [] for zip files and unparsable ones."""
    import pickletools

    if zipfile.is_zipfile(path):
        return []
    found: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for op, arg, _ in pickletools.genops(handle):
                if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                    strings.append(str(arg))
                elif op.name == "GLOBAL":
                    found.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - a malformed pickle: whatever was found so far
        pass
    return sorted(set(found))


def read_model_pt(path: str | Path) -> dict[str, torch.Tensor]:
    """model.pt -> flat state dict, with `weights_only=True` (a pickle that would run code is refused)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    checkpoint = _load_tensor_pickle(path)  # mmap only for torch's zip format; a legacy file loads without it
    if isinstance(checkpoint, dict):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            if isinstance(checkpoint.get(wrapper), dict):
                checkpoint = checkpoint[wrapper]
                break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise CheckpointError(f"{path}: expected {{'state_dict': {{name: tensor}}}}")
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def _load_tensor_pickle(path: Path) -> Any:
    """`torch.load(weights_only=True)` of a pickle-based weight file; `CheckpointError` naming the file, as
    hostile when it references code (`pickle_globals`), otherwise as corrupt."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) (\S+)", str(err))
        hostile = [found.group(1)] if found else []
        hostile += [name for name in pickle_globals(path) if not name.startswith(("torch.", "collections."))]
        if hostile:
            raise CheckpointError(
                f"{path}: refused as hostile: it references {', '.join(sorted(set(hostile)))}, and loading it "
                "could run code (only tensors and plain data are accepted: torch.load(weights_only=True))"
            ) from err
        detail = next((line for line in str(err).splitlines() if "Unsupported" in line), str(err).splitlines()[0])
        raise CheckpointError(
            f"{path}: refused: not a plain tensor file (torch.load(weights_only=True): {detail.strip()})"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: truncated or corrupt ({err})") from err


def check_adapter(adapter_dir: str | Path) -> None:
    """Vet a peft adapter folder before peft loads it: `adapter_config.json` parsed, and the weights --
    ``adapter_model.safetensors`` (its header read), or else ``adapter_model.bin`` loaded with
    ``torch.load(weights_only=True)`` (a pickle that would run code is refused as hostile). Every failure is a
    `CheckpointError` naming the file."""
    folder = Path(adapter_dir)
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder}: no such adapter folder (expected a peft folder: adapter_config.json + "
            "adapter_model.safetensors)"
        )
    config = folder / "adapter_config.json"
    if not config.is_file():
        raise CheckpointError(f"{config}: missing (not a peft adapter folder)")
    _read_json(config)
    safetensors_file, bin_file = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    if safetensors_file.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(safetensors_file), framework="pt", device="cpu") as handle:
                handle.keys()
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{safetensors_file}: truncated or corrupt safetensors file ({err})") from err
        return
    if not bin_file.is_file():
        raise CheckpointError(f"{folder}: no adapter weights (adapter_model.safetensors, or adapter_model.bin)")
    state = _load_tensor_pickle(bin_file)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{bin_file}: expected {{name: tensor}}")
    logger.warning("%s: a pickle-based adapter (vetted with weights_only=True); safetensors is preferred", bin_file)


def _llm_dir(folder: Path, yaml_conf: dict[str, Any]) -> Path:
    """The LLM folder (config.json + tokenizer) named by `llm_conf.init_param_path`, resolved inside `folder`."""
    name = (yaml_conf.get("llm_conf") or {}).get("init_param_path") or "Qwen3-0.6B"
    candidate = Path(name) if Path(name).is_absolute() else folder / name
    if not candidate.is_dir():
        candidate = folder / Path(name).name  # FunASR writes absolute paths of the training machine
    if not (candidate / "config.json").is_file():
        raise CheckpointError(f"{candidate / 'config.json'}: missing (the LLM config of llm_conf.init_param_path)")
    return candidate


def _check_and_fill(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Copy `state` into `model`, refusing unknown keys, wrong shapes and missing tensors (naming `source`)."""
    expected = model.state_dict()
    for key, value in state.items():
        if key not in expected:
            raise CheckpointError(f"{source}: tensor {key!r} has no place in the model built from config.yaml")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{source}: tensor for {key!r} has shape {tuple(value.shape)}, "
                f"the config gives {tuple(expected[key].shape)}"
            )
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    missing = sorted(set(expected) - set(state) - tied)
    if missing:
        raise CheckpointError(f"{source}: {len(missing)} tensors missing, e.g. {missing[:5]}")
    model.load_state_dict(state, strict=False, assign=True)  # meta parameters take model.pt's tensors (meta_init)


@contextlib.contextmanager
def _whole_model_under_zero3() -> Iterator[None]:
    """Build the model whole even when a DeepSpeed ZeRO-3 config is active (transformers would partition
    the sub-models at construction, and model.pt could not be copied in); ZeRO-3 partitions it when the
    Trainer wraps it."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def load_original(
    model_dir: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[FunAsrNanoHfForConditionalGeneration, FunAsrNanoHfProcessor]:
    """(model, processor) from an ORIGINAL FunASR folder; `dtype` is the LLM's (see `load_pretrained`).

    Tensors of model.pt the HF model has no place for (FunASR's CTC branch) are kept in
    `model.funasr_extra_state`, and config.yaml in `model.config.funasr_config`.
    """
    folder = Path(model_dir)
    config_path = original_config_path(folder)
    yaml_conf = read_config_yaml(config_path)
    check_config_keys(yaml_conf, config_path)
    llm_dir = _llm_dir(folder, yaml_conf)
    qwen_config = _read_json(llm_dir / "config.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(llm_dir))
    except Exception as err:  # transformers raises many types for a broken tokenizer folder
        raise CheckpointError(f"{llm_dir}: cannot load the tokenizer ({err})") from err
    audio_token_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    try:
        config = hf_config_from_original(yaml_conf, qwen_config, audio_token_id)
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{config_path}: missing or malformed field {err}") from err
    except ValueError as err:
        raise CheckpointError(f"{config_path}: {err}") from err
    config.funasr_config = yaml_conf

    state = read_model_pt(folder / "model.pt")
    pages = FilePages(folder / "model.pt")  # hands back the pages of tensors converted or dropped
    try:
        ours, extras = original_to_hf(state, layout_from_config(yaml_conf))
    except KeyError as err:
        raise CheckpointError(f"{folder / 'model.pt'}: {err}") from err
    if config.tie_word_embeddings and "lm_head.weight" in ours:
        # FunASR ties lm_head and embeddings; load_state_dict writes lm_head last, so its value wins.
        embed = ours["model.language_model.embed_tokens.weight"]
        head = ours.pop("lm_head.weight")
        if not torch.equal(embed, head):
            logger.warning("%s: llm.lm_head.weight differs from the embeddings; using lm_head (FunASR does)", folder)
            ours["model.language_model.embed_tokens.weight"] = head
        pages.release(embed if ours["model.language_model.embed_tokens.weight"] is head else head)
    if extras:
        counts = Counter(key.split(".", 1)[0] for key in extras)
        logger.info("%s: keeping %d tensors the HF model has no place for: %s", folder, len(extras), dict(counts))

    with no_init_weights(), _whole_model_under_zero3(), parameters_on_meta():
        model = FunAsrNanoHfForConditionalGeneration(config)
    _check_and_fill(model, cast_like_model(model, ours, pages), folder / "model.pt")
    model.tie_weights()
    require_materialized(model, folder / "model.pt")
    model.funasr_extra_state = dict(extras)
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    model = _cast_llm(model, dtype).to(device).eval()
    pages.release_unused(state.values(), keep=model)  # the originals of converted tensors, the tied lm_head
    del state, ours

    processor = FunAsrNanoHfProcessor(
        FunAsrNanoHfFeatureExtractor(**feature_extractor_kwargs(yaml_conf)),
        tokenizer,
        # FunASR's structured transcription template (processor default), saved with converted folders
        audio_token=AUDIO_TOKEN,
        audio_token_rule=config.audio_token_rule,
    )
    return model, processor


def _cast_llm(model: FunAsrNanoHfForConditionalGeneration, dtype: torch.dtype) -> FunAsrNanoHfForConditionalGeneration:
    """Cast the LLM only: the audio encoder and adaptor stay fp32 as in FunASR."""
    model.model.language_model.to(dtype)
    model.lm_head.to(dtype)
    return model


def _stored_llm_dtype(folder: Path) -> torch.dtype:
    """The dtype of the stored embeddings (safetensors header only; no tensor is read)."""
    from safetensors import safe_open

    key = "model.language_model.embed_tokens.weight"
    index = folder / "model.safetensors.index.json"
    shard = folder / (_read_json(index)["weight_map"][key] if index.is_file() else "model.safetensors")
    try:
        with safe_open(str(shard), framework="pt") as handle:
            stored = handle.get_slice(key).get_dtype()
    except Exception as err:  # safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"{shard}: unreadable safetensors ({err})") from err
    return {"BF16": torch.bfloat16, "F16": torch.float16}.get(stored, torch.float32)


def load_hf(
    model_dir: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[FunAsrNanoHfForConditionalGeneration, FunAsrNanoHfProcessor]:
    """(model, processor) from an HF folder; dtype None keeps the stored dtype of the LLM weights."""
    folder = Path(model_dir)
    dtype = dtype or _stored_llm_dtype(folder)
    try:
        model = FunAsrNanoHfForConditionalGeneration.from_pretrained(str(folder), dtype=dtype)
        processor = FunAsrNanoHfProcessor.from_pretrained(str(folder))
    except (OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{folder}: cannot load the HF folder ({err})") from err
    model = _cast_llm(model, dtype) if dtype is not None else model
    return model.to(device).eval(), processor


def load_pretrained(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    hub: str = "hf",
    revision: str | None = None,
    attn_implementation: str | None = None,
) -> tuple[FunAsrNanoHfForConditionalGeneration, FunAsrNanoHfProcessor]:
    """(model, processor) from an original FunASR folder or an HF folder, detected from the files; a hub model
    id (e.g. ``"FunAudioLLM/Fun-ASR-Nano-2512"``) is downloaded first (`resolve_model_dir`: `hub` "hf" or
    "ms", `revision`).

    dtype is the LLM's (the audio encoder/adaptor stay fp32). None: fp32 for an original folder (as
    FunASR's inference runs), the stored dtype for an HF folder. `attn_implementation` is the LLM's attention
    (transformers' names, e.g. "flash_attention_2"; `set_llm_attention`); None keeps the default.
    """
    path = resolve_model_dir(path, hub=hub, revision=revision)
    if detect_layout(path) == "original":
        model, processor = load_original(path, dtype=dtype or torch.float32, device=device)
    else:
        model, processor = load_hf(path, dtype=dtype, device=device)
    if attn_implementation is not None:
        set_llm_attention(model, attn_implementation)
    return model, processor


def set_llm_attention(model: FunAsrNanoHfForConditionalGeneration, attn_implementation: str) -> None:
    """The LLM's attention implementation (e.g. "flash_attention_2", which needs fp16/bf16 and a GPU); the fp32
    audio encoder and adaptor keep theirs (SDPA). transformers checks that the implementation is available."""
    try:
        model.model.language_model.set_attn_implementation(attn_implementation)
    except (ImportError, ValueError) as err:
        raise ValueError(f"--attn_implementation {attn_implementation} (the LLM's attention): {err}") from err


def save_hf_folder(
    model: FunAsrNanoHfForConditionalGeneration, processor: FunAsrNanoHfProcessor, out_dir: str | Path
) -> Path:
    """Write an HF folder (model, processor, extra tensors) that `load_pretrained` and the Auto classes read;
    returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out
