"""``reglab report``: figures (PNG) and one self-contained HTML page for runs and sweeps.

    OUT/report.html           the page; its figures are embedded (base64 PNG), so the file alone
                              can be mailed or attached; it runs no script
    OUT/figures/curves.png    loss and accuracy over steps, runs coloured by λ
    OUT/figures/accuracy.png  final / best validation accuracy and the train - validation gap
                              against λ (mean ± std over seeds; λ = 0 at a marked position)
    OUT/figures/weight_norms.png   weight norms over steps, when the metrics have them

Every accuracy on the page names its split: holdout (selection) or test (--final, once).
"""

from __future__ import annotations

import base64
import html
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reglab.reports import figures as F
from reglab.reports.load import Collection, ReportError, Run, collect
from reglab.sweeps.select import SettingStats, describe, pct, rank, recommend

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: .5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
tr.best td { background: #eef8ee; font-weight: 600; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
.note { color: #555; font-size: 13px; } .warn { color: #a40; }
.verdict-clear { border-left: 4px solid #2a2; padding-left: .7em; }
.verdict-likely { border-left: 4px solid #db2; padding-left: .7em; }
.verdict-undecided { border-left: 4px solid #d52; padding-left: .7em; }
code { background: #f6f6f6; padding: 0 3px; }
"""

def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], left: int = 1,
           highlight: int | None = None) -> str:  # fmt: skip
    """An HTML table; the first ``left`` columns are left-aligned."""
    th = "".join(f'<th class="{"l" if i < left else ""}">{esc(h)}</th>' for i, h in
                 enumerate(header))  # fmt: skip
    body = []
    for k, row in enumerate(rows):
        cls = ' class="best"' if k == highlight else ""
        tds = "".join(f'<td class="{"l" if i < left else ""}">{esc(c)}</td>' for i, c in
                      enumerate(row))  # fmt: skip
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _secs(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def settings_table(stats: Sequence[SettingStats]) -> str:
    split = stats[0].split
    rows = []
    for s in stats:
        gap = "n/a" if s.gap_mean is None else f"{100 * s.gap_mean:+.2f}"
        train = None if s.gap_mean is None else s.mean + s.gap_mean
        rows.append((s.setting, s.n, describe(s), pct(s.best_mean), pct(train), gap,
                     _secs(s.seconds_mean)))  # fmt: skip
    header = ("setting", "seeds", f"{split} acc, final (mean ± std)",
              f"{split} acc, best during training", "train acc (running)",
              f"gap: train − {split} (points)", "time per run (s)")  # fmt: skip
    return _table(header, rows, highlight=0)


def runs_table(runs: Sequence[Run]) -> str:
    def key(r: Run) -> tuple:
        acc = r.summary["final_val_acc"] if r.summary else -1.0
        return (r.status != "complete", -acc, r.name)

    rows = []
    for r in sorted(runs, key=key):
        s = r.summary or {}
        best = f"{pct(s.get('best_val_acc'))} @ {s.get('best_val_step')}" if s else "n/a"
        rows.append((
            r.name, r.status, r.setting, "" if r.seed is None else r.seed, r.split,
            pct(s.get("final_val_acc")) if s else "n/a", best,
            pct(s.get("final_train_acc")) if s else "n/a", s.get("steps", "n/a"),
            _secs(s.get("total_seconds")),
        ))  # fmt: skip
    header = ("run", "status", "setting", "seed", "split", "acc (final)", "acc (best @ step)",
              "train acc (running)", "steps", "time (s)")  # fmt: skip
    return _table(header, rows, left=3)


def finals_table(col: Collection) -> str:
    rows = []
    for f in col.finals:
        i = f.info
        h, t = i.get("holdout", {}), i.get("test", {})
        spread = f" ± {100 * h['std']:.2f}" if h.get("std") is not None else ""
        rows.append((f.sweep, i.get("setting"), f"{pct(h.get('mean'))}{spread} "
                     f"({h.get('seeds')} seed(s))", pct(t.get("acc")),
                     f"{t.get('images', 0):,}", f"{i.get('train_images') or 0:,}"))  # fmt: skip
    header = ("sweep", "chosen setting", "holdout acc (selection)", "test acc (once)",
              "test images", "training images")  # fmt: skip
    return _table(header, rows, left=2)


def _figure_html(data: bytes, name: str, caption: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{b64}" alt="{esc(caption)}">'
            f"<figcaption><b>{esc(name)}</b>: {esc(caption)}</figcaption></figure>")  # fmt: skip


def write_report(dirs: Sequence[str | Path], out: str | Path | None = None,
                 title: str | None = None) -> Path:  # fmt: skip
    """Collect the runs in ``dirs``, draw the figures into OUT/figures and write
    OUT/report.html (OUT: ``out``, else the one directory given). Returns the page's path."""
    col = collect(list(dirs))
    if out is None:
        if len(col.sources) != 1:
            raise ReportError("several folders given: say where the report goes with --out DIR")
        out = col.sources[0]
    out = Path(out)
    fig_dir = out / "figures"
    title = title or f"reglab report: {', '.join(p.name or str(p) for p in col.sources)}"

    complete = [r for r in col.runs if r.status == "complete"]
    finished = [r for r in col.runs if r.rows]
    results = col.results
    splits = sorted({r.split for r in results})
    main_split = "holdout" if "holdout" in splits else (splits[0] if splits else "holdout")
    ranked = rank([r for r in results if r.split == main_split])
    rec = recommend(ranked)
    axis = F.lambda_axis(finished)
    colours = F.Colours(axis, [r.setting for r in finished])

    parts: list[str] = []
    counts = {s: sum(r.status == s for r in col.runs) for s in
              ("complete", "pruned", "diverged", "failed", "unfinished")}  # fmt: skip
    counts_text = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    parts.append(f"<h1>{esc(title)}</h1>")
    parts.append(
        f'<p class="note">{esc(col.kind)} from {esc(", ".join(map(str, col.sources)))}: '
        f"{len(col.runs)} run(s) ({esc(counts_text or 'none')}); written "
        f"{esc(time.strftime('%Y-%m-%d %H:%M'))}.</p>"
    )
    for name, doc in col.sweeps.items():
        if doc.get("command"):
            parts.append(f'<p class="note">sweep {esc(name)}: <code>{esc(doc["command"])}</code>'
                         "</p>")  # fmt: skip
    if len(splits) > 1:
        joined = esc(", ".join(splits))
        parts.append(f'<p class="warn">These runs validate on different splits ({joined}); '
                     f"settings are compared on the {esc(main_split)} runs only.</p>")  # fmt: skip

    if rec is not None:
        parts.append("<h2>Recommendation</h2>")
        parts.append(f'<p class="verdict-{esc(rec.verdict)}">{esc(rec.text)}</p>')
        parts.append('<p class="note">Ranked by the mean FINAL accuracy on the '
                     f"{esc(main_split)} split over seeds: the model a retrain gives. The best "
                     "accuracy during training is shown, not used: picking a checkpoint on the "
                     "validation set is one more selection on it.</p>")  # fmt: skip
    if col.finals:
        parts.append("<h2>Test set (evaluated once, by <code>--final</code>)</h2>")
        parts.append(finals_table(col))
        parts.append('<p class="note">The chosen setting retrained with holdout 0 (all training '
                     "images) and evaluated once on the official test set; never used to "
                     "choose.</p>")  # fmt: skip
    if ranked:
        parts.append(f"<h2>Settings, by {esc(main_split)} accuracy</h2>")
        parts.append(settings_table(ranked))

    parts.append("<h2>Figures</h2>")
    figs: list[tuple[str, str, Any]] = []
    against = axis.label if axis else "the settings"
    if finished:
        caption = f"loss and accuracy over steps, one line per run, coloured by {against}"
        figs.append(("curves.png", caption, F.curves(finished, colours)))
    if ranked and len(ranked) > 1:
        caption = (f"final and best {main_split} accuracy and the generalisation gap against "
                   f"{against}; error bars: std over seeds")  # fmt: skip
        figs.append(("accuracy.png", caption, F.accuracy_vs_lambda(ranked, axis)))
    keys = F.norm_keys(finished)
    if keys:
        figs.append(("weight_norms.png", "weight norms over steps (" + ", ".join(keys[:6]) + ")",
                     F.weight_norms(finished, colours, keys)))  # fmt: skip
    for name, caption, fig in figs:
        data = F.save(fig, fig_dir / name)
        parts.append(_figure_html(data, f"figures/{name}", caption))
    if not keys:
        parts.append('<p class="note">No weight norms in these metrics (no <code>weight_norm'
                     "</code> fields in metrics.jsonl), so no weight-norm figure.</p>")  # fmt: skip

    parts.append("<h2>Runs</h2>")
    parts.append(runs_table(col.runs))
    others = [r for r in col.runs if r.status not in ("complete",)]
    if others:
        parts.append("<h2>Not counted as results</h2><ul>")
        parts += [f"<li><code>{esc(r.path)}</code>: {esc(r.status)}, {esc(r.reason)}</li>"
                  for r in others]  # fmt: skip
        parts.append("</ul>")
    parts.append("<h2>Conventions</h2><ul class=note>"
                 "<li>holdout: the last N training images, held out from training, used to "
                 "choose; test: the official test set, used once for the chosen setting.</li>"
                 "<li>train acc (running): accuracy on the augmented training batches of the last "
                 "log interval, batch norm in train mode; the gap is that minus the final "
                 "validation accuracy.</li>"
                 "<li>λ: as the run's flags define it (<code>--l2</code>: loss + λ Σ‖w‖², "
                 "gradient 2λw; <code>--reg</code> rules: see each method's convention).</li>"
                 f"<li>{len(complete)} complete run(s); time per run is wall time, training and "
                 "evaluation.</li></ul>")  # fmt: skip

    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n"
            + "\n".join(parts)
            + "\n</body></html>\n")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
