"""muP's LR transfer (reports/lm section 12): table and plot of final validation loss against LR per width, for the
standard parametrisation (SP, ``lm/default``) and muP (``lm/mup``, base width 64), from ``regimen sweep --out``
files named ``{sp,mup}_w{WIDTH}.json`` in a folder. The optimal LR of each curve is the grid's argmin and a
parabola through it and its two neighbours in log10(LR) (when it is not at the grid's edge).

    python reports/lm/mup_transfer.py reports/lm/mup_transfer
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path


def optimum(lrs: list[float], losses: list[float]) -> tuple[float, float]:
    """The grid's argmin LR and the vertex of the parabola through it and its neighbours (log10 LR); the grid
    point again when the minimum is at an edge or the three points are not convex."""
    best = min(range(len(lrs)), key=lambda i: losses[i] if math.isfinite(losses[i]) else math.inf)
    if best in (0, len(lrs) - 1):
        return lrs[best], lrs[best]
    x = [math.log10(lrs[i]) for i in (best - 1, best, best + 1)]
    y = [losses[i] for i in (best - 1, best, best + 1)]
    denom = (x[0] - x[1]) * (x[0] - x[2]) * (x[1] - x[2])
    a = (x[2] * (y[1] - y[0]) + x[1] * (y[0] - y[2]) + x[0] * (y[2] - y[1])) / denom
    b = (x[2] ** 2 * (y[0] - y[1]) + x[1] ** 2 * (y[2] - y[0]) + x[0] ** 2 * (y[1] - y[2])) / denom
    if a <= 0:
        return lrs[best], lrs[best]
    return lrs[best], 10 ** (-b / (2 * a))


def main(folder: str) -> None:
    folder = Path(folder)
    curves: dict[str, dict[int, dict]] = {}
    for path in sorted(folder.glob("*_w*.json")):
        match = re.fullmatch(r"(sp|mup)_w(\d+)\.json", path.name)
        if match:
            curves.setdefault(match[1], {})[int(match[2])] = json.loads(path.read_text())
    lines = []
    summary = {}
    for param, by_width in curves.items():
        lrs = sorted({r["lr"] for sweep in by_width.values() for r in sweep["runs"]})
        lines += [f"**{param.upper()}** — final validation loss (nats/byte) per LR", "",
                  "| width | " + " | ".join(f"{lr:g}" for lr in lrs) + " | best LR (grid) | best LR (parabola) |",
                  "|---|" + "---|" * (len(lrs) + 2)]
        for width, sweep in sorted(by_width.items()):
            loss = {r["lr"]: (math.nan if r["diverged"] else r["loss"]) for r in sweep["runs"]}
            values = [loss.get(lr, math.nan) for lr in lrs]
            grid, fitted = optimum(lrs, values)
            best = min(v for v in values if math.isfinite(v))
            cells = [(f"**{v:.4f}**" if v == best else f"{v:.4f}") if math.isfinite(v) else "diverged"
                     for v in values]
            lines.append(f"| {width} | " + " | ".join(cells) + f" | {grid:g} | {fitted:.3g} |")
            summary.setdefault(param, {})[width] = {"lrs": lrs, "losses": values, "best_lr_grid": grid,
                                                    "best_lr_parabola": fitted, "init_loss": sweep["init_loss"]}
        lines.append("")
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(summary, folder / "mup_lr_transfer.png")


def _plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(5.2 * len(summary), 4), sharey=True)
    axes = axes if len(summary) > 1 else [axes]
    for ax, (param, by_width) in zip(axes, sorted(summary.items(), key=lambda kv: kv[0] != "sp")):
        for width, curve in sorted(by_width.items()):
            line, = ax.plot(curve["lrs"], curve["losses"], "o-", label=f"width {width}")
            best = min(range(len(curve["lrs"])), key=lambda i: curve["losses"][i])
            ax.plot(curve["lrs"][best], curve["losses"][best], "*", markersize=14, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("AdamW learning rate (of the base-width / vector parameters)")
        ax.set_title({"sp": "standard parametrisation", "mup": "muP (base width 64)"}[param])
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("final validation loss (nats/byte)")
    fig.suptitle("LR transfer across widths (byte GPT, depth 2, KJV; small-scale proxy)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).parent / "mup_transfer"))
