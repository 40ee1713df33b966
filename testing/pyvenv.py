"""The test tools' Python environments: a venv under target/tools made from a hash-pinned
requirements.txt (`pip install --require-hashes --only-binary=:all:`), remade when that file
changes, one maker at a time (a file lock), and a script re-run inside it. Standard library only:
it runs on the system's python3 before the venv exists.
"""

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / "target" / "tools"


@contextlib.contextmanager
def install_lock(name: str):
    """Holds target/tools/.NAME.lock: one process installs NAME while the others wait."""
    TOOLS.mkdir(parents=True, exist_ok=True)
    with open(TOOLS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _stamp(requirements: Path) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


def _ready(venv: Path, requirements: Path) -> bool:
    stamp = venv / ".requirements.sha256"
    return (venv / "bin" / "python").is_file() and stamp.is_file() and stamp.read_text() == _stamp(requirements)


def ensure(venv: Path, requirements: Path, what: str, log) -> Path:
    """The python of `venv`, made from `requirements` (`what` names its packages in the log line)
    if it is missing or was made from another version of that file."""
    if not _ready(venv, requirements):
        with install_lock(venv.name):
            if not _ready(venv, requirements):
                started = time.monotonic()
                log(f"creating {venv} with {what} from PyPI ({requirements.name}, hash-pinned)")
                shutil.rmtree(venv, ignore_errors=True)
                # The base interpreter, also when this one is a broken venv's.
                base = getattr(sys, "_base_executable", sys.executable)
                subprocess.run([base, "-m", "venv", str(venv)], check=True, stdin=subprocess.DEVNULL)
                subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
                                "--quiet", "--no-input", "--require-hashes", "--only-binary=:all:",
                                "-r", str(requirements)], check=True, stdin=subprocess.DEVNULL)
                (venv / ".requirements.sha256").write_text(_stamp(requirements))
                log(f"venv ready in {time.monotonic() - started:.1f} s")
    return venv / "bin" / "python"


def run_inside(venv: Path, requirements: Path, what: str, log, script: str) -> None:
    """Re-runs `script` (with this process's arguments) on the venv's python, unless this is it."""
    if Path(sys.prefix).resolve() != venv.resolve():
        python = ensure(venv, requirements, what, log)
        os.execv(python, [str(python), str(Path(script).resolve()), *sys.argv[1:]])
