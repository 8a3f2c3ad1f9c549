"""kidrr serve against its own OpenAPI document: schemathesis generates requests from /openapi.json
(valid and invalid ones) and runs all of its checks on every answer: no 5xx, status codes, content
types, headers and bodies as documented, invalid data refused. Bounded and derandomised: about 25
requests per operation, the same ones every run.

One setting, with its reason: a schema-valid request may also be answered 422 (documented as
`invalid_input`), because some values are valid in form but not usable by this model and gallery,
which no JSON schema can say: a caption whose words the vocabulary does not know, k above the
gallery's size, images of different region counts in one request.
"""
import pytest

schemathesis = pytest.importorskip("schemathesis", reason="the test extra (pip install -e '.[test]') installs it")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from serve_helpers import built, rt  # noqa: E402,F401 (fixtures)
from kidrr.serve.api import create_app  # noqa: E402
from kidrr.serve.catalog import open_catalog  # noqa: E402
from kidrr.serve.engine import LocalEngine  # noqa: E402
from kidrr.serve.settings import Limits, Settings  # noqa: E402

EXAMPLES = 25


@pytest.fixture(scope="module")
def service(built, rt):  # noqa: F811
    # Small limits keep generated bodies small (and the run fast); the schema carries them.
    conf = Settings(limits=Limits(max_items=3, max_regions=6, max_caption_chars=80, max_k=20, max_shortlist=40))
    catalog, sources = open_catalog(rt, [built[1]], 1, built[2], built[3])
    app = create_app(LocalEngine(rt, catalog, sources, conf), conf)
    with TestClient(app) as client:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        from schemathesis.config._checks import PositiveDataAcceptanceConfig
        acceptance = PositiveDataAcceptanceConfig()
        schema.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
            expected_statuses=list(acceptance.expected_statuses) + ["422"])
        yield schema, client


def _operations(schema):
    return [result.ok() for result in schema.get_all_operations()]


def test_every_operation_passes_all_schemathesis_checks(service):
    schema, client = service
    failures = []
    for operation in _operations(schema):
        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
        @given(case=operation.as_strategy())
        def check(case):
            case.call_and_validate(session=client)
        try:
            check()
        except BaseException as exc:   # schemathesis reports a group of failures per operation
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
