"""Log lines: new-api's format, levels split between stdout and stderr, request ids, log files."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from tollway.ops.logging import configure_logging, request_id_var
from tollway.ops.request_id import new_request_id

LINE = re.compile(r"^\[(INFO|WARN|ERR|DEBUG)\] \d{4}/\d{2}/\d{2} - \d{2}:\d{2}:\d{2} \| (\S+) \| (.*)$")


@pytest.fixture(autouse=True)
def _restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield None
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def test_levels_go_to_the_right_stream_in_the_gateway_format(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(debug=False)
    log = logging.getLogger("tollway.test")
    token = request_id_var.set("20261130010203123456789abcdEFGH")
    try:
        log.debug("hidden debug line")
        log.info("an info line")
        log.warning("a warning line")
        log.error("an error line")
    finally:
        request_id_var.reset(token)
    log.info("outside any request")
    out, err = capsys.readouterr()
    out_lines, err_lines = out.splitlines(), err.splitlines()
    assert [LINE.match(line).group(1, 2, 3) for line in out_lines] == [  # type: ignore[union-attr]
        ("INFO", "20261130010203123456789abcdEFGH", "an info line"),
        ("INFO", "SYSTEM", "outside any request"),
    ]
    assert [LINE.match(line).group(1, 3) for line in err_lines] == [  # type: ignore[union-attr]
        ("WARN", "a warning line"),
        ("ERR", "an error line"),
    ]
    assert "hidden debug line" not in out + err


def test_debug_lines_only_with_debug(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(debug=True)
    logging.getLogger("tollway.test").debug("visible debug line")
    out, _ = capsys.readouterr()
    assert re.search(r"^\[DEBUG\] .* \| SYSTEM \| visible debug line$", out, re.MULTILINE)


def test_log_directory_receives_every_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(debug=False, log_dir=str(tmp_path / "logs"))
    logging.getLogger("tollway.test").info("to the file too")
    logging.getLogger("tollway.test").error("errors as well")
    for handler in logging.getLogger().handlers:
        handler.flush()
    files = list((tmp_path / "logs").glob("tollway-*.log"))
    assert len(files) == 1
    text = files[0].read_text()
    assert "| SYSTEM | to the file too" in text and "[ERR]" in text
    capsys.readouterr()


def test_request_ids_have_new_apis_shape_and_are_unique() -> None:
    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for request_id in list(ids)[:50]:
        assert re.fullmatch(r"\d{14}\d{1,9}[0-9A-Za-z]{8}", request_id)
