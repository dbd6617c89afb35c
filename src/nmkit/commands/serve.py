"""`nmkit serve --config server.yaml`: run the headless DICOM AI server until stopped (SIGTERM/Ctrl-C)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run the headless DICOM AI server (DICOM node, job queue, model registry)")
    p.add_argument("--config", required=True, help="server YAML configuration (see examples/server.yaml)")
    p.add_argument("--port", type=int, default=None, help="override the DICOM port of the configuration")
    p.add_argument("--check", action="store_true", help="validate the configuration, create its folders and exit")
    p.set_defaults(func=run)


def run(args) -> int:
    import logging

    from ..errors import InputError
    from ..serve.config import load_config, prepare_folders
    from ..serve.logs import configure
    from ..serve.server import Server

    config = load_config(args.config)
    if args.port is not None:
        if not 0 <= args.port <= 65535:
            raise InputError(None, f"--port must be 0-65535, got {args.port}")
        config.port = args.port
    prepare_folders(config)
    if args.check:
        _check_channels(config)
        print(f"{args.config}: configuration valid ({len(config.instances)} instance(s), {len(config.destinations)} destination(s))")
        return 0
    configure(config.log_file, logging.DEBUG if getattr(args, "verbose", 0) >= 2 else logging.INFO, config.log_max_mb, config.log_backups)
    try:
        server = Server(config).start()
    except OSError as exc:  # e.g. the port is taken
        raise InputError(args.config, f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
    print(f"nmkit serve: AE {config.ae_title} listening on {config.host}:{server.port}"
          + (f", status on http://{config.http_host}:{server.http_port}/status" if server.http_port else ""), flush=True)
    server.serve_forever()
    return 0


def _check_channels(config) -> None:
    """The channel keys of each instance against its current model in the registry (multi-channel models, e.g. PET+CT):
    every problem in one error naming the configuration file."""
    from ..errors import InputError
    from ..serve.companions import model_channels
    from ..serve.config import channel_problems
    from ..serve.registry import Registry

    registry = Registry(config.registry_path)
    problems: list[str] = []
    for inst in config.instances:
        try:
            current = registry.current(inst.model_name)
        except InputError:
            continue
        if current.path is None:
            continue
        names = model_channels(current.path)
        problems += channel_problems(inst, names or ["image"], where=f" {inst.model_name} {current.version}")
    if problems:
        raise InputError(config.source, problems[0] if len(problems) == 1 else f"{len(problems)} problems: " + " | ".join(problems))
