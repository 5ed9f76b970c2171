"""File names as users see them: safe on a terminal line and in JSON, raw bytes recoverable.

POSIX names are bytes; Python hands the ones that are not valid UTF-8 to us as lone surrogates
(``bad\\xffname.png`` → ``'bad\\udcffname.png'``), which no UTF-8 stream or JSON parser accepts,
and a name may hold ESC sequences or a newline that would rewrite or split a terminal line.
"""

from __future__ import annotations

import base64
import os
import unicodedata
from typing import Any

# What a report adds next to a name that is not valid UTF-8: the name's bytes, base64-encoded.
RAW_SUFFIX = "_raw"


def is_utf8(name: str) -> bool:
    """False when ``name`` came from bytes that are not valid UTF-8 (it holds lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(name: str | os.PathLike) -> str:
    """``name`` for one line of text: undecodable bytes as ``\\xNN``, control and format characters
    (ESC, newline, bidi overrides, …) as ``\\xNN``/``\\uNNNN``; everything else unchanged."""
    text = os.fsdecode(name)
    if not is_utf8(text):
        try:
            data = text.encode("utf-8", "surrogateescape")  # the bytes the name came from
        except UnicodeEncodeError:  # a surrogate that is no escaped byte
            data = text.encode("utf-8", "backslashreplace")
        text = data.decode("utf-8", "backslashreplace")
    return "".join(_escaped(ch) if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp") else ch for ch in text)


def _escaped(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def raw_base64(name: str | os.PathLike) -> str | None:
    """The name's bytes as base64 when it is not valid UTF-8 (so :func:`shown` lost information), else None."""
    text = os.fsdecode(name)
    if is_utf8(text):
        return None
    try:
        return base64.b64encode(os.fsencode(text)).decode("ascii")
    except UnicodeEncodeError:  # not from a file name's bytes
        return None


def json_safe(value: Any) -> Any:
    """``value`` with every string that is not valid UTF-8 replaced by :func:`shown` (recursively),
    so that ``json.dumps`` gives a document every parser reads."""
    if isinstance(value, str):
        return value if is_utf8(value) else shown(value)
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def with_raw_names(record: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``record`` made JSON-safe, plus ``<key>_raw`` (base64 bytes) for each named key whose value
    is not valid UTF-8: ``os.fsdecode(base64.b64decode(record["input_raw"]))`` is the exact path."""
    extra = {f"{key}{RAW_SUFFIX}": raw for key in keys
             if isinstance(record.get(key), str) and (raw := raw_base64(record[key])) is not None}
    return {**json_safe(record), **extra}
