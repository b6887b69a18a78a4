"""The smallest FastAPI app, for the RSS baseline: ``uvicorn bench.min_app:app``."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}
