"""The operator's log lines: the kubernetes client's ApiException, whose str() is the whole HTTP
response, shows as one line wherever it appears (an argument, the message, a traceback)."""

from __future__ import annotations

import io
import json
import logging
import types
from collections.abc import Iterator

import pytest
from kubernetes.client.exceptions import ApiException
from spotrun_operator.__main__ import _logging, _ShortApiErrors
from spotrun_operator.api import Conflict, describe

ONE_LINE = 'HTTP 404 NotFound: namespaces "x" not found'


class Response:
    """What urllib3 hands the kubernetes client for a 404 on a namespace that does not exist."""

    status, reason = 404, "Not Found"
    data = json.dumps(
        {
            "kind": "Status",
            "status": "Failure",
            "reason": "NotFound",
            "code": 404,
            "message": 'namespaces "x" not found',
        }
    ).encode()

    def getheaders(self) -> dict[str, str]:
        return {"Audit-Id": "0f1e", "Content-Type": "application/json", "Date": "Wed, 02 Dec 2026 12:00:00 GMT"}


def not_found() -> ApiException:
    return ApiException(http_resp=Response())


@pytest.fixture
def output() -> Iterator[io.StringIO]:
    text = io.StringIO()
    handler = logging.StreamHandler(text)
    handler.addFilter(_ShortApiErrors())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("spotrun.test-logging")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield text
    finally:
        logger.removeHandler(handler)


def log_it(how: str) -> None:
    log = logging.getLogger("spotrun.test-logging")
    if how == "argument":
        log.warning("Failed to take the Lease ns/l: %s", not_found())
    elif how == "in the message":
        log.warning(f"Failed to take the Lease ns/l: {not_found()}")
    elif how == "traceback":
        try:
            raise not_found()
        except ApiException:
            log.exception("Reconciling TaskRun ns/t failed")
    elif how == "chained traceback":
        try:
            try:
                raise not_found()
            except ApiException as err:
                raise Conflict("lease ns/l was written by another replica") from err
        except Conflict:
            log.exception("Reconciling TaskRun ns/t failed")


def test_describe_renders_an_api_error_from_its_status_body() -> None:
    assert describe(not_found()) == ONE_LINE
    assert "HTTP response headers" in str(not_found())  # what it would have printed
    assert describe(ValueError("plain")) == "plain"


@pytest.mark.parametrize("how", ["argument", "in the message", "traceback", "chained traceback"])
def test_an_api_error_is_logged_as_one_line_without_the_http_dump(output: io.StringIO, how: str) -> None:
    log_it(how)
    text = output.getvalue()
    assert "HTTP response headers" not in text
    assert "HTTP response body" not in text
    assert ONE_LINE in text
    assert len(text.strip().splitlines()) <= 2, text  # the line, and for a traceback one line more


def test_every_logger_of_the_process_logs_api_errors_as_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    before = root.handlers[:], root.level
    try:
        _logging(types.SimpleNamespace(log_format="text"))  # type: ignore[arg-type]
        logging.getLogger("kopf.objects").warning("Handler failed: %s", not_found())
    finally:
        root.handlers[:], root.level = before[0], before[1]
    text = capsys.readouterr().err
    assert ONE_LINE in text
    assert "HTTP response headers" not in text
