"""HTTP load from wrk (Debian's `wrk`), for endpoints cheap enough that a Python client would be
what is measured: on this 2-core machine httpx's async client tops out near 630 requests/s on
`GET /healthz`, which wrk drives at about 5,800/s (benchmarks/feedback.py, `--client`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def available() -> bool:
    """Whether wrk is installed (deploy/install-bench-tools.sh installs it)."""
    return shutil.which("wrk") is not None


def _lua(key: str, bodies: list[dict] | None) -> str:
    """A wrk script that sends the key and, given bodies, POSTs them in turn as JSON (else GETs)."""
    script = f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    if bodies is None:
        return script
    quoted = ",\n".join(json.dumps(json.dumps(b)) for b in bodies)
    return (
        script
        + f"""wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local bodies = {{
{quoted}
}}
local i = 0
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
"""
    )


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text).groups()
    return float(value) * _UNITS[unit]


def post(url: str, bodies: list[dict] | None, key: str, connections: int, seconds: float) -> dict:
    """POST `bodies` in turn (None: GET) over `connections` keep-alive connections for `seconds`
    (one wrk thread: the other core stays with the server); returns 2xx responses/s and latency
    percentiles."""
    with tempfile.TemporaryDirectory(prefix="alignloop-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_lua(key, bodies))
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    total = int(re.search(r"(\d+) requests in ([0-9.]+)(\w+)", out).group(1))
    wall_s = _ms("".join(re.search(r"requests in ([0-9.]+)(\w+),", out).groups())) / 1000
    failed = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = re.search(r"Socket errors: (.*)", out)
    percentiles = {p: _ms(v) for p, v in re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M)}
    return {
        "events_per_s": (total - failed) / wall_s,
        "p50_ms": percentiles["50"],
        "p99_ms": percentiles["99"],
        "accepted": total - failed,
        "events": total,
        "socket_errors": errors.group(1) if errors else "",
    }
