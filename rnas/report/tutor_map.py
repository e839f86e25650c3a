"""RNAS-CL's tutor map: a heat map of student layer x teacher layer tutor weights.

Rows are the student's conv-bn-act units (forward order), columns the teacher's convs; a cell
shows softmax(tutor logits) (the distribution the Gumbel-softmax samples follow) and a dot
marks each student layer's chosen (argmax) tutor. Drawn with matplotlib's Agg backend (no
display needed).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)

from rnas.io import atomic_save  # noqa: E402


def plot_tutor_map(
    weights: list[list[float]],
    student_layers: list[str],
    teacher_layers: list[str],
    tutors: list[int],
    path: str | Path,
    title: str = "RNAS-CL tutor map",
) -> Path:
    """Write the tutor map as a PNG; ``weights`` is (n_student, n_teacher)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_s, n_t = len(student_layers), len(teacher_layers)
    fig, ax = plt.subplots(figsize=(1.6 + 0.55 * n_t + 0.08 * max(map(len, student_layers)), 1.4 + 0.28 * n_s))
    im = ax.imshow(weights, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.scatter(tutors, range(n_s), s=14, c="red", marker="o", label="chosen tutor")
    ax.set_xticks(range(n_t))
    ax.set_xticklabels(teacher_layers, rotation=60, ha="right", fontsize=6)
    ax.set_yticks(range(n_s))
    ax.set_yticklabels(student_layers, fontsize=6)
    ax.set_xlabel("teacher layer (conv)")
    ax.set_ylabel("student layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="tutor weight softmax(logits)")
    fig.tight_layout()
    try:
        return atomic_save(path, lambda fh: fig.savefig(fh, dpi=120, format="png"), fsync=False)
    finally:
        plt.close(fig)
