"""Several runs of one benchmark on one plot: eval metric against training progress, the quality target, and where
the RCP says reference runs converge on average at the runs' global batch. Progress is in the RCP's unit, as the
logs' eval_accuracy metadata give it (epochs, samples or tokens per benchmark), so the curves and the RCP mean
share one axis whatever the dataset (a debug flavour's epoch is not ImageNet's)."""

from __future__ import annotations

import os

from runtime.submission.rcp import UNIT_NAME, convergence


def eval_curves(path: str, benchmark: str, runs: list, target: float | None, metric: str = "eval") -> str:
    import matplotlib

    matplotlib.use("Agg")  # headless: packaging runs on login nodes without a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=100)
    for run in runs:
        if run.evals:
            xs = [position for position, _ in run.evals]
            ax.plot(xs, [value for _, value in run.evals], marker="o", markersize=3, linewidth=1,
                    label=f"seed {run.seed} ({run.minutes:.2f} min, {run.status})")
    if target is not None:
        ax.axhline(target, color="tab:red", linestyle="--", label=f"target {target:g}")
    try:
        point = convergence(benchmark, int(runs[0].global_batch_size))
        ax.axvline(point.mean, color="black", linestyle=":",
                   label=f"RCP mean {point.mean:,.6g} (GBS {point.batch_size}: {point.how})")
    except ValueError as e:  # above every RCP: nothing to mark, said in the title instead
        ax.set_title(str(e)[:90], fontsize=8)
    ax.set_xlabel(f"training progress as logged ({UNIT_NAME.get(benchmark, 'RCP unit')})")
    ax.set_ylabel(metric)
    ax.set_title(f"{benchmark}: {len(runs)} runs, eval {metric}", loc="left")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
