"""The language_model task end to end on a small text file: training lowers the loss, bits per byte is total nats
over total bytes (by hand, for bytes and BPE), the LM methods equal their references inside the trainer, generate
samples from the checkpoint, and bad recipes are refused naming the key."""

import math

import pytest
import torch
import torch.nn.functional as F

from regimen.errors import ConfigurationError
from regimen.losses import LinearCrossEntropyMethod, LoadBalanceMethod, load_balancing_loss
from regimen.method import Context
from regimen.models import GPT
from regimen.tasks import LanguageModelTask, lm_cross_entropy
from regimen.train import RecipeError, fit
from regimen.train.recipe import parse_recipe
from tests.cli.helpers import run_cli

VERSES = [f"And the {w} of the {v} was {u}, and it was good in the {i}th day.\n"
          for i, (w, v, u) in enumerate([(a, b, c) for a in ("light", "earth", "water", "firmament")
                                         for b in ("LORD", "deep", "heaven") for c in ("night", "day", "seed")] * 6)]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "verses.txt"
    path.write_text("".join(VERSES), encoding="utf-8")
    return path


def lm_recipe(corpus, **changes) -> dict:
    recipe = {
        "name": "tiny-lm", "task": "language_model", "seed": 0,
        "data": {"name": "text", "root": str(corpus), "val_fraction": 0.1, "test_fraction": 0.1,
                 "options": {"seq_len": 32}},
        "model": {"name": "gpt", "options": {"dim": 32, "depth": 1, "heads": 2}},
        "optim": {"name": "adamw", "lr": 3e-3, "weight_decay": 0.0},
        "schedule": {"name": "constant"},
        "train": {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 8, "eval_batch_size": 64, "threads": 1},
    }
    for key, value in changes.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    return recipe


def test_training_lowers_the_loss_and_bits_per_byte_is_nats_over_bytes(corpus, tmp_path):
    result = fit(lm_recipe(corpus), out_dir=tmp_path / "run")
    history = result.history
    assert history[-1]["val_loss"] < history[0]["val_loss"] < math.log(256)
    summary = result.summary
    assert summary["primary_metric"] == "test_bits_per_byte"
    # the byte tokenizer: bits per byte = nats per token / ln 2, perplexity = exp(loss)
    assert summary["final_val_bits_per_byte"] == pytest.approx(summary["final_val_loss"] / math.log(2))
    assert summary["final_val_perplexity"] == pytest.approx(math.exp(summary["final_val_loss"]))
    # by hand on the test block: every target token's nats, summed, over the bytes they stand for
    task = LanguageModelTask(parse_recipe(lm_recipe(corpus)))
    data = task.load_data()
    x, y = data.test.gather(torch.arange(len(data.test)))
    with torch.no_grad():
        nats = F.cross_entropy(result.model(x).flatten(0, 1), y.flatten(), reduction="sum").item()
    assert summary["final_test_bits_per_byte"] == pytest.approx(nats / y.numel() / math.log(2), rel=1e-5)


def test_generate_command_is_seeded(corpus, tmp_path, capsys):
    fit(lm_recipe(corpus, train={"epochs": 1, "max_steps_per_epoch": 2}), out_dir=tmp_path / "run")
    args = ("generate", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--prompt", "And the",
            "--tokens", "20", "--seed", "3", "--top-k", "5")
    code, first, _ = run_cli(capsys, *args)
    _, second, _ = run_cli(capsys, *args)
    assert code == 0 and first == second and first.startswith("And the") and len(first.encode()) >= 27
    code, _, err = run_cli(capsys, "generate", "--checkpoint", str(tmp_path / "run" / "checkpoint.pt"),
                           "--prompt", "")
    assert code == 1 and "--prompt must not be empty" in err


def test_bpe_bits_per_byte_counts_the_bytes_of_the_target_tokens(corpus, tmp_path, monkeypatch):
    pytest.importorskip("tokenizers")
    monkeypatch.setenv("REGIMEN_CACHE_DIR", str(tmp_path / "cache"))
    recipe = lm_recipe(corpus, data={"options": {"seq_len": 16, "tokenizer": "bpe", "vocab_size": 300}},
                       train={"epochs": 1, "max_steps_per_epoch": 2})
    result = fit(recipe)
    task = LanguageModelTask(parse_recipe(recipe))
    data = task.load_data()
    x, y = data.val.gather(torch.arange(len(data.val)))
    with torch.no_grad():
        nats = F.cross_entropy(result.model(x).flatten(0, 1), y.flatten(), reduction="sum").item()
    num_bytes = sum(len(task.tokenizer.decode([t]).encode("utf-8")) for t in y.flatten().tolist())
    assert data.train.vocab_size == 300 and y.numel() < num_bytes
    assert result.summary["final_val_bits_per_byte"] == pytest.approx(nats / num_bytes / math.log(2), rel=1e-5)


@pytest.mark.parametrize("changes, message", [
    ({"data": {"options": {"seq_len": 32, "colour": 1}}}, "data.options.colour: unknown option"),
    ({"data": {"options": {"seq_len": "long"}}}, "data.options.seq_len: expected int"),
    ({"model": {"name": "gpt", "options": {"block_size": 16}}}, "seq_len = 32 is longer than the model's positions"),
    ({"model": {"name": "gpt", "options": {"dim": 30, "heads": 4}}}, "heads"),
    ({"model": {"name": "gpt", "options": {"moe_experts": 2, "moe_top_k": 3}}}, "moe_top_k"),
    ({"data": {"options": {"seq_len": 100_000}}}, "data.options.seq_len = 100000 is longer than the train block"),
])
def test_bad_recipes_name_the_key(corpus, changes, message):
    with pytest.raises((RecipeError, ConfigurationError, ValueError), match=message):
        fit(lm_recipe(corpus, **changes))


def test_a_language_model_option_on_an_image_task_is_refused(tiny_recipe):
    tiny_recipe["data"]["options"] = {"seq_len": 8}
    with pytest.raises(RecipeError, match="data.options.seq_len: unknown option of task 'image_classification'"):
        parse_recipe(tiny_recipe)


def test_token_methods_are_refused_on_image_tasks(tiny_recipe):
    tiny_recipe["methods"] = [{"name": "linear_ce"}]
    with pytest.raises(RecipeError, match="linear_ce.*serves tokens inputs"):
        parse_recipe(tiny_recipe)


# ---------------------------------------------------------------------------------------------------- methods
def _model_and_batch():
    torch.manual_seed(0)
    model = GPT(vocab_size=40, block_size=12, dim=16, depth=1, heads=2, moe_experts=4, moe_top_k=2)
    ids = torch.randint(0, 40, (3, 13))
    return model, ids[:, :-1], ids[:, 1:]


def test_linear_ce_equals_plain_cross_entropy_in_value_and_gradient():
    model, x, y = _model_and_batch()
    method = LinearCrossEntropyMethod(chunk_size=7, row_chunk_size=5)
    ctx = Context(model)
    method.setup(ctx)
    loss, output = method.forward_loss(model, x, y, None, ctx)
    assert output is None
    grads = torch.autograd.grad(loss, list(model.parameters()))
    reference = lm_cross_entropy(model(x), y)
    expected = torch.autograd.grad(reference, list(model.parameters()))
    torch.testing.assert_close(loss, reference)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="output_weight"):
        method.setup(Context(torch.nn.Linear(2, 2)))


def test_logit_z_loss_applies_to_next_token_targets(corpus):
    from regimen.losses import LogitZLossMethod

    model, x, y = _model_and_batch()
    logits = model(x)
    method = LogitZLossMethod(z_loss_coef=1e-2)
    ctx = Context(model)
    value = method.criterion(logits, y, lm_cross_entropy, ctx)
    expected = lm_cross_entropy(logits, y) + 1e-2 * torch.logsumexp(logits, -1).square().mean()
    torch.testing.assert_close(value, expected)
    per_sequence = method.criterion(logits, y, lm_cross_entropy, ctx, reduction="none")
    assert per_sequence.shape == (3,)
    parse_recipe(lm_recipe(corpus, methods=[{"name": "logit_z_loss"}]))  # the task serves it


def test_load_balance_adds_the_switch_loss_of_every_router_and_logs_expert_shares():
    model, x, y = _model_and_batch()
    method = LoadBalanceMethod(coef=0.5)
    ctx = Context(model)
    method.setup(ctx)

    def base(m, xb, yb):
        out = m(xb)
        return lm_cross_entropy(out, yb), out

    loss, _ = method.forward_loss(model, x, y, base, ctx)
    layer = model.moe_layers()[0]
    probs, experts = layer.router_probs, layer.expert_indices
    counts = torch.bincount(experts.flatten(), minlength=4).double()
    by_hand = 4 * ((counts / counts.sum()) * probs.double().mean(0)).sum()
    torch.testing.assert_close(loss, lm_cross_entropy(model(x), y) + 0.5 * by_hand.float())
    torch.testing.assert_close(load_balancing_loss(probs, experts, 4, global_batch=False), by_hand.float())
    method.on_epoch_end(ctx)
    shares = [ctx.log.pending[f"load_balance/share_l0_e{i}"] for i in range(4)]
    assert sum(shares) == pytest.approx(1.0)
    assert shares == pytest.approx((counts / counts.sum()).tolist())
    assert ctx.log.pending["load_balance/max_share"] == pytest.approx(max(shares))
    with pytest.raises(ValueError, match="mixture-of-experts"):
        method.setup(Context(GPT(vocab_size=10, block_size=4, dim=8, depth=1, heads=2)))


def test_lm_methods_train_in_the_trainer(corpus):
    recipe = lm_recipe(corpus, model={"name": "gpt", "options": {"dim": 32, "depth": 1, "heads": 2, "moe_experts": 4}},
                       train={"epochs": 1, "max_steps_per_epoch": 3},
                       methods=[{"name": "load_balance", "coef": 0.01}, {"name": "linear_ce", "z_loss_coef": 1e-4}])
    result = fit(recipe)
    record = result.history[-1]
    assert 0.25 <= record["load_balance/max_share"] <= 1.0 and math.isfinite(record["val_bits_per_byte"])


@pytest.mark.parametrize("methods", [
    [{"name": "seq_length_warmup", "duration": 0.5, "min_len": 8}],
    [{"name": "ssa", "ratio": 4.0, "dense_fraction": 0.5}],
    [{"name": "logit_z_loss"}, {"name": "seq_length_warmup"}, {"name": "ssa"}],
    [{"name": "mup", "base_width": 16}, {"name": "drop_path", "max_rate": 0.1}, {"name": "ema", "decay": 0.9}],
])
def test_sequence_methods_train_on_the_task(corpus, methods):
    result = fit(lm_recipe(corpus, train={"epochs": 2, "max_steps_per_epoch": 2}, methods=methods))
    assert math.isfinite(result.summary["final_val_bits_per_byte"])


def test_lr_sensitivity_by_hand_with_diverged_runs_at_the_init_loss():
    from regimen.commands.sweep import lr_sensitivity

    losses = {1e-3: 2.0, 1e-2: 1.5, 1e-1: float("nan"), 1.0: 9.0}
    # capped at l0 = 5: [2.0, 1.5, 5.0, 5.0]; mean 3.375 - min 1.5
    assert lr_sensitivity(losses, 5.0) == pytest.approx(1.875)
    assert lr_sensitivity({1e-3: 1.0}, 5.0) == 0.0


def _tiny_lm_toml(folder, corpus, steps: int):
    """A seconds-long language-model recipe file for the command-line tests."""
    recipe = folder / "lm.toml"
    recipe.write_text(f"""
task = "language_model"
[data]
name = "text"
root = "{corpus}"
test_fraction = 0.1
options = {{ seq_len = 32 }}
[model]
options = {{ dim = 16, depth = 1, heads = 2 }}
[optim]
name = "adamw"
[train]
epochs = 1
batch_size = 16
max_steps_per_epoch = {steps}
threads = 1
""")
    return recipe


def test_sweep_command_reports_every_lr(corpus, tmp_path, capsys):
    recipe = _tiny_lm_toml(tmp_path, corpus, steps=3)
    code, out, err = run_cli(capsys, "sweep", "--recipe", str(recipe), "--lr", "1e-3,1e-2",
                             "--out", str(tmp_path / "sweep.json"))
    assert code == 0, err
    assert "| 0.001 |" in out and "| 0.01 |" in out and "LR sensitivity:" in out
    import json

    report = json.loads((tmp_path / "sweep.json").read_text())
    assert report["init_loss"] == pytest.approx(math.log(256), abs=0.05)  # logits near 0 at init
    assert all(math.isfinite(r["max_attention_logit"]) for r in report["runs"])


def test_an_interrupted_sweep_continues_without_retraining_finished_lrs(corpus, tmp_path, capsys):
    import json

    recipe = _tiny_lm_toml(tmp_path, corpus, steps=2)
    out = tmp_path / "sweep.json"
    assert run_cli(capsys, "sweep", "--recipe", str(recipe), "--lr", "1e-3", "--out", str(out))[0] == 0
    first = json.loads(out.read_text())
    assert first["complete"] and len(first["runs"]) == 1
    first["runs"][0]["loss"] = 1.2345  # a marker: a retrained LR would overwrite it
    out.write_text(json.dumps(first))
    assert run_cli(capsys, "sweep", "--recipe", str(recipe), "--lr", "1e-3,1e-2", "--out", str(out))[0] == 0
    second = json.loads(out.read_text())
    assert [r["lr"] for r in second["runs"]] == [1e-3, 1e-2] and second["complete"]
    assert second["runs"][0]["loss"] == 1.2345
    code, _, err = run_cli(capsys, "sweep", "--recipe", str(recipe), "--lr", "1e-3", "--set", "seed=1",
                           "--out", str(out))
    assert code != 0 and "--out" in err and "another sweep" in err
    code, _, err = run_cli(capsys, "sweep", "--recipe", str(recipe), "--lr", "1e-3", "--out", str(tmp_path))
    assert code != 0 and "--out" in err and "not a file" in err


def test_generate_rebuilds_a_mup_model_with_its_multipliers(corpus, tmp_path):
    from regimen.commands.generate import load_language_model

    result = fit(lm_recipe(corpus, train={"epochs": 1, "max_steps_per_epoch": 2},
                           methods=[{"name": "mup", "base_width": 16}]), out_dir=tmp_path / "run")
    model, _ = load_language_model(str(tmp_path / "run" / "checkpoint.pt"))
    ids = torch.randint(0, 256, (2, 16))
    result.model.eval()
    torch.testing.assert_close(model(ids), result.model(ids))
