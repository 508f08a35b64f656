"""Printing a JSON report and optionally saving it: what `inspector` sub-commands and benchmarks end with."""
from __future__ import annotations

import json
from pathlib import Path


def emit_json(report: dict, json_out: str | Path | None = None, *, sort_keys: bool = False) -> str:
    """Print ``report`` as indented JSON on stdout; also write it to ``json_out`` when given. Returns the text."""
    text = json.dumps(report, indent=2, sort_keys=sort_keys)
    print(text, flush=True)
    if json_out:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return text
