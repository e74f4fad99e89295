"""What a run leaves beside its log: a plot of the metric against samples, and a one-line summary."""

from __future__ import annotations

import json
import os


def write_metrics_line(run_dir: str, record: dict) -> None:
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def write_plot(run_dir: str, benchmark: str, metric: str, evals: list[tuple[int, float]], target: float) -> str:
    import matplotlib

    matplotlib.use("Agg")  # headless: cluster nodes have no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    if evals:
        samples, values = zip(*evals)
        ax.plot(samples, values, marker="o", label=f"eval {metric}")
    ax.axhline(target, color="tab:red", linestyle="--", label=f"target {target:g}")
    ax.set_xlabel("training samples")
    ax.set_ylabel(metric)
    ax.set_title(f"{benchmark}: eval {metric} vs samples")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    path = os.path.join(run_dir, "eval_curve.png")
    fig.savefig(path)
    plt.close(fig)
    return path


def summary_line(benchmark: str, seed: int, status: str, seconds: float, samples: int, evals: list,
                 attempts: int = 1) -> str:
    """`seconds`: the timed seconds of the whole run, over all attempts when it was resumed."""
    last = f"{evals[-1][1]:.4f}" if evals else "n/a"
    throughput = samples / seconds if seconds > 0 else 0.0
    timing = f"time_to_train={seconds:.1f}s ({seconds / 60:.2f} min)" if attempts == 1 else \
        f"resumed attempts={attempts} timed_over_all_attempts={seconds:.1f}s (not an uninterrupted MLPerf time)"
    return (f"{benchmark} seed={seed} status={status} {timing} samples={samples} "
            f"throughput={throughput:.1f} samples/s evals={len(evals)} last_eval={last}")
