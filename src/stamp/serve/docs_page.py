"""The `/docs` page: the API reference rendered from the OpenAPI schema as one self-contained HTML page.

FastAPI's Swagger UI and ReDoc load their scripts from a CDN; a server without internet access (and a
user behind a firewall) would get a blank page. This page has no scripts and no outside assets.
"""

from __future__ import annotations

import json
from html import escape

METHODS = ("get", "post", "put", "patch", "delete")
_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
h1 { margin-bottom: 0; } .lead { color: #555; }
section.op { border: 1px solid #ddd; border-radius: 6px; margin: 1rem 0; padding: 0.5rem 1rem; }
.method { display: inline-block; min-width: 4rem; font-weight: bold; text-transform: uppercase; }
.get { color: #0072b2; } .post { color: #009e73; }
code, pre { background: #f6f6f6; border-radius: 3px; padding: 0 0.2rem; }
pre { padding: 0.5rem; overflow-x: auto; font-size: 13px; }
table { border-collapse: collapse; } td, th { text-align: left; padding: 0.15rem 0.6rem 0.15rem 0; vertical-align: top; }
nav a { margin-right: 1rem; }
"""


def _type(schema: dict) -> str:
    """A short type name for a schema: `SegmentResponse`, `string`, `array of MaskResult`, ..."""
    if not schema:
        return "any"
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_type(schema.get('items', {}))}"
    return str(schema.get("type", "object"))


def _link(name: str) -> str:
    return f'<a href="#schema-{escape(name)}">{escape(name)}</a>'


def _type_html(schema: dict) -> str:
    text = escape(_type(schema))
    refs = [schema.get("$ref")] + [s.get("$ref") for s in schema.get("anyOf", [])]
    refs += [schema.get("items", {}).get("$ref")] if schema.get("type") == "array" else []
    for ref in filter(None, refs):
        name = ref.rsplit("/", 1)[-1]
        text = text.replace(escape(name), _link(name), 1)
    return text


def _operation(path: str, method: str, op: dict) -> str:
    out = [f'<section class="op" id="{escape(method + path)}">']
    out.append(f'<h3><span class="method {method}">{method}</span> <code>{escape(path)}</code></h3>')
    if op.get("summary"):
        out.append(f"<p><b>{escape(op['summary'])}</b></p>")
    if op.get("description"):
        out.append(f"<p>{escape(op['description'])}</p>")
    params = op.get("parameters", [])
    if params:
        out.append("<p>Parameters:</p><table>")
        for p in params:
            out.append(
                f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p.get('in', ''))}</td>"
                f"<td>{_type_html(p.get('schema', {}))}</td></tr>"
            )
        out.append("</table>")
    body = op.get("requestBody", {}).get("content", {})
    if body:
        out.append("<p>Request body:</p><table>")
        for media, content in body.items():
            out.append(
                f"<tr><td><code>{escape(media)}</code></td><td>{_type_html(content.get('schema', {}))}</td></tr>"
            )
        out.append("</table>")
    out.append("<p>Responses:</p><table>")
    for status, resp in op.get("responses", {}).items():
        kinds = [
            f"<code>{escape(media)}</code> {_type_html(c.get('schema', {}))}"
            for media, c in resp.get("content", {}).items()
        ]
        out.append(
            f"<tr><td><b>{escape(status)}</b></td><td>{escape(resp.get('description', ''))}</td>"
            f"<td>{'<br>'.join(kinds)}</td></tr>"
        )
    out.append("</table></section>")
    return "\n".join(out)


def _schema(name: str, schema: dict) -> str:
    out = [f'<section class="op" id="schema-{escape(name)}"><h3>{escape(name)}</h3>']
    if schema.get("description"):
        out.append(f"<p>{escape(schema['description'])}</p>")
    props = schema.get("properties", {})
    if props:
        required = set(schema.get("required", []))
        out.append("<table><tr><th>field</th><th>type</th><th></th></tr>")
        for field, sub in props.items():
            mark = "" if field in required else " (optional)"
            out.append(
                f"<tr><td><code>{escape(field)}</code>{mark}</td><td>{_type_html(sub)}</td>"
                f"<td>{escape(sub.get('description', ''))}</td></tr>"
            )
        out.append("</table>")
    elif schema:
        out.append(f"<pre>{escape(json.dumps(schema, indent=1))}</pre>")
    out.append("</section>")
    return "\n".join(out)


def render_docs_page(schema: dict) -> str:
    """The HTML reference of an OpenAPI `schema`: each endpoint (method, path, summary, parameters,
    bodies, responses), then each component schema with its fields."""
    info = schema.get("info", {})
    title = escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    ops = [
        (path, method, op)
        for path, item in schema.get("paths", {}).items()
        for method, op in item.items()
        if method in METHODS
    ]
    nav = " ".join(f'<a href="#{escape(m + p)}">{escape(m.upper())} {escape(p)}</a>' for p, m, _ in ops)
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{title}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{title}</h1>",
        f'<p class="lead">{escape(info.get("description", ""))}</p>',
        '<p>The machine-readable schema: <a href="/openapi.json">/openapi.json</a>.</p>',
        f"<nav>{nav}</nav>",
        "<h2>Endpoints</h2>",
        *(_operation(p, m, op) for p, m, op in ops),
        "<h2>Schemas</h2>",
        *(_schema(n, s) for n, s in schema.get("components", {}).get("schemas", {}).items()),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
