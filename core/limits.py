"""The domain's limits, defined once: every schema, wire model and setting that needs one imports it.

They live in the ground (not beside the event schemas in feedback/events.py) because the typed
configuration, which every package stands on, validates against them too.
"""

MIN_K = 2  # a ranking compares at least two candidates ...
MAX_K = 9  # ... and at most nine (InstructGPT's K = 4..9); also the most `n` one request may ask for
MAX_TEXT_CHARS = 16_384  # a demonstration or any other user-written text
MAX_ID_CHARS = 128  # choice ids, request ids and idempotency keys sent by clients
MAX_BATCH_ITEMS = 100  # feedback items in one batch request
