"""The `alignloop` command: build the base model, manage the registry, serve."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from pydantic import ValidationError

from alignloop.bootstrap import ensure_base_policy
from core.config import Settings, load_settings
from core.paths import UnsafeStateFile
from registry.hub import ModelUnavailable

log = logging.getLogger("alignloop")


def _cmd_init_model(settings: Settings, args) -> None:
    if args.out:
        from synthetic.tiny_model import build_tiny_model

        build_tiny_model(Path(args.out), settings.tiny_model)
    else:
        print(ensure_base_policy(settings))


def _cmd_serve(settings: Settings, args) -> None:
    import uvicorn

    from gateway.app import create_app

    version = ensure_base_policy(settings)
    log.info(
        "serving %s on http://%s:%d (keys: %s)",
        version,
        settings.gateway.host,
        settings.gateway.port,
        "configured" if settings.gateway.api_keys else settings.paths.api_keys,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.gateway.host,
        port=settings.gateway.port,
        log_level=settings.gateway.log_level,
        timeout_graceful_shutdown=10,
        timeout_keep_alive=settings.gateway.keep_alive_s,
        proxy_headers=True,
        forwarded_allow_ips=settings.gateway.trusted_proxies,
    )


def _cmd_registry(settings: Settings, args) -> None:
    from registry.store import PolicyRegistry

    registry = PolicyRegistry(settings.paths.registry)
    if args.action == "list":
        current = registry.current()
        for name in registry.names():
            mark = "*" if name == current else " "
            print(mark, json.dumps(asdict(registry.info(name))))
    elif args.action == "publish":
        print(
            registry.publish(
                Path(args.path),
                source=args.source or f"import:{args.path}",
                parent=registry.current(),
                make_current=args.make_current,
            )
        )
    elif args.action == "set-current":
        registry.set_current(args.version)
        print(args.version)


def _cmd_train(settings: Settings, args) -> None:
    from trainer import cli

    cli.run(settings, args)


def _cmd_demo(settings: Settings, args) -> None:
    from alignloop import demo

    common = [a for item in args.overrides for a in ("--set", item)]
    if args.config:
        common = ["--config", str(args.config), *common]
    common += [
        "--set",
        f"state_dir={settings.state_dir}",
        "--set",
        f"gateway.port={settings.gateway.port}",
        "--set",
        f"gateway.host={settings.gateway.host}",
    ]
    sys.exit(demo.run(settings, common, args.rounds, args.users, args.minutes))


def _cmd_experiment(settings: Settings, args) -> None:
    from alignloop import demo, experiment

    # The demo's training settings by default, so that the runner measures what `make run` does;
    # --set overrides them.
    settings = load_settings(
        args.config, [*demo.DEMO_SETTINGS, *args.overrides, f"state_dir={settings.state_dir}"]
    )
    plan = experiment.Plan(
        seeds=args.seeds,
        rounds=args.rounds,
        rankings_per_prompt=args.rankings_per_prompt,
        k=args.k,
        out=args.out or settings.state_dir / "experiment",
        pool=args.pool,
    )
    page, _ = experiment.run(settings, plan)
    print(page.read_text())


def _cmd_report(settings: Settings, args) -> None:
    from alignloop import report

    page = report.build(settings, args.out or settings.state_dir / "report")
    print(page.read_text())
    print(f"report: {page} (plots beside it)")


def _cmd_trainer(settings: Settings, args) -> None:
    from trainer.lease import LeaderLease
    from trainer.service import TrainerService

    # Before joining the consumer group: a waiting trainer must not take partitions from the leader.
    lease = LeaderLease(settings.paths.registry / "trainer.lease")
    try:
        lease.acquire()
        ensure_base_policy(settings)  # a trainer started before any gateway finds its base too
        service = TrainerService(settings)
        try:
            service.run_forever()
        finally:
            service.close()
    except KeyboardInterrupt:
        pass
    finally:
        lease.release()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML file with settings (see alignloop/config.py)")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set gateway.port=9000 (repeatable)",
    )
    common.add_argument("--state-dir", type=Path, help="where the registry, keys and data live")
    common.add_argument(
        "--base-model",
        help="the base policy (v0001) when the registry is empty: a Hugging Face checkpoint folder or "
        "model id (e.g. Qwen/Qwen2.5-0.5B-Instruct); default: the tiny model built locally",
    )

    parser = argparse.ArgumentParser(prog="alignloop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "init-model", parents=[common], help="build the tiny base model into the registry (or --out)"
    )
    p.add_argument("--out", help="write the model to this directory instead of the registry")
    p.set_defaults(run=_cmd_init_model)

    p = sub.add_parser("serve", parents=[common], help="run the OpenAI-compatible gateway")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(run=_cmd_serve)

    p = sub.add_parser("train", parents=[common], help="train a stage: sft, rm or ppo (torchrun works too)")
    from trainer.cli import add_arguments

    add_arguments(p)
    p.set_defaults(run=_cmd_train)

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="the whole loop on embedded defaults: gateway, trainer, simulated users",
    )
    p.add_argument("--rounds", type=int, default=3, help="stop after this many promoted versions")
    p.add_argument("--minutes", type=float, default=30.0, help="... or after this long")
    p.add_argument("--users", type=int, default=4)
    p.add_argument("--port", type=int)
    p.set_defaults(run=_cmd_demo)

    p = sub.add_parser(
        "experiment",
        parents=[common],
        help="the trainer's rounds on simulated raters (no gateway, no broker): a learning curve per seed",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--rankings-per-prompt",
        type=int,
        default=6,
        help="per round and users' prompt (7 prompts: 42 rankings)",
    )
    p.add_argument("--k", type=int, default=4, help="candidates per ranking")
    p.add_argument(
        "--pool",
        type=int,
        default=1,
        help="candidate sets drawn per set ranked: above 1, the last reward model's least certain sets "
        "are ranked (a share at random), as the labelling queue picks items",
    )
    p.add_argument("--out", type=Path, help="where the table and plot go (default: <state_dir>/experiment)")
    p.set_defaults(run=_cmd_experiment)

    p = sub.add_parser(
        "trainer",
        parents=[common],
        help="the online trainer: consume feedback, retrain RM + PPO-ptx, gate, promote",
    )
    p.set_defaults(run=_cmd_trainer)

    p = sub.add_parser(
        "report",
        parents=[common],
        help="the paper's figures in miniature: win rates vs SFT, alignment tax, RM accuracy",
    )
    p.add_argument("--out", type=Path, help="where report.md and its plots go (default: <state_dir>/report)")
    p.set_defaults(run=_cmd_report)

    p = sub.add_parser("registry", parents=[common], help="list, publish or select policy versions")
    rs = p.add_subparsers(dest="action", required=True)
    rs.add_parser("list")
    pub = rs.add_parser("publish")
    pub.add_argument("path")
    pub.add_argument("--source")
    pub.add_argument("--make-current", action="store_true")
    cur = rs.add_parser("set-current")
    cur.add_argument("version")
    p.set_defaults(run=_cmd_registry)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `alignloop` console script."""
    args = build_parser().parse_args(argv)
    overrides = list(args.overrides)
    for flag, key in (
        ("state_dir", "state_dir"),
        ("host", "gateway.host"),
        ("port", "gateway.port"),
        ("base_model", "base_model"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config, overrides)
    except ValidationError as exc:
        # Name each bad setting and why, never its value: values include API keys and passwords.
        lines = [
            f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False)
        ]
        print("alignloop: bad configuration:\n" + "\n".join(lines), file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"alignloop: bad configuration: {exc}", file=sys.stderr)
        return 2
    try:
        args.run(settings, args)
    except (UnsafeStateFile, ModelUnavailable) as exc:
        print(f"alignloop: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
