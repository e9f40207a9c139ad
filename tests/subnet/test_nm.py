"""N:M sparsity with SR-STE: the mask against an explicit loop, the gradient against its formula, surgery, export."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.method import Context, get_method
from regimen.models import MLP, resnet
from regimen.subnet import NMSparsity, apply_nm_sparsity, export_nm_sparsity, nm_mask, nm_sparsify
from regimen.subnet.nm import to_semi_structured


def _mask_by_loop(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Reference: per output, kernel position and block of m inputs, keep the n largest |w| (lower index on ties)."""
    mask = torch.zeros_like(weight, dtype=torch.bool)
    w = weight if weight.dim() > 2 else weight.unsqueeze(-1)
    mk = mask if weight.dim() > 2 else mask.unsqueeze(-1)
    out, inp = w.shape[:2]
    for o, *pos in itertools.product(range(out), *[range(s) for s in w.shape[2:]]):
        for start in range(0, inp, m):
            block = [(abs(float(w[(o, start + j, *pos)])), j) for j in range(m)]
            keep = sorted(block, key=lambda t: (-t[0], t[1]))[:n]
            for _, j in keep:
                mk[(o, start + j, *pos)] = True
    return mask


@pytest.mark.parametrize("shape, n, m", [((3, 8), 2, 4), ((2, 8, 3, 3), 2, 4), ((4, 16), 1, 8)])
def test_mask_keeps_the_n_largest_of_every_m_inputs(shape, n, m):
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    weight[0, :4] = 1.0  # ties
    assert torch.equal(nm_mask(weight, n, m), _mask_by_loop(weight, n, m))


def test_srste_gradient_is_straight_through_plus_decay_on_pruned_weights():
    torch.manual_seed(0)
    weight = torch.randn(4, 8, requires_grad=True)
    x = torch.randn(5, 8)
    decay = 0.1
    loss = F.linear(x, nm_sparsify(weight, 2, 4, decay)).pow(2).sum()
    loss.backward()
    mask = _mask_by_loop(weight.detach(), 2, 4).float()
    masked = (weight.detach() * mask).requires_grad_(True)
    F.linear(x, masked).pow(2).sum().backward()  # dL/dW~
    expected = masked.grad + decay * (1 - mask) * weight.detach()
    torch.testing.assert_close(weight.grad, expected)


def test_mask_is_recomputed_at_every_forward():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    apply_nm_sparsity(layer, 2, 4)
    x = torch.ones(1, 4)
    assert layer(x).item() == 7.0
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    assert layer(x).item() == 7.0 and torch.equal(layer.weight, torch.tensor([[0.0, 0.0, 3.0, 4.0]]))


def test_surgery_keeps_the_optimizer_and_export_leaves_plain_sparse_weights():
    torch.manual_seed(0)
    model = MLP(in_features=16, hidden=(8,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    params = [id(p) for p in model.parameters()]
    names = apply_nm_sparsity(model, 2, 4, optimizer=optimizer)
    assert names == ["stages.0.1", "stages.1.fc"]
    assert sorted(id(p) for p in model.parameters()) == sorted(params)
    x, y = torch.randn(6, 16), torch.randint(0, 10, (6,))
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    out = model(x)
    export_nm_sparsity(model)
    assert set(model.state_dict()) == {"stages.0.1.weight", "stages.0.1.bias", "stages.1.fc.weight",
                                       "stages.1.fc.bias"}
    for weight in (model.stages[0][1].weight, model.stages[1].fc.weight):
        assert int((weight.reshape(-1, 4) != 0).sum(1).max()) <= 2
    torch.testing.assert_close(model(x), out)


def test_layers_whose_inputs_do_not_divide_m_stay_dense():
    model = resnet()
    names = apply_nm_sparsity(model, 2, 4)
    assert "stages.0.0" not in names  # 1 input channel
    assert "stages.1.conv1" in names


def test_nm_sparsity_method_sets_up_and_exports():
    model = MLP(in_features=16, hidden=(8,))
    ctx = Context(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=F.cross_entropy,
                  num_classes=10, per_device_batch=4)
    method = get_method("nm_sparsity")(n=2, m=4)
    method.setup(ctx)
    assert ctx.log["nm_sparsity/layers"] == 2.0
    assert isinstance(model.stages[0][1].parametrizations.weight[0], NMSparsity)
    method.on_train_end(ctx)
    assert "stages.0.1.weight" in model.state_dict()


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="n <= m"):
        nm_mask(torch.randn(2, 4), 5, 4)
    with pytest.raises(ValueError, match="multiple of m"):
        nm_mask(torch.randn(2, 6), 2, 4)
    with pytest.raises(TypeError, match="floating"):
        nm_mask(torch.ones(2, 4, dtype=torch.long), 2, 4)
    with pytest.raises(ValueError, match="decay"):
        NMSparsity(2, 4, decay=-1.0)
    with pytest.raises(ValueError, match="ignore"):
        apply_nm_sparsity(MLP(in_features=16), ignore=["missing"])
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="GPU"):
            to_semi_structured(MLP(in_features=16))


def test_sr_ste_runs_under_torch_func_and_matches_per_sample_autograd():
    """vmap(grad) over an N:M-parametrized layer (what adaptive_batch does) gives each sample's SR-STE gradient."""
    from torch.func import functional_call, grad, vmap
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    layer = nn.Linear(8, 3)
    parametrize.register_parametrization(layer, "weight", NMSparsity(2, 4, decay=0.1))
    x, y = torch.randn(5, 8), torch.randint(0, 3, (5,))
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(layer, p, (xi[None],)), yi[None])

    batched = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(5):
        layer.zero_grad()
        F.cross_entropy(layer(x[i : i + 1]), y[i : i + 1]).backward()
        original = layer.parametrizations.weight.original
        torch.testing.assert_close(batched["parametrizations.weight.original"][i], original.grad)
