"""What the Kubeflow UI shows of a fine-tuned target: a Markdown table of its best and worst classes (the
paper's Fig. 5), an HTML page with its training curves, and its confusion matrix as a CSV table."""

from __future__ import annotations

import base64
import csv
import html
import io

from mega3d.report.study import SHOWN_CLASSES
from mega3d.trainer.records import EpochRecord

# The most classes whose confusion matrix goes into the evaluate step's ClassificationMetrics (UCF-101,
# HMDB-51, ActivityNet's 200; not Kinetics-700 + MiT's 1,039); the CSV table has it whatever the number.
# - kfp 2.17's ClassificationMetrics.log_confusion_matrix has no limit: it keeps the whole matrix in the
#   artifact's metadata (`confusionMatrix`: `annotationSpecs` and one `row` per class), ~0.03 s for 1,000.
# - The Kubeflow UI's ConfusionMatrix viewer has no limit either: one table cell (at least 15 px) per
#   entry, so 1,000 classes is a 15,000 px grid of a million cells: slow, but shown.
# - The metadata reaches MLMD as a protobuf Struct, ~11 bytes per cell: 1,000 classes is ~11 MB, 600 ~4 MB.
#   MLMD's gRPC limit was 4 MiB, which fails the step ("Received message larger than max",
#   kubeflow/pipelines#11949) until kubeflow/pipelines#12803 raised it to 100 MB, before MIN_KFP_SERVER;
#   an older backend would fail the evaluate step of a target with more than ~600 classes.
CONFUSION_MAX_CLASSES = 1000


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


def confusion_csv(classes: list[str], matrix: list[list[int]]) -> str:
    """The confusion matrix as a CSV table (RFC 4180: class names with commas, quotes or line breaks are
    quoted): a header row `true\\predicted` and the predicted classes, then one row per true class, its name
    first. A spreadsheet shows the grid as it is; pandas reads it with `read_csv(path, index_col=0)`."""
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["true\\predicted", *classes])
    writer.writerows([name, *row] for name, row in zip(classes, matrix, strict=True))
    return table.getvalue()
