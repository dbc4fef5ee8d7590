"""The cluster PKI: who each certificate says it is, and what it is valid for."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from localcluster import pki


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_node_certificate_is_system_node_in_system_nodes(tmp_path: Path) -> None:
    pki.create_ca(tmp_path)
    cert_path, _ = pki.create_node(tmp_path, "spot-1")
    cert = _load(cert_path)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:node:spot-1"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:nodes"
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    ca = _load(tmp_path / "ca.crt")
    cert.verify_directly_issued_by(ca)


def test_apiserver_certificate_serves_loopback_and_the_service_names(tmp_path: Path) -> None:
    pki.create_control_plane(tmp_path)
    cert = _load(tmp_path / "apiserver.crt")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
    assert {"localhost", "kubernetes.default.svc"} <= set(names.get_values_for_type(x509.DNSName))


def test_issue_reuses_existing_certificates(tmp_path: Path) -> None:
    pki.create_ca(tmp_path)
    first = pki.issue(tmp_path, "x", "x")[0].read_bytes()
    second = pki.issue(tmp_path, "x", "x")[0].read_bytes()
    assert first == second
    assert (tmp_path / "x.key").stat().st_mode & 0o777 == 0o600
