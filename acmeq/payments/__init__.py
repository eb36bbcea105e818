"""The payments domain: donation completion with corporate matching and milestones, refunds,
provider events, and the gateway clients (Stripe, Mollie, PayPal).

Every money effect is decided by a unique key or a conditional UPDATE in SQL, so jobs may run
twice (RQ delivers at least once) without paying, matching or refunding twice.
"""
