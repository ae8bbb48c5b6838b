"""The demo's report page: results table, loss and CMC curves, links to the other pages."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from reid.utils.html import HTML
from reid.utils.osutils import atomic_write

_STYLE = ("body{font-family:sans-serif;margin:24px;max-width:1100px} table{border-collapse:collapse}"
          "td,th{border:1px solid #bbb;padding:4px 10px;text-align:right} th{background:#eee}"
          "td:nth-child(-n+3){text-align:left} img{max-width:100%;border:1px solid #ddd;margin:6px 0}")
LOSS_LINE = re.compile(r"^\(epoch: (\d+), iters: (\d+), time: [-\d.]+\) (.*)$")


def read_loss_log(path: str) -> dict[str, list[float]]:
    """The loss series of a ``loss_log.txt`` in order of appearance (one value per printed line)."""
    series: dict[str, list[float]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = LOSS_LINE.match(line.strip())
            if not m:
                continue
            for name, value in re.findall(r"(\w+): ([-\d.eE+naif]+)", m.group(3)):
                series.setdefault(name, []).append(float(value))
    return series


def plot_losses(series: Mapping[str, Sequence[float]], path: str, title: str) -> None:
    """Line plot of every loss series, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for name, values in series.items():
        ax.plot(range(1, len(values) + 1), values, label=name, linewidth=1.2)
    ax.set_xlabel("logged step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def plot_cmc(curves: Mapping[str, Sequence[float]], path: str, title: str, max_rank: int = 20) -> None:
    """CMC curves (rank 1..max_rank, in percent), written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for name, cmc in curves.items():
        k = min(max_rank, len(cmc))
        ax.plot(range(1, k + 1), [100 * v for v in cmc[:k]], marker="o", markersize=3, label=name)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)


def _save_figure(fig, path: str) -> None:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")


RESULTS_HEADER = ("model", "protocol", "stage", "mAP", "chance mAP", "top-1", "chance top-1", "top-5", "top-10")


def results_rows(named_results: Mapping[str, str]) -> list[list[str]]:
    """Table rows (:data:`RESULTS_HEADER`) from results.json files; the chance levels are those of a
    random ranking on the same query and gallery ('-' where the file does not record them)."""
    rows = []
    for model, path in named_results.items():
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for protocol, stages in data["results"].items():
            chance = data.get("chance", {}).get(protocol)
            levels = [f"{100 * chance[k]:.1f}" if chance else "-" for k in ("mAP", "top1")]
            for stage, metrics in stages.items():
                m = [f"{100 * metrics[k]:.1f}" for k in ("mAP", "top1", "top5", "top10")]
                rows.append([model, protocol, stage.replace("_", " "), m[0], levels[0], m[1], levels[1], *m[2:]])
    return rows


@dataclass(frozen=True)
class Section:
    """A titled part of the report: paragraphs, an optional table and pictures (paths relative to out_dir)."""

    title: str
    notes: Sequence[str] = ()
    header: Sequence[str] = ()
    rows: Sequence[Sequence[str]] = ()
    images: Sequence[tuple[str, str]] = ()


def compare_results(first: tuple[str, Mapping[str, Any]], second: tuple[str, Mapping[str, Any]],
                    protocol: str = "openreid", stage: str = "second_stage") -> str:
    """One sentence saying whether the second model's mAP beats the first's, with both numbers.

    ``first`` and ``second`` are ``(name, results)`` with ``results`` as in ``results.json``'s
    ``"results"`` (protocol -> cascade stage -> metrics)."""
    (name_a, res_a), (name_b, res_b) = first, second
    a, b = 100 * res_a[protocol][stage]["mAP"], 100 * res_b[protocol][stage]["mAP"]
    where = f"{stage.replace('_', ' ')} mAP, {'open-reid' if protocol == 'openreid' else protocol} protocol"
    if round(b, 1) > round(a, 1):
        return f"In this run {name_b} beats {name_a}: {b:.1f} % against {a:.1f} % ({where})."
    return f"In this run {name_b} does not beat {name_a}: {b:.1f} % against {a:.1f} % ({where})."


def write_report(out_dir: str, title: str, rows: Sequence[Sequence[str]], images: Sequence[tuple[str, str]],
                 links: Sequence[tuple[str, str]], notes: Sequence[str] = (), results_notes: Sequence[str] = (),
                 sections: Sequence[Section] = ()) -> str:
    """Write ``<out_dir>/index.html``: notes, a results table followed by ``results_notes``, the
    sections, pictures and links (paths relative to out_dir)."""
    page = HTML(out_dir, title, style=_STYLE)
    page.add_header(title, level=1)
    for note in notes:
        page.add_paragraph(note)
    page.add_header("Results (percent)", level=2)
    page.add_table(RESULTS_HEADER, rows)
    for note in results_notes:
        page.add_paragraph(note)
    for section in sections:
        page.add_header(section.title, level=2)
        for note in section.notes:
            page.add_paragraph(note)
        if section.rows:
            page.add_table(section.header, section.rows)
        for caption, rel in section.images:
            page.add_figure(rel, caption)
    page.add_header("Pictures", level=2)
    for caption, rel in images:
        page.add_figure(rel, caption)
    page.add_header("More", level=2)
    page.add_links(links)
    return page.save()
