"""What `asgiserve run` checks before the server listens, so that a mistake is one line
and exit code 2, not a traceback after "replicas ready" or a server that exits 3."""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
import ssl
from pathlib import Path

from asgiserve.config import BACKEND_ENV, HTTPOptions
from asgiserve.extras import install_hint

BACKENDS = ("inprocess", "subprocess", "ray")


class PreflightError(ValueError):
    """A setting that cannot work; the message says what to do instead."""


def check_backend(name: str | None, where: str) -> None:
    """`name` (from `where`: a flag, the environment, a config file) can run here."""
    if name is None:
        return
    if name not in BACKENDS:
        raise PreflightError(f"{where} names the backend {name!r}; choose one of {BACKENDS}")
    if name == "ray" and not installed("ray"):
        raise PreflightError(f"{where} asks for the ray backend, but Ray is not installed: "
                             f"{install_hint('ray')}")  # fmt: skip


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules: hidden
        return False


def check_environment() -> None:
    check_backend(os.environ.get(BACKEND_ENV) or None, f"${BACKEND_ENV}")


def check_port(http: HTTPOptions) -> None:
    """Bind the address for a moment (as the server will, with SO_REUSEADDR)."""
    if http.port == 0 or http.uds is not None:
        return
    family = socket.AF_INET6 if ":" in http.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((http.host, http.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PreflightError(
                    f"port {http.port} on {http.host} is already in use (another server?); "
                    "stop it or choose another port with --port"
                ) from None
            where = f"{http.host}:{http.port}"
            raise PreflightError(f"cannot listen on {where}: {exc.strerror}") from None


def check_tls(http: HTTPOptions) -> None:
    """The key and the certificate go together, exist and load: a mistake is one line here,
    not a traceback from the server once it binds."""
    key, cert = http.ssl_keyfile, http.ssl_certfile
    if key is None and cert is None:
        return
    if key is None or cert is None:
        given, missing = ("ssl_keyfile", "ssl_certfile") if cert is None else ("ssl_certfile",
                                                                              "ssl_keyfile")
        raise PreflightError(
            f"{flag(given)} needs {flag(missing)} too: give the key and the certificate, or "
            "neither"
        )
    for name, path in (("ssl_keyfile", key), ("ssl_certfile", cert)):
        if not os.path.isfile(path):
            raise PreflightError(f"{flag(name)} {path!r}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:  # a password callback: an encrypted key is an error, not a prompt on the terminal
        context.load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        why = f" ({exc.reason})" if exc.reason else ""
        raise PreflightError(
            f"cannot serve HTTPS with the key {key!r} and the certificate {cert!r}: they "
            f"are not an unencrypted PEM private key and its PEM certificate{why}"
        ) from None


def flag(field: str) -> str:
    """An `HTTPOptions` field as the command's flag and the config file's key name it."""
    return f"--{field.replace('_', '-')} (http_options.{field})"


def check_target_form(target: str, app_dir: str) -> None:
    """A file path where a module name belongs (`../examples/quickstart.py:app`)."""
    module, _, attribute = target.partition(":")
    if not (module.endswith(".py") or "/" in module or os.sep in module or module.startswith(".")):
        return
    attribute = attribute or "app"
    file = Path(app_dir, module if module.endswith(".py") else module.lstrip(".") + ".py")
    hint = f"give a module and an attribute, as in 'main:{attribute}'"
    if file.is_file():
        folder = os.path.relpath(file.resolve().parent)
        hint += (
            f"; for that file, run from its directory or add it: "
            f"asgiserve run --app-dir {folder} {file.stem}:{attribute}"
        )
    raise PreflightError(f"{target!r} is a file path, not module:attribute; {hint}")
