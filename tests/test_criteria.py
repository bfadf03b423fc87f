"""Membership criteria (issue 9, items 1 and 2): the presets, a list's own criteria from the
config, recognising a join request, and matching an applicant's answers to the criteria by
their text -- the policies' own example requests, and messy variants of them with the exact
missing lists."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from seclistd import config
from seclistd.config import ListSettings
from seclistd.workflows import criteria as C
from tests.components import report
from tests.hostile_inputs import ISSUE_KINDS, make

DATA = Path(__file__).resolve().parent / "data"
OCI = C.PRESETS["oci"]
K8S = C.PRESETS["kubernetes"]
OCI_IDS = ["alias", "userbase", "track_record", "not_downstream", "embargo", "contribute",
           "pgp", "vouch"]
K8S_IDS = ["alias", "maintained", "userbase", "track_record", "not_downstream", "participant",
           "embargo", "contribute", "pgp", "vouch", "link"]


def example(name: str) -> tuple[str, str]:
    """Subject and body of a policy's own example request (tests/data/join_NAME.eml)."""
    msg = email.message_from_bytes((DATA / f"join_{name}.eml").read_bytes(),
                                   policy=email.policy.default)
    return str(msg["Subject"]), msg.get_content()


OCI_SUBJECT, OCI_BODY = example("oci")
K8S_SUBJECT, K8S_BODY = example("kubernetes")


def oci_list(criteria: object = "oci") -> ListSettings:
    return ListSettings(name="distributors", address="distributors@example.org",
                        criteria=criteria)  # type: ignore[arg-type]


# -- the presets and the config ------------------------------------------------------------


def test_presets_cover_every_criterion_of_each_policy_in_our_words():
    assert [c.id for c in C.criteria_for(oci_list())] == OCI_IDS
    assert [c.id for c in C.criteria_for(oci_list("kubernetes"))] == K8S_IDS
    roles = {c.role: c.id for c in K8S if c.role}
    assert roles == {"contact": "alias", "embargo": "embargo", "contribute": "contribute",
                     "pgp": "pgp", "voucher": "vouch", "link": "link"}
    policies = OCI_BODY + K8S_BODY
    for c in K8S:
        assert c.text and c.phrases
        assert c.text not in policies  # our own wording, not the policy's sentences


def test_own_criteria_from_the_config(tmp_path: Path):
    text = """
[project]
name = "X"
security_address = "security@example.org"
[imap]
enabled = false
[[lists]]
name = "distributors"
address = "distributors@example.org"
criteria = [
  { id = "contact", text = "A monitored security address.", phrases = ["security alias"] },
  { id = "keys", text = "You read OpenPGP-encrypted mail." },
  { id = "sponsor", text = "A member who vouches for you.", role = "voucher" },
]
[[lists]]
name = "plain"
address = "plain@example.org"
criteria = ["Ship security fixes.", "Someone on the list vouches for you."]
"""
    settings = config.parse("t.toml", text)
    own = C.criteria_for(settings.lists[0])
    assert [(c.id, c.role) for c in own] == [("contact", "contact"), ("keys", "pgp"),
                                             ("sponsor", "voucher")]
    assert own[0].phrases == ("security alias",)
    plain = C.criteria_for(settings.lists[1])
    assert [(c.id, c.text, c.role) for c in plain] == [
        ("c1", "Ship security fixes.", ""), ("c2", "Someone on the list vouches for you.",
                                             "voucher")]
    answers = C.match_answers("> A monitored security address\nsec@acme.example\n\n"
                              "> A member who vouches for you\nJane Doe\n", own)
    assert answers.missing == ["keys"]
    assert C.voucher_named(answers, own) == "Jane Doe"


def test_bad_own_criteria_are_reported_with_what_is_expected():
    text = """
[project]
name = "X"
security_address = "security@example.org"
[imap]
enabled = false
[[lists]]
name = "d"
address = "d@example.org"
criteria = [
  { id = "a", text = "One." },
  { id = "a", text = "Two." },
  { id = "b", text = "  " },
  { id = "Bad Id", text = "Three.", colour = "red" },
  { id = "c", text = "Four.", role = "boss", phrases = "x" },
  42,
]
[[lists]]
name = "e"
address = "e@example.org"
criteria = "debian"
"""
    with pytest.raises(config.ConfigError) as err:
        config.parse("t.toml", text)
    problems = err.value.problems
    expected = [
        "t.toml: lists[0].criteria[1].id: 'a' is used twice, expected each id once",
        "t.toml: lists[0].criteria[2].text: '  ' is empty or missing, expected the criterion "
        "in your own words",
        "t.toml: lists[0].criteria[3].colour: unknown key, expected id, text, phrases or role",
        "t.toml: lists[0].criteria[3].id: 'Bad Id' is not a criterion id",
        "t.toml: lists[0].criteria[4].phrases: 'x' is not a list",
        "t.toml: lists[0].criteria[4].role: 'boss' is not allowed, expected one of",
        "t.toml: lists[0].criteria[5]: 42 is not allowed, expected a criterion text or",
        "t.toml: lists[1].criteria: 'debian' is not allowed, expected \"oci\", \"kubernetes\"",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in problems), (line, problems)
    assert len(problems) == len(expected), problems


# -- the policies' own example requests ------------------------------------------------------


@pytest.mark.parametrize(("subject", "body", "criteria"),
                         [(OCI_SUBJECT, OCI_BODY, OCI), (K8S_SUBJECT, K8S_BODY, K8S)],
                         ids=["oci", "kubernetes"])
def test_the_policies_example_requests_answer_everything(subject, body, criteria):
    answers = C.match_answers(body, criteria)
    assert answers.missing == []
    assert answers.answers["alias"].startswith("Yes, please subscribe ")
    assert answers.answers["embargo"] == "We accept."
    assert answers.answers["pgp"] == "Yes."
    assert answers.answers["not_downstream"] == ('This does not apply, "Seven" is a unique '
                                                 'snowflake distribution.')
    assert C.voucher_named(answers, criteria) == (
        'CrashOverride will vouch for Acidburn joining the list on behalf of the "Seven"\n'
        'distribution.')
    assert C.looks_like_join_request(subject, body, criteria)
    assert C.looks_like_join_request("hello", body, criteria)  # the body alone says so
    assert C.organization_of(subject, body) == "Seven-Corp"
    assert C.organization_of("", body) == "Seven-Corp"  # "we, Seven-Corp, qualify"


def test_kubernetes_last_answer_is_the_pull_request_link():
    answers = C.match_answers(K8S_BODY, K8S)
    assert answers.answers["link"].startswith("https://github.com/kubernetes/sig-release/")
    assert "Gibson" in answers.answers["participant"]


# -- messy variants, each with its exact missing list -----------------------------------------


def variant(*items: tuple[str, str], head: str = "Hello security team,\n\n") -> str:
    return head + "\n".join(f"{copy}\n{answer}\n" for copy, answer in items)


RENUMBERED_UNQUOTED = variant(
    ("1. Have an actively monitored security alias email for our project.",
     "security@acme.example"),
    ("2. Have a user base not limited to your own organization.", "Thousands of users."),
    ("3. Have a publicly verifiable track record up to present day of fixing security\n"
     "   issues.", "See https://acme.example/advisories"),
    ("4. Not be a downstream or rebuild of another distribution.", "We are not."),
    ("5. Accept the Embargo Policy that is outlined above.", "We accept."),
    ("6. Be willing to contribute back as outlined above.", "Yes, gladly."),
    ("7. Be willing and able to handle PGP-encrypted email.", "Yes."),
    ("8. Have someone already on the list vouch for the person requesting membership\n"
     "   on behalf of your distribution.", "Jane Doe <jane@member.example>"))


def test_renumbered_without_quotes():
    answers = C.match_answers(RENUMBERED_UNQUOTED, OCI)
    assert answers.missing == []
    assert answers.answers["track_record"] == "See https://acme.example/advisories"
    assert answers.answers["vouch"] == "Jane Doe <jane@member.example>"


def test_repeated_numbers_and_shuffled_order():
    # The OCI policy numbers every item "1." in its Markdown; an applicant copies that.
    body = variant(
        ("1. Be willing and able to handle PGP-encrypted email.", "Yes."),
        ("1. Have an actively monitored security alias email for our project.",
         "security@acme.example"),
        ("1. Accept the Embargo Policy that is outlined above.", "We accept."),
        ("1. Have a user base not limited to your own organization.", "Yes, worldwide."))
    answers = C.match_answers(body, OCI)
    assert answers.missing == ["track_record", "not_downstream", "contribute", "vouch"]
    assert answers.answers == {"pgp": "Yes.", "alias": "security@acme.example",
                               "embargo": "We accept.", "userbase": "Yes, worldwide."}


def test_two_criteria_deleted_and_renumbered():
    body = OCI_BODY
    for gone in ("> 2. Have a publicly verifiable track record up to present day of fixing "
                 "security\n   issues.\n\nWe announce on our blog all upstream patches we apply "
                 "to \"Seven.\" [link to blog\nposts]\n",
                 "> 6. Be willing and able to handle PGP-encrypted email.\n\nYes.\n"):
        assert gone in body
        body = body.replace(gone, "")
    answers = C.match_answers(body.replace("> 7.", "> 5.").replace("> 5. Be", "> 4. Be"), OCI)
    assert answers.missing == ["track_record", "pgp"]
    assert answers.answers["contribute"] == "We are definitely willing to help!"


def test_empty_and_placeholder_answers_are_missing():
    body = variant(
        ("> Have an actively monitored security alias email for our project.", ""),
        ("> Have a user base not limited to your own organization.", "TBD"),
        ("> Have a publicly verifiable track record up to present day of fixing security "
         "issues.", "https://acme.example/security"),
        ("> Not be a downstream or rebuild of another distribution.", "[your answer]"),
        ("> Accept the Embargo Policy that is outlined above.", "We accept."),
        ("> Be willing to contribute back as outlined above.", "\n\n"),
        ("> Be willing and able to handle PGP-encrypted email.", "Yes."),
        ("> Have someone already on the list vouch for the person requesting membership",
         ""))
    answers = C.match_answers(body, OCI)
    assert answers.missing == ["alias", "userbase", "not_downstream", "contribute", "vouch"]
    assert C.voucher_named(answers, OCI) == ""


REWORDED = variant(
    ("> 1. Security contact: do you have a monitored alias?", "security@acme.example"),
    ("> 2. Is your user base bigger than your own company?", "Yes, 2 million installs."),
    ("> 3. Track record of fixing security issues (public)", "acme.example/advisories"),
    ("> 4. You are not a rebuild of another distribution", "Right, we build from source."),
    ("> 5. Do you agree to the embargo?", "We do."),
    ("> 6. Will you contribute back (patch review, release notes)?", "Sure."),
    ("> 7. Can you handle encrypted mail (PGP)?", "Yes, key attached."),
    ("> 8. Who vouches for you?", "Jane Doe from Example Linux."))


def test_reworded_criteria():
    answers = C.match_answers(REWORDED, OCI)
    assert answers.missing == []
    assert answers.answers["not_downstream"] == "Right, we build from source."
    assert C.voucher_named(answers, OCI) == "Jane Doe from Example Linux."


def test_quoted_differently_bold_headings_and_criterion_labels():
    body = variant(
        ("**Criterion 0: Have an actively monitored security alias email for our project.**",
         "security@acme.example"),
        ("## Have a user base not limited to your own organization", "Yes."),
        (">> (3) Have a publicly verifiable track record up to present day of fixing "
         "security issues.", "Our advisories: https://acme.example/sa"),
        ("#4 Not be a downstream or rebuild of another distribution.", "Not a rebuild."),
        ("- Accept the Embargo Policy that is outlined above.", "We accept."),
        ("Criterion 6) Be willing and able to handle PGP-encrypted email.", "Yes."),
        ("> > Have someone already on the list vouch for the person requesting\n"
         "> > membership on behalf of your distribution.", "Jane Doe"),
        head="")
    answers = C.match_answers(body, OCI)
    assert answers.missing == ["contribute"]
    assert answers.answers["track_record"] == "Our advisories: https://acme.example/sa"
    assert answers.answers["vouch"] == "Jane Doe"


def test_plain_copies_without_any_marker():
    body = ("Hi,\n\nHave an actively monitored security alias email for our project.\n"
            "security@acme.example\n\n"
            "Accept the Embargo Policy that is outlined above.\nWe accept it.\n\n"
            "Be willing and able to handle PGP-encrypted email.\nYes, our key is below.\n\n"
            "\nWe are willing to contribute back as outlined above.\n")
    answers = C.match_answers(body, OCI)
    assert answers.answers["alias"] == "security@acme.example"
    assert answers.answers["pgp"] == "Yes, our key is below."
    # A plain line that restates a criterion in the first person is copy and answer at once.
    assert answers.answers["contribute"] == "We are willing to contribute back as outlined above."
    assert answers.missing == ["userbase", "track_record", "not_downstream", "vouch"]


def test_garbled_copies_still_match():
    body = variant(
        ("> 0. Hve an activly monitred securty alais emial for our projcet.",
         "security@acme.example"),
        ("> 1. Have a usr base not limted to yuor own orgnization.", "Yes."),
        ("> 2. Hav a publcly verfiable trak record of fxing securiy isues.", "Yes, see blog."),
        ("> 4. Acept the Embrago Polcy that is outlind above.", "We accept."),
        ("> 6. Be wiling and able to handel PGP-encryted emial.", "Yes."),
        ("> 7. Have someone alredy on the list vuoch for the persn requsting membrship",
         "Jane Doe"))
    answers = C.match_answers(body, OCI)
    assert answers.missing == ["not_downstream", "contribute"]
    assert answers.answers["vouch"] == "Jane Doe"


def test_answers_on_the_same_line_as_the_criterion():
    body = ("1. Security alias: security@acme.example\n"
            "2. User base: worldwide, not limited to us\n"
            "3. Track record - https://acme.example/advisories\n"
            "5. Embargo policy: we accept\n"
            "6. PGP: yes\n"
            "7. Vouch: Jane Doe <jane@member.example>\n")
    answers = C.match_answers(body, OCI)
    assert answers.missing == ["not_downstream", "contribute"]
    assert answers.answers == {
        "alias": "security@acme.example", "userbase": "worldwide, not limited to us",
        "track_record": "https://acme.example/advisories", "embargo": "we accept",
        "pgp": "yes", "vouch": "Jane Doe <jane@member.example>"}
    # A label that is only a word some criterion uses ("disclosure date") is no copy.
    assert C.match_answers("Date: Thu, 19 Nov 2026\nSubject: embargo\n", OCI).answers == {}


def test_a_numbered_list_inside_an_answer_stays_in_the_answer():
    body = variant(
        ("> Have a user base not limited to your own organization.",
         "Our users:\n1. Banks\n2. Universities\n3. Hospitals"),
        ("> Accept the Embargo Policy that is outlined above.", "We accept."))
    answers = C.match_answers(body, OCI)
    assert answers.answers["userbase"] == "Our users:\n1. Banks\n2. Universities\n3. Hospitals"
    assert answers.answers["embargo"] == "We accept."


def test_signature_closing_quoted_text_and_pasted_key_are_not_answers():
    body = (OCI_BODY.rstrip("\n") + "\n\nThanks,\nAcidburn\n-- \nSeven-Corp security\n")
    answers = C.match_answers(body, OCI)
    assert answers.answers["vouch"].endswith('"Seven"\ndistribution.')
    keyed = OCI_BODY.replace("> 6. Be willing and able to handle PGP-encrypted email.\n\nYes.",
                             "> 6. Be willing and able to handle PGP-encrypted email.\n\nYes."
                             "\n> an old quoted line\n")
    assert C.match_answers(keyed, OCI).answers["pgp"] == "Yes."
    pasted = (variant(("> Be willing and able to handle PGP-encrypted email.", "Yes, here:"))
              + "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQENBF...\n"
              "-----END PGP PUBLIC KEY BLOCK-----\n")
    assert C.match_answers(pasted, OCI).answers["pgp"] == "Yes, here:"


def test_a_reply_completes_an_incomplete_request():
    first = C.match_answers(REWORDED.split("> 6.")[0], OCI)
    assert first.missing == ["contribute", "pgp", "vouch"]
    quoted = "\n".join(f"> - {text}" for text in C.describe_missing(first.missing, OCI))
    reply = (f"On Thu, 19 Nov 2026 seclistd wrote:\n{quoted}\n").replace(
        f"> - {C.describe_missing(['pgp'], OCI)[0]}",
        f"> - {C.describe_missing(['pgp'], OCI)[0]}\nYes, our key is attached.\n")
    second = C.merge_answers(first.answers, reply, OCI)
    assert second.missing == ["contribute", "vouch"]
    assert second.answers["pgp"] == "Yes, our key is attached."
    assert second.answers["alias"] == "security@acme.example"  # old answers stay

    reply = ("> A current member of the list vouches for the person asking to join\n"
             "> on behalf of your distribution. Name that member.\n"
             "Jane Doe <jane@member.example>\n\n"
             "> You are willing to contribute back (review and test proposed patches,\n"
             "> help draft announcements and release notes).\n"
             "Yes, we will review patches.\n\n"
             "> You can receive and handle mail encrypted with OpenPGP (PGP).\n"
             "Yes, new key attached.\n")
    third = C.merge_answers(second.answers, reply, OCI)
    assert third.missing == []
    assert third.answers["pgp"] == "Yes, new key attached."  # a new answer replaces
    assert C.voucher_named(third, OCI) == "Jane Doe <jane@member.example>"


def test_a_bare_reply_answers_the_only_missing_criterion():
    previous = {cid: "yes" for cid in OCI_IDS if cid != "vouch"}
    merged = C.merge_answers(previous, "Jane Doe will vouch for us.\n\nThanks,\nBob\n"
                             "> quoted earlier mail\n", OCI)
    assert merged.missing == []
    assert merged.answers["vouch"] == "Jane Doe will vouch for us."
    assert C.merge_answers({}, "Yes.", OCI).missing == OCI_IDS  # no guessing among many


def test_describe_missing_uses_our_words_in_order():
    texts = C.describe_missing(["pgp", "gone", "alias"], OCI)
    assert texts == [OCI[6].text, OCI[0].text]


# -- recognising a join request ------------------------------------------------------------


@pytest.mark.parametrize("subject", [
    "Seven-Corp Membership to distributors-announce@kubernetes.io",
    "Re: ACME membership request", "Request to join the distributors list",
    "Joining security-announce@opencontainers.org", "Application for membership"])
def test_join_subjects(subject: str):
    assert C.looks_like_join_request(subject, "Hi, how do we join?", OCI)


REPORTS = [
    ("Vulnerability number 1", report(1).decode().split("\r\n\r\n", 1)[1]),
    ("Heap overflow in config parser",
     "The config parser in version 1.4.2 has a heap overflow that allows a remote\n"
     "unauthenticated attacker to execute code by uploading a crafted file.\n"
     "Steps to reproduce:\n1. start the server\n2. curl -F f=@poc.cfg http://localhost/\n"
     "No third-party software is involved.\nPlease credit me as Jane Doe."),
    ("Membership check bypass in the admin API",
     "Users who are not members of an organization can join any team:\n"
     "1. Have a user account on the server (any organization).\n"
     "2. POST /api/teams/join with another organization's team id.\n"
     "3. The user is added to the team and sees its private security issues.\n"
     "Impact: a user outside the organization reads embargoed security advisories.\n"
     "Tested on version 2.3; the public track record shows the same class of bug fixed "
     "in 2.1.\nMy PGP key is attached; please reply encrypted."),
    ("Security issue: embargo dates leak through the RSS feed",
     "> Accept the embargo policy\nI saw this line on your site, and the RSS feed\n"
     "publishes advisories before the embargo ends.\nVersion 3.1.\n"),
]


@pytest.mark.parametrize(("subject", "body"), REPORTS, ids=[s for s, _ in REPORTS])
def test_ordinary_reports_are_not_join_requests(subject: str, body: str):
    assert not C.looks_like_join_request(subject, body, OCI)
    assert not C.looks_like_join_request(subject, body, K8S)


def test_organization_of():
    assert C.organization_of("Re: ACME Linux membership request", "") == "ACME Linux"
    assert C.organization_of("Request for membership", "Organization: Example GmbH\n") \
        == "Example GmbH"
    assert C.organization_of("hello", "hi") == ""


# -- bounded work --------------------------------------------------------------------------


def test_a_huge_body_of_criterion_fragments_returns():
    fragment = ("> 3. Have a publicly verifiable track record up to present day of fixing\n"
                "1) PGP: yes\n**Criterion 7: vouch** - Jane\n   " + "> " * 40 + "\n"
                + "embargo " * 30 + "\n")
    body = (fragment * (1024 * 1024 // len(fragment) + 1))[:1024 * 1024]
    answers = C.match_answers(body, K8S)
    assert answers.answers  # it returned, with the answers of its first 64 KB
    assert C.looks_like_join_request("x", body, K8S) in (True, False)
    assert C.merge_answers({}, body, OCI).answers
    assert C.match_answers("x" * 1024 * 1024, OCI).missing == OCI_IDS


@pytest.mark.parametrize("kind", ISSUE_KINDS)
def test_issue_8_hostile_bodies_return(kind: str):
    body = make(kind, 1024 * 1024).decode("utf-8", "replace")
    assert C.match_answers(body, K8S).missing == K8S_IDS
    assert not C.looks_like_join_request("hostile input", body, K8S)


def test_no_nul_reaches_an_answer():
    answers = C.match_answers("> PGP-encrypted email\nYes\x00.\n", OCI)
    assert answers.answers == {"pgp": "Yes."}
