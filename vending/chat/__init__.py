"""Chat-ops apps: approval cards in Google Chat and Slack, clicks turned into signed approvals.

- ``settings``: the apps' own ``CHATOPS_*`` settings (validated once, at first use).
- ``core``: platform-neutral: the card of an access request, a click turned into the existing
  signed approval message (IAM ``signJwt`` as the bot account), replay records, JSON errors.
- ``google_chat``: verifies Chat's bearer token, maps the clicking user, renders Chat cards, posts
  them with the Chat API client (``google-apps-chat``).
- ``slack``: verifies Slack's v0 request signature, maps the Slack user, renders Block Kit, posts
  with ``slack_sdk``.
- ``notifier``: the Pub/Sub function on the notifications (and alerts) topic: posts, updates and
  tells, once per event.
- ``wiring``: builds the pieces, once per instance.

The apps hold no credential for any target: their only power is to have the bot's service account
sign an approval message, which the service verifies and decides (``vending.pubsub``).
"""
