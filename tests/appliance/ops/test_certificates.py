"""TLS certificates and the listener's context: generation, the checks before serving, reloads in place, mTLS.

Handshakes run between real ssl objects over memory BIOs: the server side is the listener's own
SSLContext, the client side a default (strict) verifying context.
"""

import hashlib
import ssl
import stat
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from appliance.ops.certificates import CertificateError, check_servable, fingerprint, generate, read_certificate
from appliance.ops.tls import ServerTLS


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = "localhost"):
    """(client ssl object, server ssl object) after a handshake; raises ssl.SSLError if it fails."""
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=hostname)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = set()
    for _ in range(20):
        for name, side in (("client", c), ("server", s)):
            if name in done:
                continue
            try:
                side.do_handshake()
                done.add(name)
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2:
            # TLS 1.3: the server checks a client certificate after the client's handshake completes.
            c.write(b"ping")
            s_in.write(c_out.read())
            s.read(4)
            return c, s
    raise AssertionError("the handshake did not finish")


def client_context(*cafiles, cert=None, key=None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.load_verify_locations(cadata="".join(p.read_text() for p in cafiles))
    context.verify_flags |= ssl.VERIFY_X509_STRICT  # as Python 3.13's default context does
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def seen(c) -> str:
    return fingerprint(x509.load_der_x509_certificate(c.getpeercert(binary_form=True)))


def test_generated_certificate_names_the_host_and_its_key_is_private(tmp_path):
    info = generate(tmp_path / "cert.pem", tmp_path / "key.pem", ["gpu-box", "203.0.113.5", "gpu-box"])
    assert info.dns_names == ["gpu-box", "localhost"]
    assert info.ip_addresses == ["127.0.0.1", "::1", "203.0.113.5"]
    assert info.self_signed and info.key_type == "EC secp256r1" and info.to_dict()["trust_file"] == str(info.path)
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cert.pem").stat().st_mode) == 0o644
    assert (info.not_after - info.not_before).days >= 3649
    der = ssl.PEM_cert_to_DER_cert((tmp_path / "cert.pem").read_text())
    assert info.fingerprint_sha256.replace(":", "").lower() == hashlib.sha256(der).hexdigest()
    assert read_certificate(tmp_path / "cert.pem") == info
    # A strict client accepts it by IP and by name, and only for those.
    tls = ServerTLS(tmp_path / "cert.pem", tmp_path / "key.pem", None, ["gpu-box"])
    for name in ("gpu-box", "203.0.113.5", "localhost"):
        handshake(tls.context, client_context(tmp_path / "cert.pem"), hostname=name)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(tls.context, client_context(tmp_path / "cert.pem"), hostname="other.example.com")


def operator_certificate(tmp_path, names, not_before, not_after, name="op"):
    """A certificate as an operator might bring one: RSA, a CA-less self-signed one with the given names."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_expired_not_yet_valid_and_other_hosts_certificates_are_refused(tmp_path):
    now = datetime.now(timezone.utc)
    expired, key = operator_certificate(tmp_path, ["llm.example.com"], now - timedelta(days=90), now - timedelta(days=1))
    with pytest.raises(CertificateError, match=r"expired on .* renew it \(certbot renew\)"):
        ServerTLS(expired, key, None, ["llm.example.com"])
    future, key = operator_certificate(tmp_path, ["llm.example.com"], now + timedelta(days=1), now + timedelta(days=90),
                                       name="future")
    with pytest.raises(CertificateError, match="not valid before .* check this machine's clock"):
        ServerTLS(future, key, None, ["llm.example.com"])
    other, key = operator_certificate(tmp_path, ["www.other.org"], now - timedelta(days=1), now + timedelta(days=90),
                                      name="other")
    with pytest.raises(CertificateError, match=r"is for www\.other\.org, not for this host \(gpu-box, 203\.0\.113\.5\)"
                                               r".*tls_server_names"):
        ServerTLS(other, key, None, ["gpu-box", "203.0.113.5"])


def test_wildcards_cover_one_label_only(tmp_path):
    now = datetime.now(timezone.utc)
    cert, _ = operator_certificate(tmp_path, ["*.example.com"], now - timedelta(days=1), now + timedelta(days=9))
    info = read_certificate(cert)
    check_servable(info, ["gpu.example.com"])
    for name in ("example.com", "a.b.example.com", "gpu.example.org"):
        assert not info.covers(name)


def test_a_key_of_another_certificate_and_missing_files_say_which_file(tmp_path):
    generate(tmp_path / "a.pem", tmp_path / "a.key", [])
    generate(tmp_path / "b.pem", tmp_path / "b.key", [])
    with pytest.raises(CertificateError, match=f"the private key {tmp_path}/b.key does not belong to the certificate"):
        ServerTLS(tmp_path / "a.pem", tmp_path / "b.key", None, ["localhost"])
    with pytest.raises(CertificateError, match="does not exist: generate one with `sudo appliance tls generate`"):
        ServerTLS(tmp_path / "none.pem", tmp_path / "a.key", None, ["localhost"])
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(CertificateError, match="is not a PEM certificate"):
        ServerTLS(tmp_path / "junk.pem", tmp_path / "a.key", None, ["localhost"])


def test_reload_serves_new_handshakes_the_new_certificate_and_established_ones_keep_theirs(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    old = generate(cert, key, [])
    (tmp_path / "old.pem").write_bytes(cert.read_bytes())
    tls = ServerTLS(cert, key, None, ["localhost"])
    context = tls.context
    before, _ = handshake(context, client_context(tmp_path / "old.pem"))
    assert not tls.reload_if_changed()  # nothing changed on disk
    new = generate(cert, key, [])  # a renewal replaces both files
    assert tls.reload_if_changed() and tls.info.fingerprint_sha256 == new.fingerprint_sha256
    assert tls.context is context  # the same context, which the listener keeps
    after, _ = handshake(context, client_context(tmp_path / "old.pem", cert))
    assert seen(after) == new.fingerprint_sha256 != old.fingerprint_sha256
    assert seen(before) == old.fingerprint_sha256  # the connection made before goes on with the old one


def test_a_broken_renewal_keeps_the_certificate_in_service(tmp_path, caplog):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    good = generate(cert, key, [])
    tls = ServerTLS(cert, key, None, ["localhost"])
    generate(tmp_path / "other.pem", key, [])  # only the key is replaced: it no longer matches cert.pem
    assert not tls.reload_if_changed()
    assert "not reloaded, still serving" in caplog.text and "does not belong to the certificate" in caplog.text
    c, _ = handshake(tls.context, client_context(cert))
    assert seen(c) == good.fingerprint_sha256 == tls.info.fingerprint_sha256
    now = datetime.now(timezone.utc)
    rsa_cert, rsa_key = operator_certificate(tmp_path, ["localhost"], now - timedelta(days=1), now + timedelta(days=9))
    cert.write_bytes(rsa_cert.read_bytes())
    key.write_bytes(rsa_key.read_bytes())
    assert not tls.reload_if_changed()
    assert "restart the service to switch key types" in caplog.text


def test_client_certificates_are_required_when_a_client_ca_is_set(tmp_path):
    generate(tmp_path / "cert.pem", tmp_path / "key.pem", [])
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "internal CA")])
    now = datetime.now(timezone.utc)
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batch-job")]))
              .issuer_name(ca_name).public_key(client_key.public_key()).serial_number(2)
              .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
              .sign(ca_key, hashes.SHA256()))
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "client.pem").write_bytes(client.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "client.key").write_bytes(client_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    tls = ServerTLS(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem", ["localhost"])
    _, server_side = handshake(tls.context, client_context(tmp_path / "cert.pem", cert=tmp_path / "client.pem",
                                                           key=tmp_path / "client.key"))
    assert dict(x[0] for x in server_side.getpeercert()["subject"])["commonName"] == "batch-job"
    with pytest.raises(ssl.SSLError, match="PEER_DID_NOT_RETURN_A_CERTIFICATE|CERTIFICATE_REQUIRED"):
        handshake(tls.context, client_context(tmp_path / "cert.pem"))
