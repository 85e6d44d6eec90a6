"""The gateway's own certificate authority, for homeserver A's federation TLS.

Homeserver A speaks TLS to "b.example" inside the CONNECT tunnel; the
gateway ends that TLS with a leaf certificate for the name, issued by a CA
it makes on first run.  Homeserver A trusts that CA alone for federation
(``federation_custom_ca_list``), so the CA key is what guards A's outgoing
federation: it is written 0600 and refused when others may read it.

Files in ``directory``: ``federation-ca.pem`` (the certificate A trusts),
``federation-ca.key`` (0600), each written whole (a temporary file renamed),
the key last: a CA is the two files or neither, and half of one is refused
with what to do.  Leaf certificates live in memory only (one per peer name,
ECDSA P-256, valid 30 days, made again on each start and a week before they
expire).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
import stat
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import KeyFileError

CA_CERT = "federation-ca.pem"
CA_KEY = "federation-ca.key"
CA_DAYS = 3650
LEAF_DAYS = 30
#: a leaf is issued again when less than this is left of it (as ACME clients renew
#: with a third of a certificate's life left): a long-running gateway never serves an expired one
RENEW_BEFORE = datetime.timedelta(days=7)
#: TLS contexts kept (one per peer name the table allows; least recently used dropped)
MAX_CONTEXTS = 256


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_whole(path: Path, data: bytes, mode: int) -> None:
    """``path`` holds ``data`` whole or is untouched: a temporary file (made 0600,
    then given ``mode``), synced, renamed over it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def leaf_name(host: str) -> str:
    """The name a leaf certificate is kept under: lower case, no trailing dot."""
    return host.lower().rstrip(".")


class FederationCA:
    """A CA (made on first use in ``directory``) and the leaf certificates it issues."""

    def __init__(self, directory: str | os.PathLike[str], *, common_name: str = "coap-gateway federation CA",
                 clock: Callable[[], datetime.datetime] = _now):
        self.directory = Path(directory)
        self.cert_path = self.directory / CA_CERT
        self.key_path = self.directory / CA_KEY
        self.clock = clock
        self.created = False
        if self.key_path.exists() != self.cert_path.exists():
            there, missing = (self.key_path, self.cert_path) if self.key_path.exists() else (self.cert_path,
                                                                                           self.key_path)
            raise KeyFileError(f"half a federation CA in {self.directory}: {there.name} without {missing.name}. "
                               f"Restore {missing.name}, or remove {there.name} to make a new CA (the homeserver "
                               f"must then trust the new {CA_CERT})")
        if self.key_path.exists():
            mode = self.key_path.stat().st_mode
            if mode & 0o077:
                raise KeyFileError(f"{self.key_path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it")
            self._key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
            self._cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
            now = self.clock()
            self._cert = (
                x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
                .sign(self._key, hashes.SHA256())
            )
            # the key last: its presence says the CA is whole (a crash in between leaves a
            # certificate alone, refused above with what to do)
            _write_whole(self.cert_path, self._cert.public_bytes(serialization.Encoding.PEM), 0o644)
            _write_whole(self.key_path, self._key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)
            self.created = True
        #: leaf name -> (its TLS context, when its certificate expires)
        self._contexts: OrderedDict[str, tuple[ssl.SSLContext, datetime.datetime]] = OrderedDict()

    @property
    def certificate_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, host: str, now: datetime.datetime | None = None) -> tuple[bytes, bytes]:
        """A leaf certificate and key for ``host`` (PEM, certificate then CA), valid
        from ``now`` (the clock's) for LEAF_DAYS; for the name with and without a
        trailing dot (a client verifies the name exactly as it was given)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = now or self.clock()
        name = leaf_name(host)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
            .issuer_name(self._cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name), x509.DNSName(name + ".")]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.certificate_pem
        return chain, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())

    def server_context(self, host: str) -> ssl.SSLContext:
        """The TLS server context that presents ``host``'s leaf certificate: one
        per name (``leaf_name``), issued again once less than RENEW_BEFORE is left."""
        name, now = leaf_name(host), self.clock()
        kept = self._contexts.get(name)
        if kept is not None and kept[1] - now > RENEW_BEFORE:
            self._contexts.move_to_end(name)
            return kept[0]
        chain, key = self.issue(name, now)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl loads keys from files only: a private temporary directory, removed at once
        with tempfile.TemporaryDirectory(prefix="fed-leaf-") as tmp:
            cert_file, key_file = Path(tmp) / "leaf.pem", Path(tmp) / "leaf.key"
            cert_file.write_bytes(chain)
            _write_private(key_file, key)
            context.load_cert_chain(cert_file, key_file)
        self._contexts[name] = (context, now + datetime.timedelta(days=LEAF_DAYS))
        self._contexts.move_to_end(name)
        while len(self._contexts) > MAX_CONTEXTS:
            self._contexts.popitem(last=False)
        return context

    def leaf_expiry(self, host: str) -> datetime.datetime | None:
        """When the leaf kept for ``host`` expires (None: none kept)."""
        kept = self._contexts.get(leaf_name(host))
        return kept[1] if kept is not None else None

    @property
    def contexts_kept(self) -> int:
        return len(self._contexts)
