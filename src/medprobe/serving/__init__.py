"""`medprobe serve`: one saved model behind an HTTP API and a page (FastAPI + uvicorn, the `serve` extra).

`engine` answers one image (decode, embed through the micro-batcher, probe, decision, neighbours, OOD) and knows
nothing of HTTP; `app` is the FastAPI layer over it (limits, status codes, token, page); `audit` is the append-only log.
"""
