"""Keys and certificates the sandbox generates and the platform's transports read.

Layout of the sandbox directory:

- ``fcm-service-account.json``: a Google service-account file whose ``token_uri`` is the
  sandbox's OAuth endpoint, so google-auth's real JWT-bearer flow runs against it;
- ``apns-key.p8``: an EC P-256 private key in PKCS8 PEM, like the ``.p8`` file Apple issues;
- ``tls/ca.pem`` (+ ``ca-key.pem``): a self-signed CA that clients trust for the APNs port;
- ``tls/server.pem`` (+ ``server-key.pem``): the APNs port's certificate, signed by that CA,
  valid for 127.0.0.1, ::1 and localhost.

Keys are generated once and kept across restarts (the platform may have cached them); only
the service account's ``token_uri`` is rewritten on every start, because the port may change.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FCM_SERVICE_ACCOUNT_FILE = "fcm-service-account.json"
APNS_KEY_FILE = "apns-key.p8"
TLS_DIR = "tls"
CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server-key.pem"
LOCK_FILE = ".credentials.lock"

FCM_PROJECT_ID = "sandbox-project"
FCM_CLIENT_EMAIL = "sandbox@sandbox-project.iam.gserviceaccount.com"

# A server certificate this close to expiry is replaced at start.
_RENEW_BEFORE = datetime.timedelta(days=30)


def sandbox_credentials_ensure(dir: Path, *, http_base_url: str) -> None:
    """Create the service account, the APNs key and the TLS files in ``dir`` if missing.

    Guarantees: every file is written atomically (temporary file + rename), and an exclusive
    lock on ``dir/.credentials.lock`` serialises concurrent starts, so two sandboxes
    starting at once never leave a server certificate signed by the other's CA or a
    half-written file. The service account's ``token_uri`` is set to
    ``{http_base_url}/oauth2/token``; its key is kept when the file exists.
    """
    dir.mkdir(parents=True, exist_ok=True)
    (dir / TLS_DIR).mkdir(exist_ok=True)
    with _exclusive_lock(dir / LOCK_FILE):
        _ensure_service_account(dir / FCM_SERVICE_ACCOUNT_FILE, token_uri=f"{http_base_url}/oauth2/token")
        _ensure_apns_key(dir / APNS_KEY_FILE)
        _ensure_tls(dir / TLS_DIR)


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def write_atomically(path: Path, content: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``content`` so that a reader sees the old or the new file, whole."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(content)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _pkcs8_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ensure_service_account(path: Path, *, token_uri: str) -> None:
    account: dict[str, str] | None = None
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            serialization.load_pem_private_key(loaded["private_key"].encode(), password=None)
            account = loaded
        except (ValueError, KeyError, TypeError):
            account = None  # unreadable: generate a fresh one
    if account is None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        account = {
            "type": "service_account",
            "project_id": FCM_PROJECT_ID,
            "private_key_id": "sandbox",
            "private_key": _pkcs8_pem(key).decode(),
            "client_email": FCM_CLIENT_EMAIL,
            "client_id": "1",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": (
                "https://www.googleapis.com/robot/v1/metadata/x509/"
                "sandbox%40sandbox-project.iam.gserviceaccount.com"
            ),
            "universe_domain": "googleapis.com",
        }
    elif account.get("token_uri") == token_uri:
        return
    account["token_uri"] = token_uri
    write_atomically(path, (json.dumps(account, indent=2) + "\n").encode(), mode=0o600)


def _ensure_apns_key(path: Path) -> None:
    if path.exists():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
                return
        except ValueError:
            pass
    write_atomically(path, _pkcs8_pem(ec.generate_private_key(ec.SECP256R1())), mode=0o600)


def _ensure_tls(tls_dir: Path) -> None:
    ca_cert_path, ca_key_path = tls_dir / CA_CERT_FILE, tls_dir / CA_KEY_FILE
    server_cert_path, server_key_path = tls_dir / SERVER_CERT_FILE, tls_dir / SERVER_KEY_FILE
    now = datetime.datetime.now(datetime.UTC)

    ca_cert: x509.Certificate | None = None
    ca_key: ec.EllipticCurvePrivateKey | None = None
    if ca_cert_path.exists() and ca_key_path.exists():
        try:
            ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
            loaded_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
            ca_key = loaded_key if isinstance(loaded_key, ec.EllipticCurvePrivateKey) else None
        except ValueError:
            ca_cert = ca_key = None
        if ca_cert is not None and ca_cert.not_valid_after_utc - now < _RENEW_BEFORE:
            ca_cert = ca_key = None
    new_ca = ca_cert is None or ca_key is None
    if ca_cert is None or ca_key is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _ca_certificate(ca_key, now)
        write_atomically(ca_key_path, _pkcs8_pem(ca_key), mode=0o600)
        write_atomically(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM))

    if not new_ca and _server_certificate_usable(server_cert_path, server_key_path, ca_cert, now):
        return
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _server_certificate(server_key, ca_key, ca_cert, now)
    # Key first: a server starting between the two renames fails to load a mismatched pair
    # rather than serve a certificate whose key it lacks; the lock makes that window ours only.
    write_atomically(server_key_path, _pkcs8_pem(server_key), mode=0o600)
    write_atomically(server_cert_path, server_cert.public_bytes(serialization.Encoding.PEM))


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Provider Sandbox CA")])
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: datetime.datetime,
) -> x509.Certificate:
    public_key = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                    x509.DNSName("localhost"),
                    # The sandbox's service name in docker-compose.yml.
                    x509.DNSName("sandbox"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _server_certificate_usable(
    cert_path: Path, key_path: Path, ca_cert: x509.Certificate, now: datetime.datetime
) -> bool:
    """True when the server certificate exists, matches its key, was issued by ``ca_cert``
    and is valid for a while yet."""
    if not (cert_path.exists() and key_path.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    same_key = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return same_key and cert.not_valid_after_utc - now >= _RENEW_BEFORE


def fcm_service_account(dir: Path) -> dict[str, str]:
    """The service-account JSON in ``dir`` (after ``sandbox_credentials_ensure``)."""
    account: dict[str, str] = json.loads((dir / FCM_SERVICE_ACCOUNT_FILE).read_text())
    return account


def fcm_public_key_pem(dir: Path) -> bytes:
    """PEM of the public half of the service account's key: verifies its OAuth assertions."""
    key = serialization.load_pem_private_key(fcm_service_account(dir)["private_key"].encode(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def apns_public_key_pem(dir: Path) -> bytes:
    """PEM of the public half of ``apns-key.p8``: verifies provider tokens (ES256)."""
    key = serialization.load_pem_private_key((dir / APNS_KEY_FILE).read_bytes(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
