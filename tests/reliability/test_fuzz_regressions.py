"""Regression tests of the defects the large fuzz profile found (issue 21, third triage pass): each input below
once raised an internal torch error (or was accepted); each must now be a ``TypeError``/``ValueError`` naming the
argument, or, where the input is legal, a correct result. reports/reliability/fuzzing.md lists them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import regimen.augment as A
import regimen.batch as B
import regimen.dropout as D
import regimen.losses as L

pytestmark = pytest.mark.usefixtures("one_thread")


def _orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


def test_bt2_embedding_refuses_extra_dims_too_small_to_cover_the_old_space():
    feature, old_space = F.normalize(torch.randn(3, 2), dim=1), torch.randn(3, 4)
    with pytest.raises(ValueError, match="extra_dims"):  # D + a = 2 + 1 < d_old = 4: was a matmul shape error
        L.bt2_embedding(feature, old_space, _orthogonal(2, 0), _orthogonal(4, 1), extra_dims=1)
    embedding, compatible = L.bt2_embedding(feature, old_space, _orthogonal(2, 0), _orthogonal(4, 1), extra_dims=2)
    assert embedding.shape == (3, 4) and compatible.shape == (3, 4)  # D + a == d_old: all of it is compatible


def test_train_neighbour_cvae_trains_in_the_features_dtype():
    features = (torch.rand(5, 3, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    src = torch.arange(5)
    edge_index = torch.cat([torch.stack([src, (src + 1) % 5]), torch.stack([(src + 1) % 5, src])], 1)
    cvae = A.train_neighbour_cvae(features, edge_index, latent=2, hidden=4, epochs=1, batch_size=4,
                                  generator=torch.Generator().manual_seed(0))
    assert all(p.dtype == torch.float64 for p in cvae.parameters())  # was: mat1 and mat2 must have the same dtype
    recon, mean, log_var = cvae(features[:2], features[2:4], torch.zeros(2, 2, dtype=torch.float64))
    assert recon.dtype == torch.float64 and recon.shape == (2, 3)
    again = A.train_neighbour_cvae(features, edge_index, latent=2, hidden=4, epochs=1, batch_size=4,
                                   generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(cvae.parameters(), again.parameters()))  # same seed, same weights


@pytest.mark.parametrize("bad", ["x", "c", "noise"])
def test_neighbour_cvae_names_a_mis_shaped_input(bad):
    cvae = A.NeighbourCVAE(3, latent=2, hidden=4)
    inputs = {"x": torch.rand(4, 3), "c": torch.rand(4, 3), "noise": torch.randn(4, 2)}
    inputs[bad] = inputs[bad][:2]  # was: torch.cat's "Sizes of tensors must match"
    with pytest.raises(ValueError, match=bad):
        cvae(**inputs)
    inputs[bad] = inputs[bad].tolist()
    with pytest.raises(TypeError, match=bad):  # was: torch.cat's "expected Tensor as element 0"
        cvae(**inputs)


def test_ghost_batch_norm_names_x_on_meta_or_on_another_device_than_its_running_stats():
    with pytest.raises(ValueError, match="x"):  # was: an in-place copy between meta and cpu
        B.ghost_batch_norm(torch.randn(4, 3, device="meta"), 2, torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="x"):  # all on meta: was Tensor.item() in the statistics' guard
        B.GhostBatchNorm1d(3, 2).to("meta")(torch.randn(4, 3, device="meta"))
    assert B.GhostBatchNorm1d(3, 2).to("meta").eval()(torch.randn(4, 3, device="meta")).shape == (4, 3)


def test_wta_crs_sampling_refuses_meta_tensors_and_mismatched_rows_by_name():
    with pytest.raises(ValueError, match="scores"):  # was: Tensor.item() on meta
        B.wta_crs_sample(torch.rand(5, device="meta"), 2)
    with pytest.raises(ValueError, match="x"):
        B.wta_crs_weight_grad(torch.randn(6, 4, device="meta"), torch.randn(6, 3, device="meta"))
    with pytest.raises(ValueError, match="grad_output"):  # was: an IndexError
        B.wta_crs_weight_grad(torch.randn(6, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="grad_norm"):  # was: a broadcasting RuntimeError
        B.wta_crs_weight_grad(torch.randn(6, 4), torch.randn(6, 3), grad_norm=torch.ones(4))


def test_targeted_fgsm_refuses_targets_that_are_not_class_indices():
    model, x = nn.Linear(4, 3), torch.rand(2, 4)
    for target in (torch.tensor([True, False]), torch.tensor([0.0, 1.0]), [0, 1]):
        with pytest.raises(TypeError, match="target"):  # a bool target was nll_loss's "expected Long" RuntimeError
            B.targeted_fgsm(model, x, target, 0.1, 0.1)
    with pytest.raises(ValueError, match="target"):
        B.targeted_fgsm(model, x, torch.tensor([0]), 0.1, 0.1)
    with pytest.raises(ValueError, match="target"):  # was: an IndexError inside cross_entropy
        B.targeted_fgsm(model, x, torch.tensor([0, 3]), 0.1, 0.1)


def test_concrete_temporal_dropout_names_x_on_another_device():
    with pytest.raises(ValueError, match="x"):  # the message named the mask's p and noise, not x
        D.ConcreteTemporalDropout()(torch.randn(2, 3, 4, device="meta"))


def test_gyro_dropout_refuses_a_list_by_name():
    with pytest.raises(TypeError, match="x"):  # was: AttributeError: 'list' object has no attribute 'dim'
        D.GyroDropout(p=0.5, sigma=4, tau=2)([[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_consistency_loss_refuses_a_temperature_that_is_not_positive(temperature):
    p = torch.tensor([[0.2, 0.8]])
    with pytest.raises(ValueError, match="temperature"):  # was accepted: p ** (1 / 0) and p ** -1
        A.consistency_loss([p, p], temperature=temperature)


def test_agvm_factors_refuses_eps_and_phis_that_break_the_ratio():
    with pytest.raises(ValueError, match="eps"):  # eps = 0 with φ = 0 was a ZeroDivisionError
        B.agvm_factors([0.0, 0.0], eps=0.0)
    with pytest.raises(ValueError, match="phis"):  # a NaN φ gave a NaN LR factor
        B.agvm_factors([0.5, float("nan")])
    assert B.agvm_factors([0.5, -1e-17]) == pytest.approx([1.0, 10.0 ** 0.5])  # 1 − cos rounded below 0: legal


def test_coteaching_losses_names_inputs_cross_entropy_cannot_take():
    a, b, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with pytest.raises(TypeError, match="output_a"):  # was: AttributeError on .shape
        B.coteaching_losses(a.tolist(), b, y, 0.25)
    with pytest.raises(TypeError, match="target"):  # was: nll_loss's "expected scalar type Long" RuntimeError
        B.coteaching_losses(a, b, y.bool(), 0.25)
    with pytest.raises(TypeError, match="output_b"):  # was: log_softmax "not implemented for 'Long'"
        B.coteaching_losses(a, b.long(), y, 0.25)
    with pytest.raises(ValueError, match="output_a"):  # was: coteaching_select's message naming loss_a
        B.coteaching_losses(a.to("meta"), b.to("meta"), y.to("meta"), 0.25)


def test_mc_dropout_classifier_refuses_an_empty_batch_by_name():
    model = D.MCDropoutClassifier(nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.5)), samples=2, chunk_size=1)
    with pytest.raises(ValueError, match="x"):  # was: torch.cat of no chunks
        model(torch.randn(0, 5))


def test_kmeans_1d_without_iterations_assigns_to_the_quantile_centres():
    values = torch.tensor([0.0, 0.1, 5.0, 5.1, 10.0, 10.2])
    # was: every label rank[-1] (the -1 placeholder indexed the last group); now the initial centres' assignment
    assert B.kmeans_1d(values, 3, iterations=0).tolist() == [0, 0, 1, 1, 2, 2]
    assert B.kmeans_1d(values, 3, iterations=0).tolist() == B.kmeans_1d(values, 3).tolist()


def test_bt2_embedding_names_a_tensor_of_another_dtype():
    feature, old_space = F.normalize(torch.randn(3, 2), dim=1), torch.randn(3, 2)
    with pytest.raises(TypeError, match="p must"):  # was: matmul's "expected m1 and m2 to have the same dtype"
        L.bt2_embedding(feature, old_space, _orthogonal(2, 0).double(), _orthogonal(2, 1), extra_dims=1)


# ---- found by the whole-registry large run (third pass)
def test_loss_functions_name_a_tensor_on_another_device():
    logits, probs = torch.randn(3, 4), torch.rand(3, 4).softmax(1)
    with pytest.raises(ValueError, match="target"):  # each was "Tensor on device cpu is not on the expected device"
        L.soft_target_cross_entropy(logits, probs.to("meta"))
    with pytest.raises(ValueError, match="target"):
        L.multi_sample_cross_entropy(torch.randn(2, 3, 4), torch.tensor([0, 1, 2], device="meta"))
    with pytest.raises(ValueError, match="bias"):
        L.linear_cross_entropy(torch.randn(3, 2), torch.randn(4, 2), torch.tensor([0, 1, 3]),
                               bias=torch.zeros(4, device="meta"))
    with pytest.raises(ValueError, match="prediction"):  # was index_add's device error
        L.aggregate_loss(torch.randn(4, device="meta"), torch.tensor([0, 0, 1, 1]), torch.randn(2))


def test_loss_functions_name_a_tensor_of_another_dtype():
    with pytest.raises(TypeError, match="target"):  # was: "Subtraction ... with two bool tensors"
        L.cfm_loss(torch.randn(2, 5), torch.rand(2, 5) > 0.5)
    pred, target = torch.rand(4, 3, dtype=torch.float64), torch.rand(4, 3)
    with pytest.raises(TypeError, match="pred and target"):  # the message named ssim's img1 and img2
        L.s3im_loss(pred, target, kernel=1, stride=1, repeats=1, patch_height=2)
    n, d, d_old = 3, 2, 2
    args = dict(feature=torch.randn(n, d), compatible=torch.randn(n, d_old), target=torch.tensor([0, 1, 2]),
                old=torch.randn(n, d_old), new=None, old_classifier=torch.randn(3, d_old, dtype=torch.float64))
    with pytest.raises(TypeError, match="old_classifier"):  # was: matmul's "expected m1 and m2 to have the same dtype"
        L.bt2_regularizer(**args)


def test_dropout_heads_name_bad_inputs():
    with pytest.raises(ValueError, match="bias"):  # was: "The expanded size of the tensor (3) must match ... (0)"
        D.multi_sample_dropout(torch.randn(5, 4), torch.randn(3, 4), torch.zeros(0), num_samples=2)
    with pytest.raises(ValueError, match="features"):  # was: a device RuntimeError
        D.nested_prefix_logits(torch.randn(2, 4, device="meta"), torch.randn(3, 4))
    with pytest.raises(TypeError, match="x"):  # was: AttributeError: 'list' object has no attribute 'device'
        D.NestedLinear(4, 3)([[1.0, 2.0, 3.0, 4.0]])


def test_seta_sliding_window_names_num_groups():
    with pytest.raises(ValueError, match="num_groups"):  # the message said "group count (-1)"
        B.sliding_window(-1, 3, 1)


def test_subnet_functions_name_bad_inputs():
    import regimen.subnet as S
    with pytest.raises(ValueError, match="matrix"):  # was: "shape '[2, 3, 3, 3]' is invalid for input of size 0"
        S.matrix_to_conv(torch.zeros(0, 9), (2, 3, 3, 3))
    with pytest.raises(ValueError, match="singular_values"):  # was: torch.searchsorted's dimension error
        S.energy_rank(torch.rand(1, 7))
    with pytest.raises(ValueError, match="weight"):  # was: max() of an empty tensor
        S.nuclear_subgradient(torch.zeros(0, 2, 3, 3))
    with pytest.raises(ValueError, match="v"):  # was: a device RuntimeError
        S.hierarchical_group_lasso(torch.randn(4, 3), torch.randn(3, 6, device="meta"))
    q = torch.randn(2, 2, 6, 4)
    with pytest.raises(TypeError, match="k must"):  # was: "expected scalar type Float but found Long"
        S.subsampled_causal_attention(q, q.long(), q, torch.tensor([[0, 2], [1, 3]]))
    with pytest.raises(ValueError, match="teacher_logits"):
        S.inplace_distillation_loss(torch.randn(4, 2), torch.randn(1, 4, 2))
    with pytest.raises(ValueError, match="upper"):  # upper = 0 divided the factors by zero
        S.polarized_fraction(torch.rand(5), upper=0.0)
    with pytest.raises(TypeError, match="weight"):  # was: F.linear's "expected m1 and m2 to have the same dtype"
        S.transform_kernel(torch.ones(2, 2, 5, 5, dtype=torch.bool), [3, 5], 3, [torch.eye(9)])


def test_subnet_modules_name_bad_inputs():
    import regimen.subnet as S
    with pytest.raises(ValueError, match="x"):  # was: conv2d's "Expected 3D (unbatched) or 4D (batched) input"
        S.FactorizedConv2d(3, 4, rank=2, kernel_size=3)(torch.randn(1, 2, 3, 8, 8))
    with pytest.raises(TypeError, match="x"):  # the message named linear()'s 'input'
        S.FactorizedLinear(3, 4, rank=2)([[1.0, 2.0, 3.0]])
    attention = S.PrunedMultiheadAttention(8, 2, head_dim=4, batch_first=True)
    x = torch.randn(3, 1, 8)
    with pytest.raises(ValueError, match="query"):  # was: "shape '[0, 1, 2, 1]' is invalid for input of size 6"
        attention(x[:0], x, x)


def test_second_round_inputs_are_named():
    import regimen.subnet as S
    with pytest.raises(ValueError, match="bias"):  # was: "The size of tensor a (0) must match the size of tensor b"
        D.nested_prefix_logits(torch.randn(2, 6), torch.randn(0, 6), torch.zeros(3))
    with pytest.raises(ValueError, match="target"):  # was: Tensor.item() on meta
        L.s3im_loss(torch.rand(4, 3), torch.rand(4, 3, device="meta"), kernel=1, stride=1, repeats=1, patch_height=2)
    with pytest.raises(ValueError, match="teacher_logits"):  # the message named soft CE's target and logits
        S.inplace_distillation_loss(torch.randn(4, 2), torch.randn(4, 2, device="meta"))
    q = torch.randn(1, 2, 6, 4)
    with pytest.raises(ValueError, match="kept"):  # was: a device RuntimeError
        S.subsampled_attention(q, q, q, torch.tensor([[0, 2]], device="meta"), causal=False)
    with pytest.raises(ValueError, match="kept"):  # was: gather(): "Expected dtype int32/int64 for index"
        S.subsampled_causal_attention(q, q, q, torch.tensor([[True, False]]))
    with pytest.raises(ValueError, match="v is on meta"):  # was: "Tensor on device meta is not on the expected device"
        S.subsampled_causal_attention(q, q, q.to("meta"), torch.tensor([[0, 2]]))


def test_third_round_inputs_are_named():
    import regimen.subnet as S
    with pytest.raises(ValueError, match="labels"):  # was: a device RuntimeError
        L.multi_similarity_loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 1], device="meta"))
    with pytest.raises(ValueError, match="u and v"):  # was: conv2d's "expected weight to be at least 1 at dimension 0"
        S.low_rank_conv2d(torch.randn(1, 2, 5, 5), torch.zeros(0, 4), torch.randn(4, 2, 3, 3))
    q = torch.randn(1, 1, 3, 2)
    with pytest.raises(ValueError, match="v"):  # was: gather's "Index tensor must have the same number of dimensions"
        S.subsampled_causal_attention(q, q, q.unsqueeze(-1), torch.tensor([[0, 2]]))
