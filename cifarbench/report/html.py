"""`cifarbench report`: one self-contained HTML page over the results database.

Charts are matplotlib SVG, inlined. Why matplotlib: it is the project's plotting library already
(bench charts), it draws a correct log axis and min–max whiskers without code of ours, and its
SVG is static: the page needs no script and no network to show a chart, stays small (tens of kB
per chart, where an embedded interactive library such as Plotly adds megabytes of JavaScript), and
keeps its text as text (``svg.fonttype = none``). The only script is ~30 lines that sort the
leaderboard. Without matplotlib the page is still written, with a note in place of the charts.
"""

from __future__ import annotations

import html
import io
import re
import statistics
from datetime import datetime, timezone
from typing import Any, Optional, Sequence

from cifarbench.results.analysis import groups

COLORS = {"torch": "#d1495b", "mlx": "#2e86ab", "numpy": "#3a7d44", "cupy": "#edae49"}
OTHER = ("#6c5b7b", "#c06c84", "#355c7d", "#99b898")


def _color(backend: Optional[str], i: int = 0) -> str:
    return COLORS.get(backend or "", OTHER[i % len(OTHER)])


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


# ----- curves and time to accuracy --------------------------------------------------------
def curves(row: dict[str, Any]) -> list[tuple[list[float], list[float]]]:
    """(elapsed_s, eval accuracy) per run: a train run's history, or each seed of a bench training row."""
    data = row.get("data") or {}
    if row.get("kind") == "train":
        hist = data.get("history") or []
        pts = [(h["elapsed_s"], h["eval_acc"]) for h in hist if "elapsed_s" in h and "eval_acc" in h]
        return [([p[0] for p in pts], [p[1] for p in pts])] if pts else []
    return [(c["elapsed_s"], c["eval_acc"]) for c in (data.get("row") or {}).get("curves") or [] if c.get("elapsed_s")]


def time_to(row: dict[str, Any], target: Optional[float]) -> Optional[float]:
    """Median over the row's runs of the first time the eval accuracy reached target (None: never)."""
    if target is None:
        return row.get("time_to_target_s")
    hits = [next((t for t, a in zip(ts, accs) if a >= target), None) for ts, accs in curves(row)]
    hits = [h for h in hits if h is not None]
    return statistics.median(hits) if hits else None


# ----- charts ------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    plt = _plt()
    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "cifarbench"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # RDF about the file: not for a page
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: inline SVG needs neither


def _label(g: dict[str, Any], hosts: dict[str, str]) -> str:
    return (f"{g['backend']} {g['device']} {g['model']} {g['precision']} bs{g['batch_size']} {g['kind']} "
            f"@ {hosts.get(g['fingerprint_id'], g['fingerprint_id'][:8])}")


def throughput_svg(gs: Sequence[dict[str, Any]], hosts: dict[str, str]) -> Optional[str]:
    """Bars at the median images/s of each group, whiskers min–max over every timed window, log axis."""
    gs = [g for g in gs if g["images_per_s"]]
    if not gs:
        return None
    gs = sorted(gs, key=lambda g: -g["images_per_s"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.9 + 0.34 * len(gs)))
    y = list(range(len(gs)))
    med = [g["images_per_s"] for g in gs]
    lo = [m - (g["images_per_s_min"] or m) for m, g in zip(med, gs)]
    hi = [(g["images_per_s_max"] or m) - m for m, g in zip(med, gs)]
    ax.barh(y, med, color=[_color(g["backend"], i) for i, g in enumerate(gs)])
    ax.errorbar(med, y, xerr=[lo, hi], fmt="none", ecolor="#222", capsize=3, lw=1)
    ax.set_xscale("log")
    _plain_log_ticks(ax, min(m - l for m, l in zip(med, lo)), max(m + h for m, h in zip(med, hi)))
    ax.set_yticks(y, [_label(g, hosts) for g in gs], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("training images / s (log scale; bar: median, whiskers: min–max over repeats and runs)")
    ax.grid(axis="x", which="both", alpha=0.25)
    for yi, m, h in zip(y, med, hi):  # the value right of the whisker's cap, not on it
        ax.text((m + h) * 1.04, yi, f"{m:,.0f}" if m >= 100 else f"{m:,.1f}", va="center", fontsize=7)
    ax.set_xlim(right=ax.get_xlim()[1] * 1.25)
    return _svg(fig)


def _plain_log_ticks(ax, lo: float, hi: float) -> None:
    """Ticks at 1, 2, 5 x 10^k written as plain numbers (1,000 not 10^3): the axis spans a few decades at most."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = [m * 10 ** k for k in range(-3, 9) for m in (1, 2, 5) if lo / 1.5 <= m * 10 ** k <= hi * 1.5]
    if len(ticks) < 2:
        ticks = [m * 10 ** k for k in range(-3, 9) for m in (1, 1.5, 2, 3, 5, 7) if lo / 1.5 <= m * 10 ** k <= hi * 1.5]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}"))


def curves_svg(rows: Sequence[dict[str, Any]], hosts: dict[str, str], target: Optional[float]) -> Optional[str]:
    """Evaluation accuracy against wall time, one panel per backend, one line per run."""
    by: dict[str, list[tuple[str, list[float], list[float]]]] = {}
    for r in rows:
        for k, (ts, accs) in enumerate(curves(r)):
            tag = f"#{r['id']}" + (f".{k}" if k else "")
            by.setdefault(r["backend"] or "?", []).append(
                (f"{tag} {r['model']} {r['device']} bs{r['batch_size']} @ {hosts.get(r['fingerprint_id'], '')}", ts, accs))
    if not by:
        return None
    plt = _plt()
    names = sorted(by)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.6), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        for i, (label, ts, accs) in enumerate(by[name][:12]):  # a legend past a dozen lines reads as noise
            ax.plot(ts, [100 * a for a in accs], marker="o", ms=3, lw=1.4, label=label, color=plt.cm.tab10(i % 10))
        if target is not None:
            ax.axhline(100 * target, ls="--", color="#888", lw=1)
        ax.set_title(name, color=_color(name))
        ax.set_xlabel("wall time (s)")
        ax.grid(alpha=0.25)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("eval accuracy (%)")
    return _svg(fig)


# ----- the page ----------------------------------------------------------------------------
def _num_cell(v: Optional[float], text: str) -> str:
    key = "" if v is None else f"{v:.10g}"
    return f'<td class="num" data-v="{key}">{_e(text)}</td>'


def leaderboard(gs: Sequence[dict[str, Any]], hosts: dict[str, str]) -> str:
    head = ("#", "model", "backend", "device", "precision", "batch", "kind", "machine", "runs", "images/s",
            "min–max", "accuracy % (mean ± std)", "time to acc. (s)", "total time (s)", "ids")
    sortable = {"images/s": "desc", "accuracy % (mean ± std)": "desc", "time to acc. (s)": "asc",
                "total time (s)": "asc", "batch": "asc", "runs": "desc"}
    initial = ' data-dir="desc"'  # the rows come sorted by images/s, fastest first
    ths = "".join(f'<th data-sort="{sortable.get(h, "text")}" tabindex="0"{initial if h == "images/s" else ""}>'
                  f'{_e(h)}</th>' for h in head)
    body = []
    ordered = sorted(gs, key=lambda g: -(g["images_per_s"] or -1))
    for i, g in enumerate(ordered, 1):
        acc = "–" if g["accuracy"] is None else f"{100 * g['accuracy']:.2f} ± {100 * (g['accuracy_std'] or 0):.2f} (n={g['accuracy_n']})"
        spread = "–" if g["images_per_s_min"] is None else f"{g['images_per_s_min']:,.1f}–{g['images_per_s_max']:,.1f}"
        ips = "–" if g["images_per_s"] is None else f"{g['images_per_s']:,.1f}"
        ttt, tot = g.get("time_to_acc"), g["total_time_s"]
        body.append(
            f'<tr data-backend="{_e(g["backend"])}"><td class="num">{i}</td><td>{_e(g["model"])}</td>'
            f'<td><span class="dot" style="background:{_color(g["backend"])}"></span>{_e(g["backend"])}</td>'
            f'<td>{_e(g["device"])}</td><td>{_e(g["precision"])}</td>{_num_cell(g["batch_size"], str(g["batch_size"]))}'
            f'<td>{_e(g["kind"])}</td><td><a href="#m-{_e(g["fingerprint_id"])}">{_e(hosts.get(g["fingerprint_id"]))}</a>'
            f' <code>{_e(g["fingerprint_id"][:8])}</code></td>{_num_cell(g["n"], str(g["n"]))}'
            f'{_num_cell(g["images_per_s"], ips)}<td class="num">{_e(spread)}</td>{_num_cell(g["accuracy"], acc)}'
            f'{_num_cell(ttt, "–" if ttt is None else f"{ttt:,.1f}")}{_num_cell(tot, "–" if tot is None else f"{tot:,.1f}")}'
            f'<td>{_e(", ".join(map(str, g["ids"])))}</td></tr>')
    return f'<table id="leaderboard"><thead><tr>{ths}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def machine_panel(fid: str, fp: dict[str, Any], rows: Sequence[dict[str, Any]]) -> str:
    from cifarbench.fingerprint import memory_gib

    hw, sw = fp.get("hardware") or {}, fp.get("software") or {}
    pk = sw.get("packages") or {}
    gpus = ", ".join(f"{g.get('name')} ({memory_gib(g)} GiB)" if memory_gib(g) else str(g.get("name"))
                     for g in hw.get("gpus") or []) or "none"
    threads = ", ".join(f"{k}={v}" for k, v in (fp.get("threads") or {}).items() if v is not None) or "defaults"
    mine = [r for r in rows if r["fingerprint_id"] == fid]
    hosts = sorted({r["hostname"] for r in mine if r.get("hostname")}) or [fp.get("hostname") or "?"]
    commits = sorted({(r.get("git_commit") or "")[:10] for r in mine if r.get("git_commit")})
    items = [
        ("hosts", ", ".join(hosts)), ("CPU", f"{hw.get('cpu_model')} — {hw.get('physical_cores')} physical / "
                                             f"{hw.get('logical_cores')} logical cores"),
        ("memory", f"{memory_gib(hw)} GiB"), ("GPUs", gpus),
        ("OS", f"{hw.get('os')} {hw.get('os_release')} ({hw.get('architecture')})"),
        ("Python", sw.get("python")),
        ("frameworks", ", ".join(f"{k} {v}" for k, v in pk.items() if v and k in ("torch", "mlx", "numpy", "cupy",
                                                                                   "cupy-cuda12x", "cupy-cuda11x"))),
        ("CUDA (torch build)", (sw.get("torch_build") or {}).get("cuda") or "–"),
        ("BLAS", (sw.get("numpy_blas") or {}).get("name") or "–"), ("threads", threads),
        ("cifarbench", f"{sw.get('cifarbench')}" + (f" — commits {', '.join(commits)}" if commits else "")),
        ("results", str(len(mine))),
    ]
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    return (f'<section class="machine" id="m-{_e(fid)}"><h3>{_e(hosts[0])} <code>{_e(fid)}</code></h3>'
            f"<dl>{dl}</dl></section>")


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1400px;
color:#1d232a;background:#fff;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2e6;padding-bottom:4px}
h3{font-size:14px;margin:0 0 6px}.meta{color:#5c6670;font-size:12px}
table{border-collapse:collapse;width:100%;font-size:12.5px}th,td{padding:4px 8px;border-bottom:1px solid #e8ecef;
text-align:left;white-space:nowrap}th{background:#f3f5f7;cursor:pointer;user-select:none;position:sticky;top:0}
th[data-dir=asc]::after{content:" ▲"}th[data-dir=desc]::after{content:" ▼"}td.num{text-align:right;
font-variant-numeric:tabular-nums}tbody tr:hover{background:#f7fafc}.dot{display:inline-block;width:9px;height:9px;
border-radius:50%;margin-right:5px}.machines{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:12px}
.machine{border:1px solid #dde2e6;border-radius:6px;padding:10px 12px;background:#fbfcfd}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 10px;margin:0;font-size:12px}dt{color:#5c6670}
dd{margin:0;word-break:break-word}.chart svg{max-width:100%;height:auto}.note{color:#8a5a00}
code{font-size:11px;color:#5c6670}.wrap{overflow-x:auto}
"""

JS = r"""
(function(){
  var errs=[];window.addEventListener('error',function(e){errs.push(String(e.message));
    document.body.setAttribute('data-errors',errs.join(' | '));});
  var t=document.getElementById('leaderboard');if(!t)return;
  function key(td,kind){if(kind==='text')return td.textContent.trim().toLowerCase();
    var v=td.getAttribute('data-v');return v===''||v===null?null:parseFloat(v);}
  function sortBy(th,force){var i=Array.prototype.indexOf.call(th.parentNode.children,th);
    var kind=th.getAttribute('data-sort');var dir=th.getAttribute('data-dir');
    dir=force||(dir?(dir==='asc'?'desc':'asc'):(kind==='text'?'asc':kind));
    Array.prototype.forEach.call(th.parentNode.children,function(h){h.removeAttribute('data-dir');});
    th.setAttribute('data-dir',dir);var body=t.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=key(a.cells[i],kind),y=key(b.cells[i],kind);
      if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;  // blanks last either way
      var c=x<y?-1:x>y?1:0;return dir==='asc'?c:-c;});
    rows.forEach(function(r,k){r.cells[0].textContent=k+1;body.appendChild(r);});}
  Array.prototype.forEach.call(t.tHead.rows[0].cells,function(th,i){if(i===0)return;
    th.addEventListener('click',function(){sortBy(th);});
    th.addEventListener('keydown',function(e){if(e.key==='Enter')sortBy(th);});});
  var m=/^#sort=(\d+)(?::(asc|desc))?$/.exec(location.hash);  // a link can carry a sort: #sort=9:desc
  if(m&&t.tHead.rows[0].cells[+m[1]])sortBy(t.tHead.rows[0].cells[+m[1]],m[2]);
  document.body.setAttribute('data-ready',String(t.tBodies[0].rows.length));
})();
"""


def render(rows: Sequence[dict[str, Any]], machines: dict[str, dict[str, Any]], source: str,
           target: Optional[float] = None, generated: Optional[str] = None) -> tuple[str, list[str]]:
    """The page and the warnings met on the way (e.g. no matplotlib: no charts)."""
    warnings: list[str] = []
    hosts = {}
    for r in rows:
        hosts.setdefault(r["fingerprint_id"], r.get("hostname") or r["fingerprint_id"][:8])
    gs = groups(rows)
    by_id = {r["id"]: r for r in rows}
    for g in gs:
        tt = [t for t in (time_to(by_id[i], target) for i in g["ids"]) if t is not None]
        g["time_to_acc"] = statistics.median(tt) if tt else None
    try:
        bars, lines = throughput_svg(gs, hosts), curves_svg(rows, hosts, target)
    except ImportError:
        bars = lines = None
        warnings.append("matplotlib is not installed: the report has no charts (pip install 'cifarbench[plots]')")
    nochart = '<p class="note">{}</p>'
    bars_html = bars or nochart.format("no throughput figures" if not warnings else _e(warnings[0]))
    lines_html = lines or nochart.format("no accuracy curves (train runs and bench --epochs runs have them)"
                                         if not warnings else _e(warnings[0]))
    panels = "".join(machine_panel(fid, machines.get(fid) or {}, rows) for fid in dict.fromkeys(r["fingerprint_id"] for r in rows))
    generated = generated or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    target_text = f"first eval accuracy ≥ {100 * target:g}%" if target is not None else "as bench --target-acc recorded it"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>cifarbench results</title><style>{CSS}</style></head>
<body data-ready="0">
<h1>cifarbench results</h1>
<p class="meta">{len(rows)} results in {len(gs)} groups from {len(hosts)} machine{"s" if len(hosts) != 1 else ""} · database {_e(source)} · generated {_e(generated)}</p>
<h2>Leaderboard</h2>
<p class="meta">One row per case and machine; images/s: median over runs (min–max over their timed windows or seeds);
accuracy: mean ± std over all seeds; time to accuracy: {_e(target_text)}. Click a column to sort
(a link can carry a sort: <code>#sort=9:desc</code>, column 9 = images/s).</p>
<div class="wrap">{leaderboard(gs, hosts)}</div>
<h2>Throughput</h2><div class="chart" id="throughput">{bars_html}</div>
<h2>Accuracy against time, per backend</h2><div class="chart" id="curves">{lines_html}</div>
<h2>Machines</h2><div class="machines">{panels}</div>
<script>{JS}</script>
</body></html>
"""
    return page, warnings

