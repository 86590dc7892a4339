"""The HTTP layer over `Engine`: routes, limits, status codes, the bearer token and the page (FastAPI; OpenAPI at /docs).

    POST /v1/predict         one image: the raw body, or a multipart field (any name)
    POST /v1/predict/batch   several images as multipart fields; one answer (or error) per file, in order
    GET  /v1/model           the model card
    GET  /v1/training-images/{row}/thumbnail   a neighbour's thumbnail, when the training images can be read
    GET  /healthz            liveness, queue and batching counters (no token needed)
    GET  /                   the page (plain HTML + JS, no build step)

With a token, every /v1 route wants `Authorization: Bearer TOKEN`; the page asks for it.
"""

import asyncio
import secrets
import time
from importlib import resources

from medprobe.core.errors import ServeError
from medprobe.serving.batcher import Busy
from medprobe.serving.engine import error_entry, with_total

RESEARCH_NOTE = "Research use only: not a medical device, not for clinical decisions."


def create_app(engine, token=None, audit=None):
    """The FastAPI app serving `engine` (one model, loaded once); `audit` (an AuditLog) records every answer.

    >>> uvicorn.run(create_app(Engine("models/derma")), host="127.0.0.1", port=8000)
    """
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="medprobe serve", version=engine.model.meta.get("medprobe", ""),
                  description=f"{engine.model_id}: {engine.model.task} over {', '.join(engine.model.label_names)}. {RESEARCH_NOTE}")
    app.state.engine = engine

    def authorised(request: Request):
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token: send the header 'Authorization: Bearer TOKEN'",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(ServeError)
    async def serve_error(request, error):
        return JSONResponse({"detail": str(error)}, status_code=error.status)

    @app.exception_handler(Busy)
    async def busy(request, error):
        return JSONResponse({"detail": f"busy: {error}; retry after {error.retry_after} s"}, status_code=503,
                            headers={"Retry-After": str(error.retry_after)})

    async def body_of(request):
        """The request body, refused with 413 past the limit (by its Content-Length, else while it streams in)."""
        limit = engine.options.max_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ServeError(f"request too large: {int(declared):,} bytes, the limit is {limit:,} (medprobe serve --max-bytes)", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ServeError(f"request too large: over the limit of {limit:,} bytes (medprobe serve --max-bytes)", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    async def uploads_of(request, most):
        """[(bytes, suffix)] from a multipart form (every file field, in order) or the raw body (one file)."""
        body = await body_of(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return [(body, _suffix(request.query_params.get("filename"), request.headers.get("content-type")))]

        async def replay():
            return {"type": "http.request", "body": body, "more_body": False}

        from starlette.exceptions import HTTPException as Refused
        from starlette.requests import Request as Replayed

        try:  # one more than allowed, so that the caller names the limit in its own words
            form = await Replayed(request.scope, replay).form(max_files=most + 1, max_fields=most + 1)
        except Refused as e:  # Starlette's own refusals (too many files or fields), passed on with their words
            raise ServeError(f"bad multipart form: {e.detail}", 400) from e
        except Exception as e:  # noqa: BLE001 -- a malformed form can make the parser raise nearly anything
            raise ServeError(f"bad multipart form ({type(e).__name__}: {e})", 400) from e
        files = [value for _, value in form.multi_items() if not isinstance(value, str)]
        if not files:
            raise ServeError("the multipart form has no file field: send the image as a file (e.g. curl -F file=@image.png)", 400)
        return [(await f.read(), _suffix(f.filename, f.content_type)) for f in files]

    def logged(answers):
        if audit is not None:
            for answer in answers:
                if "error" not in answer:
                    audit.append(answer)
        return answers

    async def answered(uploads):
        """Each upload's answer or ServeError, from the encoder thread; the event loop waits without holding a thread."""
        started = time.perf_counter()
        futures = engine.submit(uploads)  # Busy (503) at once when the queue is full
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
        return [r if isinstance(r, BaseException) else with_total(r, started) for r in results]

    @app.post("/v1/predict", dependencies=[Depends(authorised)], summary="Answer one image (PNG, JPEG, TIFF, DICOM, ...)")
    async def predict(request: Request):
        (data, suffix), *rest = await uploads_of(request, 1)
        if rest:
            raise ServeError("POST /v1/predict takes one image; send several to /v1/predict/batch", 400)
        (result,) = await answered([(data, suffix)])
        if isinstance(result, BaseException):
            raise result  # a ServeError becomes its status
        return (await run_in_threadpool(logged, [result]))[0]  # fsync'ed off the event loop

    @app.post("/v1/predict/batch", dependencies=[Depends(authorised)], summary="Answer several images (multipart, one field per file)")
    async def predict_batch(request: Request):
        uploads = await uploads_of(request, engine.options.max_files)
        if len(uploads) > engine.options.max_files:
            raise ServeError(f"{len(uploads)} files in one batch; the most is {engine.options.max_files} (medprobe serve --max-files)", 413)
        answers = [error_entry(r) if isinstance(r, BaseException) else r for r in await answered(uploads)]
        return {"answers": await run_in_threadpool(logged, answers)}

    @app.get("/v1/model", dependencies=[Depends(authorised)], summary="The model card")
    async def model_card():
        return engine.card()

    @app.get("/v1/training-images/{row}/thumbnail", dependencies=[Depends(authorised)], summary="A training image's thumbnail (PNG)")
    async def thumbnail(row: int):
        data = await run_in_threadpool(engine.thumbnail, row)
        if data is None:
            raise HTTPException(404, f"training image {row} cannot be read here (not files, moved, or changed since fitting)")
        return Response(data, media_type="image/png")

    @app.get("/healthz", summary="Liveness, queue and batching counters")
    async def healthz():
        return {**engine.health(), "token_required": token is not None}

    page = resources.files("medprobe.serving").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index():
        return page.replace("{{RESEARCH_NOTE}}", RESEARCH_NOTE)

    return app


def _suffix(filename, content_type):
    """The file suffix to decode an upload as: its name's, else its media type's (DICOM has no magic without its preamble)."""
    from pathlib import PurePath

    if filename and PurePath(filename).suffix:
        return PurePath(filename).suffix
    return {"application/dicom": ".dcm", "image/png": ".png", "image/jpeg": ".jpg", "image/tiff": ".tif"}.get((content_type or "").split(";")[0].strip(), "")
