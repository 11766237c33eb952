"""What the ingestion routes take as a JSON body, and a clear 4xx for anything else.

FastAPI would read a body with `json.loads`, which accepts NaN, Infinity and 1e400 as floats
that no JSON encoder writes back (so the 422 that echoed them failed with a 500), lets
the last of two duplicate keys win unseen, and answers invalid UTF-8 or deep nesting
with a bare "There was an error parsing the body". A JSON body is parsed here instead,
once, by jiter: the Rust parser inside pydantic-core, used as its own package because
only that exposes duplicate-key detection. What it takes is I-JSON (RFC 7493) as far as
a client can get it wrong:

- UTF-8 (a leading BOM is skipped), no lone surrogate escapes;
- no NaN / Infinity, no number beyond a 64-bit float (about ±1.8e308);
- no key twice in one object: which value wins is ambiguous, and dropping one silently
  is what the contracts forbid;
- at most `max_json_depth` nested arrays and objects.

Breaking one of these is malformed JSON (400); a Content-Type that is not JSON gets
415. Both before validation, so nothing is published and every value a 422 echoes
can be written back as JSON. A body without a Content-Type is read as JSON.
"""

from __future__ import annotations

import sys
from typing import Any

import jiter

BOM = b"\xef\xbb\xbf"
FLOAT_MAX = sys.float_info.max


class MalformedJson(ValueError):
    """The body is not JSON the API reads; the message says why."""


def is_json(content_type: str) -> bool:
    """`application/json` or `application/*+json`, any parameters.

    Never JSON where FastAPI decides otherwise (it parses the header with `email.message`,
    ten times slower): FastAPI would hand such a body to validation as bytes.
    """
    maintype, _, subtype = content_type.partition(";")[0].strip().lower().partition("/")
    return maintype == "application" and "/" not in subtype and (subtype == "json" or subtype.endswith("+json"))


def parse_json(body: bytes, max_depth: int) -> Any:
    """The value of a JSON body, or MalformedJson saying what is wrong with it."""
    body = body.removeprefix(BOM)
    try:
        value = jiter.from_json(body, allow_inf_nan=False, catch_duplicate_keys=True)
    except ValueError as e:
        raise MalformedJson(_why(body, str(e), max_depth)) from None
    _check(value, max_depth)
    return value


def _why(body: bytes, error: str, max_depth: int) -> str:
    """jiter's reason, said more plainly where it is terse (only on the error path)."""
    try:
        body.decode()
    except UnicodeDecodeError as e:
        return f"the body is not valid UTF-8 ({e.reason} at byte {e.start})"
    if error.startswith("recursion limit exceeded"):  # jiter stops at 200 levels, whatever max_depth says
        return f"the JSON nests arrays and objects deeper than {max_depth} levels"
    try:
        jiter.from_json(body, allow_inf_nan=True, catch_duplicate_keys=True)
    except ValueError:
        return f"the body is not valid JSON: {error}"
    return f"NaN, Infinity and -Infinity are not JSON numbers ({error})"


def _check(value: Any, max_depth: int) -> None:
    """Depth and number range, which jiter does not bound (1e400 parses as inf)."""
    level, depth = [value], 0
    while level:
        nested: list[Any] = []
        containers = False
        for node in level:
            kind = type(node)
            if kind is dict or kind is list:
                nested.extend(node.values() if kind is dict else node)
                containers = True
            elif (kind is float or kind is int) and not -FLOAT_MAX <= node <= FLOAT_MAX:
                raise MalformedJson(f"a number in the body is beyond the range of a 64-bit float (±{FLOAT_MAX:.1e})")
        if containers:
            depth += 1
        if depth > max_depth:
            raise MalformedJson(f"the JSON nests arrays and objects deeper than {max_depth} levels")
        level = nested
