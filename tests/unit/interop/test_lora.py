"""LoRA through peft (``model.finetune=lora``, :mod:`ptft.interop.lora`): which layers get
adapters, what trains, what the optimizer holds, merging, peft's own file layout, the order
of the handoff, FLOPs and the one-line errors. Every expected value is computed here
independently: names written out, ``W + (alpha / r) B A`` by hand, peft reading the files."""

from __future__ import annotations

import copy
import inspect
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("peft")

from ptft.config.validate import with_defaults  # noqa: E402
from ptft.errors import ConfigError  # noqa: E402
from ptft.handoff import Pretrained  # noqa: E402
from ptft.interop.lora import (  # noqa: E402
    CONFIG_FILE,
    DEFAULT_TARGETS,
    EXTRA,
    WEIGHTS_FILE,
    apply_lora,
    is_lora,
    merge_lora,
    save_adapter,
)
from ptft.monitors.flops import measured_training_flops  # noqa: E402
from ptft.nn.transformer import Transformer  # noqa: E402
from ptft.objectives.causal_lm import CausalLM  # noqa: E402
from ptft.runs.build import build_model  # noqa: E402
from ptft.tasks.sequence_classifier import SequenceClassifier  # noqa: E402
from ptft.tasks.sequence_generator import SequenceGenerator  # noqa: E402

T = 16
VOCAB = 300
CLASSES = 4
ADAMW = {"_target_": "torch.optim.AdamW", "lr": 1e-2, "weight_decay": 0.1}
#: r / alpha not the defaults' ratio, so that a wrong scale shows
LORA = {"r": 4, "alpha": 12}
PROJECTIONS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")


def transformer(dim: int = 32, causal: bool = True, **extra) -> dict:
    return {
        "_target_": "ptft.nn.transformer.Transformer",
        "vocab_size": VOCAB,
        "dim": dim,
        "num_layers": 2,
        "num_heads": 2,
        "dropout": 0.0,
        "max_positions": 32,
        "causal": causal,
        "pad_token_id": 0,
        **extra,
    }


def classifier(finetune: str = "lora", lora: dict | None = LORA, **backbone) -> SequenceClassifier:
    torch.manual_seed(0)
    return SequenceClassifier(
        transformer(**backbone), [T], CLASSES, ADAMW, finetune=finetune, lora=lora
    )


def generator(finetune: str = "lora", lora: dict | None = LORA, **backbone) -> SequenceGenerator:
    torch.manual_seed(0)
    return SequenceGenerator(transformer(**backbone), [T], ADAMW, finetune=finetune, lora=lora)


def adapted(module: nn.Module) -> nn.Module:
    """``module`` with its adapters in, as Lightning's ``configure_model`` puts them."""
    module.configure_model()
    assert is_lora(module)
    return module


def hparams(module: nn.Module) -> dict:
    """The hyper-parameters a module is rebuilt from (as ptft-eval does), less those its class
    does not take (a SequenceClassifier records the image Classifier's ``augment`` too)."""
    accepted = inspect.signature(type(module)).parameters
    return {k: v for k, v in module.hparams.items() if k in accepted}


def tokens(batch: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, VOCAB, (batch, T), generator=g)


def parameters(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def train_steps(module: nn.Module, loss_fn, steps: int = 3) -> None:
    """A few AdamW steps with the optimizer ptft builds (``configure_optimizers``)."""
    optimizer = module.configure_optimizers()
    for step in range(steps):
        optimizer.zero_grad()
        loss_fn(step).backward()
        optimizer.step()


def classifier_loss(module: SequenceClassifier):
    def loss(step: int) -> torch.Tensor:
        x = tokens(seed=step)
        return F.cross_entropy(module(x), x[:, 0] % CLASSES)

    return loss


def generator_loss(module: SequenceGenerator):
    def loss(step: int) -> torch.Tensor:
        x = tokens(seed=step)
        logits = module(x[:, :-1])
        return F.cross_entropy(logits.reshape(-1, VOCAB), x[:, 1:].reshape(-1))

    return loss


# ------------------------------------------------------------------------ targets
def test_default_targets_are_exactly_the_attention_and_mlp_projections():
    extra = {}
    if "gated_mlp" in inspect.signature(Transformer).parameters:
        extra["gated_mlp"] = True  # SwiGLU-style models have blocks.{i}.mlp.gate too
    if "lm_head" in inspect.signature(Transformer).parameters:
        extra["lm_head"] = "bert"  # a Linear of the backbone's own LM head: never adapted
    module = adapted(classifier(**extra))
    names = PROJECTIONS + (("mlp.gate",) if extra.get("gated_mlp") else ())
    expected = {f"blocks.{i}.{n}" for i in range(2) for n in names}
    adapters = {
        name.removesuffix(".lora_A.default.weight")
        for name, _ in module.backbone.named_parameters()
        if name.endswith(".lora_A.default.weight")
    }
    assert adapters == expected
    linears = {n for n, m in module.backbone.named_modules() if type(m) is nn.Linear}
    # the base layers inside the adapters, and every other Linear (the LM head's transform)
    assert {n.removesuffix(".base_layer") for n in linears if n.endswith(".base_layer")} == expected
    assert not any(n.startswith(("head", "lm_")) for n in adapters)
    assert type(module.head[-1]) is nn.Linear  # the task head is no LoRA layer: it trains fully
    assert DEFAULT_TARGETS.startswith("blocks")


def test_a_list_of_names_adapts_only_those_layers():
    module = adapted(classifier(lora={"target_modules": ["attn.qkv"]}))
    adapters = {n for n, _ in module.named_parameters() if ".lora_A." in n}
    assert adapters == {f"backbone.blocks.{i}.attn.qkv.lora_A.default.weight" for i in range(2)}


# ---------------------------------------------------------- what trains, what moves
@pytest.mark.parametrize("kind", ["classifier", "generator"])
def test_only_adapters_and_head_train_and_the_base_stays_bit_identical(kind):
    build, loss = (
        (classifier, classifier_loss) if kind == "classifier" else (generator, generator_loss)
    )
    module = adapted(build(lora=None, dim=128))  # the defaults: r=8, alpha=16
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    head = {"head.1.weight", "head.1.bias"} if kind == "classifier" else set()
    assert trainable == {n for n in trainable if ".lora_" in n} | head
    assert len(trainable - head) == 2 * 2 * len(PROJECTIONS)  # A and B, 2 blocks
    count = sum(p.numel() for p in module.parameters() if p.requires_grad)
    total = sum(p.numel() for p in module.parameters())
    assert count / total < 0.10
    # r (d_in + d_out) per adapted layer, by hand
    d, f, r = 128, 4 * 128, 8
    per_block = r * (d + 3 * d) + r * (d + d) + r * (d + f) + r * (f + d)
    assert count == 2 * per_block + sum(module.state_dict()[h].numel() for h in head)

    # the optimizer holds exactly what trains, in no empty group
    groups = module.configure_optimizers().param_groups
    held = [p for g in groups for p in g["params"]]
    assert all(g["params"] for g in groups)
    assert {id(p) for p in held} == {id(p) for p in module.parameters() if p.requires_grad}
    assert len(held) == len(trainable)

    before = parameters(module)
    train_steps(module, loss(module))
    after = parameters(module)
    for name, value in before.items():
        if name in trainable:
            continue
        assert torch.equal(after[name], value), f"{name} moved"  # weight decay included
    for name in trainable:
        assert not torch.equal(after[name], before[name]), f"{name} did not train"
    if kind == "generator":  # the output layer is the token embedding: frozen too
        assert module.lm_head.weight is module.backbone.token_embedding.weight
        assert not module.lm_head.weight.requires_grad


def test_gradual_unfreezing_hooks_leave_the_base_frozen():
    module = adapted(classifier())
    module.train()
    module.on_train_epoch_start()  # a LoRA run never unfreezes layer groups
    frozen = [n for n, p in module.backbone.named_parameters() if ".lora_" not in n]
    assert frozen and not any(
        dict(module.backbone.named_parameters())[n].requires_grad for n in frozen
    )
    # the backbone trains in train mode (its dropout is the model's), unlike a linear probe's
    assert module.backbone.training


# ---------------------------------------------------------------------------- merge
def test_merged_model_computes_the_same_with_plain_layers():
    module = adapted(classifier())
    train_steps(module, classifier_loss(module))
    merged = merge_lora(module)
    assert is_lora(module) and not is_lora(merged)
    plain = classifier(finetune="full")
    assert list(merged.state_dict()) == list(plain.state_dict())
    assert {n: type(m) for n, m in merged.named_modules()} == {
        n: type(m) for n, m in plain.named_modules()
    }
    assert merged.finetune == "full" and merged.hparams["finetune"] == "full"
    # W + (alpha / r) B A, by hand, for every adapted layer
    state = module.state_dict()
    scale = LORA["alpha"] / LORA["r"]
    for i in range(2):
        for name in PROJECTIONS:
            key = f"backbone.blocks.{i}.{name}"
            expected = state[f"{key}.base_layer.weight"] + scale * (
                state[f"{key}.lora_B.default.weight"] @ state[f"{key}.lora_A.default.weight"]
            )
            torch.testing.assert_close(merged.state_dict()[f"{key}.weight"], expected)
            assert torch.equal(merged.state_dict()[f"{key}.bias"], state[f"{key}.base_layer.bias"])
    x = tokens(seed=7)
    module.eval()
    merged.eval()
    with torch.no_grad():
        error = (merged(x) - module(x)).abs().max().item()
    print(f"merge: max |logits difference| = {error:.2e}")
    assert error < 1e-5
    # the merged state loads into a plain model, and into a LoRA one rebuilt from its hparams
    plain.load_state_dict(merged.state_dict())
    rebuilt = SequenceClassifier(**{**hparams(module), "finetune": "lora"})
    rebuilt.load_state_dict(merged.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        assert (rebuilt(x) - module(x)).abs().max().item() < 1e-5


# --------------------------------------------------------------------- peft's files
def test_saved_adapter_is_read_back_by_peft(tmp_path):
    from peft import PeftConfig, PeftModel
    from peft.utils import load_peft_weights

    module = classifier()
    base = copy.deepcopy(module.backbone)  # the plain backbone, before the adapters go in
    adapted(module)
    train_steps(module, classifier_loss(module))
    out = save_adapter(module, tmp_path / "adapter")
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE])

    config = PeftConfig.from_pretrained(str(out))
    assert (config.r, config.lora_alpha, config.target_modules) == (4, 12, DEFAULT_TARGETS)
    assert json.loads((out / CONFIG_FILE).read_text())["peft_type"] == "LORA"
    weights = load_peft_weights(str(out))
    ours = {
        n: p for n, p in module.backbone.named_parameters() if ".lora_" in n and p.requires_grad
    }
    assert len(weights) == len(ours) == 2 * 2 * len(PROJECTIONS)
    for name, value in ours.items():
        key = "base_model.model." + name.replace(".default.", ".")
        assert torch.equal(weights[key], value.detach()), key
    # peft applies the saved adapter to the plain backbone: the same features
    peft_model = PeftModel.from_pretrained(base, str(out))
    peft_model.eval()
    module.eval()
    x = tokens(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), module.backbone(x), rtol=0, atol=1e-5)


def test_save_adapter_refuses_a_model_without_one(tmp_path):
    with pytest.raises(ConfigError, match="holds no LoRA adapter"):
        save_adapter(classifier(finetune="full"), tmp_path)


# ------------------------------------------------------------------ handoff, reload
def test_handoff_loads_the_plain_pretrained_weights_then_the_adapters_go_in():
    """``model.pretrained=``: built, the backbone's weights loaded strictly (ptft.handoff, as
    ptft.runs.build applies it), then the adapters; a checkpoint of it reloads from hparams."""
    torch.manual_seed(5)
    lm = CausalLM(transformer(), [T], ADAMW)
    weights = {k: v.clone() for k, v in lm.backbone.state_dict().items()}
    config = with_defaults(transformer(), frozenset({"input_shape"}))
    pretrained = Pretrained(Path("pretrained.ckpt"), config, [T], weights)
    model_cfg = {
        "_target_": "ptft.tasks.sequence_classifier.SequenceClassifier",
        "backbone": transformer(),
        "input_shape": [T],
        "num_classes": CLASSES,
        "optimizer": ADAMW,
        "finetune": "lora",
        "lora": LORA,
        "pretrained": "pretrained.ckpt",
    }
    # strict: the handoff finds the backbone's plain layers (a renamed weight would fail it);
    # build_model then puts the adapters in
    module = build_model(model_cfg, pretrained)
    module.configure_model()  # what Trainer.fit does first: nothing more to do
    assert is_lora(module) and module.pending_lora is None
    state = module.backbone.state_dict()
    for key, value in weights.items():
        adapted_key = key
        if any(f".{p}." in f".{key}" for p in PROJECTIONS):
            layer, _, leaf = key.rpartition(".")
            adapted_key = f"{layer}.base_layer.{leaf}"
        assert torch.equal(state[adapted_key], value), key
    # B starts at zero: the adapted backbone computes the pretrained one's features
    x = tokens(seed=2)
    with torch.no_grad():
        assert torch.equal(module.backbone(x), lm.backbone(x))

    train_steps(module, classifier_loss(module))
    checkpoint = {k: v.clone() for k, v in module.state_dict().items()}
    assert any(".lora_B." in k for k in checkpoint)
    # ptft-eval: the module rebuilt from its hyper-parameters takes the checkpoint strictly
    rebuilt = SequenceClassifier(**hparams(module))
    rebuilt.inject_lora()  # as ptft.runs.load.load_run does for a checkpoint with adapters
    rebuilt.load_state_dict(checkpoint)
    assert is_lora(rebuilt)
    # a resume compares the state's names before Lightning loads it (check_resume), on the
    # module build_model made: adapters in
    fresh = SequenceClassifier(**hparams(module))
    fresh.inject_lora()
    assert list(fresh.state_dict()) == list(checkpoint)
    module.eval()
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), module(x))


# ---------------------------------------------------------------------------- FLOPs
def test_lora_flops_are_measured_and_skip_the_frozen_weight_gradients():
    """Measured, not analytic (None): the backward still runs through every layer for the
    activations' gradients, but computes weight gradients only for the adapters and the head.
    Checked against full fine-tuning's count, corrected by hand."""
    lora = adapted(classifier())
    full = classifier(finetune="full")
    assert lora.training_flops((tokens(), None)) is None and full.training_flops((tokens(),)) > 0
    assert generator().training_flops((tokens(), None)) is None
    assert generator(finetune="full").training_flops((tokens(), tokens())) > 0
    x = tokens(batch=4)
    batch = (x, x[:, 0] % CLASSES)
    measured_full = measured_training_flops(full, batch)
    measured_lora = measured_training_flops(lora, batch)
    n = x.numel()  # tokens
    d, f, r = 32, 128, LORA["r"]
    shapes = {"attn.qkv": (d, 3 * d), "attn.proj": (d, d), "mlp.fc": (d, f), "mlp.proj": (f, d)}
    expected = measured_full
    for _block in range(2):
        for d_in, d_out in shapes.values():
            expected -= 2 * n * d_in * d_out  # no weight gradient for the frozen weight
            expected += 6 * n * r * (d_in + d_out)  # A and B: forward, and both gradients
    # the first layer's input (the frozen embedding, normalised) needs no gradient: neither its
    # base layer nor its A computes one
    expected -= 2 * n * d * 3 * d + 2 * n * d * r
    assert measured_lora == expected
    print(f"FLOPs per step: full {measured_full:.3g}, LoRA {measured_lora:.3g}")


# ----------------------------------------------------------------------- one line
def test_missing_peft_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(ConfigError) as err:
        classifier()
    assert EXTRA in str(err.value) and "model.finetune=lora" in str(err.value)
    assert "\n" not in str(err.value) and EXTRA == "pip install 'ptft[peft]'"
    classifier(finetune="full")  # nothing else needs it


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        (
            {"target_modules": ["nothing"]},
            "model.lora.target_modules=[nothing] matches no layer; the Linear layers of "
            "Transformer: blocks.{0..1}.attn.qkv, blocks.{0..1}.attn.proj, blocks.{0..1}.mlp.fc, "
            "blocks.{0..1}.mlp.proj",
        ),
        (
            {"target_modules": r"blocks\.\d+\.attn\.q"},  # a regex matches whole names
            r"model.lora.target_modules=blocks\.\d+\.attn\.q matches no layer",
        ),
        ({"target_modules": "blocks"}, "matches blocks (ModuleList), which is not a Linear"),
        (
            {"target_modules": ["ln1"]},
            "matches blocks.0.ln1 (LayerNorm), blocks.1.ln1 (LayerNorm), which are not Linear",
        ),
        ({"target_modules": "blocks.("}, "not a regular expression"),
        ({"target_modules": []}, "name at least one module"),
        ({"rank": 4}, "model.lora.rank: not a key of model.lora; valid keys: r, alpha, dropout"),
        ({"r": 0}, "model.lora.r=0"),
        ({"dropout": 1.5}, "model.lora.dropout=1.5"),
    ],
)
def test_a_bad_lora_setting_is_one_line(lora, message):
    with pytest.raises(ConfigError) as err:
        classifier(lora=lora)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_bad_lora_key_fails_validation_before_the_run(tmp_path):
    from ptft.config.validate import validate
    from tests.helpers import compose_train

    cfg = compose_train(
        ["experiment=pydoc_package_classifier", "model.finetune=lora", "model.lora.rank=4"],
        tmp_path,
    )
    with pytest.raises(ConfigError, match=r"^model.lora.rank: not a key of model.lora") as err:
        validate(cfg)
    assert "\n" not in str(err.value)
    ok = compose_train(
        ["experiment=pydoc_name_generator", "model.finetune=lora", "model.lora.r=4"], tmp_path
    )
    validate(ok)
    bad = compose_train(
        ["experiment=pydoc_name_generator", "model.finetune=linear_probe"], tmp_path
    )
    with pytest.raises(ConfigError, match="model.finetune"):
        validate(bad)


def test_apply_lora_on_a_bare_backbone_counts_its_adapters():
    torch.manual_seed(0)
    backbone = Transformer([T], VOCAB, dim=32, num_layers=1, num_heads=2, dropout=0.0)
    assert not is_lora(backbone)
    count = apply_lora(backbone, {"r": 2, "target_modules": ["attn.proj"]})
    assert count == 2 * (32 + 32) and is_lora(backbone)
    with pytest.raises(ConfigError, match="already holds LoRA adapters"):
        apply_lora(backbone)


def test_the_image_classifier_adapts_the_linear_layers_it_is_told_to():
    from ptft.tasks.classifier import Classifier

    mlp = {"_target_": "ptft.nn.mlp.MLP"}
    with pytest.raises(ConfigError, match=r"matches no layer; the Linear layers of MLP: blocks"):
        Classifier(mlp, [1, 8, 8], 3, ADAMW, finetune="lora")
    torch.manual_seed(0)
    module = adapted(
        Classifier(
            mlp, [1, 8, 8], 3, ADAMW, finetune="lora", lora={"target_modules": r"blocks\.\d+\.0"}
        )
    )
    linears = [n for n, m in module.backbone.named_modules() if n.endswith(".base_layer")]
    assert linears and all(n.endswith(".0.base_layer") for n in linears)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ".lora_" in n} | {"head.1.weight", "head.1.bias"}
