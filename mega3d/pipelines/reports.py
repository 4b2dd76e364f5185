"""What the Kubeflow UI shows of a fine-tuned target: a Markdown table of its best and worst classes (the
paper's Fig. 5) and an HTML page with its training curves."""

from __future__ import annotations

import base64
import html
import io

from mega3d.report.study import SHOWN_CLASSES
from mega3d.trainer.records import EpochRecord


def class_table(per_class: dict[str, float], what: str, shown: int = SHOWN_CLASSES) -> str:
    """Markdown: the `shown` best and worst classes by `what` (e.g. video top-1 accuracy), best first."""
    ranked = sorted(per_class.items(), key=lambda item: (-item[1], item[0]))
    lines = []
    for title, part in (("Top", ranked[:shown]), ("Bottom", ranked[::-1][:shown])):
        lines += [f"### {title} {len(part)} classes by {what}", "", f"| class | {what} (%) |", "|---|---:|"]
        lines += [f"| {name} | {100 * value:.1f} |" for name, value in part]
        lines.append("")
    return "\n".join(lines)


def curves_png(history: list[EpochRecord], title: str) -> bytes:
    """Loss (training, validation) and training accuracy per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [record.epoch for record in history]
    figure, (losses, accuracy) = plt.subplots(1, 2, figsize=(10, 3.6))
    losses.plot(epochs, [r.train_loss for r in history], label="training")
    losses.plot(epochs, [r.val_loss for r in history], label="validation")
    losses.set(xlabel="epoch", ylabel="loss", title="loss")
    losses.legend()
    accuracy.plot(epochs, [100 * r.train_accuracy for r in history], label="training clips")
    accuracy.set(xlabel="epoch", ylabel="accuracy (%)", title="training accuracy", ylim=(0, 100))
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def curves_html(history: list[EpochRecord], title: str) -> str:
    encoded = base64.b64encode(curves_png(history, title)).decode()
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body><img alt='{html.escape(title)}' src='data:image/png;base64,{encoded}'></body></html>"
    )
