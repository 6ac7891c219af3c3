"""TLS and bearer tokens for the gateway publishers (one place for both).

::

    fjord.Publisher("gw.internal:9095", token=os.environ["JWT"])          # TLS, system roots
    fjord.Publisher("10.0.0.7:9095", ca_file="ca.pem", server_name="gw.internal",
                    cert_file="client.pem", key_file="client.key")        # mutual TLS
    fjord.AsyncPublisher(token=lambda: vault.current_jwt())                # called per stream

A token is sent as ``authorization: Bearer <token>`` through gRPC call credentials, composed
onto the channel's TLS credentials: gRPC sends call credentials only over TLS, so a token implies
TLS. Any of ``token``, ``ca_file``, ``cert_file`` turns TLS on; ``credentials`` (a
``grpc.ChannelCredentials`` made by the caller) does too, and may be combined with ``token`` but
not with the file options (ambiguous: a :class:`ValueError`).

An option not given (``None``) comes from the environment: :data:`TOKEN_ENV`,
:data:`CA_FILE_ENV`, :data:`CERT_FILE_ENV` / :data:`KEY_FILE_ENV` (the pair comes from the
environment only when neither ``cert_file`` nor ``key_file`` is given; none of the files when
``credentials`` is). An empty string means "none", whatever the environment says.

Files are read once, when the publisher is created; the credentials made from them are kept (a
:class:`fjord.Publisher` in a forked child opens its channel with the same ones).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import grpc

from fjord.errors import TOKEN_FAILED

#: Environment variable with a bearer token, used when ``token`` is not given.
TOKEN_ENV = "FJORD_GATEWAY_TOKEN"
#: Environment variable naming a PEM file of CA certificates, used when ``ca_file`` is not given.
CA_FILE_ENV = "FJORD_GATEWAY_CA_FILE"
#: Environment variables naming the client certificate (chain) and its key for mutual TLS.
CERT_FILE_ENV = "FJORD_GATEWAY_CERT_FILE"
KEY_FILE_ENV = "FJORD_GATEWAY_KEY_FILE"

#: A bearer token, or a function returning the current one (called for every call or stream).
Token = Union[str, Callable[[], str]]
#: A file name.
FilePath = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class ChannelSecurity:
    """What a publisher opens its channels with: ``credentials`` (``None``: plaintext) and
    extra channel ``options``."""

    credentials: Optional[grpc.ChannelCredentials] = None
    options: Tuple[Tuple[str, str], ...] = ()


def channel_security(
    *,
    credentials: Optional[grpc.ChannelCredentials] = None,
    token: Optional[Token] = None,
    ca_file: Optional[FilePath] = None,
    cert_file: Optional[FilePath] = None,
    key_file: Optional[FilePath] = None,
    server_name: Optional[str] = None,
) -> ChannelSecurity:
    """Resolves the publishers' security options (arguments, else the environment) into
    channel credentials and options.

    :raises ValueError: ``credentials`` with a file option, a certificate without its key (or
        the reverse), ``server_name`` without TLS, a token with whitespace inside, a file that
        is not PEM.
    :raises TypeError: a token neither a ``str`` nor a callable.
    :raises OSError: a file cannot be read (the error names the file and the option).
    """
    if credentials is not None and any(f for f in (ca_file, cert_file, key_file)):
        raise ValueError(
            "pass either credentials or ca_file/cert_file/key_file, not both (the files would "
            "make credentials of their own)")
    if token is None:
        token = os.environ.get(TOKEN_ENV) or None
    call_credentials = _call_credentials(token) if token else None
    if credentials is None:
        credentials = _ssl_credentials(ca_file, cert_file, key_file, tls=bool(token))
    if credentials is not None and call_credentials is not None:
        credentials = grpc.composite_channel_credentials(credentials, call_credentials)
    options: Tuple[Tuple[str, str], ...] = ()
    if server_name:
        if credentials is None:
            raise ValueError("server_name is the name checked in the gateway's TLS certificate: "
                             "it needs TLS (token, ca_file, cert_file or credentials)")
        options = (("grpc.ssl_target_name_override", server_name),)
    return ChannelSecurity(credentials, options)


def _resolved(value: Optional[FilePath], env: str) -> Optional[FilePath]:
    """``value`` if given (an empty string: none), else ``$env`` (unset or empty: none)."""
    if value is None:
        return os.environ.get(env) or None
    return value or None


def _ssl_credentials(
    ca_file: Optional[FilePath], cert_file: Optional[FilePath], key_file: Optional[FilePath],
    tls: bool,
) -> Optional[grpc.ChannelCredentials]:
    """TLS credentials from the files (arguments, else the environment), or ``None`` when no
    file is named and ``tls`` is false."""
    ca_file = _resolved(ca_file, CA_FILE_ENV)
    if cert_file is None and key_file is None:
        cert_file = _resolved(None, CERT_FILE_ENV)
        key_file = _resolved(None, KEY_FILE_ENV)
        names = (f"${CERT_FILE_ENV}", f"${KEY_FILE_ENV}")
    else:
        cert_file, key_file = cert_file or None, key_file or None
        names = ("cert_file", "key_file")
    if bool(cert_file) != bool(key_file):
        raise ValueError(f"mutual TLS needs both {names[0]} and {names[1]} "
                         f"(got only {names[0] if cert_file else names[1]})")
    if not (tls or ca_file or cert_file):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(ca_file, "ca_file", CA_FILE_ENV) if ca_file else None,
        private_key=_read_pem(key_file, "key_file", KEY_FILE_ENV) if key_file else None,
        certificate_chain=_read_pem(cert_file, "cert_file", CERT_FILE_ENV) if cert_file else None,
    )


def _read_pem(file: FilePath, option: str, env: str) -> bytes:
    """The file's bytes; errors name the file and the option (or variable) it came from."""
    path = os.fspath(file)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise type(e)(e.errno, f"{option} (or ${env}): cannot read {path!r}: {e.strerror}",
                      path) from None
    if b"-----BEGIN " not in data:
        raise ValueError(f"{option} (or ${env}): {path!r} is not a PEM file")
    return data


def _call_credentials(token: Token) -> grpc.CallCredentials:
    if callable(token):
        return grpc.metadata_call_credentials(_TokenPlugin(token), name="fjord-bearer-token")
    return grpc.access_token_call_credentials(_checked(token))


def _checked(token: object) -> str:
    """The token without surrounding whitespace (a trailing newline of a file or variable)."""
    if not isinstance(token, str):
        raise TypeError(f"a bearer token (token or ${TOKEN_ENV}) must be a str, "
                        f"not {type(token).__name__}")
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError(f"a bearer token (token or ${TOKEN_ENV}) must be a non-empty string "
                         "without whitespace")
    return token


class _TokenPlugin(grpc.AuthMetadataPlugin):
    """Calls the token function for every call (or stream) and sends its token. When it raises
    (or returns no token) the call fails at once, before anything is sent, with details naming
    :data:`~fjord.errors.TOKEN_FAILED` (so :class:`fjord.Unauthenticated`)."""

    def __init__(self, token: Callable[[], str]) -> None:
        self._token = token

    def __call__(self, context: grpc.AuthMetadataContext,
                 callback: grpc.AuthMetadataPluginCallback) -> None:
        try:
            token = _checked(self._token())
        except Exception as e:  # noqa: BLE001 - any failure of the caller's function
            callback((), RuntimeError(f"{TOKEN_FAILED}: {type(e).__name__}: {e}"))
            return
        callback((("authorization", f"Bearer {token}"),), None)
