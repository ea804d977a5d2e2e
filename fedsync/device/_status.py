"""The device's status page: one self-contained HTML page, no external assets.

A device without a token serves the page with its values filled in. A device
with a token answers a browser that has none with :func:`render_locked`: the
same page for every path, showing nothing of the device, that asks for the
token and then reads the JSON handshake with an ``Authorization`` header. The
token stays in the tab's ``sessionStorage``, never in a URL.

Internal: served by every device; its names may change without notice (fedsync's public
surface is ``fedsync.__all__``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["render_status", "render_index", "render_locked", "content_security_policy", "TOKEN_KEY"]

TOKEN_KEY = "fedsync-token"
"""The ``sessionStorage`` key under which the page keeps the token for this tab."""

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:46rem;padding:0 1rem;color:#1d232a}
h1{font-size:1.3rem;margin:0 0 .2rem}.sub{color:#5b6670;margin:0 0 1.2rem}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #e3e7eb}
th{width:13rem;color:#5b6670;font-weight:500}code{font-size:.9em;word-break:break-all}
.state{display:inline-block;padding:.05rem .55rem;border-radius:1rem;font-weight:600}
.idle{background:#e6f4ea;color:#1e6b34}.training{background:#fff4d6;color:#7a5800}\
.failed{background:#fde7e7;color:#9b1c1c}
footer{margin-top:1.2rem;color:#8a949c;font-size:.85rem}
form{display:flex;gap:.5rem;margin:1rem 0}\
input{flex:1;font:inherit;padding:.35rem .5rem}button{font:inherit;padding:.35rem .9rem}
#message{color:#9b1c1c;min-height:1.4em}[hidden]{display:none!important}
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
  const token = sessionStorage.getItem("fedsync-token");
  const headers = token ? {Authorization: "Bearer " + token} : {};
  try { const r = await fetch("info", {cache: "no-store", headers}); if (r.ok) show(await r.json()); } catch (e) {}
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


def render_status(info: Mapping[str, Any], title: str) -> str:
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
<body><h1>fedsync device</h1>\
<p class="sub">This device serves {len(bases)} FedData:</p><ul>{items}</ul></body></html>"""


# Everything the locked page shows comes from /info, fetched with the token and
# written with textContent (never innerHTML): a device's values are not markup.
_LOCKED_SCRIPT = """
const KEY = "%(key)s", fields = %(fields)s;
const form = document.getElementById("unlock"), input = document.getElementById("token");
const message = document.getElementById("message");
let timer = null;
function base(){
  let path = location.pathname;
  if (path.endsWith("/info")) path = path.slice(0, -4);
  return path.endsWith("/") ? path : path + "/";
}
function cell(key, value){
  const td = document.getElementById(key); if (!td) return;
  if (value === null || value === undefined) value = "-";
  if (key === "last_seconds" && typeof value === "number") value = value.toFixed(3);
  td.textContent = "";
  if (key === "state"){ const s = document.createElement("span"); s.className = "state " + value; \
s.textContent = value; td.appendChild(s); }
  else td.textContent = String(value);
}
function show(info){
  if (Array.isArray(info.bases)){
    const list = document.getElementById("bases"); list.textContent = "";
    for (const name of info.bases){
      const li = document.createElement("li"), a = document.createElement("a");
      a.href = encodeURIComponent(String(name)) + "/"; a.textContent = String(name); \
li.appendChild(a); list.appendChild(li);
    }
    document.getElementById("index").hidden = false;
  } else {
    for (const key of fields) cell(key, info[key]);
    document.getElementById("device").hidden = false;
    document.getElementById("heading").textContent = String(info.type || "fedsync device");
  }
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
}
async function load(token){
  let answer;
  try { answer = await fetch(base() + "info", {cache: "no-store", headers: {Authorization: "Bearer " + token}}); }
  catch (e) { message.textContent = "The device did not answer."; return false; }
  if (answer.status === 401){
    sessionStorage.removeItem(KEY); clearInterval(timer); timer = null;
    form.hidden = false; message.textContent = "The device refused this token."; return false;
  }
  if (!answer.ok){ message.textContent = "Nothing is served at " + base() + " (HTTP " + answer.status + ")."; \
return false; }
  sessionStorage.setItem(KEY, token);
  form.hidden = true; message.textContent = "";
  show(await answer.json());
  if (timer === null) timer = setInterval(() => load(token), 2000);
  return true;
}
form.addEventListener("submit", (event) => {
  event.preventDefault();  // a submitted form would put the token in the URL or the history
  const token = input.value.trim(); input.value = "";
  if (token) load(token);
});
const saved = sessionStorage.getItem(KEY);
if (saved) load(saved);
"""


def render_locked() -> str:
    """The page a browser without the token gets from a device with one: the same for every path.

    It shows no value of the device (no specs, repetition or base names) until
    the token typed into it is accepted by ``/info``.
    """
    rows = "\n".join(f'<tr><th>{label}</th><td id="{key}">-</td></tr>' for key, label in _FIELDS)
    script = _LOCKED_SCRIPT % {"key": TOKEN_KEY, "fields": json.dumps([k for k, _ in _FIELDS])}
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer"><title>fedsync device</title><style>{_STYLE}</style></head>
<body><h1 id="heading">fedsync device</h1>
<form id="unlock" autocomplete="off">\
<input id="token" type="password" aria-label="token" placeholder="this device's token" autofocus>
<button type="submit">Show status</button></form>
<p id="message">This device requires a token: type it to see its status. It stays in this tab, never in a URL.</p>
<div id="device" hidden><table>{rows}</table></div>
<div id="index" hidden><p class="sub">This device serves:</p><ul id="bases"></ul></div>
<footer>Updated <span id="updated">never</span>.</footer>
<script>{script}</script>
</body></html>"""


_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def content_security_policy(page: str) -> str:
    """The Content-Security-Policy of ``page``: its own inline scripts and styles (by SHA-256), nothing else.

    No ``'unsafe-inline'``: a script injected into the page (a value that escaped escaping) does
    not run. The page reads the device's JSON from its own origin (``connect-src 'self'``) and
    can be framed by no other page.
    """
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _INLINE.findall(page):
        digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode("ascii")
        hashes[kind].append(f"'sha256-{digest}'")
    script = " ".join(hashes["script"]) or "'none'"
    style = " ".join(hashes["style"]) or "'none'"
    return (
        f"default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
