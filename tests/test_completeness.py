"""What a report is asked for, and how the reporter wants to be credited."""

from __future__ import annotations

from seclistd.workflows import completeness as c

FULL = """The config parser in version 1.4.2 has a heap overflow that allows a remote
unauthenticated attacker to execute code by uploading a crafted file to the /api/import
endpoint, which a default installation exposes to the network.
Steps to reproduce:
1. start the server
2. curl -F f=@poc.cfg http://localhost/api/import
No third-party software is involved.
Please credit me as Jane Doe (GitHub @janedoe)."""


def test_a_complete_report_lacks_nothing_and_a_bare_one_lacks_everything():
    assert c.missing(FULL, []) == []
    assert c.missing("your app is broken", []) == [
        c.DESCRIPTION, c.VERSIONS, c.REPRODUCTION, c.ATTACK_SURFACE, c.THIRD_PARTY]


def test_an_attached_proof_of_concept_counts_as_reproduction():
    assert c.REPRODUCTION in c.missing("It breaks.", ["notes.txt"])
    assert c.REPRODUCTION not in c.missing("It breaks.", ["exploit.py"])


def test_credit_wishes():
    assert c.credit(FULL, "J") == c.Credit(name="Jane Doe", github="janedoe")
    assert c.credit("Credit: Jane Doe @jdoe", "J") == c.Credit(name="Jane Doe", github="jdoe")
    assert c.credit("my work: github.com/octo-cat", "Rita") == c.Credit("Rita", "octo-cat")
    assert c.credit("I prefer to stay anonymous.", "Rita") == c.Credit(name="", github=None)
    assert c.credit("curl -F f=@poc.cfg http://x", "Rita") is None  # a file, not a handle
    assert c.credit("Thanks!", "Rita") is None


def test_how_to_be_credited_is_not_a_requirement():
    # The credit wish is an optional question of the receipt, never missing information.
    assert c.missing(FULL.replace("Please credit me as Jane Doe (GitHub @janedoe).", ""),
                     []) == []


def test_only_a_stated_wish_counts():
    # "anonymous" describing the attacker is no wish not to be named.
    assert c.credit("An anonymous user can upload files and gain admin access.", "Rita") is None
    assert c.credit("Credit: anonymous", "Rita") == c.Credit(name="", github=None)
    assert c.credit("Please keep me anonymous.", "Rita") == c.Credit(name="", github=None)
    assert c.credit("Please credit me.", "Rita") == c.Credit(name="Rita", github=None)
    # Asked to be credited, but no name to credit: not a wish for anonymity.
    assert c.credit("Please credit me.", "") is None
