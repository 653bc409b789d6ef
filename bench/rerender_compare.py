"""Re-render a compare report's markdown table and PNGs from its compare.json (no new runs).

.venv/bin/python bench/rerender_compare.py docs/reports/ping
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from loadtest.compare import _row, markdown_table, median_row, plot


def main() -> int:
    for folder in map(Path, sys.argv[1:]):
        document = json.loads((folder / "compare.json").read_text())
        points: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        for run in document["runs"]:
            points[(run["target"], run["connections"])].append(_row(run["target"], run["connections"], run["report"]))
        rows = [median_row(point) for point in points.values()]
        kind = document["runs"][0]["report"]["scenario"]["kind"]
        server, generator = document["server_cpus"], document["generator_cpus"]
        pinned = f"server CPUs {server}, generator CPUs {generator}" if server else "not pinned"
        repeat = document.get("repeat", 1)
        title = f"{document['scenario']}: {document['duration_s']:g} s per run, median of {repeat}; {pinned}"
        images = plot(rows, kind, folder, title)
        text = (folder / "compare.md").read_text()
        head = text.split("\n| target |", 1)[0].rstrip("\n")
        body = "\n".join([head, "", markdown_table(rows, kind), *(f"![{name}]({name})" for name in images), ""])
        (folder / "compare.md").write_text(body)
        print(f"re-rendered {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
