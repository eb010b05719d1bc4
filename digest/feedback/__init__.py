"""SES feedback: SNS signatures (`sns`), SES events parsed (`ses`) and applied to deliveries
and suppressions (`apply`), and the webhook that receives them (`webhook`).

An event is recorded in `feedback_events` in the same transaction as its effects; with an SNS
MessageId it is recorded at most once, so an SNS retry changes nothing. Events find their
delivery by the provider message id, else by the `run_id` tag SES echoes back; an event that
matches nothing is kept as an orphan, and still suppresses the addresses it names.

Effects: Delivery -> `delivered` (and resets the address's transient bounce streak);
permanent Bounce -> `bounced` + suppression; transient (or undetermined) Bounce -> `bounced`,
and `transient_limit` in a row suppress; Complaint -> `complained` + suppression + the
matched user unsubscribed; Reject -> `rejected`; DeliveryDelay -> `deferred`; Send -> none.
A status never moves backwards: a late Delivery does not undo a Complaint.
"""
