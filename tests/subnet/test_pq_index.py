"""PQ Index and SAP: the index against its closed form and by hand, the counts against the formula, the Method."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.data import ArrayDataset
from regimen.method import Context, get_method
from regimen.subnet import apply_masks, pq_index, prunable_weights, sap_prune, sap_prune_counts, sparsity_of


def _by_hand(values, p, q):
    d = len(values)
    norm_p = sum(abs(v) ** p for v in values) ** (1 / p)
    norm_q = sum(abs(v) ** q for v in values) ** (1 / q)
    return 1 - d ** (1 / q - 1 / p) * norm_p / norm_q


def test_index_closed_form_for_gaussian_weights():
    w = torch.randn(400_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # PQI_{0.5,1} = 1 − (E|w|^{1/2})² / E|w| for i.i.d. N(0,1): E|w|^{1/2} = 2^{1/4} Γ(3/4) / √π, E|w| = √(2/π)
    closed = 1 - (2 ** 0.25 * math.gamma(0.75) / math.sqrt(math.pi)) ** 2 / math.sqrt(2 / math.pi)
    assert closed == pytest.approx(0.1528, abs=1e-4)
    assert float(pq_index(w, 0.5, 1.0)) == pytest.approx(closed, abs=4e-3)
    # uniform weights: (E√|u|)² / E|u| = (2/3)² / (1/2) = 8/9
    u = torch.rand(400_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    assert float(pq_index(u, 0.5, 1.0)) == pytest.approx(1 / 9, abs=4e-3)


@pytest.mark.parametrize("p,q", [(0.5, 1.0), (1.0, 2.0), (0.3, 1.7)])
def test_index_by_hand_masked_and_per_row(p, q):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4, 9, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 9, generator=g) > 0.3
    assert float(pq_index(w, p, q)) == pytest.approx(_by_hand(w.reshape(-1).tolist(), p, q), rel=1e-9)
    kept = w[mask].tolist()  # d counts only the surviving entries
    assert float(pq_index(w, p, q, mask)) == pytest.approx(_by_hand(kept, p, q), rel=1e-9)
    rows = pq_index(w, p, q, mask, dim=1)
    for i in range(4):
        assert float(rows[i]) == pytest.approx(_by_hand(w[i][mask[i]].tolist(), p, q), rel=1e-9)
    one_hot = torch.tensor([3.0, 0.0, 0.0, 0.0])
    assert float(pq_index(one_hot, 0.5, 1.0)) == pytest.approx(0.75)  # 1 − 4^{1−2}
    assert float(pq_index(torch.full((10,), 2.0))) == pytest.approx(0.0, abs=1e-7)
    assert float(pq_index(torch.zeros(5))) == 0.0


def test_counts_match_the_bound():
    p, q, eta, gamma, beta = 0.5, 1.0, 0.001, 1.2, 0.9
    for index, d in [(0.1528, 1000), (0.4, 77), (0.0, 50), (0.95, 10)]:
        retained = math.ceil(d * (1 + eta) ** (q / (p - q)) * (1 - index) ** (q * p / (q - p)))
        expected = max(0, math.floor(d * min(gamma * (1 - retained / d), beta)))
        got = sap_prune_counts(torch.tensor(index), torch.tensor(d), p, q, eta, gamma, beta)
        assert int(got) == expected
    with pytest.raises(ValueError, match="p < q"):
        sap_prune_counts(torch.tensor(0.1), torch.tensor(10), p=1.0, q=0.5)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))


@pytest.mark.parametrize("scope", ["layer", "neuron", "global"])
def test_sap_round_prunes_the_smallest_counts_weights(scope):
    model = _mlp()
    masks = sap_prune(model, scope=scope)
    weights = prunable_weights(model)
    assert set(masks) == {"0.weight", "2.weight"}
    if scope == "layer":
        for name, w in weights.items():
            count = int(sap_prune_counts(pq_index(w), torch.tensor(w.numel())))
            assert int((~masks[name]).sum()) == count
            threshold = w.detach().abs().reshape(-1).sort().values[count]
            assert torch.equal(masks[name], w.detach().abs() >= threshold)
    elif scope == "neuron":
        for name, w in weights.items():
            for i in range(w.shape[0]):
                row = w.detach()[i]
                count = int(sap_prune_counts(pq_index(row), torch.tensor(row.numel())))
                assert int((~masks[name][i]).sum()) == count
    else:
        flat = torch.cat([w.detach().reshape(-1) for w in weights.values()])
        count = int(sap_prune_counts(pq_index(flat), torch.tensor(flat.numel())))
        assert sum(int((~m).sum()) for m in masks.values()) == count
    # a second round only removes more, and apply_masks zeroes exactly the pruned entries
    second = sap_prune(model, masks, scope=scope)
    assert all(bool((second[n] <= masks[n]).all()) for n in masks)
    assert sparsity_of(second) > sparsity_of(masks) > 0
    apply_masks(model, second)
    assert all(bool((weights[n].detach()[~second[n]] == 0).all()) for n in second)


def test_bad_input_is_refused_without_changes():
    model = _mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="scope"):
        sap_prune(model, scope="row")
    with pytest.raises(ValueError, match="masks"):
        sap_prune(model, {"0.weight": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="masks name parameters"):
        apply_masks(model, {"nope": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no weight"):
        prunable_weights(nn.Sequential(nn.BatchNorm1d(4)))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for kwargs in ({"rounds": 0}, {"scope": "row"}, {"p": 1.0, "q": 0.5}, {"beta": 0.0}):
        with pytest.raises(ValueError):
            get_method("sap")(**kwargs)


def test_method_prunes_at_scheduled_epochs_and_holds_masks():
    model = _mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    data = ArrayDataset(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), 10)
    ctx = Context(model, optimizer, F.cross_entropy, num_classes=5, epochs=3, steps_per_epoch=2, train_data=data)
    method = get_method("sap")(rounds=2)
    method.setup(ctx)
    g = torch.Generator().manual_seed(0)
    densities = []
    for epoch in range(3):
        ctx.epoch = epoch
        for _ in range(2):
            optimizer.zero_grad()
            F.cross_entropy(model(torch.randn(8, 20, generator=g)), torch.randint(0, 5, (8,), generator=g)).backward()
            optimizer.step()
            method.after_step(ctx)
            if method.masks:
                assert all(bool((dict(model.named_parameters())[n].detach()[~m] == 0).all())
                           for n, m in method.masks.items())
        method.on_epoch_end(ctx)
        densities.append(1 - sparsity_of(method.masks) if method.masks else 1.0)
    assert method.done == 2 and densities[0] > densities[1] and densities[1] < 1.0
    assert 0 < ctx.log["sap/density"] < 1
    state = method.state_dict()
    fresh = get_method("sap")(rounds=2)
    fresh.load_state_dict(state)
    assert fresh.done == 2 and set(fresh.masks) == set(method.masks)
