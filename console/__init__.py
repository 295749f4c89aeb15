"""The officer console: a small single-page app served by the API process itself.

No build step and nothing from the internet: plain ES modules, one stylesheet and a vendored
Leaflet (console/static/vendor/leaflet, BSD-2-Clause, its LICENSE beside it). The pages call the
same `/api/v1` endpoints as any integrator, authenticated by an HttpOnly session cookie
(api/deps.py `CONSOLE_COOKIE`) that page scripts cannot read; every request that changes
something carries `X-Requested-With: ccs-console` (CSRF), and the pages run under a strict
Content-Security-Policy (api/headers.py `console_csp`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from api.authz import declared
from store.settings import get_settings

STATIC = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    """The console's one page; the views are routed in the browser (#/duty, #/alerts/12, ...)."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


config_router = APIRouter(prefix="/console", tags=["console"])


@config_router.get("/config", **declared("public", "anyone"))
def console_config() -> dict[str, Any]:
    """What the console needs before sign-in: the map's tile source and its coordinate system."""
    s = get_settings()
    return {"tile_url": s.console_tile_url, "tile_crs": s.console_tile_crs,
            "tile_subdomains": s.console_tile_subdomains or "abc",
            "tile_attribution": s.console_tile_attribution, "languages": ["zh", "en"]}


def tile_origin(url: str, subdomains: str = "abc") -> str:
    """The origins a tile URL template loads from, space-separated, for the
    Content-Security-Policy: one scheme://host[:port] per subdomain when the template has `{s}`
    (each character of `subdomains` is one, as in Leaflet). Listed one by one: a CSP wildcard
    may only stand for a whole leftmost label, so `webrd0*.is.autonavi.com` would be ignored
    by the browser and every AMap tile blocked."""
    if not url:
        return ""
    if "{s}" not in url:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"
    origins = []
    for sub in subdomains or "abc":
        parts = urlsplit(url.replace("{s}", sub))
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in origins:
            origins.append(origin)
    return " ".join(origins)


def mount(app: FastAPI) -> None:
    """Serve the console at / and its assets at /static."""
    app.include_router(router)
    app.include_router(config_router, prefix="/api/v1")
    app.mount("/static", StaticFiles(directory=STATIC), name="console-static")
