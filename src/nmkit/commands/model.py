"""`nmkit model list|register|promote|rollback|shadow`: the server's model registry."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    p = subparsers.add_parser("model", help="model registry of the DICOM AI server (versions, promotion gate, shadow, rollback)")
    p.add_argument("--config", required=True, help="server YAML configuration (its registry and instances are used)")
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    s = sub.add_parser("list", help="registered versions (current and shadow marked)")
    s.add_argument("instance", nargs="?")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("register", help="copy a model bundle into the registry as a new version")
    s.add_argument("instance")
    s.add_argument("bundle", help="model bundle folder, or the name of a shipped bundle (e.g. thyroid-unet2d)")
    s.add_argument("--version", default=None, help="version label (default: the bundle's own)")
    s.add_argument("--note", default="")
    s = sub.add_parser("promote", help="make a version current (regression gate on the instance's validation set)")
    s.add_argument("instance")
    s.add_argument("version")
    s.add_argument("--force", action="store_true", help="skip the regression gate")
    s = sub.add_parser("history", help="registrations, promotions, refusals (with their reasons) and rollbacks")
    s.add_argument("instance")
    s = sub.add_parser("rollback", help="return to the version current before the last promotion")
    s.add_argument("instance")
    s = sub.add_parser("shadow", help="run a version in shadow mode (results kept, never sent); --off to stop")
    s.add_argument("instance")
    s.add_argument("version", nargs="?")
    s.add_argument("--off", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..serve.config import load_config
    from ..serve.registry import Registry

    config = load_config(args.config)
    registry = Registry(config.registry_path)

    def model_of(name: str) -> str:
        try:
            return config.instance(name).model_name
        except KeyError as exc:
            raise InputError(args.config, str(exc.args[0])) from exc

    if args.action == "list":
        rows = registry.versions(model_of(args.instance) if args.instance else None)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                flag = "current" if r["current"] else ("shadow" if r["shadow"] else "")
                metric = "" if r["metric"] is None else f"dice={r['metric']:.4f}"
                print(f"{r['model']:20s} {r['version']:12s} {flag:8s} {metric}")
        return 0
    if args.action == "register":
        from ..segment.bundle import resolve_bundle  # a folder, or a shipped bundle's name (as `nmkit predict` takes)

        try:
            bundle = resolve_bundle(args.bundle)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback
            raise InputError(args.bundle, f"not a model bundle ({type(exc).__name__}: {exc})") from None
        version = registry.register(model_of(args.instance), bundle, args.version, args.note)
        print(f"registered {model_of(args.instance)} {version}")
        return 0
    if args.action == "promote":
        inst = config.instance(args.instance) if args.instance in [i.name for i in config.instances] else None
        out = registry.promote(model_of(args.instance), args.version, validation=inst.validation if inst else None,
                               tolerance=inst.gate_tolerance if inst else 0.02, force=args.force, split=inst.validation_split if inst else None,
                               head=inst.head if inst else None, min_dice=inst.gate_min_dice if inst else 0.5)
        print(json.dumps(out, default=str))
        return 0
    if args.action == "history":
        rows = registry.history(model_of(args.instance))
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if args.action == "rollback":
        print(f"{model_of(args.instance)} now at {registry.rollback(model_of(args.instance))}")
        return 0
    if args.action == "shadow":
        registry.set_shadow(model_of(args.instance), None if args.off else args.version)
        print(f"shadow of {model_of(args.instance)}: {None if args.off else args.version}")
        return 0
    return 2
