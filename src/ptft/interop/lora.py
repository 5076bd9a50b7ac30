"""Low-rank adapters (LoRA, Hu et al. 2021) on a ptft backbone, through Hugging Face ``peft``.

LoRA keeps a pretrained weight ``W`` (``d_out × d_in``) frozen and learns a low-rank update
``ΔW = (alpha / r) · B A`` beside it, ``A`` of shape ``r × d_in`` and ``B`` of shape
``d_out × r``, with ``B`` zero at the start, so the adapted model first computes exactly what the
pretrained one computes (§4.1). Only ``A`` and ``B`` train: ``r · (d_in + d_out)`` parameters per
adapted layer instead of ``d_in · d_out``. After training ``ΔW`` is added into ``W``
(:func:`merge_lora`): the merged model has the original layers and no cost at inference.

The adapters go into the backbone with peft's ``inject_adapter_in_model``: the targeted
``nn.Linear`` layers become peft's LoRA layers (the original weight moves to
``<layer>.base_layer.weight``, the adapters are ``<layer>.lora_A.default.weight`` and
``<layer>.lora_B.default.weight``). What the adapters target is ``model.lora.target_modules``:
by default the attention and MLP projections of the Transformer, matched by their full names
(:data:`DEFAULT_TARGETS`), so an LM head, a pooler or a task head is never adapted by a name
that happens to end the same way.

Everything here needs the ``peft`` extra (``pip install 'ptft[peft]'``); importing this module
imports none of it, so a task can read :class:`LoRAConfig` and check a config without it.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn

from ptft.config.bounds import PositiveFloat, PositiveInt, Probability
from ptft.errors import ConfigError
from ptft.files import atomic_path, write_atomic

#: how to install what LoRA needs
EXTRA = "pip install 'ptft[peft]'"
#: peft's name of the one adapter ptft injects
ADAPTER = "default"
#: the Transformer's attention and MLP projections (``nn.Linear``), matched as full names:
#: fused q/k/v, attention output, MLP input (and gate, for gated MLPs) and MLP output
DEFAULT_TARGETS = r"blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc|gate|proj))"
#: the files of an adapter saved in peft's own layout (``PeftModel.save_pretrained``'s)
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
#: the prefix peft's saved adapter keys carry (``PeftModel`` → ``LoraModel`` → the model)
PEFT_PREFIX = "base_model.model."
#: what peft's LoRA layers hold besides the original layer, by name
_ADAPTER_PART = re.compile(r"(^|\.)(lora_[A-Za-z_]+|base_layer)(\.|$)")


class LoRAConfig(TypedDict, total=False):
    """``model.lora``: the adapters of ``model.finetune=lora``; the defaults are :class:`LoRA`'s.

    ``target_modules``: null for :data:`DEFAULT_TARGETS`; a string is a regular expression
    that must match a module's whole name; a list names modules, each a full name or its last
    parts (``[qkv, proj]``), as peft matches them."""

    r: PositiveInt
    alpha: PositiveFloat
    dropout: Probability
    target_modules: list[str] | str | None


@dataclass(frozen=True)
class LoRA:
    """LoRA's settings, checked: rank ``r``, scale ``alpha / r`` of the update, dropout on the
    adapters' input, and which layers they adapt."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str | None = None

    @classmethod
    def from_config(cls, config: LoRAConfig | Mapping[str, Any] | None) -> LoRA:
        """``model.lora`` (None: every default) checked key by key, each problem in one line."""
        from ptft.config.validate import check_value

        config = dict(config or {})
        check_value(config, LoRAConfig, "model.lora")  # keys, types and bounds
        targets = config.get("target_modules")
        if isinstance(targets, str):
            try:
                re.compile(targets)
            except re.error as err:
                raise ConfigError(
                    f"model.lora.target_modules={targets}: not a regular expression ({err})"
                ) from None
        elif targets is not None:
            if not targets:
                raise ConfigError(
                    "model.lora.target_modules=[]: name at least one module, or null for the "
                    "attention and MLP projections"
                )
            targets = tuple(str(t) for t in targets)
        return cls(
            int(config.get("r", cls.r)),
            float(config.get("alpha", cls.alpha)),
            float(config.get("dropout", cls.dropout)),
            targets,
        )

    @property
    def targets(self) -> str | list[str]:
        """``target_modules`` as peft takes it: the default regex when none are given."""
        if self.target_modules is None:
            return DEFAULT_TARGETS
        return (
            self.target_modules
            if isinstance(self.target_modules, str)
            else list(self.target_modules)
        )

    def peft_config(self) -> Any:
        """peft's ``LoraConfig`` of these settings (no bias trains: ``bias="none"``)."""
        peft = require_peft()
        return peft.LoraConfig(
            r=self.r,
            # peft's own type (an int in its saved configs) when the value is a whole number
            lora_alpha=int(self.alpha) if float(self.alpha).is_integer() else self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.targets,
            bias="none",
        )


def require_peft(key: str = "model.finetune=lora") -> Any:
    """The ``peft`` module, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import peft
    except ImportError:
        raise ConfigError(
            f"{key} needs Hugging Face peft, which is not installed; install it with {EXTRA}"
        ) from None
    return peft


def is_adapter_key(name: str) -> bool:
    """Whether a parameter or state-dict key belongs to a LoRA layer (an adapter, or the
    original layer inside it, ``base_layer``): what a never-adapted model does not have."""
    return bool(_ADAPTER_PART.search(name))


def _lora_layer_class() -> type | None:
    """peft's LoRA layer class, if peft is loaded (no LoRA layer can exist when it is not)."""
    if sys.modules.get("peft") is None:
        return None
    from peft.tuners.lora import LoraLayer

    return LoraLayer


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The LoRA layers in ``module``, by name."""
    cls = _lora_layer_class()
    if cls is None:
        return {}
    return {name: m for name, m in module.named_modules() if isinstance(m, cls)}


def is_lora(module: nn.Module) -> bool:
    """Whether ``module`` holds LoRA adapters (injected by :func:`apply_lora`, not merged)."""
    return bool(lora_layers(module))


def linear_names(backbone: nn.Module) -> list[str]:
    """The names of the backbone's ``nn.Linear`` layers, the layers LoRA can adapt."""
    return [name for name, m in backbone.named_modules() if isinstance(m, nn.Linear)]


def _summary(names: list[str]) -> str:
    """Names with one layer index, grouped: ``blocks.{0..11}.attn.qkv``."""
    groups: dict[str, list[int]] = {}
    singles: list[str] = []
    for name in names:
        indices = re.findall(r"(?:^|\.)(\d+)(?=\.|$)", name)
        if len(indices) != 1:
            singles.append(name)
            continue
        pattern = re.sub(r"(^|\.)\d+(?=\.|$)", r"\1{i}", name)
        groups.setdefault(pattern, []).append(int(indices[0]))
    out = []
    for pattern, indices in groups.items():
        indices = sorted(indices)
        if len(indices) == 1:
            out.append(pattern.replace("{i}", str(indices[0])))
            continue
        if indices == list(range(indices[0], indices[-1] + 1)):
            span = f"{indices[0]}..{indices[-1]}"
        else:
            span = ",".join(map(str, indices))
        out.append(pattern.replace("{i}", "{" + span + "}"))
    return ", ".join(out + singles) or "none"


def target_names(backbone: nn.Module, settings: LoRA) -> list[str]:
    """The backbone's layers ``settings`` adapts, matched as peft matches them; a target that
    matches nothing, or a layer that is not an ``nn.Linear``, is a one-line error listing the
    backbone's Linear layers."""
    from peft.tuners.tuners_utils import check_target_module_exists

    config = settings.peft_config()
    matched = [
        (name, m)
        for name, m in backbone.named_modules()
        if name and check_target_module_exists(config, name)
    ]
    given = (
        "null (the attention and MLP projections)"
        if settings.target_modules is None
        else settings.target_modules
        if isinstance(settings.target_modules, str)
        else f"[{','.join(settings.target_modules)}]"
    )
    layers = f"the Linear layers of {type(backbone).__name__}: {_summary(linear_names(backbone))}"
    if not matched:
        raise ConfigError(f"model.lora.target_modules={given} matches no layer; {layers}")
    other = [f"{name} ({type(m).__name__})" for name, m in matched if not isinstance(m, nn.Linear)]
    if other:
        which = "which is not a Linear layer" if len(other) == 1 else "which are not Linear layers"
        raise ConfigError(
            f"model.lora.target_modules={given} matches {', '.join(other[:3])}"
            f"{' …' if len(other) > 3 else ''}, {which}; LoRA adapts {layers}"
        )
    return [name for name, _ in matched]


def check_lora(backbone: nn.Module, config: LoRAConfig | Mapping[str, Any] | None) -> LoRA:
    """Everything :func:`apply_lora` would refuse, checked without changing the backbone: peft
    installed, the settings, targets that match Linear layers."""
    settings = LoRA.from_config(config)
    require_peft()
    target_names(backbone, settings)
    return settings


def apply_lora(backbone: nn.Module, config: LoRAConfig | Mapping[str, Any] | None = None) -> int:
    """Inject LoRA adapters into ``backbone`` (in place) and freeze everything of it but them;
    returns the number of trainable adapter parameters."""
    if is_lora(backbone):
        raise ConfigError(f"{type(backbone).__name__} already holds LoRA adapters")
    settings = check_lora(backbone, config)
    from peft import inject_adapter_in_model

    inject_adapter_in_model(settings.peft_config(), backbone, adapter_name=ADAPTER)
    count = 0
    for name, p in backbone.named_parameters():
        trains = ".lora_" in f".{name}"
        p.requires_grad_(trains)
        count += p.numel() if trains else 0
    return count


def _backbone(module: nn.Module) -> nn.Module:
    """A task's or objective's backbone, or the module itself."""
    backbone = getattr(module, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else module


def merge_lora(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every LoRA layer merged (``W + (alpha/r)·B A``) back into a
    plain ``nn.Linear``: the same state-dict keys as a module never adapted, and, for a ptft task,
    ``finetune="full"`` (everything trainable), so export and handoff code treat it like any
    other. ``module`` is left as it is."""
    merged = copy.deepcopy(module)
    for name, layer in lora_layers(merged).items():
        layer.merge(safe_merge=True)  # refuses NaN or inf weights
        parent_name, _, attr = name.rpartition(".")
        setattr(merged.get_submodule(parent_name), attr, layer.get_base_layer())
    for m in merged.modules():
        if isinstance(getattr(m, "peft_config", None), dict):
            del m.peft_config
    if getattr(merged, "pending_lora", None) is not None:
        merged.pending_lora = None  # the adapters never went in: nothing to merge
    if getattr(merged, "finetune", None) == "lora":
        merged.finetune = "full"
        hparams = getattr(merged, "hparams", None)
        if isinstance(hparams, typing.MutableMapping) and "finetune" in hparams:
            hparams["finetune"] = "full"
        merged.requires_grad_(True)
    return merged


def adapter_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters of ``module``'s backbone under the keys peft saves them with
    (``base_model.model.<layer>.lora_A.weight``), on the CPU."""
    from peft.utils import get_peft_model_state_dict

    backbone = _backbone(module)
    state = get_peft_model_state_dict(backbone, adapter_name=ADAPTER)
    return {PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_adapter(module: nn.Module, out_dir: str | Path) -> Path:
    """Save the LoRA adapter of ``module`` (a task with a LoRA'd backbone, or the backbone) alone,
    in peft's own layout: ``adapter_config.json`` and ``adapter_model.safetensors`` in
    ``out_dir``, each written atomically (a reader finds the old file or the new one, whole; the
    weights first). peft reads them back (``PeftModel.from_pretrained`` on the plain backbone,
    ``peft.utils.load_peft_weights``). Returns ``out_dir``."""
    from safetensors.torch import save_file

    backbone = _backbone(module)
    if not is_lora(backbone):
        raise ConfigError(
            f"{type(module).__name__} holds no LoRA adapter to save; train it with "
            "model.finetune=lora"
        )
    config = copy.deepcopy(backbone.peft_config[ADAPTER])
    config.inference_mode = True  # as PeftModel.save_pretrained saves it
    record = config.to_dict()
    record = {k: sorted(v) if isinstance(v, set) else v for k, v in record.items()}
    # what PeftModel.save_pretrained records for a model that is not a transformers model
    record["auto_mapping"] = {
        "base_model_class": type(backbone).__name__,
        "parent_library": type(backbone).__module__,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(adapter_state_dict(backbone), str(tmp), metadata={"format": "pt"})
    write_atomic(out / CONFIG_FILE, json.dumps(record, indent=2, sort_keys=True, default=str))
    return out
