"""Scorecards, alerts and anomalies: the numbers come to the client by email or webhook.

- ``schedule``: periods (yesterday, last 7 days, month to date…) and cadences (daily,
  weekly on a weekday, monthly) at a local time in the tenant's time zone.
- ``config``: scorecards, alert rules and their recipients (addresses and webhook URLs
  encrypted at rest), the tenant's time zone and its opt-in to a dashboard link.
- ``anomaly``: median and MAD per weekday over the last weeks: what a metric's own
  history predicts.
- ``evaluate``: a scorecard's figures and an alert rule's verdict from the warehouse's
  aggregates (nothing else), and the anomalies the dashboard marks.
- ``content``: what a message says, as data: figures and sentences, no markup.
- ``messages``: a message as email (HTML with a plain-text part) and as a
  Slack-compatible webhook payload.
- ``delivery``: the outbox: one row per scheduled message and recipient (an
  idempotency key), sent over SMTP or HTTP, each outcome recorded and audited.
- ``unsubscribe``: one-time tokens that stop a recipient's deliveries.
- ``runner``: what one Dagster run (or ``writevue scorecard send-now``) does.
"""
