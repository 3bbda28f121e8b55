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
    assert all(not k.endswith(("weight_t", "weight_scale", "shift", "inv_smooth")) for k in net.state_dict())
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


def test_smoothing_moves_an_outlier_channel_into_the_weights_and_cuts_the_error():
    """Activations with two outlier channels (as LLM layers have): the smoothed layer is the float
    product of the smoothed weight and smoothed input under the same int8 arithmetic, and its
    error against the float layer is several times smaller than the plain int8 layer's."""
    from potstill.models.int8 import activation_absmax, smoothing

    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 128, bias=False)
    x = torch.randn(64, 256)
    x[:, 5] *= 60.0
    x[:, 77] *= 40.0
    net = torch.nn.Sequential(lin)
    with activation_absmax(net) as rec:
        want = net(x)
    assert set(rec.absmax) == {"0"} and torch.equal(rec.absmax["0"], x.abs().amax(0))
    s = smoothing(rec.absmax["0"], lin.weight, alpha=0.65)
    smoothed = Int8Linear(lin, s)
    plain = Int8Linear(lin)
    # The same arithmetic on the migrated operands: x / s times (W * s).
    moved = torch.nn.Linear(256, 128, bias=False)
    moved.weight.data = lin.weight.detach() * s
    torch.testing.assert_close(smoothed(x), Int8Linear(moved)(x * (1 / s)), rtol=0, atol=0)
    err_plain = ((plain(x) - want).norm() / want.norm()).item()
    err_smooth = ((smoothed(x) - want).norm() / want.norm()).item()
    assert err_smooth < err_plain / 3, (err_plain, err_smooth)
    assert "smoothed=True" in repr(smoothed) and "smoothed=False" in repr(plain)
    with pytest.raises(ValueError, match="smoothing of \\(255,\\) for a layer of 256 inputs"):
        Int8Linear(lin, s[:255])


def test_quantize_linears_smooths_the_layers_it_has_ranges_for():
    """Ranges keyed by the layer's name under the module: those layers are smoothed, the others not;
    the compiled network gives the eager output."""
    from potstill.models.int8 import activation_absmax

    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.SiLU(),
                              torch.nn.Sequential(torch.nn.Linear(128, 64)))
    x = torch.randn(7, 64)
    with activation_absmax(net) as rec:
        net(x)
    assert set(rec.absmax) == {"0", "2.0"}
    assert quantize_linears(net, {"2.0": rec.absmax["2.0"]}) == 2
    assert not net[0].smoothed and net[2][0].smoothed
    compiled = torch.compile(net)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x), rtol=1e-5, atol=1e-5)


def test_outlier_channels_multiply_in_float_and_cut_the_error_further():
    """A layer told its outlier channels leaves them out of the int8 product (so neither the tokens'
    nor the rows' scales are sized for them) and multiplies them in float: exactly the int8 layer of
    the other channels plus the float product of these, and on inputs with outlier channels an error
    several times below smoothing's alone. Without outliers, the slots add 0.0: bit for bit the
    plain layer (so an uncalibrated model traces the calibrated one's graph)."""
    from potstill.models.int8 import smoothing

    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 128, bias=True)
    x = torch.randn(64, 256)
    for c, f in ((5, 60.0), (77, 40.0), (130, 30.0)):
        x[:, c] *= f
    want = lin(x).detach()
    absmax = x.abs().amax(0)
    s = smoothing(absmax, lin.weight)
    out = absmax.topk(8).indices.sort().values
    split = Int8Linear(lin, s, out, slots=8)
    assert split.outliers == 8 and split.slots == 8 and "outliers=8" in repr(split)
    rest = torch.ones(256, dtype=torch.bool)
    rest[out] = False
    sub = torch.nn.Linear(int(rest.sum()), 128, bias=True)
    sub.weight.data, sub.bias.data = lin.weight.detach()[:, rest].clone(), lin.bias.detach().clone()
    expect = Int8Linear(sub, s[rest])(x[:, rest]) + x[:, out] @ lin.weight.detach()[:, out].t()
    torch.testing.assert_close(split(x), expect, rtol=1e-5, atol=1e-4)
    err = {k: ((m(x) - want).norm() / want.norm()).item()
           for k, m in (("smoothed", Int8Linear(lin, s)), ("split", split))}
    assert err["split"] < err["smoothed"] / 3, err
    placeholder = Int8Linear(lin, None, None, slots=8)
    assert placeholder.outliers == 0 and placeholder.slots == 8
    assert torch.equal(placeholder(x), Int8Linear(lin)(x))


def test_quantize_linears_takes_outliers_from_the_ranges_of_the_named_layers():
    """Layers named in OUTLIER_LAYERS: with ranges, their OUTLIERS largest channels go float; without,
    the same slots on zero weights; other layers have none; compiled gives the eager output."""
    from potstill.models.int8 import OUTLIER_LAYERS, OUTLIERS, activation_absmax

    torch._dynamo.reset()
    torch.manual_seed(0)
    name = OUTLIER_LAYERS[0]

    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        net = torch.nn.Module()
        net.up, net.act = torch.nn.Linear(32, 64), torch.nn.SiLU()
        setattr(net, name, torch.nn.Linear(64, 32))
        net.forward = lambda x: getattr(net, name)(net.act(net.up(x)))
        return net

    x = torch.randn(9, 32)
    x[:, 3] *= 30
    net = build()
    with activation_absmax(net) as rec:
        net(x)
    quantize_linears(net, rec.absmax)
    layer = getattr(net, name)
    assert layer.outliers == OUTLIERS and net.up.slots == 0
    assert torch.equal(layer.outlier_index, rec.absmax[name].topk(OUTLIERS).indices.sort().values)
    plain = build()
    quantize_linears(plain)
    assert getattr(plain, name).outliers == 0 and getattr(plain, name).slots == OUTLIERS
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(net)(x), net(x), rtol=1e-5, atol=1e-5)


needs_onednn = pytest.mark.skipif(not (torch.backends.mkldnn.is_available()
                                       and hasattr(torch.ops.onednn, "qlinear_prepack")),
                                  reason="torch without oneDNN's int8 linear")


@needs_onednn
@pytest.mark.parametrize("smooth", [False, True])
def test_onednn_product_is_the_int_mm_product(monkeypatch, smooth):
    """Inputs of ONEDNN_MIN_ROWS tokens or more go through oneDNN's packed int8 product (on a CPU with
    AMX by default; forced here so any CPU runs it): the same int32 sums and scales as ``_int_mm``'s
    path, so the outputs agree to float rounding, with and without smoothing and a bias; shorter
    inputs stay on ``_int_mm``, bit for bit."""
    monkeypatch.setattr(int8, "onednn_int8", lambda: True)
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 80, bias=True)
    s = int8.smoothing(torch.rand(96) * 10 + 0.1, lin.weight) if smooth else None
    fast = Int8Linear(lin, s)
    monkeypatch.setattr(int8, "onednn_int8", lambda: False)
    plain = Int8Linear(lin, s)
    assert fast.onednn and not plain.onednn and "onednn=True" in repr(fast)
    x = torch.randn(3, int8.ONEDNN_MIN_ROWS, 96)
    x[0, 3] = 0.0
    x[1, 4, 7] = 40.0
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-5, atol=1e-5)
    short = x[:1, : int8.ONEDNN_MIN_ROWS - 1]
    assert torch.equal(fast(short), plain(short))


@needs_onednn
@pytest.mark.parametrize("freeze", [False, True])
def test_onednn_product_compiles_to_the_eager_output(monkeypatch, freeze):
    """Under torch.compile the packed weight is a graph input, which inductor's own lowering of the op
    refuses (it wants frozen constants): potstill lowers it as a call of the op. Frozen, the original
    lowering runs. Both give the eager output, for long inputs (oneDNN) and short ones (``_int_mm``)
    in one graph family."""
    monkeypatch.setattr(int8, "onednn_int8", lambda: True)
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.SiLU(), torch.nn.Linear(128, 64))
    quantize_linears(net)
    assert all(m.onednn for m in int8.int8_linears(net))
    compiled = torch.compile(net)
    with torch.no_grad(), torch._inductor.config.patch(freezing=freeze):
        for rows in (int8.ONEDNN_MIN_ROWS + 72, 5):
            x = torch.randn(rows, 64)
            torch.testing.assert_close(compiled(x), net(x), rtol=1e-5, atol=1e-5)
