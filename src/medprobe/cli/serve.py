"""`medprobe serve MODEL_DIR`: one saved model behind an HTTP API and a page; `medprobe serve-log DIR`: its audit trail as a table."""

import os

from medprobe.encoders.runtimes import RUNTIMES

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_commands(commands):
    serve = commands.add_parser("serve", help="serve a saved probe over HTTP: a JSON API (/docs) and a page (/) (pip install 'medprobe[serve]')")
    serve.set_defaults(func=cmd_serve)
    serve.add_argument("model", metavar="MODEL_DIR", help="folder written by `medprobe fit --save`")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; any other needs --token)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one, printed at start)")
    serve.add_argument("--token", help="bearer token every /v1 request must carry (default $MEDPROBE_TOKEN); required off loopback")
    serve.add_argument("--log", metavar="DIR", help="append every answer (time, image SHA-256, model id, the JSON; never pixels) to DIR/answers.jsonl")
    serve.add_argument("--runtime", choices=RUNTIMES, default="auto", help="embedding runtime (default auto: fp32 ONNX Runtime)")
    serve.add_argument("--weights", help="local weights file or model folder, instead of those recorded in the model")
    serve.add_argument("--cache-dir", help="where exported ONNX graphs are kept (default $MEDPROBE_CACHE, else the user cache)")
    serve.add_argument("--max-batch", type=int, default=32, help="most images per encoder call (default 32)")
    serve.add_argument("--queue", type=int, default=64, help="most images waiting for the encoder; beyond it requests get 503 (default 64)")
    serve.add_argument("--max-bytes", type=int, default=64 * 2**20, help="largest request body in bytes; beyond it 413 (default 64 MiB)")
    serve.add_argument("--max-files", type=int, default=32, help="most images in one /v1/predict/batch request (default 32)")
    serve.add_argument("--neighbours", type=int, default=5, help="similar training images per answer (default 5)")
    serve.add_argument("--decision", metavar="RULE", help="the saved operating point answers are decided at (default the first saved)")

    table = commands.add_parser("serve-log", help="the audit trail of `medprobe serve --log DIR` as a CSV table")
    table.set_defaults(func=cmd_serve_log)
    table.add_argument("folder", metavar="DIR", help="the folder given to `medprobe serve --log`")
    table.add_argument("--csv", default="-", metavar="FILE", help="CSV file to write (default: standard output)")


def serve_options(args):
    from medprobe.serving.engine import ServeOptions

    return ServeOptions(args.runtime, args.weights, args.cache_dir, args.max_batch, args.queue, args.neighbours, args.decision,
                        args.max_bytes, args.max_files)


def cmd_serve(args):
    import socket

    from medprobe.core.errors import ServeError

    token = args.token or os.environ.get("MEDPROBE_TOKEN") or None
    if args.host not in LOOPBACK and token is None:
        raise ServeError(f"refusing to serve on {args.host} without a bearer token: anyone who can reach it could use the model; "
                         "pass --token or set MEDPROBE_TOKEN (or bind 127.0.0.1)")
    for name in ("max_batch", "queue", "max_bytes", "max_files", "neighbours"):
        if getattr(args, name) < 1:
            raise ServeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    try:
        import uvicorn
    except ImportError as e:
        raise ServeError("medprobe serve needs FastAPI and uvicorn: pip install 'medprobe[serve]'") from e
    from medprobe.serving.app import create_app
    from medprobe.serving.audit import AuditLog
    from medprobe.serving.engine import Engine

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))  # before the model loads: a taken port fails at once
    except OSError as e:
        raise ServeError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); choose another --port (0 picks a free one)") from e
    audit = AuditLog(args.log) if args.log else None
    engine = Engine(args.model, serve_options(args))
    sock.listen(2048)  # from here connections wait in the backlog until uvicorn accepts them, so the printed URL works at once
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    print(f"serving {engine.model_id} on http://{shown}:{port}/ (API docs /docs){' with a bearer token' if token else ''}", flush=True)
    # Connections beyond a few times the queue are refused by uvicorn (a plain 503) before their bodies are read, so memory
    # stays bounded (at most that many bodies of --max-bytes); the queue's own 503 (with Retry-After) comes first under load.
    config = uvicorn.Config(create_app(engine, token, audit), log_level="warning", limit_concurrency=4 * args.queue + 64, timeout_keep_alive=30)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        engine.close()
        if audit is not None:
            audit.close()


def cmd_serve_log(args):
    import sys

    from medprobe.core.files import atomic_write_text
    from medprobe.serving.audit import log_table, read_log

    text = log_table(read_log(args.folder))
    if args.csv == "-":
        sys.stdout.write(text)
    else:
        atomic_write_text(args.csv, text)
