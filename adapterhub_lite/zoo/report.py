"""`adapters zoo report`: the zoo as one self-contained HTML page, drawn from the cards.

Per model: the lineage of bases, adapters, compositions and combined adapters (an SVG
graph from each card's `parents` and a composition's `parts`), then per
entry its headline figures, its training curve (`training.curve`) and the
bar charts its task draws from the stored metrics (`Task.charts`; a model
whose plugin is not installed gets none, and the page says so). The sample
grids a zoo build wrote (`<zoo>/grids/*.png`) are embedded. No script, no
external file: the page opens anywhere, and every text from a card is
escaped (cards are data, not markup).
"""

from __future__ import annotations

import html
import math
import shutil
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..atomic import publish
from ..bounded_json import parse_json
from .store import DamagedEntry, Zoo, ZooEntry

KIND_COLOURS = {"base": "#d9e7fb", "adapter": "#e3f4df", "composition": "#fbecd5"}
NODE_W, NODE_H, GAP_X, GAP_Y = 230, 28, 60, 12
MARKER = '<meta name="generator" content="adapters zoo report">'  # how a rewrite knows the folder is a report

ChartsFor = Callable[[ZooEntry], dict[str, dict[str, dict[str, float]]] | str]


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _parents(entry: ZooEntry) -> list[str]:
    refs = [r for r in entry.card.get("parents") or [] if isinstance(r, str)]
    refs += [p["ref"] for p in entry.card.get("parts") or [] if isinstance(p, dict) and isinstance(p.get("ref"), str)]
    base = entry.card.get("base")
    if isinstance(base, dict) and isinstance(base.get("ref"), str):
        refs.append(base["ref"])
    return list(dict.fromkeys(refs))


def lineage_svg(entries: list[ZooEntry]) -> str:
    """Entries in columns by depth (a base first, then what was built on it), an edge per parent."""
    refs = {e.ref: e for e in entries}
    depth: dict[str, int] = {}

    def depth_of(ref: str, seen: frozenset[str] = frozenset()) -> int:
        if ref not in depth:
            parents = [p for p in _parents(refs[ref]) if p in refs and p not in seen]
            depth[ref] = 1 + max((depth_of(p, seen | {ref}) for p in parents), default=-1)
        return depth[ref]

    columns: dict[int, list[str]] = {}
    for ref in refs:
        columns.setdefault(depth_of(ref), []).append(ref)
    where = {ref: (d * (NODE_W + GAP_X) + 10, i * (NODE_H + GAP_Y) + 10)
             for d, column in columns.items() for i, ref in enumerate(column)}
    width = (max(columns) + 1) * (NODE_W + GAP_X) if columns else 0
    height = max((len(c) for c in columns.values()), default=0) * (NODE_H + GAP_Y) + 20
    parts = [f'<svg class="lineage" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="lineage">']
    for ref, entry in refs.items():
        x2, y2 = where[ref]
        for parent in _parents(entry):
            if parent in where:
                x1, y1 = where[parent]
                sx, sy, ex, ey = x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2
                parts.append(f'<path class="edge" d="M{sx},{sy} C{sx + GAP_X / 2},{sy} {ex - GAP_X / 2},{ey} '
                             f'{ex},{ey}" fill="none" stroke="#888"/>')
    for ref, entry in refs.items():
        x, y = where[ref]
        colour = KIND_COLOURS.get(entry.entry_type, "#eee")
        label = ref if len(ref) <= 32 else ref[:31] + "…"
        parts.append(f'<g class="node"><title>{_e(ref)} ({_e(entry.entry_type)})</title>'
                     f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="5" fill="{colour}" '
                     f'stroke="#555"/><text x="{x + 8}" y="{y + 18}" font-size="12">{_e(label)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def curve_svg(curve: Any) -> str:
    """A training loss curve from [step, loss] pairs, or "" when the card has none that can be drawn (pairs of
    finite numbers, steps from 0 up to a positive last step; anything else in a card is skipped)."""
    pairs = curve if isinstance(curve, list) else []
    points = [(float(p[0]), float(p[1])) for p in pairs
              if isinstance(p, list) and len(p) == 2 and _finite(p[0]) and _finite(p[1]) and p[0] >= 0]
    if len(points) < 2 or max(p[0] for p in points) <= 0:
        return ""
    w, h, pad = 320, 110, 28
    steps, losses = [p[0] for p in points], [p[1] for p in points]
    lo, hi, last = min(losses), max(losses), max(steps)
    span = (hi - lo) or 1.0

    def xy(step: float, loss: float) -> str:
        return f"{pad + (w - pad - 6) * step / last:.1f},{h - pad + 10 - (h - pad) * (loss - lo) / span:.1f}"

    line = " ".join(xy(s, v) for s, v in points)
    return (f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 14}" role="img" '
            f'aria-label="training loss"><polyline points="{line}" fill="none" stroke="#2a6fb0" stroke-width="1.5"/>'
            f'<text x="2" y="12" font-size="10">{hi:.4g}</text><text x="2" y="{h + 8}" font-size="10">{lo:.4g}'
            f'</text><text x="{w - 70}" y="{h + 12}" font-size="10">step {int(last):,}</text></svg>')


def bars_svg(values: Mapping[str, float]) -> str:
    """Bars for values in [0, 1] (shares), one per label."""
    items = [(str(k), float(v)) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)]
    if not items:
        return ""
    bar, gap, h = 22, 6, 90
    w = len(items) * (bar + gap) + 10
    parts = [f'<svg class="bars" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 30}" role="img">']
    for i, (label, value) in enumerate(items):
        v = min(max(value, 0.0), 1.0)
        x, top = 5 + i * (bar + gap), 5 + h * (1 - v)
        parts.append(f'<g><title>{_e(label)}: {value:.4f}</title><rect x="{x}" y="{top:.1f}" width="{bar}" '
                     f'height="{h * v:.1f}" fill="#5b9bd5"/><text x="{x + bar / 2}" y="{h + 20}" font-size="10" '
                     f'text-anchor="middle">{_e(label[:4])}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _headline_rows(entry: ZooEntry) -> str:
    rows = []
    headline = entry.card.get("headline")
    for scope, figures in (headline.items() if isinstance(headline, dict) else ()):
        if isinstance(figures, dict):
            shown = "; ".join(f"{_e(k)} {v:.4f}" if isinstance(v, float) else f"{_e(k)} {_e(v)}"
                              for k, v in figures.items())
            rows.append(f"<div><b>{_e(scope or 'test')}</b>: {shown}</div>")
    return "".join(rows)


def _entry_html(entry: ZooEntry, curve: str, charts: dict[str, dict[str, dict[str, float]]] | str) -> str:
    card = entry.card
    facts = [f"{_e(entry.entry_type)}"]
    if isinstance(card.get("family"), str):
        facts.append(_e(card["family"]))
    if isinstance(card.get("parameters"), int):
        facts.append(f"{card['parameters']:,} parameters")
    if isinstance(card.get("trainable_percent"), (int, float)):
        facts.append(f"{card['trainable_percent']:.2f}% trainable")
    if isinstance(card.get("created"), str):
        facts.append(_e(card["created"]))
    body = [f'<section class="entry" id="{_e(entry.ref)}"><h3>{_e(entry.ref)}</h3><p>{", ".join(facts)}</p>',
            _headline_rows(entry)]
    if curve:
        body.append(f'<figure><figcaption>training loss</figcaption>{curve}</figure>')
    if isinstance(charts, str):
        body.append(f'<p class="note">{_e(charts)}</p>')
    else:
        for scope, per_title in charts.items():
            for title, values in per_title.items():
                svg = bars_svg(values)
                if svg:
                    body.append(f'<figure><figcaption>{_e(title)} ({_e(scope or "test")})</figcaption>{svg}'
                                "</figure>")
    body.append("</section>")
    return "".join(body)


def grid_files(zoo: Zoo) -> list[Path]:
    """The sample grids a zoo build wrote (real files only: links below the zoo are never followed)."""
    folder = zoo.root / "grids"
    if not folder.is_dir() or folder.is_symlink():
        return []
    return [p for p in sorted(folder.glob("*.png")) if p.is_file() and not p.is_symlink()]


def _number_cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{sum(values) / len(values):.4f} <small>({min(values):.4f}–{max(values):.4f})</small>"


def results_tables(zoo: Zoo) -> list[str]:
    """Per results-<profile>.json: each step's headline figures, mean (min–max) over its seeds."""
    out = []
    for path in sorted(zoo.root.glob("results-*.json")):
        try:
            report = parse_json(path.read_bytes())
            per_seed = report["per_seed"]
            seeds = list(per_seed)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            out.append(f'<p class="note">{_e(path.name)}: not readable ({_e(type(exc).__name__)})</p>')
            continue
        rows: dict[str, dict[str, list[float]]] = {}
        for seed in seeds:
            for step, result in (per_seed[seed] or {}).items():
                for scope, figures in ((result or {}).get("headline") or {}).items():
                    for label, value in (figures or {}).items():
                        if isinstance(value, (int, float)) and not isinstance(value, bool):
                            key = f"{scope or 'test'}: {label}"
                            rows.setdefault(str(step), {}).setdefault(key, []).append(float(value))
        body = "".join(f"<tr><td>{_e(step)}</td><td>{_e(key)}</td><td>{_number_cell(values)}</td></tr>"
                       for step, figures in rows.items() for key, values in figures.items())
        out.append(f'<h3>{_e(path.name)}</h3><p>profile {_e(report.get("profile"))}, seeds '
                   f'{_e(", ".join(seeds))}</p><table class="results"><tr><th>step</th><th>figure</th>'
                   f"<th>mean (min–max over seeds)</th></tr>{body}</table>")
    return out


STYLE = """body{font-family:system-ui,sans-serif;margin:24px;color:#222}h2{margin-top:32px;border-bottom:1px solid #ccc}
section.entry{display:inline-block;vertical-align:top;width:360px;margin:8px;padding:8px;border:1px solid #ddd;
border-radius:6px}section.entry h3{font-size:14px;margin:0 0 4px}figure{margin:6px 0}figcaption{font-size:12px;
color:#555}.note{color:#a33;font-size:12px}.damaged{color:#a33}.grid{display:inline-block;margin:6px}
.grid img{image-rendering:pixelated;width:256px}table.results{border-collapse:collapse;font-size:13px}
table.results td,table.results th{border:1px solid #ddd;padding:2px 8px;text-align:left}
.lineage-wrap{overflow-x:auto}section.entry{font-size:13px}"""


def render(zoo: Zoo, charts_for: ChartsFor, grids: list[Path]) -> tuple[str, dict[str, int]]:
    """The page (showing these sample grids from img/), and counts of what it holds."""
    found = list(zoo.scan())
    entries = [e for e in found if isinstance(e, ZooEntry)]
    damaged = [e for e in found if isinstance(e, DamagedEntry)]
    counts = {"entries": len(entries), "damaged": len(damaged), "curves": 0, "charts": 0, "grids": 0}
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    out = [f'<!doctype html><html><head><meta charset="utf-8">{MARKER}<title>zoo report: {_e(zoo.root)}</title>'
           f"<style>{STYLE}</style></head><body><h1>Zoo report</h1>"
           f"<p>{_e(zoo.root)}: {len(entries)} entries in {len({e.model for e in entries})} models, made {stamp} by "
           "<code>adapters zoo report</code>.</p>"]
    if damaged:
        out.append('<h2>Damaged entries</h2><ul class="damaged">'
                   + "".join(f"<li>{_e(d.ref)}: {_e(d.problem)}</li>" for d in damaged) + "</ul>")
    for model in zoo.models():
        mine = [e for e in entries if e.model == model]
        if not mine:
            continue
        out.append(f'<h2 id="model-{_e(model)}">{_e(model)}</h2><h3>Lineage</h3>'
                   f'<div class="lineage-wrap">{lineage_svg(mine)}</div>')
        for entry in mine:
            try:
                charts = charts_for(entry)
                training = entry.card.get("training")
                curve = curve_svg(training.get("curve")) if isinstance(training, dict) else ""
                html = _entry_html(entry, curve, charts)
            except (TypeError, ValueError, AttributeError, KeyError, OverflowError, ZeroDivisionError) as exc:
                # a card whose fields have shapes no writer gives them: shown as damaged, the page goes on
                counts["damaged"] += 1
                out.append(f'<section class="entry damaged" id="{_e(entry.ref)}"><h3>{_e(entry.ref)}</h3><p>damaged '
                           f"card: {_e(type(exc).__name__)} while drawing it</p></section>")
                continue
            counts["charts"] += 0 if isinstance(charts, str) else sum(len(c) for c in charts.values())
            counts["curves"] += bool(curve)
            out.append(html)
    tables = results_tables(zoo)
    if tables:
        out += ["<h2>Results of zoo builds</h2>", *tables]
    if grids:
        out.append("<h2>Sample grids</h2>")
        out += [f'<figure class="grid"><img alt="{_e(p.name)}" src="img/{_e(p.name)}">'
                f"<figcaption>{_e(p.name)}</figcaption></figure>" for p in grids]
        counts["grids"] = len(grids)
    counts["results"] = len(tables)
    out.append("</body></html>\n")
    return "".join(out), counts


def write_report(zoo: Zoo, charts_for: ChartsFor, dest: Path) -> dict[str, int]:
    """`dest`/index.html and the grids it shows in `dest`/img/, written all or nothing."""
    grids = grid_files(zoo)
    page, counts = render(zoo, charts_for, grids)

    def write(target: Path) -> None:
        (target / "img").mkdir(parents=True)
        (target / "index.html").write_text(page, encoding="utf-8")
        for grid in grids:
            shutil.copyfile(grid, target / "img" / grid.name)

    from ..errors import WriteError

    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise WriteError(f"{dest} is a file or a link: name a folder for the report (--out DIR)")
    if dest.is_dir() and any(dest.iterdir()):
        index = dest / "index.html"
        if not (index.is_file() and MARKER in index.read_text(errors="replace")[:4000]):
            raise WriteError(f"{dest} is a folder that holds something other than a zoo report: choose a new or "
                             "empty folder (--out DIR); nothing was written")
        shutil.rmtree(dest / "img", ignore_errors=True)  # the previous report's own images, replaced
    publish(dest, write)
    return counts
