"""The audit report's stylesheet, inlined into the page by :mod:`.html` (the report loads nothing external)."""

__all__ = ["CSS"]

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#ffffff; --soft:#f6f8fa;
  --good:#1a7f37; --warn:#9a6700; --bad:#cf222e; --goodbg:#dafbe1; --warnbg:#fff8c5; --badbg:#ffebe9; }
* { box-sizing: border-box; }
body { margin:0; background:var(--soft); color:var(--fg); line-height:1.45; font-size:15px;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "Noto Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 24px 48px; }
header.report { background:var(--bg); border:1px solid var(--line); border-radius:8px; padding:18px 22px; }
h1 { font-size:1.5rem; margin:0 0 10px; }
h2 { font-size:1.2rem; margin:32px 0 10px; }
h3 { font-size:1rem; margin:20px 0 8px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace;
  font-size:.85em; }
pre { white-space:pre-wrap; word-break:break-word; background:var(--soft); border:1px solid var(--line);
  border-radius:6px; padding:8px 10px; margin:6px 0; }
dl.meta { display:grid; grid-template-columns: max-content 1fr; gap:4px 16px; margin:0; }
dl.meta dt { color:var(--muted); }
dl.meta dd { margin:0; word-break:break-word; }
.verdict { display:flex; flex-wrap:wrap; gap:16px; margin:18px 0; }
.verdict div { background:var(--bg); border:1px solid var(--line); border-radius:8px; padding:12px 18px;
  min-width:180px; }
.verdict .label { display:block; color:var(--muted); font-size:.8rem; text-transform:uppercase;
  letter-spacing:.05em; margin-bottom:4px; }
table { width:100%; border-collapse:collapse; background:var(--bg); border:1px solid var(--line);
  border-radius:8px; overflow:hidden; margin:6px 0 12px; }
th, td { text-align:left; vertical-align:top; padding:7px 10px; border-bottom:1px solid var(--line); }
th { background:var(--soft); font-weight:600; font-size:.85rem; color:var(--muted); }
tr:last-child td { border-bottom:none; }
td.num { text-align:right; font-variant-numeric: tabular-nums; white-space:nowrap; }
td.val { word-break:break-word; }
.badge { display:inline-block; padding:1px 9px; border-radius:999px; font-size:.8rem; font-weight:600;
  border:1px solid transparent; white-space:nowrap; }
.badge.good { color:var(--good); background:var(--goodbg); border-color:#aceebb; }
.badge.warn { color:var(--warn); background:var(--warnbg); border-color:#eed888; }
.badge.bad { color:var(--bad); background:var(--badbg); border-color:#ffcecb; }
.badge.muted { color:var(--muted); background:#eff2f5; border-color:var(--line); }
.reason { color:var(--muted); font-size:.85rem; margin-top:3px; word-break:break-word; }
section.probe { background:var(--bg); border:1px solid var(--line); border-radius:8px; padding:4px 22px 18px;
  margin:24px 0; }
section.probe > h2 { margin-top:16px; }
.sub { color:var(--muted); }
figure { margin:10px 0 16px; }
figure.plot img { max-width:100%; height:auto; border:1px solid var(--line); border-radius:6px; }
figcaption { color:var(--muted); font-size:.85rem; margin-top:4px; }
.gallery { display:flex; flex-direction:column; gap:14px; }
.example { border:1px solid var(--line); border-radius:8px; padding:10px 12px; }
.example .caption { font-size:.9rem; margin-bottom:8px; }
.triple { display:flex; flex-wrap:wrap; gap:14px; }
.triple figure { margin:0; text-align:center; width:min-content; }
table.kv { width:auto; min-width:50%; }
.triple img { image-rendering: pixelated; image-rendering: crisp-edges; border:1px solid var(--line);
  display:block; }
.note { color:var(--muted); font-style:italic; }
footer { color:var(--muted); font-size:.8rem; margin-top:32px; }
"""
