"""The augment Methods are registered under their recipe names, validate parameters through recipes and transform
batches as the trainer expects (float [0, 1] in, same shape out; soft targets for mixing)."""

import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from regimen.augment import CutMixMethod, MixMethod, MixUpMethod, RandAugmentMethod, TrivialAugmentMethod, cutmix, mixup
from regimen.errors import ConfigurationError
from regimen.method import Context, MethodConflictError, check_method_order, get_method
from regimen.train.recipe import RecipeError, parse_recipe

NAMES = ["randaugment", "trivialaugment", "cutmix", "mixup", "mix", "aug_subset"]


def _ctx(label_smoothing=0.0):
    model = nn.Linear(2, 3)
    data = SimpleNamespace(images=torch.zeros(6, 1, 4, 4, dtype=torch.uint8), labels=torch.arange(6) % 3)
    return Context(model=model, optimizer=None,
                   criterion=lambda logits, y: F.cross_entropy(logits, y), num_classes=3, per_device_batch=5,
                   generator=torch.Generator().manual_seed(0), label_smoothing=label_smoothing, train_data=data)


def test_methods_are_registered_and_recipes_validate_their_parameters():
    for name in NAMES:
        assert get_method(name).name == name
    recipe = parse_recipe({"methods": [{"name": "randaugment", "magnitude": 5, "num_ops": 3},
                                       {"name": "cutmix", "alpha": 0.5}]})
    assert recipe.methods[0].name == "randaugment"
    with pytest.raises(RecipeError):
        parse_recipe({"methods": [{"name": "randaugment", "magnitud": 5}]})
    with pytest.raises((RecipeError, ValueError)):
        parse_recipe({"methods": [{"name": "randaugment", "magnitude": 40}]})


@pytest.mark.parametrize("cls", [RandAugmentMethod, TrivialAugmentMethod])
def test_augment_methods_keep_shape_and_range(cls):
    method = cls()
    x = torch.rand(5, 1, 12, 12)
    y = torch.arange(5) % 3
    out, y_out = method.transform_batch(x, y, _ctx())
    assert out.shape == x.shape and out.dtype == x.dtype and 0 <= out.min() and out.max() <= 1
    assert torch.equal(y_out, y)
    # 8-bit batches (as the trainer produces) get exactly the uint8 ops: outputs stay multiples of 1/255
    levels = torch.randint(0, 256, (5, 1, 12, 12)).float() / 255
    out, _ = method.transform_batch(levels, y, _ctx())
    assert torch.allclose(out * 255, (out * 255).round(), atol=1e-4)


@pytest.mark.parametrize("cls", [CutMixMethod, MixUpMethod])
def test_mixing_methods_return_soft_targets(cls):
    method = cls(prob=1.0)
    x = torch.rand(5, 1, 12, 12)
    out, soft = method.transform_batch(x, torch.arange(5) % 3, _ctx())
    assert out.shape == x.shape and soft.shape == (5, 3) and torch.allclose(soft.sum(1), torch.ones(5))
    skipped = cls(prob=0.0)
    out, soft = skipped.transform_batch(x, torch.arange(5) % 3, _ctx())
    assert torch.equal(out, x) and torch.equal(soft, F.one_hot(torch.arange(5) % 3, 3).float())


@pytest.mark.parametrize("name", ["cutmix", "mixup", "aug_subset"])
def test_own_label_smoothing_is_deprecated_and_refused_with_the_trainers(name):
    cls = get_method(name)
    with pytest.warns(DeprecationWarning, match=f"{name}.label_smoothing is deprecated"):
        method = cls(label_smoothing=0.1)
    method.setup(_ctx(label_smoothing=0.0))  # alone it still works for one release
    with pytest.raises(ConfigurationError, match=rf"train.label_smoothing = 0.2 and {name}.label_smoothing = 0.1"):
        method.setup(_ctx(label_smoothing=0.2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default (no own smoothing) neither warns nor refuses
        cls().setup(_ctx(label_smoothing=0.2))


def test_methods_declare_the_inputs_and_targets_they_serve():
    for name in ("randaugment", "trivialaugment", "cutmix", "mixup", "mix", "aug_subset"):
        assert get_method(name).inputs == ("image",)
    for name in ("cutmix", "mixup", "mix", "aug_subset"):
        assert get_method(name).targets == ("labels",)


def test_mixing_needs_the_number_of_classes():
    ctx = _ctx()
    ctx.update_run(num_classes=None)
    with pytest.raises(ConfigurationError, match="cutmix needs the number of classes"):
        CutMixMethod().setup(ctx)


def test_fit_refuses_smoothing_twice_in_one_line(tiny_recipe):
    from regimen.train import fit

    recipe = dict(tiny_recipe, train=dict(tiny_recipe["train"], label_smoothing=0.1),
                  methods=[{"name": "mixup", "label_smoothing": 0.1}])
    with pytest.raises(ConfigurationError, match=r"^method 'mixup': label smoothing is set twice: "
                                                 r"train.label_smoothing = 0.1 and mixup.label_smoothing = 0.1"):
        fit(recipe)


# ------------------------------------------------------------------------------------ mix: CutMix or MixUp per batch
@pytest.mark.parametrize("prob, switch_prob", [(1.0, 0.5), (0.8, 0.3), (0.5, 1.0), (0.0, 0.5)])
def test_mix_chooses_with_the_right_frequencies(prob, switch_prob):
    method = MixMethod(prob=prob, switch_prob=switch_prob)
    g = torch.Generator().manual_seed(11)
    trials = 20000
    choices = [method.choose(g) for _ in range(trials)]
    expected = {"cutmix": prob * switch_prob, "mixup": prob * (1 - switch_prob), None: 1 - prob}
    for choice, p in expected.items():
        share = choices.count(choice) / trials
        assert abs(share - p) <= 4 * (p * (1 - p) / trials) ** 0.5 + 1e-12, (choice, share, p)


def test_mix_choice_is_two_uniform_draws_compared_by_hand():
    method = MixMethod(prob=0.7, switch_prob=0.4)
    g, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(200):
        u, v = torch.rand(2, generator=ref, dtype=torch.float64).tolist()
        assert method.choose(g) == (None if u >= 0.7 else "cutmix" if v < 0.4 else "mixup")


def test_mix_with_one_side_off_always_uses_the_other():
    g = torch.Generator().manual_seed(0)
    assert {MixMethod(mixup_alpha=0.0).choose(g) for _ in range(200)} == {"cutmix"}
    assert {MixMethod(cutmix_alpha=0.0).choose(g) for _ in range(200)} == {"mixup"}


@pytest.mark.parametrize("per_sample", [False, True])
def test_each_mixed_batch_equals_cutmix_or_mixup_called_with_the_same_draws(per_sample):
    method = MixMethod(mixup_alpha=0.4, cutmix_alpha=1.0, switch_prob=0.5, prob=0.8, per_sample=per_sample)
    ctx = _ctx()
    x = torch.rand(5, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.arange(5) % 3
    seen = set()
    for _ in range(60):
        ref = torch.Generator()
        ref.set_state(ctx.generator.get_state())
        out, soft = method.transform_batch(x, y, ctx)
        choice = method.choose(ref)  # the method's own two draws, replayed
        seen.add(choice)
        if choice is None:
            expected = (x, F.one_hot(y, 3).float())
        else:
            function, alpha = (cutmix, 1.0) if choice == "cutmix" else (mixup, 0.4)
            expected = function(x, y, alpha=alpha, num_classes=3, generator=ref, per_sample=per_sample)
        assert torch.equal(out, expected[0]) and torch.equal(soft, expected[1])
        assert torch.equal(ref.get_state(), ctx.generator.get_state())  # no other draws
    assert seen == {None, "cutmix", "mixup"}


def test_mix_refuses_bad_parameters_and_a_second_mixing_method():
    with pytest.raises(ConfigurationError, match="mix.switch_prob must be a probability in"):
        MixMethod(switch_prob=1.5)
    with pytest.raises(ConfigurationError, match="mix.prob must be a probability in"):
        MixMethod(prob=-0.1)
    with pytest.raises(ConfigurationError, match="mix.cutmix_alpha must be a number >= 0"):
        MixMethod(cutmix_alpha=-1.0)
    with pytest.raises(ConfigurationError, match="both 0"):
        MixMethod(mixup_alpha=0.0, cutmix_alpha=0.0)
    for other in (CutMixMethod(), MixUpMethod()):
        with pytest.raises(MethodConflictError, match=f"'mix' and '{other.name}' cannot share a recipe"):
            check_method_order([other, MixMethod()])
    ctx = _ctx()
    ctx.update_run(num_classes=None)
    with pytest.raises(ConfigurationError, match="mix needs the number of classes"):
        MixMethod().setup(ctx)


def test_the_shipped_mix_recipe_parses():
    from regimen.recipes import find_recipe
    from regimen.train.recipe import build_methods, load_recipe

    recipe = load_recipe(find_recipe("augment/mix"))
    (method,) = build_methods(recipe)
    assert isinstance(method, MixMethod) and (method.mixup_alpha, method.cutmix_alpha) == (0.8, 1.0)


def test_fit_trains_with_mix_and_refuses_it_beside_cutmix(tiny_recipe):
    import math

    from regimen.train import fit

    recipe = dict(tiny_recipe, train=dict(tiny_recipe["train"], epochs=1, label_smoothing=0.1),
                  methods=[{"name": "mix", "switch_prob": 0.5}])
    result = fit(recipe)
    assert all(math.isfinite(v) for v in result.summary.values() if isinstance(v, float))
    with pytest.raises(ConfigurationError, match="'mix' and 'cutmix' cannot share a recipe"):
        fit(dict(recipe, methods=[{"name": "cutmix"}, {"name": "mix"}]))


def test_randaugment_accepts_what_its_docstring_states():
    from regimen.augment import RandAugment, TrivialAugment

    g = torch.Generator().manual_seed(0)
    for aug in (RandAugment(num_ops=3), TrivialAugment()):
        for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            x = torch.rand(3, 3, 9, 7, generator=g).to(dtype)
            out = aug(x, generator=g)
            assert out.dtype == dtype and out.shape == x.shape and 0 <= out.min() and out.max() <= 1
        levels = torch.randint(0, 256, (3, 1, 9, 7), generator=g, dtype=torch.uint8)
        assert aug(levels, generator=g).dtype == torch.uint8
        with pytest.raises(TypeError, match="uint8 or floating point"):
            aug(levels.to(torch.int32))
        with pytest.raises(ValueError, match="1 or 3 channels"):
            aug(torch.rand(3, 4, 9, 7))
        with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
            aug(torch.rand(3, 9, 7))
        with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
            aug(torch.rand(3, 3, 9, 7) * 2 - 0.5)
    # the Methods refuse an out-of-range (already normalised) batch on both paths
    shifted = torch.rand(4, 3, 9, 7, generator=g) * 2 - 0.5
    with pytest.raises(ValueError, match=r"expects images in \[0, 1\]"):
        RandAugmentMethod(num_ops=0).transform_batch(shifted, None, _ctx())
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        RandAugmentMethod(quantize=False).transform_batch(shifted, None, _ctx())


def test_quantizing_methods_refuse_an_already_normalised_batch():
    from regimen.augment._common import augment_float_batch
    from regimen.augment.randaugment import RandAugment

    x = torch.rand(4, 1, 8, 8) * 2 - 0.5
    with pytest.raises(ValueError, match=r"expects images in \[0, 1\] \(before normalisation\), got values in"):
        augment_float_batch(RandAugment(2, 9.0), x, torch.Generator().manual_seed(0), quantize=True)
