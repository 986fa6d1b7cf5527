"""deploy/local: the README's second command is what CI runs (ADR 14), and the
stack script's parts fit together (one file per component in stack.d/).

No network: only --help and static reads of the scripts.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LOCAL = REPO / "deploy" / "local"
STACK = LOCAL / "stack"


def _commands(script: Path) -> list[str]:
    """The script's lines that are neither comments nor blank."""
    return [line.strip() for line in script.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    assert _commands(REPO / ".ci" / "run") == [
        "set -euo pipefail",
        'cd "$(dirname "$0")/.."',
        'export CI="${CI:-true}"',
        "exec deploy/local/test",
    ]
    readme = (REPO / "README.md").read_text()
    block = readme.split("## The two commands", 1)[1].split("```", 2)[1]
    assert [line.split("#")[0].strip() for line in block.splitlines() if line.strip()][1:] == [
        "bash deploy/local/demo", "bash deploy/local/test"]


def test_the_test_command_says_what_it_runs() -> None:
    result = subprocess.run([str(LOCAL / "test"), "--help"], capture_output=True, text=True,
                            timeout=30, check=True)
    for step in ("pip install -e '.[test]'", "ruff check services tests bench", "mypy",
                 "schemas/providers/check_examples.py", "deploy/local/stack up",
                 "hookstream bench --quick", "hookstream faults --short", "python3 -m pytest",
                 "--quick"):
        assert step in result.stdout, step
    script = (LOCAL / "test").read_text()
    # What --help lists is what runs, in that order, pytest last.
    runs = re.findall(r"^\s*run (?:\"\$\{sudo\[@\]\}\" )?(.+?)(?: \\)?$", script, re.M)
    assert [r for r in runs if "apt-get" not in r and "DEBIAN_FRONTEND" not in r] == [
        "python3 -m pip install -q --disable-pip-version-check -e '.[test]'",
        "python3 -m ruff check services tests bench",
        "python3 -m mypy",
        "python3 schemas/providers/check_examples.py",
        "deploy/local/stack up",
        "hookstream bench --quick",
        "hookstream faults --short",
        'python3 -m pytest ${pytest_args[@]+"${pytest_args[@]}"}',
    ]


def test_every_stack_component_has_one_file_with_its_four_functions() -> None:
    entry = (LOCAL / "stack").read_text()
    table = re.search(r"declare -A COMPONENTS=\((.*)\)", entry)
    assert table is not None
    components = dict(re.findall(r"\[(\w+)\]=(\w+)", table.group(1)))
    assert components == {"kafka": "kafka", "postgres": "pg", "alertmanager": "am",
                          "prometheus": "prom"}
    sourced = re.findall(r'^source "\$SCRIPT_DIR/stack\.d/(\w+)\.sh"$', entry, re.M)
    assert sourced == ["common", *components]
    for name, prefix in components.items():
        text = (LOCAL / "stack.d" / f"{name}.sh").read_text()
        for verb in ("up", "down", "status", "purge"):
            assert re.search(rf"^{prefix}_{verb}\(\) \{{", text, re.M), f"{name}: {prefix}_{verb}"


def test_stack_help_is_its_manual() -> None:
    result = subprocess.run([str(LOCAL / "stack"), "help"], capture_output=True, text=True,
                            timeout=30, check=True)
    assert result.stdout.startswith("deploy/local/stack: a real single-node Apache Kafka")
    for command in ("up [COMPONENT...]", "down [--purge] [COMPONENT...]", "purge [COMPONENT...]",
                    "status [COMPONENT...]", "env ", "help, -h, --help"):
        assert command in result.stdout, command
    assert result.stdout.rstrip().endswith("`env` and `status` print to stdout.")


def test_stack_up_reuses_a_stranger_only_when_allowed(tmp_path: Path) -> None:
    """A server the stack did not start answers on Alertmanager's port: `up` reuses it,
    unless HOOKSTREAM_STACK_REUSE=0 (the fault suite's restarts), then it fails and
    says why."""
    import http.server
    import threading

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = str(server.server_address[1])
        base = {**os.environ, "HOOKSTREAM_STACK_DIR": str(tmp_path), "ALERTMANAGER_PORT": port}
        allowed = subprocess.run([str(STACK), "up", "alertmanager"], env=base, text=True,
                                 capture_output=True, timeout=60)
        assert allowed.returncode == 0, allowed.stderr
        assert "reusing" in allowed.stderr
        refused = subprocess.run([str(STACK), "up", "alertmanager"], text=True,
                                 env={**base, "HOOKSTREAM_STACK_REUSE": "0"},
                                 capture_output=True, timeout=60)
        assert refused.returncode != 0
        assert "HOOKSTREAM_STACK_REUSE=0 forbids reusing it" in refused.stderr, refused.stderr
    finally:
        server.shutdown()
        server.server_close()
