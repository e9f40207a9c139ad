"""Test-only Methods shared by several test modules (registered once, under ``_test_*`` names)."""

from regimen.method import Context, Method, register_method


@register_method
class InterruptOnce(Method):
    """Raises KeyboardInterrupt once at the start of the given epoch, like a user's Ctrl-C. Set ``fired = True`` for a
    reference run that must not be interrupted, ``False`` before the run that should be."""

    name = "_test_interrupt_once"
    fired = False

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_epoch_start(self, ctx: Context) -> None:
        if ctx.epoch == self.epoch and not InterruptOnce.fired:
            InterruptOnce.fired = True
            raise KeyboardInterrupt


@register_method
class InterruptAtStep(Method):
    """Raises KeyboardInterrupt once, after the given optimizer step, when ``armed`` (set it before the run that
    should stop; it disarms itself)."""

    name = "_test_interrupt_at_step"
    armed = False

    def __init__(self, step: int = 1) -> None:
        self.step = step

    def after_step(self, ctx: Context) -> None:
        if InterruptAtStep.armed and ctx.step == self.step:
            InterruptAtStep.armed = False
            raise KeyboardInterrupt


def reference_and_resumed_runs(recipe: dict, tmp_path, interrupted_epoch: int):
    """Run ``recipe`` (which lists ``_test_interrupt_once``) once uninterrupted, and once interrupted at the start of
    ``interrupted_epoch`` then resumed from its checkpoint; returns both results."""
    import pytest

    from regimen.train import fit, load_checkpoint

    InterruptOnce.fired = True  # the reference run is not interrupted
    reference = fit(recipe, out_dir=tmp_path / "ref")
    InterruptOnce.fired = False
    with pytest.raises(KeyboardInterrupt):
        fit(recipe, out_dir=tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == interrupted_epoch
    resumed = fit(recipe, out_dir=tmp_path / "run", resume=tmp_path / "run" / "checkpoint.pt")
    return reference, resumed
