"""A notebook's answers, shown to people and kept for machines.

`show` displays a table as usual and attaches the same rows as JSON under a MIME type of
our own; `invoke analyze` collects those into `<notebook>.json` beside the HTML report,
so scripts and the tests read the numbers the notebook showed, not a re-computation.
Money stays exact (Decimal -> string); times are ISO 8601.
"""

from __future__ import annotations

import copy
import json
from typing import Any

MIME = "application/vnd.shopstream.answer+json"


def _plain(value: Any) -> Any:
    if hasattr(value, "isoformat"):  # datetime, pandas Timestamp
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)  # Decimal: exact


def as_rows(frame: Any) -> list[dict[str, Any]]:
    """The rows of a pandas DataFrame as the JSON an answer holds (Decimal as string, times ISO)."""
    records = frame.to_dict("records") if hasattr(frame, "to_dict") else list(frame)
    return json.loads(json.dumps(records, default=_plain))


def show(name: str, frame: Any) -> None:
    """Display `frame` (a pandas DataFrame) and attach its rows as the answer `name`."""
    from IPython.display import display

    display(frame)
    display({MIME: {"name": name, "rows": as_rows(frame)}}, raw=True)


def collect(notebook: Any) -> dict[str, list[dict[str, Any]]]:
    """The answers an executed notebook (nbformat node) attached, by name."""
    found: dict[str, list[dict[str, Any]]] = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            answer = output.get("data", {}).get(MIME)
            if answer is not None:
                found[answer["name"]] = answer["rows"]
    return found


def without_answers(notebook: Any) -> Any:
    """A copy for people (the HTML report): the tables and charts, not the JSON twins."""
    clean = copy.deepcopy(notebook)
    for cell in clean.cells:
        if "outputs" in cell:
            cell["outputs"] = [o for o in cell["outputs"] if MIME not in o.get("data", {})]
    return clean
