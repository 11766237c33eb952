"""Why a record from Kafka is not a valid record, in words: the one rule for the reasons the
drain gives its dead letters and the streaming job its quarantine.

(The API answers a 422 with Pydantic's errors as they are, a list per field: a client reads
them; these reasons are for people reading a store.)
"""

from __future__ import annotations

from pydantic import ValidationError


def why_invalid(e: Exception) -> str:
    """Pydantic's field paths and messages ("record" for the whole record), the JSON parser's
    message, or the unexpected error."""
    if not isinstance(e, ValidationError):
        return f"unreadable: {type(e).__name__}: {e}"
    errors = e.errors()
    if errors[0]["type"] == "json_invalid":
        return "invalid JSON: " + errors[0]["msg"]
    return "breaks the contract: " + "; ".join(
        f"{'.'.join(map(str, err['loc'])) or 'record'}: {err['msg']}" for err in errors
    )
