"""ONNX export (ptft.interop.onnx): onnxruntime reproduces the torch logits at every batch size
and length, padding included; the caller's model is left as it was; a missing extra or a
wrong graph fails in one line. Each model is exported once per module (seconds each)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
import onnxruntime as ort  # noqa: E402

from ptft.errors import ConfigError  # noqa: E402
from ptft.interop.onnx import check_onnx, example_input, export_onnx  # noqa: E402
from ptft.objectives.causal_lm import CausalLM  # noqa: E402
from ptft.tasks.classifier import Classifier  # noqa: E402
from ptft.tasks.sequence_classifier import SequenceClassifier  # noqa: E402

#: each torch.onnx export takes seconds: out of the fast set
pytestmark = pytest.mark.slow

OPTIMIZER = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}
VOCAB, PAD = 300, 0
ATOL = 1e-4


def transformer(**overrides: object) -> dict[str, object]:
    return {
        "_target_": "ptft.nn.transformer.Transformer",
        "vocab_size": VOCAB,
        "dim": 32,
        "num_layers": 2,
        "num_heads": 4,
        "max_positions": 64,
        **overrides,
    }


def build(kind: str) -> nn.Module:
    """A small model of each kind the tests export, seeded, in train mode as after __init__."""
    torch.manual_seed(0)
    if kind == "causal_lm":
        return CausalLM(backbone=transformer(), input_shape=(16,), optimizer=OPTIMIZER)
    if kind == "sequence_classifier":
        # bidirectional with mean pooling: padding reaches both the attention (the key mask the
        # model derives from the pad id) and the pooling
        return SequenceClassifier(
            backbone=transformer(causal=False),
            input_shape=(16,),
            num_classes=3,
            optimizer=OPTIMIZER,
            pooling="mean",
        )
    if kind == "image_classifier":
        model = Classifier(
            backbone={"_target_": "ptft.nn.cnn.CNN", "channels": [8, 16]},
            input_shape=(1, 8, 8),
            num_classes=4,
            optimizer=OPTIMIZER,
        )
        # running statistics unlike a batch's: train-mode batch norm would give other logits
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
        return model
    raise ValueError(kind)


KINDS = ("causal_lm", "sequence_classifier", "image_classifier")


def inputs_for(kind: str, batch: int, length: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch * 100 + length)
    if kind == "image_classifier":
        return torch.randn(batch, 1, 8, 8, generator=generator)
    tokens = torch.randint(1, VOCAB, (batch, length), generator=generator)
    if kind == "sequence_classifier":
        # right padding: row i ends in i pad ids (row 0 unpadded)
        for i in range(batch):
            if i:
                tokens[i, length - min(i * 2, length - 1) :] = PAD
    return tokens


def flags(module: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in module.named_modules()}


class Exported:
    """A model, its training flags and weights from before its export, and the file."""

    def __init__(self, module: nn.Module, folder: Path, kind: str) -> None:
        self.module = module
        self.flags = flags(module)
        self.state = {k: v.clone() for k, v in module.state_dict().items()}
        self.path = export_onnx(module, folder / f"{kind}.onnx")
        self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Exported]:
    """Each kind built (in train mode) and exported once."""
    folder = tmp_path_factory.mktemp("onnx")
    return {kind: Exported(build(kind), folder, kind) for kind in KINDS}


def reference(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module's eval-mode logits, computed here independently of check_onnx."""
    clone = copy.deepcopy(module).eval()
    with torch.no_grad():
        return clone(x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("length", [5, 12])
def test_onnxruntime_reproduces_the_logits(
    exported: dict[str, Exported], kind: str, batch: int, length: int
) -> None:
    entry = exported[kind]
    x = inputs_for(kind, batch, length)
    name = entry.session.get_inputs()[0].name
    (got,) = entry.session.run(["logits"], {name: x.numpy()})
    expected = reference(entry.module, x)
    assert got.shape == tuple(expected.shape)
    difference = (torch.from_numpy(got) - expected).abs().max().item()
    assert difference <= ATOL, f"{kind} B={batch} T={length}: {difference:.2e}"
    # check_onnx measures the same difference
    assert check_onnx(entry.module, entry.path, [x], atol=ATOL) == pytest.approx(
        difference, abs=1e-6
    )


def test_padding_changes_the_sequence_logits(exported: dict[str, Exported]) -> None:
    """The graph honours padding: a row with pad ids at its end gives other logits than the
    same row with real tokens there, and the same logits as its unpadded prefix."""
    session = exported["sequence_classifier"].session
    row = inputs_for("sequence_classifier", 1, 12)
    padded = row.clone()
    padded[0, 8:] = PAD
    run = lambda x: session.run(["logits"], {"input_ids": x.numpy()})[0]  # noqa: E731
    assert abs(run(padded) - run(row)).max() > 1e-3
    assert abs(run(padded) - run(padded[:, :8])).max() <= ATOL


def test_a_causal_lm_reads_a_single_token(exported: dict[str, Exported]) -> None:
    entry = exported["causal_lm"]
    x = torch.tensor([[7], [42]])
    assert check_onnx(entry.module, entry.path, [x]) <= ATOL


def test_graph_interface(exported: dict[str, Exported]) -> None:
    """One input named for its kind, dynamic batch (and sequence) axes, one output, logits."""
    for kind in ("causal_lm", "sequence_classifier"):
        session = exported[kind].session
        (graph_input,) = session.get_inputs()
        assert graph_input.name == "input_ids"
        assert graph_input.type == "tensor(int64)"
        assert all(isinstance(axis, str) for axis in graph_input.shape)
        assert [o.name for o in session.get_outputs()] == ["logits"]
    session = exported["image_classifier"].session
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "pixel_values"
    assert graph_input.type == "tensor(float)"
    assert isinstance(graph_input.shape[0], str) and graph_input.shape[1:] == [1, 8, 8]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert session.get_outputs()[0].shape[1:] == [4]


@pytest.mark.parametrize("kind", KINDS)
def test_the_callers_module_is_untouched(exported: dict[str, Exported], kind: str) -> None:
    entry = exported[kind]
    module = entry.module
    assert module.training
    assert flags(module) == entry.flags
    state = module.state_dict()
    assert all(torch.equal(state[k], v) for k, v in entry.state.items())
    assert all(p.device.type == "cpu" and p.requires_grad for p in module.parameters())
    # every file left in the folder is a finished model: no staging leftovers
    assert sorted(p.name for p in entry.path.parent.iterdir()) == sorted(f"{k}.onnx" for k in KINDS)


def test_check_onnx_refuses_other_weights(exported: dict[str, Exported]) -> None:
    for kind in KINDS:
        entry = exported[kind]
        perturbed = copy.deepcopy(entry.module)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for parameter in perturbed.parameters():
                parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))
        x = inputs_for(kind, 3, 12)
        with pytest.raises(ConfigError, match="max abs difference") as info:
            check_onnx(perturbed, entry.path, [x])
        assert "\n" not in str(info.value)
        assert str(entry.path) in str(info.value)


def test_example_input(exported: dict[str, Exported]) -> None:
    tokens = example_input(exported["causal_lm"].module)
    assert tokens.dtype == torch.int64 and tokens.shape == (2, 16)
    assert tokens.min() >= 0 and tokens.max() < VOCAB and not (tokens == PAD).any()
    images = example_input(exported["image_classifier"].module)
    assert images.dtype == torch.float32 and images.shape == (2, 1, 8, 8)


def test_a_float64_mlp_from_a_one_row_example(tmp_path: Path) -> None:
    """An MLP backbone exports too; a float64 module gives a float32 graph and stays float64;
    a one-row example still leaves the batch axis dynamic."""
    torch.manual_seed(0)
    module = Classifier(
        backbone={"_target_": "ptft.nn.mlp.MLP", "hidden_dims": [32]},
        input_shape=(1, 8, 8),
        num_classes=4,
        optimizer=OPTIMIZER,
        head_dropout=0.5,
    ).double()
    path = export_onnx(module, tmp_path / "mlp.onnx", example=torch.randn(1, 1, 8, 8))
    assert module.training and all(p.dtype == torch.float64 for p in module.parameters())
    inputs = [torch.randn(b, 1, 8, 8) for b in (1, 3)]
    assert check_onnx(module, path, inputs) <= ATOL
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.onnx"]


class Broken(nn.Module):
    """A model whose forward fails, so its export does."""

    input_shape = (4,)

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this model cannot run")


def test_a_failed_export_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"the previous export")
    with pytest.raises(Exception, match="cannot run"):
        export_onnx(Broken(), path, example=torch.ones(2, 4))
    assert path.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_missing_onnxruntime_names_the_extra(
    exported: dict[str, Exported], monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = exported["image_classifier"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError) as info:
        check_onnx(entry.module, entry.path, [inputs_for("image_classifier", 1, 1)])
    message = str(info.value)
    assert "\n" not in message
    assert "pip install 'ptft[onnx]'" in message and "onnxruntime" in message


def test_a_missing_onnxscript_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ConfigError) as info:
        export_onnx(Broken(), tmp_path / "model.onnx")
    message = str(info.value)
    assert "\n" not in message
    assert "pip install 'ptft[onnx]'" in message and "onnxscript" in message
    assert not any(tmp_path.iterdir())


def test_bad_inputs_fail_in_one_line(exported: dict[str, Exported], tmp_path: Path) -> None:
    entry = exported["causal_lm"]
    with pytest.raises(ConfigError, match="max_positions=64"):
        check_onnx(entry.module, entry.path, [torch.ones(1, 65, dtype=torch.long)])
    with pytest.raises(ConfigError, match="integer token ids"):
        check_onnx(entry.module, entry.path, [torch.randn(1, 5)])
    image = exported["image_classifier"]
    with pytest.raises(ConfigError, match=r"images of shape \(B, 1, 8, 8\)"):
        export_onnx(image.module, tmp_path / "x.onnx", example=torch.randn(2, 3, 8, 8))
    with pytest.raises(ConfigError, match="no such ONNX file"):
        check_onnx(image.module, tmp_path / "missing.onnx", [torch.randn(1, 1, 8, 8)])
    assert not any(tmp_path.iterdir())
