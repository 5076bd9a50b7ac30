"""``model.finetune=lora`` end to end: a short ``ptft-train`` run of the docstring package
classifier learns, and ``ptft-eval`` rebuilds its checkpoint (adapters included) and tests it
to the same numbers; under DDP (2 gloo processes) the adapters, made on each process after the
module was sent there, train in step while the frozen base stays as it was."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("peft")

from ptft.callbacks.process_group import ProcessGroupCleanup  # noqa: E402
from ptft.interop.lora import is_lora  # noqa: E402
from ptft.runs.build import build_datamodule, plain  # noqa: E402
from ptft.runs.fit import train  # noqa: E402
from ptft.tasks.sequence_classifier import SequenceClassifier  # noqa: E402
from tests.helpers import QUIET, compose_train  # noqa: E402

#: a small model that LoRA can adapt in a few hundred steps: RoPE rather than added sinusoidal
#: positions, which at random init are ~50x the 0.02-std token embeddings, so that the frozen
#: residual stream a LoRA run cannot change still carries which tokens a docstring holds
SMALL = [
    "data.vocab_size=512",
    "data.max_length=32",
    "data.batch_size=32",
    "data.eval_batch_size=128",
    # a larger validation split: the default 5% is half one module of `logging`
    "data.val_fraction=0.15",
    "model.backbone.dim=64",
    "model.backbone.num_layers=2",
    "model.backbone.num_heads=2",
    "model.backbone.dropout=0.0",
    "model.backbone.positions=rope",
]
STEPS = 300


def test_a_lora_run_learns_and_ptft_eval_rebuilds_it(tmp_path):
    from ptft.evaluation.report import evaluate

    run = tmp_path / "run"
    overrides = [
        "experiment=pydoc_package_classifier",
        "model.finetune=lora",
        f"data.cache_dir={tmp_path / 'cache'}",
        *SMALL,
        "model.optimizer.lr=3e-3",
        "model.scheduler.min_factor=0.1",  # a run resumed past the schedule still steps
        f"trainer.val_check_interval={STEPS}",
        "logger=none",
        *QUIET,
    ]
    cfg = compose_train([*overrides, f"trainer.max_steps={STEPS}"], run)
    metrics = train(cfg)

    # chance: the best a model that does not read the text can expect, from the training labels
    datamodule = build_datamodule(plain(cfg.data), supervised=True)
    datamodule.setup("fit")
    train_counts = Counter(datamodule.datasets["train"].labels)
    val_counts = Counter(datamodule.datasets["val"].labels)
    n_train, n_val = sum(train_counts.values()), sum(val_counts.values())
    num_classes = len(datamodule.label_names)
    prior = sum(train_counts[c] / n_train * val_counts[c] / n_val for c in range(num_classes))
    constant = val_counts[train_counts.most_common(1)[0][0]] / n_val  # the commonest class
    chance = max(1 / num_classes, prior, constant)
    print(
        f"val/acc {metrics['val/acc']:.3f} (f1 {metrics['val/f1']:.3f}); chance {chance:.3f} "
        f"(uniform {1 / num_classes:.3f}, training prior {prior:.3f}, commonest class "
        f"{constant:.3f})"
    )
    assert metrics["val/acc"] > chance + 0.08
    assert metrics["val/f1"] > 0.15  # not one class for everything

    # the checkpoint holds the adapters, and the frozen base under its peft names
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state, hparams = ckpt["state_dict"], ckpt["hyper_parameters"]
    assert hparams["finetune"] == "lora"
    assert any(k.endswith("attn.qkv.lora_B.default.weight") for k in state)
    assert "backbone.blocks.0.attn.qkv.base_layer.weight" in state
    assert not any(k.endswith("attn.qkv.weight") and "base_layer" not in k for k in state)
    # ptft-eval: rebuilt from the checkpoint alone, adapters included, to the same numbers
    eval_cfg = compose_train(
        [
            f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            "logger=none",
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
        ],
        tmp_path / "eval",
        config_name="eval",
    )
    evaluated = evaluate(eval_cfg)
    for key in ("test/loss", "test/acc", "test/f1"):
        assert evaluated[key] == pytest.approx(metrics[key], rel=1e-5), key

    # ckpt_path= resumes it (the names checked before Lightning reads it): the adapters and the
    # head go on training, the frozen base does not move
    resumed = tmp_path / "resumed"
    cfg = compose_train(
        [
            *overrides,
            f"trainer.max_steps={STEPS + 10}",
            f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
            "test=false",
        ],
        resumed,
    )
    train(cfg)
    after = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["global_step"] == STEPS + 10 and after["state_dict"].keys() == state.keys()
    for key, value in state.items():
        moved = not torch.equal(after["state_dict"][key], value)
        assert moved == (".lora_" in key or key.startswith("head.")), key


# ------------------------------------------------------------------------------- DDP
WORLD = 2


class MadeHere(SequenceClassifier):
    """Keeps the adapters as each process made them, before DDP wrapped the module."""

    def configure_model(self) -> None:
        super().configure_model()
        self.made = {n: p.detach().clone() for n, p in self.named_parameters() if ".lora_A." in n}


class Record(L.Callback):
    """Seeds each process differently before the adapters are made (so only DDP can make them
    agree), and writes ``rank<r>.pt``: the parameters after the step, the gradients DDP
    averaged, and which parameters train."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.record: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        torch.set_num_threads(1)  # 2 processes share 2 busy cores
        torch.manual_seed(100 + trainer.global_rank)  # runs before configure_model

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.record["grads"] = {
            n: p.grad.detach().clone()
            for n, p in pl_module.named_parameters()
            if p.grad is not None
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["params"] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        self.record["made"] = pl_module.made
        self.record["trainable"] = sorted(
            n for n, p in pl_module.named_parameters() if p.requires_grad
        )
        torch.save(self.record, self.out_dir / f"rank{trainer.global_rank}.pt")


def test_lora_under_ddp_syncs_the_adapters_and_leaves_the_base(tmp_path):
    torch.manual_seed(0)
    backbone = {
        "_target_": "ptft.nn.transformer.Transformer",
        "vocab_size": 100,
        "dim": 16,
        "num_layers": 1,
        "num_heads": 2,
        "dropout": 0.0,
        "max_positions": 8,
        "pad_token_id": 0,
    }
    model = MadeHere(backbone, [8], 3, {"_target_": "torch.optim.SGD", "lr": 0.5}, finetune="lora")
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokens = torch.randint(1, 100, (4 * WORLD, 8), generator=torch.Generator().manual_seed(1))
    data = TensorDataset(tokens, tokens[:, 0] % 3)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy="ddp_spawn",
        max_steps=2,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[Record(tmp_path), ProcessGroupCleanup()],
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(model, train_dataloaders=DataLoader(data, batch_size=4))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    made = [rank["made"] for rank in ranks]
    assert made[0].keys() == made[1].keys() and made[0]
    assert all(not torch.equal(made[0][n], made[1][n]) for n in made[0])  # each its own
    trainable = ranks[0]["trainable"]
    assert trainable == ranks[1]["trainable"]
    assert set(trainable) == {n for n in ranks[0]["params"] if ".lora_" in n} | {
        "head.1.weight",
        "head.1.bias",
    }
    assert set(ranks[0]["grads"]) == set(trainable)  # no gradient for the frozen base
    for name in ranks[0]["params"]:
        # one model on both processes: adapters made with different seeds, synchronised by DDP
        assert torch.equal(ranks[0]["params"][name], ranks[1]["params"][name]), name
        if name in trainable:
            assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
        else:  # the base, as it was built, bit for bit
            key = name.replace(".base_layer.", ".")
            assert torch.equal(ranks[0]["params"][name], base[key]), name
    assert any(
        n.endswith("lora_B.default.weight") and ranks[0]["params"][n].abs().sum() > 0
        for n in trainable
    )
    # ddp_spawn hands rank 0's weights back to this process's module: adapters and all
    assert is_lora(model)
    for name, value in ranks[0]["params"].items():
        assert torch.equal(dict(model.named_parameters())[name].detach(), value), name


# -------------------------------------------------------------------------- pipeline
def test_the_pipeline_takes_lora_as_a_method():
    """``lora`` is a method of the study that starts from the pretrained backbone; the text
    study's tasks say what it changes (``method_overrides.lora: [model.finetune=lora]``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ptft.cli import config_dir
    from ptft.study.runner import Run, check, run_overrides

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(
            config_name="pipeline",
            overrides=[
                "pipeline=text",
                "tasks.package.methods=[scratch,lora]",
                "tasks.names.methods=[finetune,lora]",
            ],
        )
        check(cfg)  # every run composes and validates, the generator's LoRA included
        for task in ("package", "names"):
            overrides = run_overrides(
                cfg, Run(task, 1.0, "lora", 0), Path("pretrain.ckpt"), Path("out")
            )
            assert "model.finetune=lora" in overrides
            assert "model.pretrained='pretrain.ckpt'" in overrides  # the pretrained backbone
