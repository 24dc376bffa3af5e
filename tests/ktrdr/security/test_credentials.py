"""Credentials, certificates and the server config that `ktrdr up` makes."""

from __future__ import annotations

import json
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from ktrdr.security.credentials import CredentialError, NatsCredential, ensure_credentials
from ktrdr.security.fleet import invite, provision
from ktrdr.security.tls import ensure_server_cert, server_names
from subjects import roles


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_role_gets_a_credential_only_its_owner_can_read(tmp_path: Path) -> None:
    made = ensure_credentials(tmp_path / "auth")
    assert set(made) == set(roles.ROLES)
    for role in roles.ROLES:
        path = tmp_path / "auth" / f"{role}.nk"
        assert _mode(path) == 0o600
        assert path.read_text().strip().startswith("SU")
    assert _mode(tmp_path / "auth") == 0o700


def test_credentials_are_kept_across_runs_so_joined_hosts_keep_working(tmp_path: Path) -> None:
    first = ensure_credentials(tmp_path / "auth")
    assert ensure_credentials(tmp_path / "auth") == first


def test_each_credential_has_its_own_reply_inbox() -> None:
    a, b = NatsCredential.generate(), NatsCredential.generate()
    assert a.inbox_prefix != b.inbox_prefix and a.inbox_prefix.startswith("_INBOX_")


@pytest.mark.parametrize("text", ["", "not a seed\n", "SUxyz\n", NatsCredential.generate().public_key])
def test_a_file_that_is_not_a_user_seed_is_refused_clearly(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.nk"
    path.write_text(text)
    with pytest.raises(CredentialError):
        NatsCredential.load(path)


def test_the_server_config_names_public_keys_only_and_no_anonymous_user(tmp_path: Path) -> None:
    fleet = provision(tmp_path)
    text = fleet.config.read_text()
    conf = json.loads(text)
    users = conf["authorization"]["users"]
    assert {u["nkey"] for u in users} == {c.public_key for c in fleet.credentials.values()}
    assert all(c.seed not in text for c in fleet.credentials.values())
    assert "no_auth_user" not in text and "tls" not in conf
    assert _mode(fleet.config) == 0o600


def test_the_server_certificate_covers_the_names_given_and_verifies_against_the_ca(tmp_path: Path) -> None:
    files = ensure_server_cert(tmp_path, server_names(["10.9.8.7", "fleet.example"]))
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "fleet.example" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"10.9.8.7", "127.0.0.1"}
    assert _mode(files.key) == 0o600
    ctx = ssl.create_default_context(cafile=str(files.ca))
    ctx.load_verify_locations(cafile=str(files.ca))  # the CA is a usable trust anchor


def test_a_certificate_is_reissued_only_when_a_name_is_missing(tmp_path: Path) -> None:
    first = ensure_server_cert(tmp_path, server_names(["a.example"])).cert.read_bytes()
    assert ensure_server_cert(tmp_path, server_names(["a.example"])).cert.read_bytes() == first
    ca = (tmp_path / "ca.pem").read_bytes()
    assert ensure_server_cert(tmp_path, server_names(["b.example"])).cert.read_bytes() != first
    assert (tmp_path / "ca.pem").read_bytes() == ca  # joined hosts keep trusting the same CA


def test_an_invite_carries_the_url_the_ca_and_a_key_of_the_hosts_own_but_never_a_trusted_one(
        tmp_path: Path) -> None:
    fleet = provision(tmp_path, tls=True)
    assert fleet.tls is not None
    script = invite(home=tmp_path, role=roles.WORKER, url="tls://fleet.example:4222", ca=fleet.tls.ca, host="box1")
    seed = next(line for line in script.splitlines() if line.startswith("SU"))
    assert seed not in {c.seed for c in fleet.credentials.values()}  # not the local workers' key: its own
    assert "# ktrdr host: box1" in script and "BEGIN CERTIFICATE" in script
    assert "tls://fleet.example:4222" in script
    client = invite(home=tmp_path, role=roles.CLIENT, url="tls://fleet.example:4222", ca=None)
    assert fleet.credentials[roles.CLIENT].seed in client
    for trusted in roles.TRUSTED:
        with pytest.raises(ValueError, match="never leaves this host"):
            invite(home=tmp_path, role=trusted, url="tls://x:1", ca=None)
