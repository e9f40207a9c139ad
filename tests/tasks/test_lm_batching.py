"""Document-level batching of the language_model task: pieces cover every target once, padding is ignored by the
loss and the metrics (against unpadded cross-entropy by hand), length buckets and token budgets train, and bad
options are refused naming the key."""

import pytest
import torch
import torch.nn.functional as F

from regimen.batch import padding_fraction
from regimen.data import IGNORE_INDEX, DocumentPieces, TokenWindows
from regimen.errors import ConfigurationError
from regimen.tasks import LanguageModelTask, lm_cross_entropy
from regimen.train import RecipeError, fit
from regimen.train.recipe import parse_recipe

WORDS = ("light", "earth", "water", "firmament", "LORD", "deep", "heaven", "night", "day", "seed", "and", "was")


@pytest.fixture
def folder(tmp_path):
    """A folder of 120 documents of 10 to 130 bytes (one per file)."""
    generator = torch.Generator().manual_seed(0)
    for i in range(120):
        count = int(torch.randint(2, 24, (1,), generator=generator))
        words = [WORDS[int(j)] for j in torch.randint(0, len(WORDS), (count,), generator=generator)]
        (tmp_path / f"doc{i:03d}.txt").write_text(" ".join(words) + ".\n", encoding="utf-8")
    return tmp_path


def recipe(folder, batching: str, **options) -> dict:
    return {
        "name": "docs", "task": "language_model", "seed": 0,
        "data": {"name": "text", "root": str(folder), "val_fraction": 0.1, "test_fraction": 0.1,
                 "options": {"seq_len": 64, "batching": batching, **options}},
        "model": {"name": "gpt", "options": {"dim": 32, "depth": 1, "heads": 2}},
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": 2, "batch_size": 8, "eval_batch_size": 64, "threads": 1},
    }


def _windows(documents: list[list[int]], seq_len: int) -> TokenWindows:
    tokens = torch.tensor([t for d in documents for t in d])
    lengths = torch.tensor([len(d) for d in documents])
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)[:-1]])
    return TokenWindows(tokens, seq_len, 100, doc_starts=starts)


def test_pieces_predict_every_target_of_every_document_once():
    documents = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11, 12], [13, 14], list(range(20, 37))]
    pieces = DocumentPieces.from_windows(_windows(documents, seq_len=4))
    inputs, targets = pieces.gather(torch.arange(len(pieces)))
    real = targets != IGNORE_INDEX
    # explicit loop: every (previous token, next token) pair of every document, in order
    expected = [(d[t - 1], d[t]) for d in documents for t in range(1, len(d))]
    got = [(int(inputs[i, t]), int(targets[i, t])) for i in range(len(pieces)) for t in range(targets.shape[1])
           if real[i, t]]
    assert got == expected
    assert int(pieces.lengths.max()) <= 4 and pieces.lengths.tolist() == real.sum(1).tolist()
    beyond = torch.arange(inputs.shape[1]) >= pieces.sizes.unsqueeze(1)
    assert bool((inputs[beyond] == 0).all())  # padding inputs are a valid id


def test_padded_loss_equals_the_unpadded_cross_entropy_by_hand():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, generator=generator)
    target = torch.randint(0, 11, (3, 5), generator=generator)
    lengths = [5, 2, 4]
    for row, length in enumerate(lengths):
        target[row, length:] = IGNORE_INDEX
    per_sequence = [F.cross_entropy(logits[i, :n], target[i, :n]) for i, n in enumerate(lengths)]
    every_token = F.cross_entropy(torch.cat([logits[i, :n] for i, n in enumerate(lengths)]),
                                  torch.cat([target[i, :n] for i, n in enumerate(lengths)]))
    assert lm_cross_entropy(logits, target) == pytest.approx(every_token.item(), rel=1e-6)
    assert torch.allclose(lm_cross_entropy(logits, target, reduction="none"), torch.stack(per_sequence), atol=1e-6)
    task = LanguageModelTask.__new__(LanguageModelTask)
    sums = task.eval_sums(logits, target)
    assert sums[1].item() == sum(lengths)
    assert sums[0].item() == pytest.approx(every_token.item() * sum(lengths), rel=1e-6)


@pytest.mark.parametrize("batching, options", [("length_buckets", {}), ("token_budget", {"max_tokens": 256})])
def test_document_batching_trains_and_scores_the_same_windows(folder, tmp_path, batching, options):
    result = fit(recipe(folder, batching, **options), out_dir=tmp_path / batching)
    history = result.history
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    windows = fit(recipe(folder, "windows"), out_dir=tmp_path / "windows")
    # validation scores the same windows whatever the training batches
    task = LanguageModelTask(parse_recipe(recipe(folder, batching, **options)))
    data = task.load_data()
    assert len(data.val) == len(task.load_data().val)
    assert result.summary["primary_metric"] == windows.summary["primary_metric"] == "test_bits_per_byte"


def test_buckets_pad_less_than_random_batches_and_budgets_hold(folder):
    task = LanguageModelTask(parse_recipe(recipe(folder, "length_buckets")))
    data = task.load_data()
    loader = task.train_loader(data.train, 8, seed=0)
    loader.set_epoch(0)
    pieces = loader.dataset
    bucketed = padding_fraction(loader._batches(), pieces.lengths)
    order = torch.randperm(len(pieces), generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [order[i:i + 8] for i in range(0, len(order) - 7, 8)]
    assert bucketed < padding_fraction(random_batches, pieces.lengths)
    budget_task = LanguageModelTask(parse_recipe(recipe(folder, "token_budget", max_tokens=200)))
    budget = budget_task.train_loader(data.train, 8, seed=0)
    budget.set_epoch(0)
    for x, y, indices in budget:
        assert x.shape[0] * x.shape[1] <= 200 and x.shape == y.shape
        assert len(indices) == x.shape[0]


@pytest.mark.parametrize("options, message", [
    ({"batching": "sorted"}, "data.options.batching must be one of"),
    ({"batching": "windows", "max_tokens": 100}, "data.options.max_tokens is the token budget"),
    ({"batching": "token_budget", "max_tokens": 1}, "data.options.max_tokens must be >= 2"),
    ({"batching": "token_budget", "max_tokens": 32}, "max_tokens = 32 is below seq_len = 64"),
])
def test_bad_batching_options_name_the_key(folder, options, message):
    bad = recipe(folder, "windows")
    bad["data"]["options"] = {"seq_len": 64, **options}
    with pytest.raises((RecipeError, ConfigurationError), match=message):
        fit(bad)


def test_a_token_budget_has_a_fixed_mean_batch_size_that_methods_cannot_change(folder):
    task = LanguageModelTask(parse_recipe(recipe(folder, "token_budget", max_tokens=200)))
    data = task.load_data()
    loader = task.train_loader(data.train, 8, seed=0)
    loader.set_epoch(0)
    batches = loader._batches()
    assert loader.batch_size == round(sum(map(len, batches)) / len(batches))
    loader.batch_size = loader.batch_size  # a resume restores the same size: fine
    with pytest.raises(ValueError, match="token budget"):
        loader.batch_size = loader.batch_size + 1
    buckets = LanguageModelTask(parse_recipe(recipe(folder, "length_buckets"))).train_loader(data.train, 8, seed=0)
    buckets.batch_size = 4
    buckets.set_epoch(1)
    assert {len(b) for b in buckets._batches()} == {4}


def test_adaptive_batch_is_refused_on_token_targets_instead_of_doing_nothing(folder):
    bad = recipe(folder, "windows")
    bad["methods"] = [{"name": "adaptive_batch"}]
    with pytest.raises(RecipeError, match="adaptive_batch"):
        fit(bad)
