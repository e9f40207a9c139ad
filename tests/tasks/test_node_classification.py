"""The node_classification task and LA-GNN: GCN propagation against the dense D^-1/2 (A+I) D^-1/2 X W, the SBM
generator's documented statistics, LA-GCN's split second layer against the reference's concatenated one, the CVAE
and consistency losses by hand, a short training run with and without LA-GNN, and bad graphs refused naming the key."""

import math

import pytest
import torch
import torch.nn.functional as F

from regimen.augment import LAGNNMethod, LocalAugmentedGCN, NeighbourCVAE, consistency_loss, cvae_loss
from regimen.data import DataError
from regimen.models import GCN, GraphConv, gcn_norm, gcn_propagate, row_normalize
from regimen.tasks import NodeClassificationTask, get_task
from regimen.tasks.node_classification import stochastic_block_graph
from regimen.train import RecipeError, fit
from regimen.train.recipe import parse_recipe


def graph_recipe(methods=(), **options) -> dict:
    return {
        "name": "tiny-graph", "task": "node_classification", "seed": 0,
        "data": {"name": "sbm", "options": {"nodes": 200, "features": 60, "topic_words": 10, "labels_per_class": 5,
                                            "val_nodes": 40, **options}},
        "model": {"name": "gcn", "options": {"hidden": 8}},
        "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": 4, "batch_size": 25, "eval_every": 2, "threads": 1},
        "methods": list(methods),
    }


def dense_normalised_adjacency(edge_index: torch.Tensor, n: int) -> torch.Tensor:
    a = torch.zeros(n, n)
    a[edge_index[0], edge_index[1]] = 1.0
    a_tilde = a + torch.eye(n)
    d = a_tilde.sum(dim=1)
    return torch.diag(d.pow(-0.5)) @ a_tilde @ torch.diag(d.pow(-0.5))


def small_graph() -> tuple[torch.Tensor, int]:
    edges = torch.tensor([[0, 1], [1, 2], [2, 3], [0, 3], [3, 4]]).T  # node 5 is isolated
    return torch.cat([edges, edges.flip(0)], dim=1), 6


def test_gcn_propagation_equals_the_dense_normalised_adjacency_product():
    edge_index, n = small_graph()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    index, weight = gcn_norm(edge_index, n)
    a_hat = dense_normalised_adjacency(edge_index, n)
    assert torch.allclose(gcn_propagate(x, index, weight), a_hat @ x, atol=1e-6)
    conv = GraphConv(4, 3)
    torch.nn.init.normal_(conv.bias)
    assert torch.allclose(conv(x, index, weight), a_hat @ x @ conv.weight + conv.bias, atol=1e-5)
    model = GCN(4, 3, hidden=5, dropout=0.0).set_graph(x, edge_index).eval()
    reference = a_hat @ F.relu(a_hat @ x @ model.conv1.weight + model.conv1.bias) @ model.conv2.weight
    assert torch.allclose(model(torch.arange(n)), reference + model.conv2.bias, atol=1e-5)


def test_sbm_has_the_documented_degrees_homophily_and_class_sizes():
    graph = stochastic_block_graph(seed=0)
    degree = graph.degree.float()
    assert abs(float(degree.mean()) - 2.5) < 0.25
    assert float((degree <= 2).float().mean()) > 0.45 and float((degree == 1).float().mean()) > 0.15
    same = (graph.labels[graph.edge_index[0]] == graph.labels[graph.edge_index[1]]).float().mean()
    assert abs(float(same) - 0.8) < 0.06
    assert torch.bincount(graph.labels).tolist() == [200] * 5
    assert torch.equal(graph.edge_index, stochastic_block_graph(seed=0).edge_index)
    topic = graph.features[:, :20][graph.labels == 0].mean()  # class 0's words, in class 0's nodes
    assert abs(float(topic) - 0.1) < 0.02 and abs(float(graph.features[graph.labels == 0, 100:].mean()) - 0.03) < 0.01


def test_lagcn_split_second_layer_equals_the_reference_concatenation():
    edge_index, n = small_graph()
    raw = (torch.rand(n, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    gcn = GCN(6, 3, hidden=4, dropout=0.0).set_graph(row_normalize(raw), edge_index, raw)
    model = LocalAugmentedGCN(gcn, NeighbourCVAE(6, latent=2, hidden=8), concat=2).eval()
    logits = model(torch.arange(n))
    generated = model.generated_features(torch.Generator().manual_seed(20_220_717))
    a_hat = dense_normalised_adjacency(edge_index, n)
    hidden = [F.relu(a_hat @ x @ conv.weight + conv.bias)
              for x, conv in zip([gcn.features, *generated], [gcn.conv1, *model.extra_first])]
    w2 = torch.cat([gcn.conv2.weight, *(c.weight for c in model.extra_second)], dim=0)  # the reference's gc2
    assert torch.allclose(logits, a_hat @ torch.cat(hidden, dim=1) @ w2 + gcn.conv2.bias, atol=1e-5)
    assert all(torch.allclose(x.sum(dim=1), torch.ones(n)) for x in generated)  # row-normalised like the input


def test_cvae_and_consistency_losses_match_the_formulas_by_hand():
    g = torch.Generator().manual_seed(2)
    recon, x = torch.rand(3, 4, generator=g), (torch.rand(3, 4, generator=g) > 0.5).float()
    mean, log_var = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    bce = -sum(x[i, j] * math.log(recon[i, j]) + (1 - x[i, j]) * math.log(1 - recon[i, j])
               for i in range(3) for j in range(4))
    kld = -0.5 * sum(1 + log_var[i, k] - mean[i, k] ** 2 - math.exp(log_var[i, k]) for i in range(3) for k in range(2))
    assert math.isclose(float(cvae_loss(recon, x, mean, log_var)), (bce + kld) / 3, rel_tol=1e-5)
    probs = [torch.softmax(torch.randn(5, 3, generator=g), dim=1) for _ in range(3)]
    avg = [[sum(float(p[v, c]) for p in probs) / 3 for c in range(3)] for v in range(5)]
    sharp = [[a ** 2 / sum(b ** 2 for b in row) for a in row] for row in avg]  # T = 0.5: power 2
    by_hand = sum(sum((float(p[v, c]) - sharp[v][c]) ** 2 for c in range(3)) / 5 for p in probs for v in range(5)) / 3
    assert math.isclose(float(consistency_loss(probs, 0.5)), by_hand, rel_tol=1e-5)


@pytest.mark.parametrize("methods", [[], [{"name": "lagnn", "samples": 2, "cvae_epochs": 1}]])
def test_node_classification_trains_and_reports_overall_and_low_degree_accuracy(methods):
    result = fit(graph_recipe(methods))
    summary = result.summary
    assert summary["primary_metric"] == "test_acc" and summary["higher_is_better"] is True
    for metric in NodeClassificationTask.metrics:
        assert 0 <= summary[f"final_test_{metric}"] < math.inf
    if methods:
        assert isinstance(result.model, LocalAugmentedGCN)


def test_a_graph_with_an_edge_to_a_missing_node_is_refused_naming_the_key():
    data = {"features": torch.rand(4, 3), "edges": torch.tensor([[0, 1], [2, 7]]).T,
            "labels": torch.tensor([0, 1, 0, 1]), "train": torch.tensor([0, 1]), "test": torch.tensor([2, 3])}
    with pytest.raises(DataError, match=r"^data\['edges'\]: edge \(2, 7\) names a node outside \[0, 4\)"):
        fit(graph_recipe(), data=data)
    with pytest.raises(DataError, match=r"data\['test'\]: node ids must lie in \[0, 4\)"):
        fit(graph_recipe(), data=dict(data, edges=torch.tensor([[0, 1]]).T, test=torch.tensor([9])))
    small = dict(graph_recipe(), train={"epochs": 4, "batch_size": 2, "threads": 1})
    result = fit(small, data=dict(data, edges=torch.tensor([[0, 1], [2, 3]]).T))  # one direction is enough
    assert result.summary["epochs"] == 4
    with pytest.raises(RecipeError, match="serves graph_nodes inputs"):
        parse_recipe({"methods": [{"name": "lagnn"}]})
    with pytest.raises(RecipeError, match="data.options.degree: unknown option"):
        parse_recipe(graph_recipe(degree=3))
    assert get_task("node_classification") is NodeClassificationTask
    with pytest.raises(ValueError, match="lagnn needs regimen.models.GCN"):
        LAGNNMethod().setup(type("Ctx", (), {"model": torch.nn.Linear(2, 2)})())
