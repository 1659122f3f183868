"""The chat apps' settings (validated, secrets never echoed) and the cold start of ``vend_http``
(which must not pay for slack_sdk or google-apps-chat)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vending.chat.settings import load_chat_settings
from vending.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_importing_main_loads_no_chat_library() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VENDING_", "CHATOPS_"))}
    code = (
        "import sys, main\n"
        "heavy = [m for m in sys.modules if m.startswith(('slack_sdk', 'google.apps', 'vending.chat'))]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_defaults_turn_both_platforms_off() -> None:
    s = load_chat_settings({})
    assert not s.google_enabled and not s.slack_enabled


@pytest.mark.parametrize(
    "env,names",
    [
        ({"CHATOPS_SLACK_SIGNING_SECRET": "s3cr3t-value-that-must-not-echo"}, "CHATOPS_SLACK_BOT_TOKEN"),
        ({"CHATOPS_SLACK_API_URL": "http://slack.example/api/"}, "CHATOPS_SLACK_API_URL"),
        ({"CHATOPS_APPROVALS_TOPIC": "approvals"}, "CHATOPS_APPROVALS_TOPIC"),
        ({"CHATOPS_GOOGLE_ANONYMOUS": "1"}, "CHATOPS_GOOGLE_ANONYMOUS"),
        ({"CHATOPS_SLACK_USERS": "not json"}, "CHATOPS_SLACK_USERS"),
        ({"CHATOPS_SLACK_USER": "{}"}, "CHATOPS_SLACK_USER"),
        ({"CHATOPS_STORE": "redis:x"}, "CHATOPS_STORE"),
        ({"CHATOPS_MESSAGE_TTL_S": "3600"}, "CHATOPS_MESSAGE_TTL_S"),
    ],
)
def test_a_bad_setting_names_its_variable_and_never_echoes_a_secret(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_chat_settings(env)
    message = caught.value.message
    assert message.startswith(names), message
    assert "s3cr3t" not in message


def test_secrets_are_kept_out_of_the_settings_repr() -> None:
    s = load_chat_settings(
        {"CHATOPS_SLACK_SIGNING_SECRET": "s3cr3t-signing", "CHATOPS_SLACK_BOT_TOKEN": "xoxb-s3cr3t-token"}
    )
    assert s.slack_enabled
    assert "s3cr3t" not in repr(s) and "s3cr3t" not in str(s.model_dump())
