"""The device's status page: one self-contained HTML page, no external assets."""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["render_status", "render_index"]

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:46rem;padding:0 1rem;color:#1d232a}
h1{font-size:1.3rem;margin:0 0 .2rem}.sub{color:#5b6670;margin:0 0 1.2rem}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #e3e7eb}
th{width:13rem;color:#5b6670;font-weight:500}code{font-size:.9em;word-break:break-all}
.state{display:inline-block;padding:.05rem .55rem;border-radius:1rem;font-weight:600}
.idle{background:#e6f4ea;color:#1e6b34}.training{background:#fff4d6;color:#7a5800}.failed{background:#fde7e7;color:#9b1c1c}
footer{margin-top:1.2rem;color:#8a949c;font-size:.85rem}
"""

_FIELDS = [
    ("state", "State"),
    ("specs", "Specs"),
    ("repetition", "Last repetition"),
    ("rounds_served", "Rounds served"),
    ("last_seconds", "Last training (s)"),
    ("samples", "Samples last trained on"),
    ("last_error", "Last error"),
    ("type", "FedData type"),
    ("fedsync", "fedsync version"),
]

# Refreshes the table from the JSON handshake every two seconds; the page works
# without it, showing the values it was served with.
_SCRIPT = """
const fields = %s;
function show(info){
  for (const key of fields){
    const cell = document.getElementById(key); if (!cell) continue;
    let value = info[key]; if (value === null || value === undefined) value = "-";
    if (key === "last_seconds" && typeof value === "number") value = value.toFixed(3);
    if (key === "state"){ cell.innerHTML = ""; const s = document.createElement("span");
      s.className = "state " + value; s.textContent = value; cell.appendChild(s); }
    else cell.textContent = String(value);
  }
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
}
async function refresh(){
  try { const r = await fetch("info", {cache: "no-store"}); if (r.ok) show(await r.json()); } catch (e) {}
}
setInterval(refresh, 2000);
"""


def _value(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "state":
        return f'<span class="state {html.escape(str(value))}">{html.escape(str(value))}</span>'
    if key == "last_seconds" and isinstance(value, (int, float)):
        return f"{value:.3f}"
    if key == "specs":
        return f"<code>{html.escape(str(value))}</code>"
    return html.escape(str(value))


def render_status(info: dict[str, Any], title: str) -> str:
    """The status page of one FedData, from its ``/info`` answer."""
    rows = "\n".join(
        f'<tr><th>{label}</th><td id="{key}">{_value(key, info.get(key))}</td></tr>' for key, label in _FIELDS
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body><h1>{html.escape(title)}</h1><p class="sub">fedsync device, protocol v{int(info.get("protocol", 1))}</p>
<table>{rows}</table>
<footer>Updated <span id="updated">when served</span>. JSON: <a href="info">info</a>.</footer>
<script>{_SCRIPT % json.dumps([k for k, _ in _FIELDS])}</script>
</body></html>"""


def render_index(bases: list[str]) -> str:
    """The root page of a device serving several FedData."""
    items = "\n".join(f'<li><a href="{html.escape(b)}/">{html.escape(b)}</a></li>' for b in bases)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fedsync device</title><style>{_STYLE}</style></head>
<body><h1>fedsync device</h1><p class="sub">This device serves {len(bases)} FedData:</p><ul>{items}</ul></body></html>"""
