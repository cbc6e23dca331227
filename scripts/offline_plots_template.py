"""Write .dvc/plots_offline.html: DVC's plots page with vega, vega-lite and vega-embed inline.

DVC's own page loads them from a CDN, so `dvc plots show` draws nothing offline. .dvc/config
points `plots.html_template` at this page instead. It carries the versions DVC's page loads
(dvc_render's VegaRenderer.SCRIPTS). To rebuild it (needs the npm registry once):

    cd "$(mktemp -d)" && npm pack vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2
    python scripts/offline_plots_template.py THAT_DIRECTORY
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

PACKAGES = (("vega", "5.20.2"), ("vega-lite", "5.2.0"), ("vega-embed", "6.18.2"))
OUT = Path(__file__).resolve().parents[1] / ".dvc/plots_offline.html"
PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!-- {credits}: BSD-3-Clause, University of Washington Interactive Data Lab.
         Written by scripts/offline_plots_template.py. -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def minified(directory: Path, name: str, version: str) -> str:
    with tarfile.open(directory / f"{name}-{version}.tgz") as archive:
        code = archive.extractfile(f"package/build/{name}.min.js").read().decode("utf-8")
    if "</script" in code or "{plot_divs}" in code:
        raise SystemExit(f"{name}.min.js cannot be inlined into the page")
    return f"    <script>{code}</script>"


def main(directory: str) -> None:
    scripts = "\n".join(minified(Path(directory), n, v) for n, v in PACKAGES)
    credits = ", ".join(f"{n} {v}" for n, v in PACKAGES)
    OUT.write_text(PAGE.format(credits=credits, scripts=scripts), encoding="utf-8")
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main(*sys.argv[1:])
