"""BT²: the embedding against the paper's construction by hand, the regulariser and pseudo classifier against
explicit loops, orthonormal bases (no information lost), and the method inside the trainer with old/new
checkpoints; bad settings name the key."""

import math

import pytest
import torch
import torch.nn.functional as F

from regimen.errors import ConfigurationError
from regimen.losses import BT2Method, BT2Model, BT2Output, bt2_embedding, bt2_regularizer, class_means
from regimen.train import fit
from tests.tasks.test_metric_learning import ml_recipe


def _orthogonal(n, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_embedding_is_the_papers_construction_and_keeps_every_norm():
    g = torch.Generator().manual_seed(0)
    d, d_old, a, scale = 6, 4, 2, 3.0
    f = F.normalize(torch.randn(5, d, generator=g, dtype=torch.float64), dim=1)
    o = torch.randn(5, d_old, generator=g, dtype=torch.float64)
    p, o2 = _orthogonal(d, 1), _orthogonal(d_old, 2)
    embedding, compatible = bt2_embedding(f, o, p, o2, a, scale)
    for i in range(5):  # row by row, as the paper's figure reads
        head = o[i, :a] / o[i, :a].norm()
        z = torch.cat([head, p @ (scale * f[i])])  # a + d numbers
        bct = o2 @ z[:d_old]
        assert torch.allclose(compatible[i], bct)
        assert torch.allclose(embedding[i], torch.cat([bct, z[d_old:]]))
        # orthonormal maps lose nothing: |embedding|² = |normalised head|² + C²|f|² = 1 + C²
        assert embedding[i].norm().item() == pytest.approx(math.sqrt(1 + scale**2))
    assert embedding.shape == (5, d + a)
    with pytest.raises(ValueError, match=r"extra_dims must lie in \[1, d_old = 4\]"):
        bt2_embedding(f, o, p, o2, 5, scale)


def test_regularizer_and_pseudo_classifier_match_explicit_loops():
    g = torch.Generator().manual_seed(1)
    n, d, d_old = 6, 5, 3
    f, bct = torch.randn(n, d, generator=g), torch.randn(n, d_old, generator=g)
    old, new = F.normalize(torch.randn(n, d_old, generator=g), dim=1), F.normalize(torch.randn(n, d, generator=g), 1)
    labels = torch.tensor([3, 5, 3, 7, 5, 3])
    classifier, lookup = class_means(torch.randn(n, d_old, generator=g).mul(4), labels)
    assert lookup[3].item() == 0 and lookup[5].item() == 1 and lookup[7].item() == 2 and lookup[4].item() == -1
    rows = lookup[labels]
    got = bt2_regularizer(f, bct, rows, old, new, classifier, 1.5, 10.0, 7.0)
    for i in range(n):
        cos = lambda u, v: float(u @ v / (u.norm() * v.norm()))  # noqa: E731
        logits = [cos(bct[i], w) * float(w.norm()) for w in classifier]  # normalize(bct) · w
        ce = -logits[rows[i]] + math.log(sum(math.exp(v) for v in logits))
        want = 1.5 * (1 - cos(f[i], new[i])) + 10.0 * ce + 7.0 * (1 - cos(bct[i], old[i]))
        assert got[i].item() == pytest.approx(want, rel=1e-5)
    embeddings = torch.randn(n, d_old, generator=g)
    means, lookup = class_means(embeddings, labels)
    for c, row in ((3, 0), (5, 1), (7, 2)):
        members = [F.normalize(embeddings[i], dim=0) for i in range(n) if labels[i] == c]
        assert torch.allclose(means[row], sum(members) / len(members), atol=1e-6)


def test_model_bases_stay_orthonormal_and_eval_returns_the_embedding():
    model = BT2Model(torch.nn.Linear(3, 6), feature_dim=6, old_dim=4, extra_dims=2)
    for weight in (model.basis_p.weight, model.basis_old.weight):
        assert torch.allclose(weight @ weight.T, torch.eye(len(weight)), atol=1e-5)
    x = torch.randn(5, 3)
    out = model(x)
    assert isinstance(out, BT2Output) and out.embedding.shape == (5, 8) and out.compatible.shape == (5, 4)
    assert torch.equal(model.eval()(x), out.embedding)
    with pytest.raises(ValueError, match="is less than old_dim"):
        BT2Model(torch.nn.Identity(), feature_dim=2, old_dim=8, extra_dims=4)


def test_trains_against_old_and_new_checkpoints_and_scores_new_to_old(tmp_path):
    old_recipe = ml_recipe(data={"options": {"train_classes": [0, 1, 2]}},
                           model={"name": "resnet", "options": {"widths": [8, 8], "depths": [1, 1],
                                                                "embedding_dim": 8}})
    fit(old_recipe, out_dir=tmp_path / "old")
    fit(ml_recipe(), out_dir=tmp_path / "new")
    old, new = str(tmp_path / "old" / "checkpoint.pt"), str(tmp_path / "new" / "checkpoint.pt")
    recipe = ml_recipe(data={"options": {"gallery_model": old}},
                       methods=[{"name": "bt2", "old_model": old, "new_model": new, "extra_dims": 4}])
    result = fit(recipe)
    assert isinstance(result.model, BT2Model) and result.model.old_dim == 8
    summary = result.summary
    assert 0.0 <= summary["final_test_compat_recall_at_1"] <= 1.0 and math.isfinite(summary["final_test_map_at_r"])
    with pytest.raises(ConfigurationError, match="bt2.extra_dims = 9 exceeds the old embedding's 8 numbers"):
        fit(ml_recipe(methods=[{"name": "bt2", "old_model": old, "extra_dims": 9}]))
    with pytest.raises(ConfigurationError, match="bt2.old_model: required"):
        fit(ml_recipe(methods=[{"name": "bt2"}]))
    with pytest.raises(ConfigurationError, match="bt2.old_model: checkpoint not found"):
        fit(ml_recipe(methods=[{"name": "bt2", "old_model": str(tmp_path / "missing.pt")}]))
    with pytest.raises(ConfigurationError, match="bt2.new_model embeds into 16 numbers, the model being trained"):
        fit(ml_recipe(model={"name": "resnet", "options": {"widths": [8, 16], "depths": [1, 1], "embedding_dim": 12}},
                      methods=[{"name": "bt2", "old_model": old, "new_model": new}]))


def test_method_arguments_are_checked():
    with pytest.raises(ValueError, match="old_model must be a builtins.str"):
        BT2Method(old_model=3)
    with pytest.raises(ValueError, match="influence_weight must be >= 0"):
        BT2Method(old_model="x.pt", influence_weight=-1.0)
