"""Starting and stopping the servers a benchmark compares."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from core.processes import free_port, stop_group


def machine() -> str:
    """One line describing the machine and the software versions."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch
    import vllm

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, vllm {vllm.__version__}"
    )


def log_progress() -> None:
    """INFO logging for the benchmark's own progress, without a line per HTTP request: httpx logs
    each one at INFO, and writing those from the load generator takes CPU from the servers measured."""
    logging.basicConfig(level=logging.INFO)
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


def rotated(names: list[str], round_: int) -> list[str]:
    """The order to run the systems in a round: rotated by one each round, so that each takes every
    place in turn (with two, they alternate) and no system always runs first or last."""
    k = round_ % len(names)
    return names[k:] + names[:k]


def launch(
    cmd: list[str], log: Path, url: str, ready_path: str, key: str, cwd: Path | None = None
) -> subprocess.Popen:
    """Start a server process (in `cwd`: another checkout's code) and wait until ready_path answers 200."""
    env = dict(
        os.environ, VLLM_CPU_KVCACHE_SPACE=os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), PYTHONUNBUFFERED="1"
    )
    if cwd is not None:  # `python -m alignloop` must import that checkout, not the installed one
        env["PYTHONPATH"] = str(cwd)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=cwd
        )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited ({proc.returncode}):\n{log.read_text(errors='replace')[-3000:]}"
            )
        try:
            if (
                httpx.get(url + ready_path, timeout=2, headers={"Authorization": f"Bearer {key}"}).status_code
                == 200
            ):
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop(proc)
    raise RuntimeError(f"server not ready after 600s; see {log}")


def launch_gateway(
    work: Path,
    model_dir: Path,
    key: str,
    extra_toml: str = "",
    gateway_toml: str = "",
    code: Path | None = None,
    admin_key: str | None = None,
) -> tuple[subprocess.Popen, str]:
    """`alignloop serve` on the given model with one unthrottled key (and `admin_key`, an admin
    credential, if given); returns (process, url). extra_toml holds other sections; gateway_toml
    lines go into [gateway]; `code` is another checkout to run instead of this one (see checkout())."""
    port = free_port()
    config = work / "gateway.toml"
    config.write_text(
        f'state_dir = "{work / "state"}"\nbase_model = "{model_dir}"\n{extra_toml}\n'
        f'[gateway]\nport = {port}\nlog_level = "warning"\n{gateway_toml}\n'
        f'api_keys = [{{ key = "{key}", name = "bench", requests_per_minute = 100000000, max_concurrent_requests = 100000, generated_tokens_per_minute = 1000000000000 }}'
        + (f', {{ key = "{admin_key}", name = "ops", role = "admin" }}' if admin_key else "")
        + "]\n"
    )
    url = f"http://127.0.0.1:{port}"
    proc = launch(
        [sys.executable, "-m", "alignloop", "serve", "--config", str(config)],
        work / "gateway.log",
        url,
        "/readyz",
        key,
        cwd=code,
    )
    return proc, url


def checkout(ref: str, where: Path) -> Path:
    """The code of git ref `ref` in a detached worktree at `where` (for a before/after comparison
    in one run; remove it with remove_checkout)."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(where), ref],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    )
    return where


def remove_checkout(where: Path) -> None:
    """Remove a worktree made by checkout()."""
    repo = Path(__file__).resolve().parents[1]
    subprocess.run(
        ["git", "worktree", "remove", "--force", str(where)], cwd=repo, capture_output=True, text=True
    )


def stop(proc: subprocess.Popen) -> None:
    """Stop a server and everything it started."""
    stop_group(proc)
