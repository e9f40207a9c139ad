"""pk_batches: each training batch becomes P classes x K samples drawn from the training set, reproducibly."""

import pytest
import torch

from regimen.batch import PKBatchesMethod
from regimen.data import ArrayDataset
from regimen.errors import ConfigurationError
from regimen.method import Context
from regimen.train import RecipeError, fit


def _data(n=60, classes=6):
    labels = torch.arange(n) % classes
    images = (torch.arange(n, dtype=torch.uint8) * 3).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return ArrayDataset(images, labels, classes)


def _batch(method, data, seed=0, batch=12):
    ctx = Context(torch.nn.Identity(), per_device_batch=batch, train_data=data,
                  generator=torch.Generator().manual_seed(seed))
    method.setup(ctx)
    x0, y0 = data.gather(torch.arange(batch))
    x, y = method.transform_batch(x0, y0, ctx)
    return x, y, ctx


def test_batches_hold_p_classes_times_k_samples_of_the_training_set_and_are_seeded():
    data = _data()
    x, y, ctx = _batch(PKBatchesMethod(samples_per_class=4), data)
    classes, counts = y.unique(return_counts=True)
    assert len(classes) == 3 and counts.tolist() == [4, 4, 4]  # P = 12 / 4 = 3 classes, K = 4 each
    assert len(set(ctx.batch_indices.tolist())) == 12  # classes have 10 members >= K: drawn without replacement
    gathered, labels = data.gather(ctx.batch_indices)  # the batch is the training samples it names
    assert torch.equal(gathered, x) and torch.equal(labels, y)
    again = _batch(PKBatchesMethod(samples_per_class=4), data)[2].batch_indices
    other = _batch(PKBatchesMethod(samples_per_class=4), data, seed=1)[2].batch_indices
    assert torch.equal(again, ctx.batch_indices) and not torch.equal(other, ctx.batch_indices)


def test_bad_batch_sizes_name_the_setting():
    with pytest.raises(ValueError, match="not a multiple of samples_per_class = 5"):
        _batch(PKBatchesMethod(samples_per_class=5), _data())
    with pytest.raises(ValueError, match="asks for 6 classes per batch, but the training set has 3"):
        _batch(PKBatchesMethod(samples_per_class=2), _data(classes=3))
    with pytest.raises(ValueError, match="samples_per_class must be an int >= 2"):
        PKBatchesMethod(samples_per_class=1)


def test_refused_on_a_classification_task_which_has_no_identity_targets(tiny_recipe):
    with pytest.raises((RecipeError, ConfigurationError), match="needs identity targets"):
        fit({**tiny_recipe, "methods": [{"name": "pk_batches"}]})
