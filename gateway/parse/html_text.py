"""HTML bodies to text, for messages whose only text is HTML.

inscriptis renders the layout (tables, lists, line breaks) well; above
``HTML2TEXT_MAX`` (it takes ~0.6 s/MB) and when it fails, a linear-time tag
stripper does.  Not named ``html``: that would read like the standard library's.
"""

from __future__ import annotations

import html as html_module
import re

from inscriptis import get_text as _inscriptis_text

from gateway.parse.limits import HTML2TEXT_MAX

# linear-time fallback: every pattern stops at the next "<"
_HTML_DROP = re.compile(r"<(?:script|style|title)\b[^<>]*>[^<]*|<!--[^<>]*-->", re.IGNORECASE)
_HTML_BREAK = re.compile(r"<(?:br|/?p|/?div|/?tr|/?li|/?h[1-6]|/?table|/?blockquote)\b[^<>]*>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^<>]*>")
_BLANK_LINES = re.compile(r"\n[ \t]*(?:\n[ \t]*)+")


def _strip_html(html: str) -> str:
    text = _HTML_DROP.sub("", html)
    text = _HTML_BREAK.sub("\n", text)
    text = _HTML_TAG.sub("", text)
    text = html_module.unescape(text)
    return _BLANK_LINES.sub("\n\n", text).strip() + "\n"


def html_to_text(html: str) -> str:
    """Text of an HTML body: inscriptis, or a cheap tag stripper for huge input."""
    if not html.strip():
        return ""
    if len(html) <= HTML2TEXT_MAX:
        try:
            text = _inscriptis_text(html)
            if text.strip():
                return text
        except Exception:
            pass  # fall through: lxml / inscriptis refused the document
    return _strip_html(html)
