"""A scripted mutation run: one-line mutants of the methods and the trainer, each against the tests that should
catch it.

    PYTHONPATH=src python scripts/mutants.py [--only ID,ID] [--out reports/reliability/mutation.md] [--timeout S]

Each mutant is (pillar, file, original snippet, mutated snippet, tests, what it breaks). The source tree is copied
to a temporary folder once; a mutant is applied to the *copy* (its snippet must occur exactly once), the targeted
tests run with ``-x -q -m "not slow"`` (``-m slow`` where a test id names the distributed harness) and
``PYTHONPATH``/``REGIMEN_TEST_SRC`` pointing at the copy (``PYTHONDONTWRITEBYTECODE=1``: no stale bytecode), and the
file is restored in a ``finally``. The checkout's ``src`` is never written. A mutant is *caught* when the tests fail
(or error, or time out), *survived* when they pass. ``--clean`` first runs every targeted test set on the
unmutated copy (a failure there would make "caught" meaningless).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    pillar: str
    file: str  # under src/regimen
    original: str
    mutated: str
    tests: tuple[str, ...]
    breaks: str
    env: tuple[tuple[str, str], ...] = ()


def M(id, pillar, file, original, mutated, tests, breaks, **env):  # noqa: N802 - a table row
    return Mutant(id, pillar, file, original, mutated, tuple(tests.split()), breaks, tuple(env.items()))


DIST = "tests/distributed/test_equivalence.py::test_two_processes_at_b_equal_one_process_at_2b"

MUTANTS: list[Mutant] = [
    # ------------------------------------------------------------------------------------------------ augment
    M("aug-cutmix-area", "augment", "augment/mix.py", "area = (y2 - y1) * (x2 - x1)",
      "area = (y2 - y1) * (x2 - x1 + 1)", "tests/augment/test_mix.py", "CutMix's area correction off by a column"),
    M("aug-mixup-pair", "augment", "augment/mix.py",
      "mixed = weight * x + (1.0 - weight) * x.index_select(0, perm_d)", "mixed = weight * x + (1.0 - weight) * x",
      "tests/augment/test_mix.py", "MixUp mixes every image with itself"),
    M("aug-solarize-cmp", "augment", "augment/functional.py",
      "torch.where(images < per_sample_view(t, images).to(images.dtype), images, 1.0 - images)",
      "torch.where(images <= per_sample_view(t, images).to(images.dtype), images, 1.0 - images)",
      "tests/augment/test_functional_pillow.py tests/augment/test_float_path.py",
      "Solarize's comparison (a pixel equal to the threshold)"),
    M("aug-cutout-box", "augment", "augment/cutout.py", "(cy + half).clamp(0, height)",
      "(cy + half + 1).clamp(0, height)", "tests/augment/test_cutout.py", "CutOut's hole one row too tall"),
    M("aug-cutout-mask", "augment", "augment/cutout.py", "(rows < boxes[..., 1:2])", "(rows <= boxes[..., 1:2])",
      "tests/augment/test_cutout.py", "CutOut's mask includes the end row"),
    M("aug-flip-p", "augment", "augment/flip.py", "return torch.rand(n, generator=generator) < p",
      "return torch.rand(n, generator=generator) > p", "tests/augment/test_flip.py tests/augment/test_methods.py",
      "random flips drawn with probability 1 - p"),
    M("aug-flip-alternate", "augment", "augment/flip.py", "bits = (mixed >> 16) & 1", "bits = (mixed >> 15) & 1",
      "tests/augment/test_flip.py", "another bit of the hash chooses the first epoch's flips"),
    # ------------------------------------------------------------------------------------------------ dropout
    M("drop-droppath-scale", "dropout", "dropout/droppath.py", "        mask = mask / keep",
      "        mask = mask * keep",
      "tests/dropout/test_dropblock_droppath.py tests/dropout/test_droppath_block.py", "DropPath's 1/(1-p) scaling"),
    M("drop-droppath-keep", "dropout", "dropout/droppath.py", "x, generator) < keep).to(x.dtype)",
      "x, generator) < p).to(x.dtype)", "tests/dropout/test_dropblock_droppath.py",
      "DropPath keeps with probability p"),
    M("drop-dropblock-gamma", "dropout", "dropout/dropblock.py", "h * w / (b * b * seeds_h * seeds_w)",
      "h * w / (b * seeds_h * seeds_w)", "tests/dropout/test_dropblock_droppath.py", "DropBlock's γ (b instead of b²)"),
    M("drop-dropblock-keep", "dropout", "dropout/dropblock.py", "    keep = 1.0 - blocks\n",
      "    keep = 1.0 - 0.5 * blocks\n", "tests/dropout/test_dropblock_droppath.py", "DropBlock half-drops its blocks"),
    M("drop-msd-scale", "dropout", "dropout/multisample.py", "return (noise < keep).to(like.dtype) / keep",
      "return (noise < keep).to(like.dtype)", "tests/dropout/test_multi_sample_dropout.py",
      "multi-sample dropout masks unscaled"),
    M("drop-msd-mean", "dropout", "dropout/multisample.py",
      "return losses.view(num_samples, batch, *losses.shape[1:]).mean(dim=0)",
      "return losses.view(num_samples, batch, *losses.shape[1:]).amax(dim=0)",
      "tests/dropout/test_multi_sample_dropout.py", "multi-sample dropout: the max of the K losses, not the mean"),
    M("drop-nested-index", "dropout", "dropout/nested.py",
      "b = torch.floor(torch.log(u) / torch.log1p(torch.tensor(-p, dtype=torch.float64))) + 1",
      "b = torch.floor(torch.log(u) / torch.log1p(torch.tensor(-p, dtype=torch.float64)))",
      "tests/dropout/test_nested_temporal_dropout.py", "nested dropout's geometric index starts at 0"),
    M("drop-nested-mask", "dropout", "dropout/nested.py", "mask = (units.unsqueeze(0) < index.to(x.device)",
      "mask = (units.unsqueeze(0) <= index.to(x.device)", "tests/dropout/test_nested_temporal_dropout.py",
      "nested dropout keeps one unit too many"),
    # -------------------------------------------------------------------------------------------------- batch
    M("batch-ghost-momentum", "batch", "batch/ghost_bn.py", "momentum * keep ** (count - k) for k",
      "momentum * keep ** (k - 1) for k", "tests/batch/test_ghost_bn.py", "Ghost BN's per-ghost momentum weights"),
    M("batch-ghost-decay", "batch", "batch/ghost_bn.py", "        decay = keep**count", "        decay = keep",
      "tests/batch/test_ghost_bn.py", "Ghost BN decays the running statistics once, not once per ghost batch"),
    M("batch-lars-denominator", "batch", "batch/lars.py", "w_norm / (g_norm + wd * w_norm + group[\"eps\"])",
      "w_norm / (g_norm + group[\"eps\"])", "tests/batch/test_lars_lamb.py", "the LARS denominator without λ‖w‖"),
    M("batch-lamb-sqrt", "batch", "batch/lamb.py", "denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(",
      "denom = (exp_avg_sq / (1 - beta2**step)).add_(", "tests/batch/test_lars_lamb.py", "LAMB without the sqrt of v"),
    M("batch-sqrt-rule", "batch", "batch/scaling.py", "return float(base_lr) * math.sqrt(ratio)",
      "return float(base_lr) * ratio", "tests/batch/test_scaling.py", "the sqrt rule made linear"),
    M("batch-swa-mean", "batch", "batch/swa.py", "- avg) / (n_averaged + 1))", "- avg) / (n_averaged + 2))",
      "tests/batch/test_swa.py", "SWA's running mean weights"),
    M("batch-high-loss-order", "batch", "batch/hard_batches.py",
      "order = torch.sort(losses, descending=True, stable=True).indices",
      "order = torch.sort(losses, descending=False, stable=True).indices",
      "tests/batch/test_high_loss_batches.py tests/batch/test_samplers_and_selection.py",
      "high-loss batches keep the lowest losses"),
    M("batch-sb-beta", "batch", "batch/selective_backprop.py", "** (1.0 / keep - 1.0)", "** (1.0 / keep)",
      "tests/batch/test_selective_backprop.py", "selective backprop's exponent β"),
    M("batch-sb-topk", "batch", "batch/selective_backprop.py", "torch.topk(keys, k).indices",
      "torch.topk(keys, k, largest=False).indices", "tests/batch/test_selective_backprop.py",
      "selective backprop's Gumbel-top-k takes the bottom k"),
    M("batch-sam-radius", "batch", "batch/sam.py", "e.mul_((rho / (norm + eps))", "e.mul_((rho * (norm + eps))",
      "tests/batch/test_sam.py", "SAM's ε = ρ·g·‖g‖ instead of ρ·g/‖g‖"),
    M("batch-norm-test-variance", "batch", "batch/adaptive.py",
      "variance = max(sq_total - count * mean_sq, 0.0) / (count - 1)",
      "variance = max(sq_total - count * mean_sq, 0.0) / count", "tests/batch/test_adaptive.py",
      "the norm test's biased variance"),
    M("batch-norm-test-global", "batch", "batch/adaptive.py",
      "n = max(0, min(self.max_samples - ctx.run.rank * x.shape[0], x.shape[0]))",
      "n = max(0, min(self.max_samples, x.shape[0]))", f"tests/batch/test_adaptive.py {DIST}",
      "adaptive batch tests max_samples per device again (DDP only)", REGIMEN_EQUIVALENCE_ONLY="adaptive"),
    M("batch-agc-direction", "batch", "batch/gradient_clipping.py", "torch.where(grad_norm > max_norm,",
      "torch.where(grad_norm < max_norm,", "tests/batch/test_gradient_clipping.py", "AGC clips the small gradients"),
    M("batch-freezing-floor", "batch", "batch/layer_freezing.py", "math.floor(num_layers * fraction + 1e-9)",
      "math.ceil(num_layers * fraction - 1e-9)", "tests/batch/test_layer_freezing.py",
      "layer freezing rounds the frozen count up"),
    M("batch-regime-factor", "batch", "batch/regime.py", "factor = batch_size / base_batch_size",
      "factor = base_batch_size / batch_size", "tests/batch/test_regime.py", "regime adaptation's k inverted"),
    # ------------------------------------------------------------------------------------------------- losses
    M("loss-logit-z-square", "losses", "losses/zloss.py", "z_loss_coef * lse.square()", "z_loss_coef * lse.abs()",
      "tests/losses/test_zloss.py", "the logit z-loss |log Z| instead of (log Z)²"),
    M("loss-z-variance", "losses", "losses/zloss.py", "var = o.var(dim=-1, unbiased=False, keepdim=True)",
      "var = o.var(dim=-1, unbiased=True, keepdim=True)", "tests/losses/test_zloss.py",
      "the Z-loss standardises with the unbiased variance"),
    M("loss-z-beta", "losses", "losses/zloss.py", "F.softplus(b - z_y, beta=a, threshold=20.0)",
      "F.softplus(b - z_y, beta=1.0, threshold=20.0)", "tests/losses/test_zloss.py", "the Z-loss's a ignored"),
    M("loss-smoothing", "losses", "losses/soft_ce.py", "+ label_smoothing / logits.shape[1]",
      "+ label_smoothing / (logits.shape[1] - 1)", "tests/losses/test_soft_ce.py",
      "label smoothing spread over C - 1 classes"),
    M("loss-load-balance-E", "losses", "losses/load_balance.py", "return num_experts * (f * p_mean).sum()",
      "return (f * p_mean).sum()", "tests/losses/test_load_balance.py", "the Switch loss without its factor E"),
    M("drop-msd-logits-mean", "dropout", "dropout/multisample.py",
      "return next(output.mean(dim=0), target, reduction=reduction)",
      "return next(output[0], target, reduction=reduction)", "tests/dropout/test_multi_sample_dropout.py",
      "multi-sample dropout's logits-mean path uses the first sample only"),
    # -------------------------------------------------------------------------------------------------- local
    M("local-no-detach", "local", "local/learning.py", "            h = h.detach()  # frees module k's graph",
      "            h = h  # frees module k's graph", "tests/local/test_local_step.py tests/local/test_method.py",
      "local learning without the detach between modules"),
    M("local-auglocal-round", "local", "local/auglocal.py",
      "return [round(layer + remaining / depth * i) for i in range(1, depth + 1)]",
      "return [int(layer + remaining / depth * i) for i in range(1, depth + 1)]", "tests/local/test_auglocal.py",
      "AugLocal's layer index truncated instead of rounded"),
    M("local-auglocal-pyramid", "local", "local/auglocal.py", "out.append(max(1, round(depth * (1 - t) + t)))",
      "out.append(max(1, round(depth * (1 - t))))", "tests/local/test_auglocal.py", "AugLocal's pyramid depth"),
    M("local-man-momentum", "local", "local/man.py", "torch._foreach_mul_(ema, momentum)",
      "torch._foreach_mul_(ema, 1.0 - momentum)", "tests/local/test_man.py", "MAN's EMA weights swapped"),
    M("local-ddp-sum", "local", "local/method.py", "p.grad.copy_(ctx.all_reduce(p.grad, op=\"mean\"))",
      "p.grad.copy_(ctx.all_reduce(p.grad, op=\"sum\"))", f"tests/local/test_method.py {DIST}",
      "local learning sums the ranks' gradients (DDP only)", REGIMEN_EQUIVALENCE_ONLY="local_learning"),
    # ------------------------------------------------------------------------------------------------- subnet
    M("subnet-nm-smallest", "subnet", "subnet/nm.py",
      "order = torch.sort(groups, dim=1, descending=True, stable=True).indices",
      "order = torch.sort(groups, dim=1, descending=False, stable=True).indices", "tests/subnet/test_nm.py",
      "N:M keeps the smallest weights"),
    M("subnet-hesso-factor", "subnet", "subnet/hesso.py", "return (period - t - 1) / (period - t)",
      "return (period - t) / (period - t + 1)", "tests/subnet/test_hesso.py", "HESSO's factor never reaches 0"),
    M("subnet-trp-energy", "subnet", "subnet/lowrank.py", "power = singular_values.double().pow(2)",
      "power = singular_values.double()", "tests/subnet/test_trp.py", "TRP's energy of s, not s²"),
    M("subnet-sandwich-min", "subnet", "subnet/nested.py",
      "chosen = [widths[-1]] if len(widths) == 1 else [widths[-1], widths[0]]",
      "chosen = [widths[-1]] if len(widths) == 1 else [widths[-1], widths[-1]]", "tests/subnet/test_nested.py",
      "the sandwich rule drops the smallest width"),
    M("subnet-sandwich-rank", "subnet", "subnet/nested.py",
      "self.generator = torch.Generator().manual_seed(ctx.run.seed * 7919)",
      "self.generator = torch.Generator().manual_seed(ctx.run.seed * 7919 + ctx.run.rank)",
      f"tests/subnet/test_nested.py {DIST}", "nested widths drawn per rank again (DDP only)",
      REGIMEN_EQUIVALENCE_ONLY="nested_width"),
    # ------------------------------------------------------------------------------------------------ trainer
    M("train-accumulation", "trainer", "train/trainer.py", "self.fabric.backward(loss / self.cfg.accumulation)",
      "self.fabric.backward(loss)", "tests/train/test_trainer.py", "accumulated gradients not divided"),
    M("train-schedule-progress", "trainer", "train/trainer.py",
      "self.schedule.update((epoch + (step_in_epoch + 1) / steps) / ctx.run.epochs)",
      "self.schedule.update((epoch + step_in_epoch / steps) / ctx.run.epochs)",
      "tests/train/test_trainer.py tests/batch/test_high_loss_batches.py", "the LR schedule one step late"),
    M("train-cosine", "trainer", "train/schedule.py", "(1.0 + math.cos(math.pi * min(max(q, 0.0), 1.0))) / 2.0",
      "(1.0 + math.cos(0.5 * math.pi * min(max(q, 0.0), 1.0))) / 2.0", "tests/train/test_trainer.py",
      "a quarter-period cosine"),
    M("train-warmup-floor", "trainer", "train/schedule.py", "return max(progress / warmup, 1e-3)",
      "return max(progress / warmup, 0.1)", "tests/train/test_trainer.py tests/train/test_schedule_extend.py",
      "warm-up starts at 10 %"),
    M("train-loss-sum", "trainer", "train/trainer.py", "totals[0] += loss.item() * count",
      "totals[0] += loss.item()", "tests/train/test_trainer.py tests/train/test_contract_v2.py",
      "train_loss not weighted by the batch size"),
    M("train-loader-interleave", "trainer", "data/loader.py",
      "indices = chunk[self.rank * share : (self.rank + 1) * share]",
      "indices = chunk[self.rank :: self.world_size]", f"tests/data/test_data.py {DIST}",
      "ranks take interleaved, not consecutive, slices of the global batch (DDP only)",
      REGIMEN_EQUIVALENCE_ONLY="ghost_bn"),
    M("train-rank-seed", "trainer", "train/trainer.py", "torch.manual_seed(recipe.seed + 1 + self.rank)",
      "torch.manual_seed(recipe.seed + 1)",
      "tests/train/test_trainer.py tests/distributed/test_equivalence.py::test_each_rank_draws_its_own_random_stream",
      "every rank draws the same dropout masks (DDP only)", REGIMEN_EQUIVALENCE_ONLY="no method (MLP)"),
    M("train-ema-buffers", "trainer", "train/builtin.py", "        ema_buffer.copy_(buffer)",
      "        pass  # ema_buffer.copy_(buffer)", "tests/train/test_trainer.py tests/train/test_ema.py",
      "EMA no longer copies buffers (the survivor of issue 21)"),
    M("train-ema-lerp", "trainer", "train/builtin.py", "ema_param.lerp_(param.detach(), 1.0 - decay)",
      "ema_param.lerp_(param.detach(), decay)", "tests/train/test_trainer.py tests/train/test_ema.py",
      "EMA's interpolation weights swapped"),
    M("train-ema-warmup", "trainer", "train/builtin.py",
      "return min(self.decay, (1 + self.updates) / (10 + self.updates))",
      "return max(self.decay, (1 + self.updates) / (10 + self.updates))",
      "tests/train/test_trainer.py tests/train/test_ema.py", "EMA's warm-up never applies"),
]


def _env(copy: Path, mutant: Mutant | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REGIMEN_EQUIVALENCE_ONLY",)}
    env.update(PYTHONPATH=os.pathsep.join([str(copy), str(ROOT)]), REGIMEN_TEST_SRC=str(copy),
               PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", REGIMEN_TEST_THREADS="1")
    if mutant is not None:
        env.update(dict(mutant.env))
    return env


def _pytest(tests: tuple[str, ...], env: dict[str, str], timeout: float) -> tuple[str, float, str]:
    marker = "slow" if any("tests/distributed" in t for t in tests) else "not slow"
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", marker, *tests]
    if marker == "slow":  # the distributed test is slow; the unit tests beside it are run in full
        command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        return "caught (timeout)", time.perf_counter() - started, ""
    seconds = time.perf_counter() - started
    tail = (done.stdout + done.stderr).strip().splitlines()
    last = tail[-1] if tail else ""
    if done.returncode == 0:
        return "survived", seconds, last
    if done.returncode == 5:
        return "no tests", seconds, last
    return "caught", seconds, _first_failure(done.stdout) or last


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:200]
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated mutant ids")
    parser.add_argument("--out", type=Path, default=None, help="Markdown report (the results table is rewritten)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per mutant's test run")
    parser.add_argument("--clean", action="store_true", help="first run every targeted test set unmutated")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only.split(",")]
    if args.list:
        for m in chosen:
            print(f"{m.id:28s} {m.pillar:8s} {m.file:28s} {m.breaks}")
        return 0
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="mutants-") as tmp:
        copy = Path(tmp) / "src"
        shutil.copytree(ROOT / "src", copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        check = subprocess.run([sys.executable, "-c", "import regimen; print(regimen.__file__)"], cwd=ROOT,
                               env=_env(copy, None), capture_output=True, text=True)
        if not check.stdout.strip().startswith(str(copy)):
            raise SystemExit(f"the copy is not what the tests import: {check.stdout or check.stderr}")
        for m in chosen:  # every snippet exists exactly once before anything runs
            count = (copy / "regimen" / m.file).read_text().count(m.original)
            if count != 1:
                raise SystemExit(f"mutant {m.id}: the original snippet occurs {count} times in {m.file}")
        if args.clean:
            for tests in sorted({m.tests for m in chosen}):
                outcome, seconds, last = _pytest(tests, _env(copy, None), args.timeout)
                print(f"clean {' '.join(tests)}: {'pass' if outcome == 'survived' else outcome} ({seconds:.0f} s) "
                      f"{last}", flush=True)
        for m in chosen:
            path = copy / "regimen" / m.file
            original = path.read_text()
            try:
                path.write_text(original.replace(m.original, m.mutated, 1))
                outcome, seconds, detail = _pytest(m.tests, _env(copy, m), args.timeout)
            finally:
                path.write_text(original)
            results.append((m, outcome, seconds, detail))
            print(f"{m.id:28s} {outcome:18s} {seconds:6.0f} s  {detail}", flush=True)
    elapsed = time.perf_counter() - started
    table = render(results, elapsed, args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    print(table.split("\n\n", 1)[0])
    return 0


def render(results, elapsed: float, args) -> str:
    caught = sum(outcome.startswith("caught") for _, outcome, _, _ in results)
    total = len(results)
    pillars = sorted({m.pillar for m, *_ in results})
    lines = [
        "# Mutation run: one-line mutants against the tests that should catch them",
        "",
        f"Mutation score: **{caught} / {total} caught ({100 * caught / max(total, 1):.0f} %)** across "
        f"{', '.join(pillars)}.",
        "",
        f"Command: `PYTHONPATH=src python scripts/mutants.py --out reports/reliability/mutation.md"
        f"{' --only ' + args.only if args.only else ''}` ({elapsed / 60:.0f} min wall on the shared 2-core machine, "
        f"load average {os.getloadavg()[0]:.0f} at the end). Each mutant runs only its targeted test files "
        "(`-x -q`, `-m 'not slow'` except the distributed harness's case for DDP-only mutants) against a mutated "
        "copy of `src` (the checkout is never modified).",
        "",
        "| mutant | pillar | file | what it breaks | tests | outcome | s | first failure |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, outcome, seconds, detail in results:
        tests = " ".join(t.replace("tests/", "").replace(
            "distributed/test_equivalence.py::test_two_processes_at_b_equal_one_process_at_2b", "distributed harness")
            for t in m.tests)
        detail = detail.replace("|", "\\|")
        lines.append(f"| `{m.id}` | {m.pillar} | {m.file} | {m.breaks} | {tests} | {outcome} | {seconds:.0f} | "
                     f"{detail} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
