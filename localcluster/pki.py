"""Creates the cluster's certificate authority and the certificates each component presents."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
APISERVER_SANS = (
    "127.0.0.1",
    "10.77.0.1",  # the host's address on lo that real nodes' pods reach (realnode.HOST_IP)
    "10.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _load_ca(pki: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def create_ca(pki: Path) -> None:
    """Writes ca.crt/ca.key and the service-account signing key pair, unless present."""
    pki.mkdir(parents=True, exist_ok=True)
    if not (pki / "ca.crt").exists():
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("spotrun-localcluster-ca"))
            .issuer_name(_name("spotrun-localcluster-ca"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + 10 * VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_key(pki / "ca.key", key)
        (pki / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if not (pki / "sa.key").exists():
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write_key(pki / "sa.key", sa_key)
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


def issue(
    pki: Path,
    stem: str,
    common_name: str,
    organization: str | None = None,
    *,
    client: bool = True,
    server_names: tuple[str, ...] = (),
) -> tuple[Path, Path]:
    """Issues `stem`.crt/.key signed by the CA (reused when present); returns their paths."""
    cert_path, key_path = pki / f"{stem}.crt", pki / f"{stem}.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    ca_cert, ca_key = _load_ca(pki)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    if server_names:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server_names:
        alt: list[x509.GeneralName] = []
        for entry in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                alt.append(x509.DNSName(entry))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def create_control_plane(pki: Path) -> None:
    """Everything the control plane needs: CA, serving certs and one client cert per component."""
    create_ca(pki)
    issue(pki, "apiserver", "kube-apiserver", client=False, server_names=APISERVER_SANS)
    issue(pki, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
    issue(pki, "admin", "kubernetes-admin", "system:masters")
    issue(pki, "controller-manager", "system:kube-controller-manager")
    issue(pki, "scheduler", "system:kube-scheduler")
    issue(pki, "kube-proxy", "system:kube-proxy")  # bound to system:node-proxier by the default RBAC
    issue(pki, "kubelet-serving", "localcluster-kubelet", client=False, server_names=("127.0.0.1", "localhost"))


def create_node(pki: Path, node: str) -> tuple[Path, Path]:
    """The node's client certificate: `system:node:NAME` in `system:nodes`, as NodeRestriction expects."""
    return issue(pki, f"node-{node}", f"system:node:{node}", "system:nodes")


def create_node_serving(pki: Path, node: str, address: str) -> tuple[Path, Path]:
    """A real kubelet's serving certificate, for its node IP (what the apiserver dials for logs and exec)."""
    return issue(
        pki, f"node-{node}-{address}-serving", f"system:node:{node}", client=False, server_names=(address, node)
    )
