"""Sending deliveries through the providers of email, SMS, push and webhooks.

The order of every send, one module each:

1. **Claim** (``claim.py``) a chunk of deliveries by compare-and-set (pending or retrying,
   due, not claimed by a live sender) and commit the claim *before* any provider call.
   The claim's exact expiry time is its token.
2. **Prepare** (``prepare.py``) outside any transaction: suppression list, SMS abuse
   limits, addresses, devices, templates, and the targets an earlier attempt already
   reached. What cannot be sent fails or is suppressed here.
3. **Call** (``call.py``) the providers from a thread pool: breaker, pacing, one call per
   target, failover to the channel's next provider on transient errors or an open breaker.
4. **Record** (``record.py``) every outcome in one transaction, guarded by the claim
   token: attempts, status (notifications/states.py), durable retry rows, dead letters,
   feedback (dead tokens, bounces).

``send.py`` runs the four for a dispatch batch. The duplicate window is step 3 to step 4:
a sender killed after a provider accepted and before the record commits leaves a claimed
delivery that is sent again once the claim expires. It is measured by the kill -9
benchmark and reported in docs/benchmarks.md.
"""
