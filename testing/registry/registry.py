#!/usr/bin/env python3
"""A real OCI registry and a real third-party pusher on loopback, for the `oci://` source tests.

    registry.py serve --dir DIR --mode plain|tls|basic|token [--token-ttl SECONDS]
    registry.py push --url URL --repo REPO --tag TAG --file F.wasm --layout LAYOUT
                     [--ca CA] [--username U --password P]
    registry.py delete --url URL --repo REPO --reference TAG_OR_DIGEST
                       [--ca CA] [--username U --password P]

What this script owns (host/tests/util/registry.rs drives it):

- The registry: Debian's `docker-registry` package (the CNCF distribution registry 2.8),
  unpacked without root (`apt-get download`, `dpkg -x`) into target/tools/docker-registry on
  first use, and run by `serve` on 127.0.0.1 with its storage under DIR. `serve` prints one JSON
  line when the registry answers `/v2/`, then stays in the foreground until it is killed; the
  registry dies with it (it is in this process's process group, and has a parent-death signal).
  Modes: `plain` (anonymous HTTP), `tls` (HTTPS, a CA made here), `basic` (htpasswd, bcrypt),
  `token` (the distribution spec's Bearer flow, with the token server below).
- The token server (`token` mode): a small threaded HTTP server in this process that checks Basic
  credentials (the user, or `oauth2accesstoken` with the access token as password, as Artifact
  Registry accepts the metadata server's token), signs RS256 JWTs with a certificate the registry
  trusts (`rootcertbundle`; the certificate travels in the JWT's `x5c` header), and counts the
  token requests (`GET /requests`). Tokens live `--token-ttl` seconds (`expires_in`, `exp`); the
  registry accepts them for about 60 s past `exp` (its leeway).
- The pusher: the `oras` Python SDK (pinned with every dependency in requirements.txt, installed
  into the venv target/tools/registry-venv on first use; this script re-executes itself there).
  `push` uploads blobs and manifests with it in the layouts the tests need, `delete` deletes a
  manifest through it.

Certificates and JWT signatures come from the `openssl` command line tool.
"""

import argparse
import base64
import ctypes
import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import pyvenv  # noqa: E402  (testing/pyvenv.py)
from pyvenv import install_lock  # noqa: E402

WORKSPACE = HERE.parent.parent
TOOLS = WORKSPACE / "target" / "tools"
VENV = TOOLS / "registry-venv"
REQUIREMENTS = HERE / "requirements.txt"
REGISTRY_ROOT = TOOLS / "docker-registry"
REGISTRY_BINARY = REGISTRY_ROOT / "usr" / "bin" / "docker-registry"
# The Debian package and the series it must be (the .deb itself comes signed through apt).
REGISTRY_PACKAGE = "docker-registry"
REGISTRY_SERIES = "2.8."

MODES = ("plain", "tls", "basic", "token")
LAYOUTS = ("cncf", "legacy", "index", "image", "two-layers")
USERNAME = "wasm-echo"
ACCESS_TOKEN_USER = "oauth2accesstoken"
TOKEN_SERVICE = "wasm-echo-test-registry"
TOKEN_ISSUER = "wasm-echo-test-token-server"
READY_TIMEOUT = 30.0

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT_MANIFESTS = ", ".join([
    OCI_MANIFEST,
    OCI_INDEX,
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])
WASM_CONFIG_V0 = "application/vnd.wasm.config.v0+json"
WASM_LAYER = "application/wasm"
LEGACY_CONFIG = "application/vnd.wasm.config.v1+json"
LEGACY_LAYER = "application/vnd.wasm.content.layer.v1+wasm"
IMAGE_CONFIG = "application/vnd.oci.image.config.v1+json"
IMAGE_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def log(message: str) -> None:
    print(f"[registry.py] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Installs (first use; a lock file per install so parallel tests do not race)
# ---------------------------------------------------------------------------------------------


def registry_runs() -> bool:
    if not REGISTRY_BINARY.is_file():
        return False
    out = subprocess.run([str(REGISTRY_BINARY), "--version"], capture_output=True, text=True,
                         stdin=subprocess.DEVNULL)
    return out.returncode == 0 and f" {REGISTRY_SERIES}" in out.stdout


def ensure_registry() -> Path:
    """The registry binary, unpacked from Debian's signed package on first use (no root needed)."""
    if registry_runs():
        return REGISTRY_BINARY
    with install_lock("docker-registry"):
        if registry_runs():
            return REGISTRY_BINARY
        started = time.monotonic()
        log(f"installing Debian's {REGISTRY_PACKAGE} ({REGISTRY_SERIES}x) into {REGISTRY_ROOT}")
        with tempfile.TemporaryDirectory(dir=TOOLS, prefix=".docker-registry-") as tmp:
            deb = download_deb(Path(tmp))
            version = run(["dpkg-deb", "--field", str(deb), "Version"]).strip()
            if not version.startswith(REGISTRY_SERIES):
                sys.exit(f"apt offers {REGISTRY_PACKAGE} {version}, not the {REGISTRY_SERIES}x series "
                         "the tests are written for")
            unpacked = Path(tmp) / "root"
            run(["dpkg-deb", "-x", str(deb), str(unpacked)])
            shutil.rmtree(REGISTRY_ROOT, ignore_errors=True)
            os.replace(unpacked, REGISTRY_ROOT)
        if not registry_runs():
            sys.exit(f"{REGISTRY_BINARY} does not run or report {REGISTRY_SERIES}x after the install")
        log(f"{REGISTRY_PACKAGE} {version} installed in {time.monotonic() - started:.1f} s")
    return REGISTRY_BINARY


def download_deb(directory: Path) -> Path:
    """`apt-get download docker-registry` into `directory`; as root, `apt-get update` once if apt
    does not know the package yet (a fresh machine's empty lists)."""
    command = ["apt-get", "download", "--quiet", REGISTRY_PACKAGE]
    first = subprocess.run(command, cwd=directory, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if first.returncode != 0:
        if os.geteuid() != 0:
            sys.exit(f"`apt-get download {REGISTRY_PACKAGE}` failed (run `apt-get update` as root first?):\n"
                     f"{first.stdout}{first.stderr}")
        log(f"`apt-get download` failed ({first.stderr.strip()}); running `apt-get update` once")
        run(["apt-get", "update", "--quiet"])
        run(command, cwd=directory)
    debs = list(directory.glob(f"{REGISTRY_PACKAGE}_*.deb"))
    if len(debs) != 1:
        sys.exit(f"expected one .deb from `apt-get download {REGISTRY_PACKAGE}`, got {debs}")
    return debs[0]


def run(command: list, cwd=None, input_bytes=None) -> str:
    """Runs `command`; exits with its output if it fails; returns its stdout (text)."""
    out = subprocess.run(command, cwd=cwd, capture_output=True, input=input_bytes,
                         stdin=None if input_bytes is not None else subprocess.DEVNULL)
    if out.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed ({out.returncode}):\n"
                 f"{out.stdout.decode(errors='replace')}{out.stderr.decode(errors='replace')}")
    return out.stdout.decode(errors="replace")


# ---------------------------------------------------------------------------------------------
# Keys and certificates (openssl)
# ---------------------------------------------------------------------------------------------


def make_tls_ca_and_server(directory: Path) -> tuple:
    """A CA (EC P-256) and a server certificate it signs for 127.0.0.1 and localhost (IP and DNS
    SANs). Returns (ca.pem, server.pem, server.key)."""
    ca_key, ca_pem = directory / "ca.key", directory / "ca.pem"
    key, csr, pem = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca_pem, "-days", "2",
         "-subj", "/CN=wasm-echo test registry CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    run(["openssl", "req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"])
    extensions = directory / "server.ext"
    extensions.write_text("basicConstraints=critical,CA:FALSE\n"
                          "keyUsage=critical,digitalSignature\n"
                          "extendedKeyUsage=serverAuth\n"
                          "subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial",
         "-days", "2", "-out", pem, "-extfile", extensions])
    return ca_pem, pem, key


def make_signing_cert(directory: Path) -> tuple:
    """The token server's self-signed RSA certificate (the registry's `rootcertbundle`) and key."""
    key, pem = directory / "token-signer.key", directory / "token-signer.pem"
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", pem,
         "-days", "2", "-subj", "/CN=wasm-echo test token signer"])
    return pem, key


def pem_to_der_b64(pem: Path) -> str:
    body = "".join(line for line in pem.read_text().splitlines() if not line.startswith("-----"))
    return base64.b64encode(base64.b64decode(body)).decode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ---------------------------------------------------------------------------------------------
# The token server (token mode)
# ---------------------------------------------------------------------------------------------


class TokenServer(ThreadingHTTPServer):
    """Issues registry JWTs for Basic credentials; counts the requests to `/token`."""

    daemon_threads = True

    def __init__(self, password: str, access_token: str, signing_pem: Path, signing_key: Path, ttl: int):
        super().__init__(("127.0.0.1", 0), TokenHandler)
        self.credentials = {USERNAME: password, ACCESS_TOKEN_USER: access_token}
        self.x5c = [pem_to_der_b64(signing_pem)]
        self.signing_key = signing_key
        self.ttl = ttl
        self.lock = threading.Lock()
        self.requests = 0
        self.issued = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def count(self, field: str) -> None:
        with self.lock:
            setattr(self, field, getattr(self, field) + 1)

    def sign(self, claims: dict) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": self.x5c}
        signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.signing_key)],
                                   input=signing_input.encode(), capture_output=True, check=True).stdout
        return f"{signing_input}.{b64url(signature)}"


class TokenHandler(BaseHTTPRequestHandler):
    server: TokenServer

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/token":
            self.server.count("requests")
            self.issue(urllib.parse.parse_qs(url.query))
        elif url.path == "/requests":
            with self.server.lock:
                self.reply(200, {"token_requests": self.server.requests, "tokens_issued": self.server.issued})
        else:
            self.reply(404, {"error": "not found"})

    def issue(self, query: dict) -> None:
        user = self.authenticated_user()
        if user is None:
            self.reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad or missing credentials"}]},
                       {"WWW-Authenticate": 'Basic realm="wasm-echo test token server"'})
            return
        if query.get("service") != [TOKEN_SERVICE]:
            self.reply(400, {"errors": [{"code": "DENIED", "message": f"service must be {TOKEN_SERVICE}"}]})
            return
        access = [grant(scope) for scopes in query.get("scope", []) for scope in scopes.split()]
        now = int(time.time())
        claims = {"iss": TOKEN_ISSUER, "sub": user, "aud": TOKEN_SERVICE, "exp": now + self.server.ttl,
                  "nbf": now - 10, "iat": now, "jti": secrets.token_hex(16),
                  "access": [a for a in access if a is not None]}
        token = self.server.sign(claims)
        self.server.count("issued")
        issued_at = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.reply(200, {"token": token, "access_token": token, "expires_in": self.server.ttl,
                         "issued_at": issued_at})

    def authenticated_user(self):
        header = self.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        expected = self.server.credentials.get(user)
        return user if expected is not None and secrets.compare_digest(expected, password) else None

    def reply(self, status: int, body: dict, headers=None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:
        log(f"token server: {format % args}")


def grant(scope: str):
    """The access a valid user gets for one requested scope: what it asked for of pull, push and
    delete on a repository; nothing for other resource types."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    if kind != "repository" or not name:
        return None
    allowed = [a for a in actions.split(",") if a in ("pull", "push", "delete")]
    return {"type": "repository", "name": name, "actions": allowed}


# ---------------------------------------------------------------------------------------------
# serve
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_parent_death_signal() -> None:
    """In the registry child before exec: SIGKILL it when this process dies (prctl PDEATHSIG)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def mode_setup(mode: str, directory: Path, token_ttl: int) -> tuple:
    """(the registry config's `http.tls` and `auth` parts, the JSON fields, the token server)."""
    info = {"ca": None, "username": None, "password": None, "access_token": None, "token_requests_url": None}
    tls, auth, token_server = None, None, None
    if mode == "tls":
        ca, cert, key = make_tls_ca_and_server(directory)
        tls = {"certificate": str(cert), "key": str(key)}
        info["ca"] = str(ca)
    elif mode == "basic":
        import bcrypt  # from the venv
        password = secrets.token_urlsafe(16)
        htpasswd = directory / "htpasswd"
        htpasswd.write_text(f"{USERNAME}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()}\n")
        auth = {"htpasswd": {"realm": "wasm-echo test registry", "path": str(htpasswd)}}
        info.update(username=USERNAME, password=password)
    elif mode == "token":
        password, access_token = secrets.token_urlsafe(16), "ya29.test-" + secrets.token_urlsafe(24)
        pem, key = make_signing_cert(directory)
        token_server = TokenServer(password, access_token, pem, key, token_ttl)
        auth = {"token": {"realm": f"{token_server.url}/token", "service": TOKEN_SERVICE,
                          "issuer": TOKEN_ISSUER, "rootcertbundle": str(pem)}}
        info.update(username=USERNAME, password=password, access_token=access_token,
                    token_requests_url=f"{token_server.url}/requests")
    return tls, auth, info, token_server


def registry_config(port: int, data: Path, tls, auth) -> dict:
    http = {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16),
            "headers": {"X-Content-Type-Options": ["nosniff"]}}
    if tls:
        http["tls"] = tls
    config = {"version": "0.1",
              "log": {"level": "info", "formatter": "text"},
              "storage": {"filesystem": {"rootdirectory": str(data)}, "delete": {"enabled": True},
                          "maintenance": {"uploadpurging": {"enabled": False}}},
              "http": http}
    if auth:
        config["auth"] = auth
    return config


def answers_v2(url: str, ca) -> bool:
    """Whether `GET {url}/v2/` gets an HTTP answer from the registry (200, or 401 when it wants
    credentials)."""
    context = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(f"{url}/v2/", timeout=2, context=context) as response:
            return response.status == 200
    except urllib.error.HTTPError as error:
        return error.code == 401
    except (OSError, ssl.SSLError):
        return False


def start_registry(binary: Path, directory: Path, tls, auth, scheme: str, ca):
    """Starts the registry on a free port and waits until it answers; tries another port when it
    exits first (a lost race for the port). Returns (process, port)."""
    failures = []
    for attempt in range(3):
        port = free_port()
        config_path = directory / "config.yml"  # JSON is YAML
        config_path.write_text(json.dumps(registry_config(port, directory / "data", tls, auth), indent=2))
        log_path = directory / "registry.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen([str(binary), "serve", str(config_path)], stdin=subprocess.DEVNULL,
                                       stdout=log_file, stderr=subprocess.STDOUT,
                                       preexec_fn=set_parent_death_signal)
        deadline = time.monotonic() + READY_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            if answers_v2(f"{scheme}://127.0.0.1:{port}", ca):
                return process, port
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
            sys.exit(f"the registry did not answer /v2/ within {READY_TIMEOUT} s; its log:\n{log_path.read_text()}")
        failures.append(f"attempt {attempt + 1} on port {port}: exited {process.returncode}")
    sys.exit(f"the registry exited before answering three times ({failures}); its log:\n"
             f"{(directory / 'registry.log').read_text()}")


def serve(args) -> None:
    binary = ensure_registry()
    directory = Path(args.dir).resolve()
    (directory / "data").mkdir(parents=True, exist_ok=True)
    tls, auth, info, token_server = mode_setup(args.mode, directory, args.token_ttl)
    scheme = "https" if args.mode == "tls" else "http"
    # The token server's socket is bound (its URL is in the registry config) but its thread starts
    # only after the registry was forked: no thread runs while `preexec_fn` does.
    process, port = start_registry(binary, directory, tls, auth, scheme, info["ca"])

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if token_server:
            threading.Thread(target=token_server.serve_forever, daemon=True).start()
        ready = {"url": f"{scheme}://127.0.0.1:{port}", "host": f"127.0.0.1:{port}", "mode": args.mode,
                 **info, "pid": process.pid, "log": str(directory / "registry.log")}
        print(json.dumps(ready), flush=True)
        code = process.wait()
        sys.exit(f"the registry exited ({code}); its log is {directory / 'registry.log'}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------------------
# push and delete (the oras SDK)
# ---------------------------------------------------------------------------------------------


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Target:
    """An oras client for one repository of the registry at `url`, authenticated the way the
    registry's `/v2/` challenge asks: none, Basic (oras's `basic` backend) or Bearer (oras's
    `token` backend, which gets tokens from the realm with the Basic credentials)."""

    def __init__(self, args):
        import oras.provider
        import requests
        url = urllib.parse.urlsplit(args.url)
        self.host, self.repo = url.netloc, args.repo
        self.base = f"{url.scheme}://{self.host}"
        verify = args.ca or True
        challenge = requests.get(f"{self.base}/v2/", verify=verify, timeout=30).headers.get("WWW-Authenticate", "")
        self.scheme = challenge.split(" ", 1)[0].lower()
        self.challenge = challenge
        self.client = oras.provider.Registry(hostname=self.host, insecure=url.scheme == "http", tls_verify=verify,
                                             auth_backend="basic" if self.scheme == "basic" else "token")
        if args.username:
            self.client.auth.set_basic_auth(args.username, args.password)

    def ref(self, tag: str) -> str:
        return f"{self.host}/{self.repo}:{tag}"

    def manifest_url(self, reference: str) -> str:
        return f"{self.base}/v2/{self.repo}/manifests/{reference}"

    def authorize(self, actions: str) -> None:
        """In Bearer mode, gets one token for `actions` on the repository up front: oras keeps the
        first token it gets (for the first request's scope, `pull`) and does not ask again when a
        later request needs `push` or `delete` (the registry answers 401 insufficient_scope)."""
        if self.scheme != "bearer":
            return
        import oras.auth.utils
        header = oras.auth.utils.parse_auth_header(self.challenge)
        header.scope = f"repository:{self.repo}:{actions}"
        token = self.client.auth.request_token(header)
        if not token:
            sys.exit(f"the token server at {header.realm} refused a token for {header.scope}")
        self.client.auth.set_token_auth(token)

    def request(self, method: str, url: str, **kwargs):
        return self.client.do_request(url, method, **kwargs)


def wasm_config(layers: list) -> bytes:
    """A CNCF Wasm OCI artifact config (`application/vnd.wasm.config.v0+json`) like `wkg` writes
    for a wasip2 component; `component` is a fixed subset (the echo's world), not parsed from the
    layer."""
    config = {
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "author": None,
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [sha256_digest(layer) for layer in layers],
        "component": {"exports": ["wasi:http/incoming-handler@0.2.0"], "imports": [], "target": None},
    }
    return json.dumps(config).encode()


def with_custom_section(wasm: bytes, name: str, payload: bytes) -> bytes:
    """`wasm` with a custom section appended: a different blob that is still valid wasm."""
    def leb128(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)
    body = leb128(len(name)) + name.encode() + payload
    return wasm + b"\x00" + leb128(len(body)) + body


def image_layer(wasm: bytes) -> tuple:
    """A container image layer holding the wasm at /app/component.wasm: (tar.gz, tar digest)."""
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("app/component.wasm")
        info.size, info.mode, info.mtime = len(wasm), 0o644, 0
        tar.addfile(info, io.BytesIO(wasm))
    raw = tar_bytes.getvalue()
    return gzip.compress(raw, mtime=0), sha256_digest(raw)


def oras_push(target: Target, tag: str, tmp: Path, layers: list, config: bytes, config_type: str):
    """oras's own `push`: uploads each (file name, bytes, media type) layer and the config as blobs,
    then the OCI image manifest it builds (layers titled with their file names). Returns the
    registry's answer to the manifest upload."""
    files = []
    for name, data, media_type in layers:
        path = tmp / name
        path.write_bytes(data)
        files.append(f"{path}:{media_type}")
    config_path = tmp / "config.json"
    config_path.write_bytes(config)
    response = target.client.push(target=target.ref(tag), files=files,
                                  manifest_config=f"{config_path}:{config_type}",
                                  disable_path_validation=True, quiet=True)
    if response.status_code != 201:
        sys.exit(f"manifest upload answered {response.status_code}: {response.text}")
    return response


def pushed(target: Target, tag: str, response, layer: bytes, media_type: str, **extra) -> dict:
    return {"digest": response.headers["Docker-Content-Digest"], "reference": target.ref(tag),
            "layer_digest": sha256_digest(layer), "media_type": media_type, **extra}


def push_cncf(target: Target, tag: str, wasm: bytes, tmp: Path) -> dict:
    response = oras_push(target, tag, tmp, [("component.wasm", wasm, WASM_LAYER)], wasm_config([wasm]),
                         WASM_CONFIG_V0)
    return pushed(target, tag, response, wasm, OCI_MANIFEST)


def push_legacy(target: Target, tag: str, wasm: bytes, tmp: Path) -> dict:
    response = oras_push(target, tag, tmp, [("module.wasm", wasm, LEGACY_LAYER)], b"{}", LEGACY_CONFIG)
    return pushed(target, tag, response, wasm, OCI_MANIFEST)


def push_image(target: Target, tag: str, wasm: bytes, tmp: Path) -> dict:
    layer, diff_id = image_layer(wasm)
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Entrypoint": ["/app/component.wasm"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    response = oras_push(target, tag, tmp, [("layer.tar.gz", layer, IMAGE_LAYER)], config, IMAGE_CONFIG)
    return pushed(target, tag, response, layer, OCI_MANIFEST)


def push_two_layers(target: Target, tag: str, wasm: bytes, tmp: Path) -> dict:
    second = with_custom_section(wasm, "wasm-echo-test", b"second layer")
    layers = [("component.wasm", wasm, WASM_LAYER), ("component-2.wasm", second, WASM_LAYER)]
    response = oras_push(target, tag, tmp, layers, wasm_config([wasm, second]), WASM_CONFIG_V0)
    return pushed(target, tag, response, wasm, OCI_MANIFEST, second_layer_digest=sha256_digest(second))


def push_index(target: Target, tag: str, wasm: bytes, tmp: Path) -> dict:
    """The oras SDK has no image-index push: the two platform manifests go up with oras's `push`
    (through the scratch tag `TAG-parts`, so that TAG moves once, from what it named before
    straight to the index: a host polling TAG never sees a platform manifest there), the index
    JSON is built here and uploaded with the oras client's request method (its auth, the
    registry's real manifest PUT)."""
    entries = []
    for push, platform in ((push_image, {"architecture": "amd64", "os": "linux"}),
                           (push_cncf, {"architecture": "wasm", "os": "wasip2"})):
        child = push(target, f"{tag}-parts", wasm, Path(tempfile.mkdtemp(dir=tmp)))
        body = target.request("GET", target.manifest_url(child["digest"]), headers={"Accept": OCI_MANIFEST})
        if body.status_code != 200 or sha256_digest(body.content) != child["digest"]:
            sys.exit(f"reading back manifest {child['digest']}: {body.status_code} {body.text}")
        entries.append({"mediaType": OCI_MANIFEST, "digest": child["digest"], "size": len(body.content),
                        "platform": platform})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    response = target.request("PUT", target.manifest_url(tag), data=index, headers={"Content-Type": OCI_INDEX})
    if response.status_code != 201:
        sys.exit(f"index upload answered {response.status_code}: {response.text}")
    if response.headers["Docker-Content-Digest"] != sha256_digest(index):
        sys.exit(f"the registry reports {response.headers['Docker-Content-Digest']} for an index of "
                 f"digest {sha256_digest(index)}")
    return pushed(target, tag, response, wasm, OCI_INDEX, wasm_manifest_digest=entries[1]["digest"],
                  image_manifest_digest=entries[0]["digest"])


PUSHERS = {"cncf": push_cncf, "legacy": push_legacy, "index": push_index, "image": push_image,
           "two-layers": push_two_layers}


def push(args) -> None:
    wasm = Path(args.file).read_bytes()
    with tempfile.TemporaryDirectory(prefix="registry-push-") as tmp:
        os.environ["HOME"] = tmp  # oras reads ~/.docker/config.json: none of the caller's
        target = Target(args)
        target.authorize("pull,push")
        print(json.dumps(PUSHERS[args.layout](target, args.tag, wasm, Path(tmp))), flush=True)


def delete(args) -> None:
    """Deletes the manifest a tag or digest names (by digest: what distribution 2.8 deletes; its
    tags go with it)."""
    with tempfile.TemporaryDirectory(prefix="registry-delete-") as tmp:
        os.environ["HOME"] = tmp
        target = Target(args)
        target.authorize("pull,delete")
        digest = args.reference
        if not digest.startswith("sha256:"):
            head = target.request("HEAD", target.manifest_url(digest), headers={"Accept": ACCEPT_MANIFESTS})
            if head.status_code != 200:
                sys.exit(f"HEAD {target.manifest_url(digest)} answered {head.status_code}")
            digest = head.headers["Docker-Content-Digest"]
        response = target.request("DELETE", target.manifest_url(digest))
        if response.status_code != 202:
            sys.exit(f"DELETE {target.manifest_url(digest)} answered {response.status_code}: {response.text}")
        print(json.dumps({"deleted": digest, "reference": args.reference}), flush=True)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="run a registry until killed")
    serve_parser.add_argument("--dir", required=True, help="storage, config, certificates and log")
    serve_parser.add_argument("--mode", required=True, choices=MODES)
    serve_parser.add_argument("--token-ttl", type=int, default=300, help="token lifetime (token mode), seconds")
    for name, extra in (("push", "upload a wasm file in a layout"), ("delete", "delete a manifest")):
        sub = commands.add_parser(name, help=extra)
        sub.add_argument("--url", required=True)
        sub.add_argument("--repo", required=True)
        sub.add_argument("--ca")
        sub.add_argument("--username")
        sub.add_argument("--password")
        if name == "push":
            sub.add_argument("--tag", required=True)
            sub.add_argument("--file", required=True)
            sub.add_argument("--layout", required=True, choices=LAYOUTS)
        else:
            sub.add_argument("--reference", required=True, help="a tag or a sha256: digest")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args(sys.argv[1:])
    pyvenv.run_inside(VENV, REQUIREMENTS, "oras and bcrypt", log, __file__)
    {"serve": serve, "push": push, "delete": delete}[args.command](args)


if __name__ == "__main__":
    main()
