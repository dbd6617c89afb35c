"""`nmkit serve --config server.yaml`: run the headless DICOM AI server until stopped (SIGTERM/Ctrl-C)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the headless DICOM AI server (DICOM node, job queue, model registry)")
    p.add_argument("--config", required=True, help="server YAML configuration (see examples/server.yaml)")
    p.add_argument("--port", type=int, default=None, help="override the DICOM port of the configuration")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging

    from ..serve.config import load_config
    from ..serve.logs import configure
    from ..serve.server import Server

    config = load_config(args.config)
    if args.port is not None:
        config.port = args.port
    configure(config.log_file, logging.DEBUG if getattr(args, "verbose", 0) >= 2 else logging.INFO)
    server = Server(config).start()
    print(f"nmkit serve: AE {config.ae_title} listening on {config.host}:{server.port}"
          + (f", status on http://{config.http_host}:{server.http_port}/status" if server.http_port else ""), flush=True)
    server.serve_forever()
    return 0
