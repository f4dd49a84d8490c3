"""Property-based fuzzing of the labeling JSON API over its own OpenAPI schema (schemathesis
strategies driven by hypothesis): whatever request is generated, with an admin's or a labeler's
token, the answer is a 2xx or a 4xx with a one-line `error` message, never a server error.
The number of examples per operation is bounded (and derandomized, so every run sends the same
requests) to keep the test well under a minute; it prints how many requests it sent."""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from label_fixtures import make_api

EXAMPLES = 25  # per operation and per credential


def _fuzz(op, headers: dict[str, str], sent: Counter) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(), real=st.booleans(), aid=st.integers(1, 12))
    def run(case, real: bool, aid: int) -> None:
        if real and case.path_parameters:  # half the time, aim at things that exist
            case.path_parameters = {**case.path_parameters,
                                    **{k: v for k, v in (("name", "demo"), ("assignment_id", aid))
                                       if k in case.path_parameters}}
        response = case.call(headers=headers)
        sent[response.status_code // 100] += 1
        where = (case.method, case.formatted_path, case.body, response.text[:300])
        assert response.status_code < 500, where
        if response.status_code >= 400:
            error = response.json().get("error")
            assert isinstance(error, str) and error and "\n" not in error, where

    run()


def test_json_api_answers_2xx_or_a_clear_4xx_never_5xx(tmp_path, capsys):
    api = make_api(str(tmp_path / "fuzz.db"))
    for kind in ("comparison", "rating", "demonstration"):  # assignments to aim at
        api.next_of_kind(kind)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", api.client.app)
    ops = [r.ok() for r in schema.get_all_operations()]
    ops = [op for op in ops if op.path.startswith("/api/")]
    sent: Counter = Counter()
    for op in ops:
        for headers in (api.admin, api.labeler):
            _fuzz(op, headers, sent)
    api.store.close()
    total = sum(sent.values())
    with capsys.disabled():
        print(f"\nfuzz: {len(ops)} operations, {total} generated requests, by status class "
              f"{ {f'{k}xx': v for k, v in sorted(sent.items())} }")
    assert total >= len(ops) * 10 and sent[5] == 0
