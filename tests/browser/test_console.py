"""The web console in a real browser (issue 15): Chromium driven by Playwright against the running service.

The stack is the client tests' (``tests/functional/test_client.py``): functions-framework serving
``vend_http`` and ``handle_pubsub`` as subprocesses on the example policy, the development issuer
and the IAM stand-in, on free ports. Each person has a browser context of their own (their own
cookie jar) and signs in through the page with the development sign-in. Pages are reached by their
accessible names only: links "Requests", "Approvals", "Credentials"; buttons "Sign in", "Request
access", "Approve", "Deny", "Withdraw", "Revoke".
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.functional import test_client
from tests.functional.test_client import Stack

stack = test_client.stack  # the module-scoped stack fixture

PROD_SA = "prod-admin@local-project.iam.gserviceaccount.com"
DAVE, ERIN, FRANK = "dave@example.com", "erin@example.com", "frank@example.com"
ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
ONCALL = "oncall@example.com"
WHY = "TICKET-42: rotate the signing keys"


class Person:
    """One person's browser context, signed in to the console."""

    def __init__(self, browser: Any, stack: Stack, subject: str) -> None:
        self.subject = subject
        self.context = browser.new_context(base_url=stack.url, viewport={"width": 1360, "height": 820})
        self.page = self.context.new_page()
        self.page.set_default_timeout(15000)
        self.console_errors: list[str] = []
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.first_response = self.page.goto("/console/")
        self.page.get_by_label("Subject (development issuer)").fill(subject)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.get_by_text(f"local-dev/{subject}").first.wait_for()
        self.rendered(0)

    def renders(self) -> int:
        return int(self.page.locator("#main").get_attribute("data-renders") or 0)

    def rendered(self, before: int) -> None:
        """Wait until the page finished a render after the ``before``-th (views render asynchronously)."""
        self.page.wait_for_function("n => Number(document.querySelector('#main').dataset.renders || 0) > n", arg=before)

    def open(self, link: str) -> Any:
        before = self.renders()
        self.page.get_by_role("link", name=link, exact=True).click()
        self.rendered(before)
        self.page.get_by_role("heading", name=link, level=1).wait_for()
        return self.page

    def row(self, request_id: str) -> Any:
        return self.page.locator(f'tr[data-request="{request_id}"]')

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def people(chromium: Any, stack: Stack) -> Iterator[Any]:
    made: list[Person] = []

    def sign_in(subject: str) -> Person:
        person = Person(chromium, stack, subject)
        made.append(person)
        return person

    yield sign_in
    for person in made:
        assert not [e for e in person.console_errors if "Content Security Policy" in e], person.console_errors
        person.close()


def file_request(person: Person, entitlement: str = "prod-admin", justification: str = WHY) -> str:
    page = person.open("Requests")
    page.get_by_label("Entitlement").select_option(entitlement)
    page.get_by_label("Justification").fill(justification)
    page.get_by_role("button", name="Request access").click()
    status = page.get_by_role("status")
    status.filter(has_text="filed").wait_for()
    request_id = re.search(r"Request ([a-f0-9]{32}) filed", status.inner_text())
    assert request_id, status.inner_text()
    person.row(request_id.group(1)).wait_for()
    return request_id.group(1)


def test_request_two_approvals_vend_with_the_client_and_the_credential_counts_down(
    people: Any, stack: Stack, screenshot: Any
) -> None:
    # GIVEN dave files a request for prod-admin (two approvers)
    dave = people(DAVE)
    rid = file_request(dave)
    assert dave.row(rid).get_by_text("APPROVAL_AWAITED").is_visible()
    screenshot(dave.page, "requests")
    # WHEN alice and bob approve it, each in their own session
    for subject in (ALICE, BOB):
        approver = people(subject)
        page = approver.open("Approvals")
        row = approver.row(rid)
        assert row.get_by_text(f"local-dev/{DAVE}").is_visible() and row.get_by_text(WHY).is_visible()
        assert re.search(r"\d+(s| min) ago", row.inner_text())
        if subject == ALICE:
            screenshot(page, "approvals")
        row.get_by_role("button", name="Approve").click()
        page.get_by_role("status").filter(has_text=f"Request {rid[:8]}").wait_for()
    # THEN dave sees it ACTIVE
    dave.open("Requests")
    dave.row(rid).get_by_text("ACTIVE", exact=True).wait_for()
    # WHEN he vends with the client
    vend = stack.run(
        "token", *stack.as_(DAVE), "--service-account", PROD_SA, "--access-request", rid, "--lifetime", "10m"
    )
    assert vend.returncode == 0, vend.stderr
    token = json.loads(vend.stdout)["access_token"]
    issuance_id = json.loads(vend.stdout)["issuance_id"]
    # THEN the credential is on his Credentials page with a live countdown, and the token is nowhere in the page
    page = dave.open("Credentials")
    row = page.locator(f'tr[data-issuance="{issuance_id}"]')
    row.get_by_text("active", exact=True).wait_for()
    countdown = row.locator(".countdown")
    first = countdown.inner_text()
    assert re.fullmatch(r"(9m 5\d|10m 00)s left", first), first
    page.wait_for_function("([el, before]) => el.textContent !== before", arg=[countdown.element_handle(), first])
    assert token not in page.content()
    screenshot(page, "credentials")
    # AND its page shows the metadata and the SHA-256, never the token
    row.get_by_role("link", name=issuance_id[:8]).click()
    page.get_by_role("heading", name=f"Credential {issuance_id[:8]}").wait_for()
    assert hashlib.sha256(token.encode()).hexdigest() in page.content() and token not in page.content()
    # AND the state badge carries the class the style sheet colours
    page.get_by_role("link", name="← all credentials").click()
    badge = page.locator(f'tr[data-issuance="{issuance_id}"] .badge')
    assert badge.get_attribute("class") == "badge state-active"
    assert badge.evaluate("el => getComputedStyle(el).color") == "rgb(30, 122, 60)"


def test_nobody_approves_their_own_request(people: Any) -> None:
    # GIVEN alice, an approver of prod-admin, files a request of her own
    alice = people(ALICE)
    rid = file_request(alice, justification="TICKET-7: her own change")
    # THEN her inbox lists it without an Approve button
    page = alice.open("Approvals")
    row = alice.row(rid)
    row.get_by_text("your own request").wait_for()
    assert row.get_by_role("button", name="Approve").count() == 0
    assert row.get_by_role("button", name="Deny").count() == 0
    # AND the API refuses it even when called from her session with the CSRF token
    answer = page.evaluate(
        """async (rid) => {
        const s = await (await fetch('/console/session')).json();
        const r = await fetch(`/v1/requests/${rid}:approve`, {method: 'POST', headers: {
            'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf_token}});
        return [r.status, (await r.json()).error.reason];
    }""",
        rid,
    )
    assert answer == [403, "self-approval"]
    # AND bob, another approver, does get the button
    bob = people(BOB)
    bob.open("Approvals")
    assert bob.row(rid).get_by_role("button", name="Approve").is_visible()


def test_a_denial_with_its_comment_shows_to_the_requester(people: Any, screenshot: Any) -> None:
    erin = people(ERIN)
    rid = file_request(erin, justification="TICKET-9: widen the firewall")
    carol = people(CAROL)
    carol.open("Approvals")
    row = carol.row(rid)
    row.get_by_label(f"Comment on {rid[:8]}").fill("No change ticket in the calendar")
    row.get_by_role("button", name="Deny").click()
    carol.page.get_by_role("status").filter(has_text="DENIED").wait_for()
    # THEN erin sees DENIED and carol's comment
    erin.open("Requests")
    mine = erin.row(rid)
    mine.get_by_text("DENIED", exact=True).wait_for()
    assert "Denied by local-dev/carol@example.com: “No change ticket in the calendar”" in mine.inner_text()
    screenshot(erin.page, "denied")


def test_break_glass_shows_a_banner_on_every_page_until_withdrawn(people: Any, screenshot: Any) -> None:
    # GIVEN on-call breaks the glass
    oncall = people(ONCALL)
    rid = file_request(oncall, "prod-break-glass", "INC-7: database on fire")
    oncall.row(rid).get_by_text("ACTIVE", exact=True).wait_for()
    # THEN every page, for everyone, carries the alert: who and until when
    frank = people(FRANK)
    for person in (oncall, frank):
        for link in ("Requests", "Approvals", "Credentials"):
            page = person.open(link)
            alert = page.get_by_role("alert")
            alert.wait_for()
            text = alert.inner_text()
            assert "Break-glass" in text and f"local-dev/{ONCALL}" in text and re.search(r"until \d{4}-\d\d-\d\d", text)
            if person is frank and link == "Approvals":
                screenshot(page, "break-glass")
    # WHEN on-call withdraws it  THEN the banner goes
    page = oncall.open("Requests")
    oncall.row(rid).get_by_role("button", name="Withdraw").click()
    page.get_by_role("status").filter(has_text="WITHDRAWN").wait_for()
    frank.open("Requests")
    assert frank.page.get_by_role("alert").count() == 0


def test_an_approver_revokes_and_the_page_keeps_no_credential_in_the_browser(people: Any) -> None:
    dave = people(DAVE)
    rid = file_request(dave, justification="TICKET-11: one more change")
    bob = people(BOB)
    bob.open("Approvals")
    bob.row(rid).get_by_role("button", name="Revoke").click()
    bob.page.get_by_role("status").filter(has_text="REVOKED").wait_for()
    # THEN nothing of the session is readable by script, nor kept in browser storage
    stored = dave.page.evaluate("() => [document.cookie, localStorage.length, sessionStorage.length]")
    assert stored == ["", 0, 0]
    [cookie] = dave.context.cookies()
    assert cookie["name"] == "__Host-vending-session" and cookie["httpOnly"] and cookie["secure"]
    assert cookie["sameSite"] == "Strict" and cookie["path"] == "/"
    headers = dave.first_response.headers
    assert headers["content-security-policy"].startswith("default-src 'self'; script-src 'self'; style-src 'self'")
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff" and headers["referrer-policy"] == "no-referrer"


def test_sign_out_ends_the_session(people: Any) -> None:
    erin = people(ERIN)
    [cookie] = erin.context.cookies()
    erin.page.get_by_role("button", name="Sign out").click()
    erin.page.get_by_role("heading", name="Sign in").wait_for()
    erin.page.reload()
    erin.page.get_by_role("heading", name="Sign in").wait_for()
    # AND the old cookie, replayed by hand, is refused
    replay = erin.context.request.get("/v1/whoami", headers={"Cookie": f"__Host-vending-session={cookie['value']}"})
    assert replay.status == 401 and replay.json()["error"]["reason"] == "session-ended"
