"""potstill.models.int8: the int8 linear layer engine transformers runs with ``quantization: int8``."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from potstill.models import int8
from potstill.models.int8 import Int8Linear, quantize_linears


def _torchao(linear: torch.nn.Linear) -> torch.nn.Module:
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    ref = torch.nn.Sequential(copy.deepcopy(linear))
    quantize_(ref, Int8DynamicActivationInt8WeightConfig())
    return ref


@pytest.mark.parametrize("unsigned", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_linear_is_torchaos_layer_bit_for_bit(monkeypatch, unsigned, bias):
    """Both products (int8 x int8, and uint8 activations shifted by 128 as torchao feeds a CPU with
    VNNI and no AMX) give torchao's ``Int8DynamicActivationInt8Weight`` output exactly, on inputs
    with an all-zero row and a large outlier; and near the float layer's."""
    monkeypatch.setattr(int8, "unsigned_activations", lambda: unsigned)
    monkeypatch.setattr("torchao.kernel.intmm._cpu_is_vnni_supported", lambda: unsigned, raising=False)
    monkeypatch.setattr("torchao.kernel.intmm._cpu_is_amx_tile_supported", lambda: not unsigned, raising=False)
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 80, bias=bias)
    x = torch.randn(2, 9, 96)
    x[0, 3] = 0.0
    x[1, 4, 7] = 40.0
    mine = Int8Linear(lin)
    assert mine.unsigned is unsigned and (mine.shift is not None) is unsigned
    got = mine(x)
    assert got.shape == (2, 9, 80) and got.dtype == torch.float32
    assert torch.equal(got, _torchao(lin)(x))
    want = lin(x)
    assert not torch.equal(got, want)
    assert (got - want).abs().max() < 0.05 * want.abs().max()


def test_quantize_linears_replaces_every_linear_and_keeps_the_rest():
    """Every nn.Linear below the module becomes an Int8Linear (nested ones too); other modules stay;
    the layers' buffers are not in the state dict (a saved model stays the float one)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(),
                              torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.LayerNorm(32)),
                              torch.nn.Linear(32, 8))
    x = torch.randn(5, 16)
    want = net(x)
    assert quantize_linears(net) == 3
    assert [type(m).__name__ for m in net.modules()].count("Int8Linear") == 3
    assert not any(isinstance(m, torch.nn.Linear) for m in net.modules())
    assert isinstance(net[1], torch.nn.GELU) and isinstance(net[2][1], torch.nn.LayerNorm)
    assert all(not k.endswith(("weight_t", "weight_scale", "shift")) for k in net.state_dict())
    assert (net(x) - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.parametrize("freeze", [False, True])
def test_int8_linear_compiles_to_the_eager_output(freeze):
    """Under torch.compile (and with inductor's freezing, the weights as constants) the layer gives
    its eager output, at two batch sizes."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.SiLU(), torch.nn.Linear(128, 64))
    quantize_linears(net)
    compiled = torch.compile(net)
    with torch.no_grad(), torch._inductor.config.patch(freezing=freeze):
        for rows in (1, 24):
            x = torch.randn(rows, 64)
            torch.testing.assert_close(compiled(x), net(x), rtol=1e-5, atol=1e-5)
