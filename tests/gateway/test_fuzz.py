"""Property-based fuzzing of the gateway's OpenAPI (schemathesis) against the real gateway: whatever
a client sends within or around the schema, the answer is never a server error, and every 4xx is an
OpenAI-style JSON error.

(schemathesis' pytest fixture loader does not run under pytest 9, so the test drives its Hypothesis
strategies itself, one operation after another.)"""

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.conftest import ADMIN_KEY, FUZZ_KEY

# Routes that change what is served are exercised by explicit tests (tests/gateway/test_swap.py);
# fuzzing them would swap the session's shared gateway under the other tests.
CHANGES_DEPLOYMENT = r"^/admin/(policy|canary|rollback)"


def check(case) -> None:
    key = ADMIN_KEY if case.path.startswith("/admin") else FUZZ_KEY
    response = case.call(headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
    if 400 <= response.status_code < 500:
        error = response.json()["error"]
        assert {"message", "type", "param", "code"} <= error.keys() and error["message"], response.text[:500]


def test_no_server_errors_and_openai_shaped_refusals(gateway):
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json").exclude(
        path_regex=CHANGES_DEPLOYMENT
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    for operation in operations:
        for mode in GenerationMode:  # bodies that fit the schema, and bodies that break it
            run = settings(
                max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck)
            )(given(case=operation.as_strategy(mode))(check))
            try:
                run()
            except Unsatisfiable:  # an operation with no inputs (GET /healthz) has no invalid form
                assert mode is GenerationMode.NEGATIVE, operation.label
