"""The web playground at `/` of `tinyllm serve` (docs/playground.md): static files shipped in the
package (static/), no build step and nothing fetched from elsewhere; the page talks to this
server's own API and reads the sampling limits from its /openapi.json."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

FILES = Path(__file__).with_name("static")


def install(app: FastAPI) -> None:
    """The page at `/`, its script and style under /playground/; none of it in the API's
    OpenAPI document."""

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(FILES / "index.html")

    app.mount("/playground", StaticFiles(directory=FILES), name="playground")
