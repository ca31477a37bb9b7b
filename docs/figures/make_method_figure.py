"""Draws docs/figures/method.png: one Suave / Daino training step. Run: python docs/figures/make_method_figure.py"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

BOXES = {  # name: (x, y, width, height, text, colour)
    "labeled": (0.2, 4.3, 2.6, 0.9, "labeled images\n1 view + mixup copy", "#cfe8cf"),
    "unlabeled": (0.2, 2.2, 2.6, 1.3, "unlabeled images\n2 global + n local crops", "#dbe6f5"),
    "network": (3.6, 3.0, 3.0, 1.6, "backbone (timm)\n→ projector MLP\n→ L2 normalise", "#eeeeee"),
    "prototypes": (7.4, 3.2, 2.4, 1.2, "K = #classes\nprototypes\n(the classifier)", "#f6e3c4"),
    "scores": (10.6, 3.2, 1.9, 1.2, "scores / τ\nτ = 0.1", "#eeeeee"),
    "targets": (6.6, 0.3, 5.2, 1.4, "targets, no gradient, global crops only:\nSinkhorn-Knopp (Suave)\n"
                "EMA teacher, centred + sharpened (Daino)", "#f4d6d6"),
    "label": (10.6, 4.9, 1.9, 0.8, "one-hot label y", "#cfe8cf"),
    "loss": (13.2, 2.9, 3.8, 1.8, "one cross-entropy\nL = (N_l·L_lab + N_u·L_unlab)\n/ (N_l + N_u)", "#fff2a8"),
}
ARROWS = [("labeled", "network"), ("unlabeled", "network"), ("network", "prototypes"), ("prototypes", "scores"),
          ("unlabeled", "targets"), ("scores", "loss"), ("label", "loss"), ("targets", "loss")]


def centre(name: str, side: str) -> tuple[float, float]:
    x, y, w, h, _, _ = BOXES[name]
    return {"right": (x + w, y + h / 2), "left": (x, y + h / 2), "top": (x + w / 2, y + h),
            "bottom": (x + w / 2, y)}[side]


def main() -> None:
    figure, axis = plt.subplots(figsize=(14, 5.4))
    for x, y, w, h, text, colour in BOXES.values():
        axis.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", facecolor=colour, edgecolor="#555555"))
        axis.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=10)
    for start, end in ARROWS:
        a = centre(start, "bottom" if (start, end) == ("unlabeled", "targets") else "right")
        b = centre(end, "left")
        if end == "loss" and start == "targets":
            b = centre("loss", "bottom")
        if start == "label":
            a = centre("label", "right")
        axis.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=14, color="#333333",
                                       connectionstyle="arc3,rad=0.0" if start != "unlabeled" or end != "targets"
                                       else "arc3,rad=0.25"))
    axis.text(0.2, 6.25, "One training step of Suave (SwAV + labels) and Daino (DINO + labels)", fontsize=13,
              weight="bold")
    axis.set_xlim(0, 17.3)
    axis.set_ylim(0, 6.6)
    axis.axis("off")
    out = Path(__file__).with_name("method.png")
    figure.savefig(out, dpi=110, bbox_inches="tight")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
