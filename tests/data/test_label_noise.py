"""Label noise: exact per-class counts, the kinds' mappings, seeding, train split only."""

import math

import pytest
import torch

from regimen.data import noisy_labels
from regimen.errors import ConfigurationError
from regimen.tasks import ImageClassificationTask
from regimen.train.recipe import parse_recipe


def _labels(n_per_class=(50, 37, 80, 13), seed=0):
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(n_per_class)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize("kind", ["symmetric", "pair"])
def test_each_class_loses_exactly_ceil_rate_times_its_count(kind):
    clean = _labels()
    noisy = noisy_labels(clean, 0.4, kind, 4, torch.Generator().manual_seed(1))
    for c in range(4):
        members = clean == c
        assert int((noisy[members] != c).sum()) == math.ceil(0.4 * int(members.sum()))


def test_symmetric_flips_to_every_other_class_and_never_to_itself():
    clean = torch.zeros(20000, dtype=torch.int64)
    clean[10000:] = 1
    noisy = noisy_labels(clean, 0.5, "symmetric", 5, torch.Generator().manual_seed(0))
    flipped = noisy[:10000][noisy[:10000] != 0]
    counts = torch.bincount(flipped, minlength=5)[1:].double()
    assert counts.sum() == 5000
    assert (counts / 5000 - 0.25).abs().max() < 0.03  # uniform over the 4 other classes


def test_pair_noise_moves_class_c_to_c_plus_one_mod_c():
    clean = _labels()
    noisy = noisy_labels(clean, 0.3, "pair", 4, torch.Generator().manual_seed(2))
    changed = noisy != clean
    assert torch.equal(noisy[changed], (clean[changed] + 1) % 4)


def test_same_seed_same_noise_and_input_untouched():
    clean = _labels()
    before = clean.clone()
    a = noisy_labels(clean, 0.4, "symmetric", 4, torch.Generator().manual_seed(3))
    b = noisy_labels(clean, 0.4, "symmetric", 4, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(clean, before)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5])
def test_bad_rate_is_refused_naming_the_option(rate):
    with pytest.raises(ValueError, match="label_noise"):
        noisy_labels(_labels(), rate)


def test_recipe_option_corrupts_the_training_split_only():
    recipe = parse_recipe({"data": {"name": "digits", "options": {"label_noise": 0.4, "label_noise_kind": "pair"}}})
    clean = ImageClassificationTask(parse_recipe({"data": {"name": "digits"}})).load_data()
    data = ImageClassificationTask(recipe).load_data()
    assert torch.equal(data.train.images, clean.train.images)
    wrong = float((data.train.labels != clean.train.labels).double().mean())
    assert 0.4 <= wrong < 0.42
    assert torch.equal(data.val.labels, clean.val.labels) and torch.equal(data.test.labels, clean.test.labels)
    assert "pair label noise 0.4" in data.sources["train"]


@pytest.mark.parametrize("options, match", [({"label_noise": 1.0}, "label_noise must be in"),
                                            ({"label_noise_kind": "uniform"}, "label_noise_kind"),
                                            ({"noise": 0.2}, "data.options.noise: unknown option")])
def test_bad_recipe_options_name_the_key(options, match):
    with pytest.raises(ConfigurationError, match=match):  # refused when the recipe is parsed
        parse_recipe({"data": {"name": "digits", "options": options}})
