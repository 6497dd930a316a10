"""TLS certificates: the self-signed one install.sh generates, and what anyone needs to know about one.

The generated certificate is ECDSA P-256, names this host (its host names, `localhost`, and the
addresses of its interfaces) and is valid for ten years: clients trust this very file
(`httpx.Client(verify="cert.pem")`), so it should not expire under them. Its SHA-256 fingerprint
is what an operator compares when a client asks whether to trust it.

An operator's certificate (certbot, a company CA) is checked before the service serves it: it
must be valid now and name this host, or one of `tls_server_names` (the names clients use when
the host's own name is not one of them, as behind a cloud's NAT).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY_DAYS = 3650


class CertificateError(Exception):
    """A certificate or key that cannot be served; the message says which file and what to do."""


@dataclass
class CertificateInfo:
    path: Path
    subject: str
    issuer: str
    fingerprint_sha256: str  # AB:CD:… as `openssl x509 -fingerprint -sha256` prints it
    not_before: datetime
    not_after: datetime
    dns_names: list[str] = field(default_factory=list)
    ip_addresses: list[str] = field(default_factory=list)
    self_signed: bool = False
    key_type: str = ""

    @property
    def names(self) -> list[str]:
        return self.dns_names + self.ip_addresses

    def covers(self, name: str) -> bool:
        """Whether a client connecting by this host name or address would accept the certificate."""
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            return any(_dns_match(pattern, name) for pattern in self.dns_names)
        return any(ipaddress.ip_address(ip) == address for ip in self.ip_addresses)

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "subject": self.subject, "issuer": self.issuer, "fingerprint_sha256": self.fingerprint_sha256,
            "not_before": self.not_before.isoformat(), "not_after": self.not_after.isoformat(),
            "names": self.names, "self_signed": self.self_signed, "key_type": self.key_type,
            # What a client should trust: this file when nobody else vouches for it, else its usual CA store.
            "trust_file": str(self.path) if self.self_signed else None,
        }


def _dns_match(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def fingerprint(certificate: x509.Certificate) -> str:
    return ":".join(f"{b:02X}" for b in certificate.fingerprint(hashes.SHA256()))


def read_certificate(path: Path) -> CertificateInfo:
    """The first certificate of a PEM file (the server's own; any chain follows it)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise CertificateError(f"the certificate {path} does not exist: generate one with `sudo appliance tls "
                               "generate` (install.sh does), set tls_cert and tls_key to yours, or set tls = false "
                               "behind your own TLS proxy") from None
    except OSError as e:
        raise CertificateError(f"cannot read the certificate {path}: {e.strerror}") from None
    try:
        certificate = x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        raise CertificateError(f"{path} is not a PEM certificate (expected '-----BEGIN CERTIFICATE-----')") from None
    return describe(certificate, Path(path))


def describe(certificate: x509.Certificate, path: Path) -> CertificateInfo:
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = san.get_values_for_type(x509.DNSName)
        ip_addresses = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:  # an old-style certificate: clients fall back to the common name
        common = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        dns_names, ip_addresses = [str(a.value) for a in common], []
    key = certificate.public_key()
    key_type = f"EC {key.curve.name}" if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
    return CertificateInfo(
        path=path, subject=certificate.subject.rfc4514_string(), issuer=certificate.issuer.rfc4514_string(),
        fingerprint_sha256=fingerprint(certificate),
        not_before=certificate.not_valid_before_utc, not_after=certificate.not_valid_after_utc,
        dns_names=list(dns_names), ip_addresses=ip_addresses,
        self_signed=certificate.issuer == certificate.subject, key_type=key_type.replace("RSAPublicKey", "RSA"),
    )


def check_servable(info: CertificateInfo, server_names: list[str], now: datetime | None = None) -> None:
    """Refuse an expired, not yet valid, or other host's certificate, saying what to do."""
    now = now or datetime.now(timezone.utc)
    if info.not_after <= now:
        raise CertificateError(f"the certificate {info.path} expired on {info.not_after:%Y-%m-%d %H:%M} UTC: "
                               "renew it (certbot renew), or remove tls_cert/tls_key from the config to use the "
                               "certificate install.sh generates")
    if info.not_before > now:
        raise CertificateError(f"the certificate {info.path} is not valid before {info.not_before:%Y-%m-%d %H:%M} "
                               "UTC: check this machine's clock (timedatectl)")
    if not any(info.covers(name) for name in server_names):
        raise CertificateError(
            f"the certificate {info.path} is for {', '.join(info.names) or info.subject}, not for this host "
            f"({', '.join(server_names)}): use this host's certificate, or list the names clients use in "
            "tls_server_names in the config")


def host_names() -> list[str]:
    """This host's names and the addresses of its interfaces, loopback and link-local ones left out."""
    import psutil

    names = []
    for name in (socket.gethostname(), socket.getfqdn()):
        if name and name != "localhost" and name not in names:
            names.append(name)
    for addresses in psutil.net_if_addrs().values():
        for entry in addresses:
            if entry.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(entry.address.split("%")[0])
            if not (ip.is_loopback or ip.is_link_local) and str(ip) not in names:
                names.append(str(ip))
    return names


def generate(cert_path: Path, key_path: Path, names: list[str], days: int = VALIDITY_DAYS,
             now: datetime | None = None) -> CertificateInfo:
    """A self-signed ECDSA certificate for `names` (host names and addresses) plus localhost.

    The key is written 0600 before it holds anything; the certificate 0644. Existing files are replaced.
    """
    now = now or datetime.now(timezone.utc)
    dns, ips = ["localhost"], [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    for name in names:
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            if name not in dns:
                dns.insert(len(dns) - 1, name)  # the host's own names first: the common name is the first
        else:
            if ip not in ips:
                ips.append(ip)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "appliance (self-signed)")])
    identifier = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([*map(x509.DNSName, dns), *map(x509.IPAddress, ips)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(identifier, critical=False)
        # Strict verifiers (Python 3.13's default context) want an authority key id, even on a self-signed one.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(identifier), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    _write(Path(key_path), key_bytes, 0o600)
    _write(Path(cert_path), certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return describe(certificate, Path(cert_path))


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace path atomically, with `mode` from the moment the file exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    os.replace(tmp, path)
