"""Transformer backbone: shapes, causality, padding, the kv-cache against a full pass,
GPT-2 init, layer groups, parameter and FLOP counts, construction from config, bf16."""

from __future__ import annotations

import math

import pytest
import torch

from ptft.nn.backbone import build_backbone
from ptft.nn.transformer import Transformer

VOCAB = 50
POSITIONS = ["sinusoidal", "learned", "rope"]


def small(positions: str = "sinusoidal", causal: bool = True, **kwargs) -> Transformer:
    torch.manual_seed(0)
    config = dict(vocab_size=VOCAB, dim=32, num_layers=2, num_heads=4, max_positions=32)
    return Transformer((16,), positions=positions, causal=causal, **{**config, **kwargs}).eval()


def tokens(b: int = 2, t: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("positions", POSITIONS)
@pytest.mark.parametrize("causal", [True, False])
def test_output_shape(positions, causal):
    model = small(positions, causal)
    out = model(tokens(3, 11))
    assert out.shape == (3, 11, 32) and model.out_dim == 32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("positions", POSITIONS)
def test_positions_break_permutation_symmetry(positions):
    # without position information a bidirectional Transformer is permutation-equivariant
    model = small(positions, causal=False)
    x = tokens(1, 8)
    perm = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    assert not torch.allclose(model(x[:, perm]), model(x)[:, perm], atol=1e-4)


@pytest.mark.parametrize("positions", POSITIONS)
def test_causal_model_ignores_future_tokens(positions):
    model = small(positions, causal=True)
    x = tokens()
    y = x.clone()
    y[:, 6] = (y[:, 6] + 1) % VOCAB
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-6)
    assert not torch.allclose(
        a[:, 6:], b[:, 6:], atol=1e-4
    )  # the change itself shows from there on


@pytest.mark.parametrize("positions", POSITIONS)
def test_bidirectional_model_ignores_padded_tokens(positions):
    model = small(positions, causal=False)
    x = tokens()
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, 6:] = False
    y = x.clone()
    y[1, 6:] = torch.tensor([5, 9, 11, 13])  # other ids at the padded places
    a, b = model(x, mask), model(y, mask)
    torch.testing.assert_close(a[1, :6], b[1, :6], rtol=0, atol=1e-6)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=1e-6)
    # bidirectional: a later real token does change an earlier one
    z = x.clone()
    z[1, 5] = (z[1, 5] + 1) % VOCAB
    assert not torch.allclose(model(z, mask)[1, 0], a[1, 0], atol=1e-4)


def test_bidirectional_default_mask_comes_from_pad_token_id():
    model = small("learned", causal=False, pad_token_id=0)
    x = tokens()
    x[0, 7:] = 0
    explicit = model(x, x != 0)
    torch.testing.assert_close(model(x), explicit, rtol=0, atol=1e-6)
    unmasked = model(x, torch.ones_like(x, dtype=torch.bool))
    assert not torch.allclose(unmasked[0, :7], explicit[0, :7], atol=1e-4)


@pytest.mark.parametrize("positions", POSITIONS)
def test_kv_cache_decoding_equals_the_full_pass(positions):
    model = small(positions, causal=True)
    x = tokens(2, 12)
    full = model(x)
    # a prompt of 5 tokens, then one token at a time
    out, cache = model(x[:, :5], return_cache=True)
    steps = [out]
    for t in range(5, 12):
        out, cache = model(x[:, t : t + 1], kv_cache=cache, return_cache=True)
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-4)
    assert len(cache) == 2 and cache[0][0].shape == (2, 4, 12, 8)


def test_kv_cache_with_left_padding_and_rope_matches_unpadded_features():
    # RoPE is relative, so a left-padded, masked sequence gives the unpadded features
    model = small("rope", causal=True)
    x = tokens(1, 8)
    reference = model(x)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), x], dim=1)
    mask = padded != 0
    out, cache = model(padded[:, :6], mask[:, :6], return_cache=True)
    steps = [out]
    for t in range(6, 11):
        out, cache = model(
            padded[:, t : t + 1], mask[:, : t + 1], kv_cache=cache, return_cache=True
        )
        steps.append(out)
    torch.testing.assert_close(torch.cat(steps, dim=1)[:, 3:], reference, atol=1e-5, rtol=1e-4)


def test_gpt2_init_statistics():
    torch.manual_seed(0)
    layers = 6
    model = Transformer(
        (64,),
        vocab_size=1000,
        dim=256,
        num_layers=layers,
        num_heads=4,
        max_positions=64,
        positions="learned",
    )
    residual_std = 0.02 / math.sqrt(2 * layers)
    for block in model.blocks:
        for proj in (block.attn.proj, block.mlp.proj):
            assert proj.weight.std().item() == pytest.approx(residual_std, rel=0.03)
            assert abs(proj.weight.mean().item()) < 3e-4
        for linear in (block.attn.qkv, block.mlp.fc):
            assert linear.weight.std().item() == pytest.approx(0.02, rel=0.03)
        for linear in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj):
            assert torch.count_nonzero(linear.bias) == 0
        assert torch.all(block.ln1.weight == 1) and torch.all(block.ln1.bias == 0)
    assert model.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert model.position_embedding.weight.std().item() == pytest.approx(0.02, rel=0.03)


@pytest.mark.parametrize("positions", POSITIONS)
def test_layer_groups_partition_the_parameters(positions):
    model = small(positions)
    groups = model.layer_groups()
    assert len(groups) == 2 + 2  # embeddings, two blocks, final norm
    grouped = [id(p) for g in groups for p in g.parameters()]
    assert len(grouped) == len(set(grouped)) == len(list(model.parameters()))
    assert model.token_embedding.weight in set(groups[0].parameters())
    assert list(groups[1].parameters())[0] is list(model.blocks[0].parameters())[0]
    assert set(groups[-1].parameters()) == {model.norm.weight, model.norm.bias}


@pytest.mark.parametrize("positions", POSITIONS)
def test_parameter_count_and_flops(positions):
    model = small(positions, mlp_ratio=3)
    embedding = {id(model.token_embedding.weight)}
    if model.position_embedding is not None:
        embedding.add(id(model.position_embedding.weight))
    counted = sum(p.numel() for p in model.parameters() if id(p) not in embedding)
    assert model.num_params() == counted
    assert model.num_params(non_embedding=False) == sum(p.numel() for p in model.parameters())
    # L=2, H=4, Q=8, T=16
    assert model.flops_per_token(16) == 6 * counted + 12 * 2 * 4 * 8 * 16
    assert model.hidden_dim == 96


def test_state_dict_holds_no_derived_tables():
    keys = set(small("sinusoidal").state_dict()) | set(small("rope").state_dict())
    assert not any("position_table" in k or "rotary" in k for k in keys)


def test_build_backbone_from_config():
    config = {
        "_target_": "ptft.nn.transformer.Transformer",
        "vocab_size": VOCAB,
        "dim": 16,
        "num_layers": 1,
        "num_heads": 2,
        "max_positions": 20,
        "positions": "rope",
        "causal": False,
    }
    model = build_backbone(config, [20])
    assert isinstance(model, Transformer) and model.input_shape == (20,)
    assert model(tokens(2, 20)).shape == (2, 20, 16)


def test_bad_configs_and_inputs_fail_clearly():
    with pytest.raises(ValueError, match=r"shape \(T,\)"):
        Transformer((1, 8, 8), vocab_size=VOCAB)
    with pytest.raises(ValueError, match="max_positions=8"):
        Transformer((16,), vocab_size=VOCAB, max_positions=8)
    with pytest.raises(ValueError, match="positions='alibi'"):
        Transformer((16,), vocab_size=VOCAB, positions="alibi")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        Transformer((16,), vocab_size=VOCAB, dim=30, num_heads=4)
    with pytest.raises(ValueError, match="head_dim must be even"):
        Transformer((16,), vocab_size=VOCAB, dim=12, num_heads=4, positions="rope")
    model = small()
    with pytest.raises(ValueError, match="exceed max_positions=32"):
        model(tokens(1, 33))
    with pytest.raises(ValueError, match="integer tokens"):
        model(torch.rand(1, 4))


def test_bf16_autocast_forward_on_cpu():
    model = small("rope", causal=False)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 8:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(tokens(), mask)
    assert out.shape == (2, 10, 32) and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), model(tokens(), mask), atol=0.1, rtol=0.1)


FAMILIES = {
    "llama": dict(
        positions="rope",
        norm="rmsnorm",
        gated_mlp=True,
        activation="silu",
        bias=False,
        num_kv_heads=2,
        hidden_dim=40,
        lm_head="untied",
    ),
    "bert": dict(
        positions="learned",
        causal=False,
        prenorm=False,
        embedding_norm=True,
        token_types=2,
        lm_head="bert",
        norm_eps=1e-12,
    ),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_parameter_count_of_other_families_is_exact(family):
    model = Transformer((16,), vocab_size=50, dim=32, num_layers=2, num_heads=4, **FAMILIES[family])
    embedding = {"token_embedding", "position_embedding", "token_type_embedding", "lm_output"}
    counted = sum(
        p.numel() for n, p in model.named_parameters() if n.split(".")[0] not in embedding
    )
    counted -= model.vocab_size if family == "bert" else 0  # BERT's output bias: no matmul
    assert model.num_params() == counted
    assert model.num_params(non_embedding=False) == sum(p.numel() for p in model.parameters())
    # every parameter belongs to exactly one layer group (freezing and layer-wise rates)
    grouped = [id(p) for group in model.layer_groups() for p in group.parameters()]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())


def test_grouped_query_attention_shares_each_key_value_head_within_its_group():
    """With 2 key/value heads for 4 query heads, the result equals full multi-head attention
    whose k and v projections repeat each shared head for its group."""
    from ptft.nn.attention import SelfAttention

    torch.manual_seed(0)
    gqa = SelfAttention(16, num_heads=4, num_kv_heads=2, causal=True)
    full = SelfAttention(16, num_heads=4, causal=True)
    q, k, v = gqa.qkv.weight.split((16, 8, 8))
    qb, kb, vb = gqa.qkv.bias.split((16, 8, 8))

    def repeat(t):  # head h of the full model reads shared head h // 2
        return t.view(2, 4, *t.shape[1:]).repeat_interleave(2, dim=0).reshape(16, *t.shape[1:])

    with torch.no_grad():
        full.qkv.weight.copy_(torch.cat([q, repeat(k), repeat(v)]))
        full.qkv.bias.copy_(torch.cat([qb, repeat(kb), repeat(vb)]))
        full.proj.load_state_dict(gqa.proj.state_dict())
    x = torch.randn(2, 7, 16)
    (y_gqa, (k_cache, _)), (y_full, _) = gqa(x), full(x)
    torch.testing.assert_close(y_gqa, y_full)
    assert k_cache.shape == (2, 2, 7, 4)  # the cache keeps only the shared heads
