"""The metric_learning task: Recall@k and MAP@R against explicit loops, the contrastive loss against a loop, the
zero-shot split (train classes never in the test split), new-to-old scoring against an old checkpoint, and bad
recipes refused naming the key."""

import math

import pytest
import torch

from regimen.models import load_embedding_model
from regimen.tasks import MetricLearningTask, contrastive_loss, retrieval_metrics
from regimen.train import RecipeError, fit
from regimen.train.recipe import parse_recipe


def ml_recipe(**changes) -> dict:
    recipe = {
        "name": "tiny-ml", "task": "metric_learning", "seed": 0,
        "data": {"name": "digits", "val_fraction": 0.1},
        "model": {"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1], "embedding_dim": 16}},
        "optim": {"name": "adamw", "lr": 3e-3},
        "schedule": {"name": "constant"},
        "train": {"epochs": 1, "batch_size": 48, "max_steps_per_epoch": 4, "threads": 1},
    }
    for key, value in changes.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    return recipe


def _retrieval_loop(queries, labels, gallery=None, ks=(1, 2, 4)):
    """Plain Python: cosine similarities, each query ranks every other item (ties by index), Recall@k, MAP@R."""
    def unit(v):
        norm = math.sqrt(sum(a * a for a in v))
        return [a / norm for a in v]

    q = [unit(v) for v in queries.tolist()]
    g = q if gallery is None else [unit(v) for v in gallery.tolist()]
    lab = labels.tolist()
    n = len(lab)
    hits = [0] * len(ks)
    ap_total, used = 0.0, 0
    for i in range(n):
        r = sum(1 for j in range(n) if j != i and lab[j] == lab[i])
        if r == 0:
            continue
        used += 1
        sims = [(-sum(a * b for a, b in zip(q[i], g[j])), j) for j in range(n) if j != i]
        ranked = [lab[j] == lab[i] for _, j in sorted(sims)]
        for t, k in enumerate(ks):
            hits[t] += any(ranked[:k])
        found, ap = 0, 0.0
        for position in range(r):
            if ranked[position]:
                found += 1
                ap += found / (position + 1)
        ap_total += ap / r
    result = {f"recall_at_{k}": hits[t] / used for t, k in enumerate(ks)}
    result["map_at_r"] = ap_total / used
    return result


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("cross", [False, True])
def test_recall_and_map_at_r_match_an_explicit_loop(seed, cross):
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(40, 5, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    labels[0] = 9  # a query without a same-class item is skipped
    gallery = torch.randn(40, 5, generator=g) + queries if cross else None
    got = retrieval_metrics(queries, labels, gallery, chunk=7)  # several chunks
    want = _retrieval_loop(queries, labels, gallery)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_map_at_r_by_hand():
    # query 0 (class 0) ranks: item 1 (class 0), item 2 (class 1), item 3 (class 0): R = 2, AP = (1/1 + 0)/2 = 0.5
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.5, 0.5], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 0])
    got = retrieval_metrics(embeddings, labels, ks=(1,))
    # query 1: ranks 0 (hit), 2, 3 (hit) -> (1 + 2/3)/2; query 3: ranks 2, 1 (hit), 0 (hit) -> (0 + 1/2)/2... R=2:
    # only the first R = 2 ranks count: (0 + 1/2)/2 = 0.25; query 2 has no same-class item: skipped
    assert got["map_at_r"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert got["recall_at_1"] == pytest.approx(2 / 3)


def test_contrastive_loss_matches_an_explicit_loop():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(10, 4, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    q = torch.nn.functional.normalize(emb.double(), dim=1).tolist()
    terms = []
    for i in range(10):
        pos, neg = [], []
        for j in range(10):
            d = math.sqrt(sum((a - b) ** 2 for a, b in zip(q[i], q[j])))
            if j != i and labels[j] == labels[i]:
                pos.append(d * d)
            elif labels[j] != labels[i]:
                neg.append(max(0.0, 0.7 - d) ** 2)
        terms.append((sum(pos) / len(pos) if pos else 0.0) + (sum(neg) / len(neg) if neg else 0.0))
    got = contrastive_loss(emb, labels, margin=0.7, reduction="none")
    assert got.tolist() == pytest.approx(terms, abs=1e-6)
    assert contrastive_loss(emb, labels, margin=0.7).item() == pytest.approx(sum(terms) / 10, abs=1e-6)
    emb.requires_grad_(True)
    contrastive_loss(emb, labels).backward()
    assert torch.isfinite(emb.grad).all()


def test_the_split_is_zero_shot_and_the_run_reports_retrieval_metrics(tmp_path):
    recipe = ml_recipe()
    task = MetricLearningTask(parse_recipe(recipe))
    data = task.load_data()
    assert set(data.train.labels.tolist()) == {0, 1, 2, 3, 4, 5} == set(data.val.labels.tolist())
    assert set(data.test.labels.tolist()) == {6, 7, 8, 9}
    result = fit(recipe, out_dir=tmp_path / "old")
    summary = result.summary
    assert summary["primary_metric"] == "test_recall_at_1" and summary["higher_is_better"] is True
    embeddings, labels = task.embed(result.model, data.test, task.normalizer(data, torch.device("cpu")))
    assert embeddings.shape == (len(data.test), 16)
    for key, value in retrieval_metrics(embeddings, labels).items():
        assert summary[f"final_test_{key}"] == pytest.approx(value)
    # new-to-old: the old model as its own gallery scores exactly like plain retrieval
    old = load_embedding_model(tmp_path / "old" / "checkpoint.pt")
    same = ml_recipe(data={"options": {"gallery_model": str(tmp_path / "old" / "checkpoint.pt")}})
    compat_task = MetricLearningTask(parse_recipe(same))
    scores = compat_task.evaluate(old, data.test, task.normalizer(data, torch.device("cpu")))
    for key in ("recall_at_1", "recall_at_2", "recall_at_4", "map_at_r"):
        assert scores[f"compat_{key}"] == pytest.approx(scores[key]) == pytest.approx(summary[f"final_test_{key}"])


@pytest.mark.parametrize("change, match", [
    ({"data": {"options": {"train_classes": [0, 1, 2, 6], "test_classes": [6, 7]}}},
     r"data.options.test_classes: class 6 is also in data.options.train_classes"),
    ({"data": {"options": {"train_classes": [0, 0]}}}, "data.options.train_classes: lists a class twice"),
    ({"data": {"options": {"classes": [1]}}}, "data.options.classes: unknown option"),
    ({"model": {"name": "resnet", "options": {"embedding_dim": 0}}}, "model.options.embedding_dim"),
    ({"data": {"name": "iris"}}, "data.name"),
])
def test_bad_recipes_name_the_key(change, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe(ml_recipe(**change))


def test_a_missing_gallery_checkpoint_names_the_key(tmp_path):
    recipe = ml_recipe(data={"options": {"gallery_model": str(tmp_path / "none.pt")}})
    with pytest.raises(Exception, match="data.options.gallery_model: checkpoint not found"):
        fit(recipe)
