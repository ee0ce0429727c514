"""``plot_run(run_dir)``: loss curves (total, per objective, held-out) and the LR, as PNG."""

from __future__ import annotations

from pathlib import Path

from ..data.batch import OBJECTIVES
from .metrics import METRICS_NAME, read_metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``RUN_DIR/metrics.jsonl`` to a PNG and return its path."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_NAME
    if not path.is_file():
        raise ValueError(f"{path} not found; is {run_dir} a `blankfill pretrain` run folder?")
    rows = read_metrics(path)
    if not any("loss" in r for r in rows):
        raise ValueError(f"{path} has no training steps yet")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError("blankfill plot needs matplotlib: pip install 'blankfill[plot]'") from None

    fig, (ax, ax_lr) = plt.subplots(
        2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    for key, style in [("loss", "-")] + [(f"loss/{o}", ":") for o in OBJECTIVES]:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=key, linewidth=1)
    valid = [(r["step"], r["valid/loss"]) for r in rows if "valid/loss" in r]
    if valid:
        ax.plot(*zip(*valid, strict=True), "o-", label="valid/loss")
    ax.set_ylabel("cross-entropy (nats / target token)")
    ax.set_title(str(run_dir))
    ax.legend()
    ax.grid(alpha=0.3)
    lr = [(r["step"], r["lr"]) for r in rows if "lr" in r]
    if lr:
        ax_lr.plot(*zip(*lr, strict=True))
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    fig.tight_layout()
    out = Path(out) if out else run_dir / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
