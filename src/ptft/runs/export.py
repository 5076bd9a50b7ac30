"""``ptft-export``'s work: read a model the way ``ptft-eval`` does (names checked, weights only),
then write it in the format asked for, atomically (:func:`ptft.files.atomic_dir`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ptft.errors import ConfigError
from ptft.files import atomic_dir
from ptft.handoff import resolve_checkpoint
from ptft.runs.load import load_run

log = logging.getLogger(__name__)


def export(cfg: DictConfig) -> Path:
    """Write ``cfg.ckpt_path`` as ``cfg.format`` into ``cfg.output``; returns the directory."""
    own = cfg.get("model")
    source = resolve_checkpoint(cfg.ckpt_path, "ckpt_path")
    module, record = load_run(source, OmegaConf.to_container(own, resolve=True) if own else None)
    module.eval()
    out = Path(cfg.output)
    if cfg.format == "hf":
        from ptft.interop.hf import export_checkpoint, write_hf

        checkpoint = export_checkpoint(module, record.get("tokenizer"))
        written = write_hf(checkpoint, out, cfg.overwrite)
    elif cfg.format == "safetensors":
        written = write_safetensors(module, record, out, cfg.overwrite)
    elif cfg.format == "onnx":
        written = write_onnx(module, record, out, cfg.overwrite, cfg.check)
    elif cfg.format == "peft":
        from ptft.interop import lora

        if not lora.is_lora(module):
            raise ConfigError(
                f"ckpt_path={cfg.ckpt_path} holds no LoRA adapter (it was not fine-tuned with "
                "model.finetune=lora); use format=hf or format=safetensors"
            )
        with atomic_dir(out, cfg.overwrite) as tmp:
            lora.save_adapter(module, tmp)
        written = out
    else:  # ptft.export.check refused it already
        raise ConfigError(f"format={cfg.format} is not one of hf, safetensors, onnx, peft")
    print(f"exported {cfg.ckpt_path} as {cfg.format} to {written}")
    return written


def module_checkpoint(module: Any, record: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint holds besides training state, rebuilt from a loaded module."""
    checkpoint: dict[str, Any] = {
        "state_dict": module.state_dict(),
        "hyper_parameters": _plain(dict(module.hparams)),
    }
    module.on_save_checkpoint(checkpoint)  # the backbone record
    checkpoint["ptft_run"] = {k: v for k, v in record.items() if k not in ("tokenizer", "labels")}
    if record.get("labels"):
        checkpoint["ptft_labels"] = list(record["labels"])
    if record.get("tokenizer"):
        checkpoint["ptft_tokenizer"] = record["tokenizer"]
    return checkpoint


def _plain(value: Any) -> Any:
    """Hyperparameters as JSON data (tuples become lists; the constructors take either)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def write_tokenizer_files(directory: Path, module: Any, record: dict[str, Any]) -> None:
    """The tokenizer beside an export (``tokenizer.json``; ``tokenizer_config.json`` with the
    special-token roles), for text models."""
    text = record.get("tokenizer")
    if not text:
        return
    from ptft.data.tokenizer import specials_of
    from ptft.interop.hf import write_tokenizer

    backbone = module.backbone
    write_tokenizer(directory, text, specials_of(backbone), backbone.max_positions)


def write_safetensors(module: Any, record: dict[str, Any], out: Path, overwrite: bool) -> Path:
    from ptft.interop import safetensors_dir

    checkpoint = module_checkpoint(module, record)
    with atomic_dir(out, overwrite) as tmp:
        safetensors_dir.write(checkpoint, tmp)
        write_tokenizer_files(tmp, module, record)
    return out


def write_onnx(
    module: Any, record: dict[str, Any], out: Path, overwrite: bool, check: bool
) -> Path:
    from ptft.interop import lora, onnx

    if lora.is_lora(module):
        module = lora.merge_lora(module)
    with atomic_dir(out, overwrite) as tmp:
        path = onnx.export_onnx(module, tmp / "model.onnx")
        if check:
            example = onnx.example_input(module)
            inputs = [example, example[:1]]
            if example.dim() == 2 and example.shape[1] > 2:  # tokens: a second length too
                inputs.append(example[:, : example.shape[1] // 2])
            diff = onnx.check_onnx(module, path, inputs)
            log.info("onnxruntime matches torch within %.2g on %d inputs", diff, len(inputs))
        write_tokenizer_files(tmp, module, record)
        if record.get("labels"):
            (tmp / "labels.json").write_text(json.dumps(list(record["labels"])) + "\n")
    return out
