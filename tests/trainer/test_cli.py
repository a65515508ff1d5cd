"""`alignloop train` runs where only the trainer's packages are installed (a GPU training image
without the gateway's web stack): the command line imports nothing of the gateway's."""

import json
import subprocess
import sys

from synthetic import task
from tests.conftest import REPO

# Run the CLI with fastapi, starlette and uvicorn unimportable, as on an image without them.
WITHOUT_WEB = (
    "import sys\n"
    "for name in ('fastapi', 'starlette', 'uvicorn'):\n"
    "    sys.modules[name] = None\n"
    "from alignloop.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_the_train_command_runs_without_the_gateways_packages(tiny_model_dir, tmp_path):
    data = tmp_path / "demos.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in task.demonstrations(8, seed=0))
    )
    out = tmp_path / "sft"
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_WEB,
            "train",
            "sft",
            "--init",
            str(tiny_model_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--max-steps",
            "1",
            "--set",
            f"state_dir={tmp_path / 'state'}",
            "--set",
            "train.sft.batch_size=4",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
