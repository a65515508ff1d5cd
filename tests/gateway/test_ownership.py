"""Signed ids: who may rate what, decided with no lookup, by any replica holding the secret."""

import time

import pytest
from pydantic import ValidationError

from core.config import GatewayConfig
from gateway.ownership import NeverServed, NotServedToCaller, Ownership, load_or_create_secrets

A, B = b"a" * 32, b"b" * 32
DAY = 86400.0


def test_any_replica_with_the_secret_checks_ownership_and_version():
    issuing, other_replica = Ownership([A], 30 * DAY), Ownership([A], 30 * DAY)
    rid = issuing.request_id("chatcmpl", "alice")
    cid = issuing.choice_id(rid, 2, "v0003")
    assert len(cid) <= 128 and cid.startswith(f"{rid}-2.")
    owned = other_replica.check_choice(cid, "alice", may_rate_others=False)
    assert owned.request_id == rid and owned.policy_version == "v0003"
    assert other_replica.check_request(rid, "alice", may_rate_others=False).request_id == rid
    with pytest.raises(NotServedToCaller):
        other_replica.check_choice(cid, "bob", may_rate_others=False)
    with pytest.raises(NotServedToCaller):
        other_replica.check_request(rid, "bob", may_rate_others=False)
    assert other_replica.check_choice(cid, "rita", may_rate_others=True).request_id == rid  # a rater


def _flip(text: str, at: int) -> str:
    swapped = "0" if text[at] != "0" else "1"
    return text[:at] + swapped + text[at + 1 :]


def test_made_up_or_altered_ids_are_never_served():
    own = Ownership([A], 30 * DAY)
    rid = own.request_id("chatcmpl", "alice")
    cid = own.choice_id(rid, 0, "v0001")
    forged = [
        "chatcmpl-never-served-0",
        "",
        "x" * 500,
        cid + "0",
        cid[:-1],
        _flip(cid, len(cid) - 1),  # the signature
        cid.replace(f"{rid}-0.", f"{rid}-1."),  # another index
        _flip(cid, len(rid) + 3),  # another (sealed) version
        _flip(cid, len("chatcmpl-") + 3),  # another request
        Ownership([B], 30 * DAY).choice_id(rid, 0, "v0001"),  # signed with another secret
    ]
    for bad in forged:
        with pytest.raises(NeverServed):
            own.check_choice(bad, "alice", may_rate_others=True)
    # A rater may rate anyone's, never a forgery: the request part is checked too.
    tag_swapped = _flip(rid, rid.rindex(".") - 1)
    with pytest.raises(NeverServed):
        own.check_request(tag_swapped, "alice", may_rate_others=True)


def test_a_choice_id_does_not_tell_its_version_to_a_client():
    own = Ownership([A], 30 * DAY)
    rid = own.request_id("chatcmpl", "alice")
    ids = {v: [own.choice_id(rid, i, v) for i in range(9)] for v in ("v0001", "v0002")}
    for v, cids in ids.items():
        assert all(v not in c and v[1:] not in c.removeprefix(rid) for c in cids)
        assert [own.version_of(c) for c in cids] == [v] * 9, "the secret unseals it"
        assert len({len(c) for c in cids}) == 1
    # The same index of two versions differs only in the sealed part, and the sealed parts of one
    # version share no fixed bytes an observer could learn (a keystream per choice).
    sealed = [c.rsplit(".", 2)[1] for c in ids["v0001"]]
    assert len(set(sealed)) == 9 and not any(
        all(s[k] == sealed[0][k] for s in sealed) for k in range(len(sealed[0]))
    )
    with pytest.raises(ValueError):
        own.choice_id(rid, 0, "not.a.version")


def test_secrets_rotate_and_ids_expire_with_the_feedback_window():
    old = Ownership([A], 30 * DAY)
    rid = old.request_id("cmpl", "alice", now=time.time() - 2 * DAY)
    cid = old.choice_id(rid, 1, "v0001")
    rotated = Ownership([B, A], 30 * DAY)  # B signs now; A still verifies what it signed
    assert rotated.check_choice(cid, "alice", may_rate_others=False).policy_version == "v0001"
    new = rotated.choice_id(rotated.request_id("cmpl", "alice"), 0, "v0001")
    with pytest.raises(NeverServed):
        old.check_choice(new, "alice", may_rate_others=False)
    with pytest.raises(NeverServed, match="feedback window"):
        Ownership([A], 1 * DAY).check_choice(cid, "alice", may_rate_others=False)


def test_the_secret_is_generated_once_private_and_configured_ones_must_be_long(tmp_path):
    path = tmp_path / "gateway" / "ownership_secret"
    first = load_or_create_secrets([], path)
    assert load_or_create_secrets([], path) == first and path.stat().st_mode & 0o077 == 0
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_secrets([], path)
    with pytest.raises(ValidationError, match="16 characters"):
        GatewayConfig(ownership_secrets=["short"])
    assert load_or_create_secrets(GatewayConfig(ownership_secrets=["s" * 32]).ownership_secrets, path) == [
        b"s" * 32
    ]
