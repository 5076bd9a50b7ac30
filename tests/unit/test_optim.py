"""Fine-tuning methods: discriminative rates and weight decay per parameter group, gradual
unfreezing, and the linear scaling rule with its warmup, each against the rule written out."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn

from ptft.errors import ConfigError
from ptft.modules.backbone_module import BackboneModule
from ptft.nn.backbone import Backbone
from ptft.optim import unfreeze_count, unfreeze_stage
from ptft.runs.build import build_datamodule, build_model, plain
from ptft.tasks.classifier import Classifier
from tests.helpers import QUIET, compose_train

ADAMW = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 0.1, "weight_decay": 0.01}
MLP3 = {"_target_": "ptft.nn.mlp.MLP", "hidden_dims": [8, 8, 8]}


class NoGroups(Backbone):
    """A backbone that lists no layer groups."""

    def __init__(self, input_shape):
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), 4)
        self.out_dim = 4

    def forward(self, x):
        return self.linear(x.flatten(1))


def classifier(**kwargs) -> Classifier:
    args = {
        "backbone": MLP3,
        "input_shape": [1, 8, 8],
        "num_classes": 10,
        "optimizer": ADAMW,
        **kwargs,
    }
    return Classifier(**args)


def groups_by_param(optimizer) -> dict[int, dict]:
    """Each parameter's group; fails if a parameter is in two."""
    owner: dict[int, dict] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in owner, "a parameter is in two groups"
            owner[id(p)] = group
    return owner


# --------------------------------------------------------------- discriminative rates
def test_discriminative_rates_per_layer_group():
    model = classifier(discriminative_lr=2.6)
    optimizer = model.configure_optimizers()
    owner = groups_by_param(optimizer)
    # the head is the top group at lr; backbone block i of 3 gets lr / 2.6^(3 - i)
    expected_lr = {
        "head": 0.1,
        "backbone.blocks.2": 0.1 / 2.6,
        "backbone.blocks.1": 0.1 / 2.6**2,
        "backbone.blocks.0": 0.1 / 2.6**3,
    }
    for name, p in model.named_parameters():
        group = owner.pop(id(p))  # every parameter is in a group
        prefix = "head" if name.startswith("head.") else ".".join(name.split(".")[:3])
        assert group["lr"] == pytest.approx(expected_lr[prefix]), name
        # Linear weights decay; biases and LayerNorm scales and shifts do not
        assert group["weight_decay"] == (
            0.01 if name.endswith("0.weight") or name == "head.1.weight" else 0.0
        ), name
    assert not owner  # and no group holds anything else
    assert len(optimizer.param_groups) == 8  # 4 rates x (decay, no decay)


def test_one_rate_without_the_factor():
    for factor in (None, 1.0):
        optimizer = classifier(discriminative_lr=factor).configure_optimizers()
        assert [g["name"] for g in optimizer.param_groups] == ["decay", "no_decay"]
        assert {g["lr"] for g in optimizer.param_groups} == {0.1}
        assert sum(len(g["params"]) for g in optimizer.param_groups) == len(
            list(classifier().parameters())
        )


class TiedLM(BackboneModule):
    """A Transformer with learned positions and an output layer tied to the token embedding."""

    def __init__(self):
        backbone = {
            "_target_": "ptft.nn.transformer.Transformer",
            "vocab_size": 50,
            "dim": 16,
            "num_layers": 2,
            "num_heads": 2,
            "max_positions": 16,
            "positions": "learned",
        }
        super().__init__(backbone, [16], ADAMW)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.backbone.token_embedding.weight
        self.probe = nn.Linear(16, 3)

    def extra_param_groups(self):
        return [
            {"params": self.probe.parameters(), "lr": 0.5, "weight_decay": 0.0, "name": "probe"}
        ]


def test_transformer_groups_weight_decay_tied_weights_and_extra_groups():
    model = TiedLM()
    model.configure_lr(discriminative_lr=2.0)
    optimizer = model.configure_optimizers()
    owner = groups_by_param(optimizer)
    assert set(owner) == {
        id(p) for p in model.parameters()
    }  # each parameter once, the tied one too
    # 4 layer groups (embeddings, 2 blocks, final norm) under the head
    assert owner[id(model.backbone.token_embedding.weight)]["lr"] == pytest.approx(0.1 / 2**4)
    assert owner[id(model.backbone.blocks[1].attn.proj.weight)]["lr"] == pytest.approx(0.1 / 2**2)
    assert owner[id(model.backbone.norm.weight)]["lr"] == pytest.approx(0.1 / 2)
    # token embeddings decay (a weight, here the output layer's too); positions and norms do not
    assert owner[id(model.backbone.token_embedding.weight)]["weight_decay"] == 0.01
    assert owner[id(model.backbone.position_embedding.weight)]["weight_decay"] == 0.0
    assert owner[id(model.backbone.blocks[0].ln1.weight)]["weight_decay"] == 0.0
    assert owner[id(model.backbone.blocks[0].mlp.fc.bias)]["weight_decay"] == 0.0
    assert owner[id(model.backbone.blocks[0].mlp.fc.weight)]["weight_decay"] == 0.01
    # the extra group comes last, as given, and its parameters are nowhere else
    probe = optimizer.param_groups[-1]
    assert probe["name"] == "probe" and probe["lr"] == 0.5
    assert [id(p) for p in probe["params"]] == [id(p) for p in model.probe.parameters()]


def test_linear_probe_optimizes_only_the_head():
    model = classifier(finetune="linear_probe", discriminative_lr=2.6)
    params = [p for g in model.configure_optimizers().param_groups for p in g["params"]]
    assert {id(p) for p in params} == {id(p) for p in model.head.parameters()}


def test_backbone_without_layer_groups_is_refused():
    backbone = {"_target_": "tests.unit.test_optim.NoGroups"}
    with pytest.raises(
        ConfigError, match=r"model.discriminative_lr needs a backbone with layer groups.*NoGroups"
    ):
        classifier(backbone=backbone, discriminative_lr=2.6).configure_optimizers()
    with pytest.raises(
        ConfigError, match=r"model.finetune=gradual_unfreeze needs a backbone with layer groups"
    ):
        classifier(backbone=backbone, finetune="gradual_unfreeze")


# ---------------------------------------------------------------- gradual unfreezing
class Recorder(L.Callback):
    """After each training epoch: which layer groups train, their modes, and their state."""

    def __init__(self):
        self.trainable, self.training, self.states, self.head = [], [], [], []

    def on_train_epoch_end(self, trainer, pl_module):
        groups = pl_module.backbone.layer_groups()
        self.trainable.append([any(p.requires_grad for p in g.parameters()) for g in groups])
        self.training.append([g.training for g in groups])
        self.states.append([{k: v.clone() for k, v in g.state_dict().items()} for g in groups])
        self.head.append(pl_module.head[1].weight.detach().clone())


def test_gradual_unfreezing_one_group_per_epoch_from_the_top(tmp_path):
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            "logger=none",
            *QUIET,
            "model.backbone.channels=[4,4,4]",
            "model.finetune=gradual_unfreeze",
            "model.unfreeze_schedule=epochs",
            "data.batch_size=32",
        ],
        tmp_path,
    )
    model = build_model(plain(cfg.model))
    initial = [
        {k: v.clone() for k, v in g.state_dict().items()} for g in model.backbone.layer_groups()
    ]
    head_initial = model.head[1].weight.detach().clone()
    recorder = Recorder()
    trainer = L.Trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[recorder],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=build_datamodule(plain(cfg.data), supervised=True))

    # epoch 0: the head alone; then one more of the 3 stages per epoch, from the top
    assert recorder.trainable == [[False, False, False], [False, False, True], [False, True, True]]
    assert recorder.training == recorder.trainable  # frozen groups stay in eval mode
    for epoch, trainable in enumerate(recorder.trainable):
        for i, state in enumerate(recorder.states[epoch]):
            same = all(
                torch.equal(state[k], initial[i][k]) for k in state
            )  # weights and BN statistics
            assert same != trainable[i], (epoch, i)  # frozen: untouched; trainable: trained
    assert not torch.equal(recorder.head[0], head_initial)  # the head trains from the start
    # every parameter was in the optimizer from the start: no new optimizer was needed
    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters()}


def test_unfreeze_epochs_sets_the_stage_length():
    assert [unfreeze_stage(e, epochs_per_stage=2) for e in range(6)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ConfigError, match="model.unfreeze_epochs=0"):
        classifier(finetune="gradual_unfreeze", unfreeze_epochs=0)


def test_unfreeze_settings_are_checked():
    for bad, match in [
        ({"unfreeze_fraction": 0.0}, r"model.unfreeze_fraction=0.0: "),
        ({"unfreeze_fraction": 1.5}, r"model.unfreeze_fraction=1.5: "),
        ({"unfreeze_schedule": "batches"}, r"model.unfreeze_schedule='batches' is not one of"),
    ]:
        with pytest.raises(ConfigError, match=match):
            classifier(finetune="gradual_unfreeze", **bad)
    # an epoch count under the step schedule would be ignored: refused when the fit starts
    # (not when the module is built: older checkpoints hold unfreeze_epochs=1 and must load)
    model = classifier(finetune="gradual_unfreeze", unfreeze_epochs=2)
    model.trainer = SimpleNamespace(world_size=1)  # what setup reads
    with pytest.raises(ConfigError, match=r"model.unfreeze_epochs=2 sets the epoch schedule"):
        model.setup("fit")
    model = classifier(finetune="gradual_unfreeze", unfreeze_epochs=2, unfreeze_schedule="epochs")
    model.trainer = SimpleNamespace(world_size=1)
    model.setup("fit")


@pytest.mark.parametrize(
    ("groups", "total", "fraction", "starts"),
    [
        # the digits study: 3 CNN groups, 200 steps; a stage of 100 / 3 steps
        (3, 200, 0.5, [34, 67, 100]),
        # the text study at 100% labels: 6 transformer groups, 300 steps (epochs of ~100
        # steps unfroze 3 of them in the epoch schedule)
        (6, 300, 0.5, [25, 50, 75, 100, 125, 150]),
        (2, 10, 0.25, [1, 2]),  # the last group at round(2.5) = 2 (to even): stages of 1 step
        (4, 10, 1.0, [3, 5, 7, 9]),  # a fraction of 1: the last group trains for the last step
        (3, 2, 0.5, [1, 1, 1]),  # fewer steps than groups: all at once, after one head step
    ],
)
def test_unfreeze_count_spreads_the_groups_over_the_fraction(groups, total, fraction, starts):
    # starts: the step at which the k-th group from the top starts training, worked out by
    # hand as ceil(k × last / groups), last ≈ fraction × total
    counts = [unfreeze_count(step, total, groups, fraction) for step in range(total)]
    expected = [sum(step >= start for start in starts) for step in range(total)]
    assert counts == expected
    assert counts[0] == 0  # the head alone first
    assert counts[-1] == groups  # every group trains before the run ends


def test_unfreeze_count_properties_over_many_runs():
    for groups in range(1, 8):
        for total in range(2, 60):
            for fraction in (0.05, 0.3, 0.5, 0.7, 1.0):
                counts = [unfreeze_count(s, total, groups, fraction) for s in range(total)]
                last = min(total - 1, max(1, math.ceil(fraction * total)))
                assert counts[0] == 0 and counts[last:] == [groups] * (total - last)
                assert all(a <= b for a, b in itertools.pairwise(counts))
                # all of them at ≈ fraction × total (at most the last step)
                assert abs(counts.index(groups) - min(fraction * total, total - 1)) <= 1
                # evenly: the stages (steps between two group starts) differ by at most one
                starts = [counts.index(k) for k in range(1, groups + 1) if k in counts]
                if len(starts) == groups and starts[-1] >= groups:
                    gaps = [b - a for a, b in itertools.pairwise([0, *starts])]
                    assert max(gaps) - min(gaps) <= 1, (groups, total, fraction, counts)


class StepRecorder(L.Callback):
    """Before each backward (every batch, accumulated or not): the optimizer step, how many
    layer groups train (from the top), and whether those that do are the top ones."""

    def __init__(self):
        self.steps, self.counts, self.modes = [], [], []

    def on_before_backward(self, trainer, pl_module, loss):
        groups = pl_module.backbone.layer_groups()
        trainable = [any(p.requires_grad for p in g.parameters()) for g in groups]
        count = sum(trainable)
        assert trainable == [False] * (len(groups) - count) + [True] * count
        self.steps.append(trainer.global_step)
        self.counts.append(count)
        self.modes.append([g.training for g in groups] == trainable)


#: 1% of the digits' labels (14 images) in batches of 4, two batches a step (of the first
#: two): an epoch is one step
ONE_STEP_EPOCHS = [
    "experiment=digits_classifier",
    "logger=none",
    *QUIET,
    "model.backbone.channels=[4,4,4]",
    "data.label_fraction=0.01",
    "data.batch_size=4",
]


def fit_tiny(cfg, finetune, max_steps=8, ckpt_path=None, callbacks=()):
    """Fit the digits classifier of ``cfg`` (seed 0) with ``finetune`` for ``max_steps`` steps;
    the module, and what a StepRecorder saw."""
    L.seed_everything(0, verbose=False)
    model = build_model({**plain(cfg.model), "finetune": finetune})
    recorder = StepRecorder()
    trainer = L.Trainer(
        max_steps=max_steps,
        limit_train_batches=2,
        accumulate_grad_batches=2,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[recorder, *callbacks],
        logger=False,
        enable_checkpointing=bool(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    datamodule = build_datamodule(plain(cfg.data), supervised=True)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return model, recorder


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A full and a gradual fine-tune of 8 one-step epochs; the gradual one checkpoints at 3."""
    tmp = tmp_path_factory.mktemp("unfreeze")
    cfg = compose_train(ONE_STEP_EPOCHS, tmp)
    full, _ = fit_tiny(cfg, "full")
    every5 = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=tmp / "ckpt", every_n_train_steps=3, save_top_k=-1, filename="{step}"
    )
    gradual, recorder = fit_tiny(cfg, "gradual_unfreeze", callbacks=[every5])
    return cfg, full, gradual, recorder, tmp / "ckpt" / "step=3.ckpt"


def test_gradual_unfreezing_in_steps_when_an_epoch_is_one_step(tiny_runs):
    _, full, gradual, recorder, _ = tiny_runs
    # two batches a step, one step an epoch; 8 steps, 3 groups, the last from step 4: the
    # head alone for 2 steps, then the groups at steps ceil(4/3), ceil(8/3) and 4 (the epoch
    # schedule would have unfrozen them at steps 1, 2 and 3)
    assert recorder.steps == [s for s in range(8) for _ in range(2)]
    assert recorder.counts[::2] == [0, 0, 1, 2, 3, 3, 3, 3]
    assert recorder.counts[1::2] == recorder.counts[::2]  # constant over an accumulated step
    assert all(recorder.modes)  # frozen groups in eval mode, trainable ones in train mode
    assert all(p.requires_grad for p in gradual.backbone.parameters())  # all of it at the end
    # methods that differ must differ: the same data, seed and steps, other final weights
    pairs = zip(full.backbone.named_parameters(), gradual.backbone.parameters(), strict=True)
    for (name, a), b in pairs:
        assert not torch.equal(a, b), name


def test_gradual_unfreezing_resumes_at_the_stage_of_its_step(tiny_runs):
    cfg, _, _, uninterrupted, checkpoint = tiny_runs
    _, resumed = fit_tiny(cfg, "gradual_unfreeze", ckpt_path=checkpoint)
    # a new module starts frozen; from step 3 on it trains what the uninterrupted run did
    assert resumed.steps == uninterrupted.steps[6:]
    assert resumed.counts == uninterrupted.counts[6:]
    assert all(resumed.modes)


# --------------------------------------------------------------- linear scaling rule
def fake_trainer(devices=1, nodes=1, accumulate=1, batch_size=32, batches=40):
    """What configure_optimizers reads of a Trainer, for a run on ``devices × nodes`` processes."""
    steps = math.ceil(batches / accumulate)
    return SimpleNamespace(
        world_size=devices * nodes,
        accumulate_grad_batches=accumulate,
        is_global_zero=True,
        datamodule=SimpleNamespace(batch_size=batch_size),
        num_training_batches=batches,
        estimated_stepping_batches=10 * steps,
    )


def scaled(model, trainer):
    model.trainer = trainer
    optimizer = model.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    return {g["name"]: g["lr"] for g in optimizer.param_groups}


@pytest.mark.parametrize("devices, nodes, accumulate", [(1, 1, 1), (2, 1, 1), (1, 1, 4), (2, 2, 4)])
def test_linear_scaling_counts_devices_nodes_and_accumulation(devices, nodes, accumulate):
    rule = {"base_batch": 64, "warmup_steps": 0}
    rates = scaled(
        classifier(lr_scaling=rule), fake_trainer(devices, nodes, accumulate, batch_size=32)
    )
    # Goyal et al.: lr = base_lr × global_batch / base_batch, global = 32 per device × devices ×
    # nodes × accumulate
    assert rates["decay"] == pytest.approx(0.1 * 32 * devices * nodes * accumulate / 64)
    # with layer-wise rates every group scales alike
    rates = scaled(
        classifier(lr_scaling=rule, discriminative_lr=2.6), fake_trainer(devices, nodes, accumulate)
    )
    assert rates["backbone.0/decay"] == pytest.approx(
        0.1 * 32 * devices * nodes * accumulate / 64 / 2.6**3
    )


def test_two_devices_and_four_accumulated_batches_double_and_quadruple_the_rate():
    rule = {"base_batch": 32, "warmup_steps": 0}
    one = scaled(classifier(lr_scaling=rule), fake_trainer())["decay"]
    assert one == pytest.approx(0.1)  # the base batch: the base rate
    assert scaled(classifier(lr_scaling=rule), fake_trainer(devices=2))["decay"] == pytest.approx(
        2 * one
    )
    assert scaled(classifier(lr_scaling=rule), fake_trainer(accumulate=4))[
        "decay"
    ] == pytest.approx(4 * one)


def lrs_of(model, trainer, steps):
    model.trainer = trainer
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("warmup", [{"warmup_steps": 10}, {"warmup_epochs": 1}])
def test_gradual_warmup_is_linear_from_the_base_rate(warmup):
    # 2 devices × 4 accumulated × 32 = 256 = 4 × base_batch: from 0.1 to 0.4 over 10 steps
    # (an epoch of 40 batches is 10 optimizer steps when 4 are accumulated)
    model = classifier(lr_scaling={"base_batch": 64, **warmup}, scheduler=None)
    lrs = lrs_of(model, fake_trainer(devices=2, accumulate=4, batch_size=32, batches=40), 15)
    # Goyal et al. §2.2: η_t = η + (kη − η)·t/W, then kη
    assert lrs == pytest.approx([0.1 + (0.4 - 0.1) * t / 10 for t in range(10)] + [0.4] * 5)


def test_gradual_warmup_multiplies_the_configured_schedule():
    cosine = {"_target_": "ptft.schedules.warmup_cosine", "_partial_": True, "warmup_fraction": 0.0}
    model = classifier(lr_scaling={"base_batch": 32, "warmup_steps": 4}, scheduler=cosine)
    trainer = fake_trainer(devices=2, batches=10)  # 10 epochs of 10 steps
    lrs = lrs_of(model, trainer, 8)
    for t, lr in enumerate(lrs):
        ramp = 0.5 + 0.5 * t / 4 if t < 4 else 1.0  # from 0.1 = 0.2 / 2 to 0.2
        assert lr == pytest.approx(0.2 * ramp * 0.5 * (1 + math.cos(math.pi * t / 100))), t


def test_no_warmup_when_the_rule_lowers_the_rate():
    model = classifier(lr_scaling={"base_batch": 128, "warmup_steps": 5}, scheduler=None)
    assert lrs_of(model, fake_trainer(batch_size=32), 3) == pytest.approx([0.025] * 3)


def test_effective_rate_is_logged_in_a_real_fit(tmp_path):
    cfg = compose_train(
        [
            "experiment=digits_classifier",
            "logger=none",
            *QUIET,
            "model.backbone.channels=[4]",
            "model.lr_scaling.enabled=true",
            "model.lr_scaling.base_batch=32",
            "model.lr_scaling.warmup_steps=1",
            "data.batch_size=16",
        ],
        tmp_path,
    )
    model = build_model(plain(cfg.model))
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=8,
        limit_val_batches=1,
        accumulate_grad_batches=4,
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=build_datamodule(plain(cfg.data), supervised=True))
    # 16 per device × 1 device × 4 accumulated = 64 = 2 × 32: twice model.optimizer.lr
    expected = cfg.model.optimizer.lr * 16 * 4 / 32
    assert float(trainer.logged_metrics["lr/effective"]) == pytest.approx(expected)
    assert float(trainer.logged_metrics["lr/global_batch"]) == 64
    assert trainer.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(expected)
    csv = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "lr/effective" in csv.splitlines()[0]


@pytest.mark.parametrize(
    "rule", [{}, {"base_batch": None, "warmup_epochs": 5}, {"enabled": True, "base_batch": 0}]
)
def test_scaling_rule_without_a_base_batch_is_refused(rule):
    with pytest.raises(
        ConfigError,
        match=r"^model.lr_scaling.base_batch is not set: .*model.lr_scaling.base_batch=256",
    ):
        classifier(lr_scaling=rule)


def test_scaling_rule_without_a_base_batch_from_the_command_line(tmp_path):
    cfg = compose_train(["experiment=digits_classifier", "model.lr_scaling.enabled=true"], tmp_path)
    with pytest.raises(ConfigError, match="model.lr_scaling.base_batch is not set"):
        build_model(plain(cfg.model))
    cfg = compose_train(
        ["experiment=digits_classifier", "model.lr_scaling.base_batch=256"], tmp_path
    )
    assert (
        build_model(plain(cfg.model)).lr_scaling is None
    )  # a recipe's base batch, the rule switched off
