"""SeTa (Zhou et al. 2025): 1-D k-means against scikit-learn, the sliding window by hand, the selection by an
explicit loop, bad input, and per-sample selection in the trainer."""

import numpy as np
import pytest
import torch

from regimen.batch import SeTaMethod, kmeans_1d, seta_select, seta_window, sliding_window
from regimen.data import InMemoryLoader, TensorDataset


def test_kmeans_1d_finds_the_partition_scikit_learn_finds():
    from sklearn.cluster import KMeans

    generator = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(40, generator=generator) * 0.1 + c for c in (0.0, 2.0, 5.0, 9.0)])
    values = values[torch.randperm(160, generator=generator)]
    ours = kmeans_1d(values, 4)
    theirs = KMeans(n_clusters=4, random_state=0, n_init=10).fit(values.numpy()[:, None])
    order = np.argsort(theirs.cluster_centers_[:, 0])
    rank = np.empty(4, dtype=np.int64)
    rank[order] = np.arange(4)
    assert torch.equal(ours, torch.as_tensor(rank[theirs.labels_]))  # same groups, numbered easy -> hard


def test_kmeans_1d_inertia_is_close_to_scikit_learn_on_unstructured_losses():
    from sklearn.cluster import KMeans

    for seed in range(5):  # seeded: Lloyd's from quantiles is a local method (20 seeds: median 1.002x, worst 1.043x
        # of scikit-learn's best of 10 k-means++ starts), so an unseeded draw made this test order-dependent
        values = -torch.log(torch.rand(2000, generator=torch.Generator().manual_seed(seed)))  # Exponential(1)
        labels = kmeans_1d(values, 5)
        means = torch.stack([values[labels == g].mean() for g in range(5)])
        assert torch.all(means[1:] > means[:-1])
        inertia = float(((values - means[labels]) ** 2).sum())
        reference = KMeans(n_clusters=5, random_state=0, n_init=10).fit(values.numpy()[:, None]).inertia_
        assert inertia <= reference * 1.05


def test_all_equal_scores_split_into_equal_chunks():
    assert kmeans_1d(torch.full((10,), 3.0), 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_sliding_window_by_hand():
    # G = 5, w = round(5 x 0.9) = 4 (Python rounds half to even, as the reference): start = e mod 2
    assert seta_window(5, 0.9) == 4
    assert [sliding_window(5, 4, e) for e in range(5)] == [(0, 5), (1, 5), (0, 4), (1, 5), (0, 4)]
    assert [sliding_window(10, 5, e)[0] for e in range(1, 8)] == [1, 2, 3, 4, 5, 0, 1]


def test_selection_equals_an_explicit_loop():
    scores = torch.tensor([0.1, 0.12, 0.11, 1.0, 1.1, 1.05, 3.0, 3.2, 3.1, 0.13, 1.02, 3.05])
    epoch, g, w = 3, 3, 2
    chosen = seta_select(scores, epoch, epochs=10, prune_ratio=0.25, num_groups=g, window_scale=0.6,
                         generator=torch.Generator().manual_seed(5))
    kept = torch.randperm(12, generator=torch.Generator().manual_seed(5))[:9].tolist()  # int(12 x 0.75)
    group = {i: (0 if scores[i] < 0.5 else 1 if scores[i] < 2 else 2) for i in kept}  # the three obvious groups
    start = epoch % (g - w + 1)
    expected = sorted(i for i in kept if start <= group[i] < start + w)
    assert chosen.tolist() == expected


def test_annealing_epochs_keep_the_random_fraction_only():
    scores = torch.rand(100)
    chosen = seta_select(scores, 9, epochs=10, prune_ratio=0.3, generator=torch.Generator().manual_seed(1))
    assert chosen.numel() == 70


@pytest.mark.parametrize("scale", [0.0, 1.5, -0.2])
def test_window_larger_than_the_groups_or_empty_is_refused(scale):
    with pytest.raises(ValueError, match="window_scale"):
        SeTaMethod(window_scale=scale)
    with pytest.raises(ValueError, match="window"):
        sliding_window(5, 6, 1)
    with pytest.raises(ValueError, match="window_scale"):
        SeTaMethod(num_groups=2, window_scale=0.2)  # round(0.4) = 0 groups


def test_loader_subset_batches_only_the_selected_samples():
    data = TensorDataset(torch.arange(50).float().unsqueeze(1), torch.arange(50))
    loader = InMemoryLoader(data, 8, seed=3)
    loader.subset = torch.arange(0, 50, 2)
    seen = torch.cat([indices for _, _, indices in loader])
    assert len(loader) == 3 and seen.numel() == 24 and bool((seen % 2 == 0).all())


def test_seta_trains_on_fewer_samples_and_records_losses():
    from regimen.train import fit

    recipe = {"seed": 0, "data": {"name": "digits", "train_subset": 640},
              "model": {"name": "mlp", "options": {"hidden": [32]}}, "optim": {"name": "sgd", "lr": 0.05},
              "train": {"epochs": 3, "batch_size": 32, "threads": 1}}
    full = fit(recipe)
    seta = fit(dict(recipe, methods=[{"name": "seta", "prune_ratio": 0.3, "num_groups": 5, "window_scale": 0.6}]))
    assert seta.history[0]["step"] == 448 // 32  # epoch 0: the random 70 % only
    steps = [seta.history[0]["step"]] + [b["step"] - a["step"] for a, b in zip(seta.history, seta.history[1:])]
    assert all(s < full.history[0]["step"] for s in steps)
    assert 0.0 < seta.history[1]["seta/kept_fraction"] < 0.7
    assert seta.history[-1]["seta/mean_score"] < 3.0  # the scores were replaced by training losses
