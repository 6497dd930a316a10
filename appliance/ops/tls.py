"""The HTTPS listener's TLS context: built once, checked at start, reloaded in place without a restart.

The listener keeps one ssl.SSLContext for its whole life. OpenSSL copies a context's certificate
and key into each connection when the connection is created, so loading a renewed chain into the
same context (load_cert_chain) serves it to every new handshake while established connections,
streams included, keep the one they started with. Nothing is cut, and nothing is restarted.

A reload happens on SIGHUP (`systemctl reload appliance`, a certbot deploy hook) and when the
files' modification times change (checked every CHECK_INTERVAL_S). The new files are first
loaded into a scratch context and checked (readable, key matching, valid now, this host's): a
renewal that fails any of that is logged and the certificate in service stays.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

from appliance.ops.certificates import CertificateError, CertificateInfo, check_servable, read_certificate

log = logging.getLogger("appliance.tls")
CHECK_INTERVAL_S = 30.0


class ServerTLS:
    def __init__(self, cert: Path, key: Path, client_ca: Path | None, server_names: list[str]):
        self.cert, self.key, self.client_ca = Path(cert), Path(key), client_ca
        self.server_names = server_names
        self.info = self._checked()
        self.context = self._new_context()
        self._load_into(self.context)
        self._mtimes = self._file_mtimes()

    def reload(self) -> bool:
        """Serve the files' current certificate to new connections; False (logged) when it cannot be served."""
        self._mtimes = self._file_mtimes()
        try:
            info = self._checked()
            if info.key_type != self.info.key_type:
                raise CertificateError(f"the new certificate's key is {info.key_type}, the one in service "
                                       f"{self.info.key_type}: restart the service to switch key types "
                                       "(systemctl restart appliance)")
            self._load_into(self._new_context())  # the scratch load: a bad pair fails here, harmlessly
            self._load_into(self.context)
        except CertificateError as e:
            log.error("TLS certificate not reloaded, still serving %s: %s", self.info.fingerprint_sha256, e)
            return False
        changed = info.fingerprint_sha256 != self.info.fingerprint_sha256
        self.info = info
        log.info("TLS certificate %s: %s, valid until %s", "reloaded" if changed else "re-read, unchanged",
                 info.fingerprint_sha256, info.not_after.date())
        return True

    def reload_if_changed(self) -> bool:
        """Reload when the certificate or key file was replaced or modified since the last load."""
        if self._file_mtimes() == self._mtimes:
            return False
        return self.reload()

    async def watch(self, interval_s: float = CHECK_INTERVAL_S) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self.reload_if_changed()

    def _checked(self) -> CertificateInfo:
        info = read_certificate(self.cert)
        check_servable(info, self.server_names)
        return info

    def _new_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])  # the listener speaks HTTP/1.1 (h11)
        if self.client_ca is not None:
            try:
                context.load_verify_locations(cafile=str(self.client_ca))
            except (OSError, ssl.SSLError) as e:
                raise CertificateError(f"cannot load tls_client_ca {self.client_ca}: {e}") from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def _load_into(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(str(self.cert), str(self.key))
        except FileNotFoundError:
            raise CertificateError(f"the private key {self.key} does not exist") from None
        except PermissionError:
            raise CertificateError(f"cannot read {self.key}: it must be readable by the service's user "
                                   "(install.sh makes it 0600, owned by appliance)") from None
        except ssl.SSLError as e:
            if "KEY_VALUES_MISMATCH" in str(e) or "key values mismatch" in str(e):
                raise CertificateError(f"the private key {self.key} does not belong to the certificate "
                                       f"{self.cert}") from None
            raise CertificateError(f"cannot load {self.cert} with {self.key}: {e.reason or e}") from None

    def _file_mtimes(self) -> tuple:
        stamps = []
        for path in (self.cert, self.key):
            try:
                stat = path.stat()
                stamps.append((stat.st_mtime_ns, stat.st_ino, stat.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)
