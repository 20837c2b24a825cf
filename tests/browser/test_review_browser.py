"""The review page in a real headless Chromium, end to end.

A CNC served over OPC UA at 100× real time wears its spindle bearing after the warm-up; the
agent (``factory-agent run`` in its own process, InfluxDB 1.x sink, local history) opens an
episode. Then, in Chromium: the inbox lists it, its page shows the plot (the image really
loaded) and the explanation, and acknowledging it as a false alarm changes its state on the
page, in the journal and in InfluxDB (an annotation, and the episode's point acknowledged). About 60 s, most of it the simulated warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.stack import CHROMEDRIVER, CHROMIUM, DATABASE, Stack, chromium

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not CHROMIUM.exists() or not CHROMEDRIVER.exists(),
        reason="Debian's chromium and chromium-driver are not installed: run `make system-deps`",
    ),
]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = chromium(tmp_path / "chromium-profile")
    try:
        yield driver
    finally:
        driver.quit()


def test_inbox_episode_page_and_false_alarm_in_chromium(stack: Stack, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    stored = stack.wait_episode(timeout_s=90)
    eid, machine = stored.id, stored.episode.machine
    wait = WebDriverWait(browser, 30)

    # The inbox lists the episode, with its severity and state.
    browser.get(stack.url + "/")
    link = browser.find_element(By.CSS_SELECTOR, f'a.open[href="/anomalies/{eid}"]')
    assert link.text == machine
    row = link.find_element(By.XPATH, "./ancestor::tr")
    assert row.find_element(By.CSS_SELECTOR, ".sev").text.startswith(str(stored.episode.severity))
    assert row.find_element(By.CSS_SELECTOR, ".state").text in ("open", "closed")
    assert "vibration_rms" in row.find_element(By.CSS_SELECTOR, 'td[data-label="Top signals"]').text
    assert browser.find_element(By.CSS_SELECTOR, ".health .chip.up").text.startswith("review-opcua")

    # Its page: the explanation in words and units, and the plot actually drawn.
    link.click()
    wait.until(lambda d: d.current_url.endswith(f"/anomalies/{eid}"))
    lines = [li.text for li in browser.find_elements(By.CSS_SELECTOR, ".explanation li")]
    assert any(line.startswith("vibration_rms contributes") for line in lines), lines
    assert all("mm/s" in line for line in lines if line.startswith("vibration_rms")), lines
    facts = browser.find_element(By.CSS_SELECTOR, "dl.facts").text
    assert f"Detector\n{stored.episode.detector}" in facts
    assert f"Model version\n{stored.episode.model_version}" in facts
    img = browser.find_element(By.CSS_SELECTOR, "img.plot")
    wait.until(lambda d: d.execute_script("return arguments[0].complete", img))
    assert browser.execute_script("return arguments[0].naturalWidth", img) > 0, "plot not loaded"

    # Acknowledge it as a false alarm.
    browser.find_element(By.ID, "by").send_keys("Browser Test")
    browser.find_element(By.CSS_SELECTOR, 'input[name=verdict][value="false-alarm"]').click()
    browser.find_element(By.ID, "note").send_keys("spindle run-in after service")
    browser.find_element(By.CSS_SELECTOR, ".ack button[type=submit]").click()
    wait.until(lambda d: "saved=1" in d.current_url)
    assert browser.find_element(By.CSS_SELECTOR, "h1 .state").text == "acknowledged"
    verdict = browser.find_element(By.CSS_SELECTOR, ".verdict").text
    assert (
        verdict.startswith("False alarm: spindle run-in after service")
        and "Browser Test" in verdict
    )
    audit = browser.find_element(By.CSS_SELECTOR, ".audit table").text
    assert "Browser Test" in audit and "false-alarm" in audit

    # ... and in the journal the agent keeps.
    with stack.journal() as journal:
        now = journal.get(eid)
        trail = journal.audit(eid)
    assert now is not None and now.state == "acknowledged" and now.verdict == "false-alarm"
    assert now.acked_by == "Browser Test" and now.ack_note == "spindle run-in after service"
    assert [(a["who"], a["verdict"]) for a in trail] == [("Browser Test", "false-alarm")]

    # The inbox shows the new state.
    browser.find_element(By.CSS_SELECTOR, "a.back").click()
    wait.until(lambda d: d.current_url.rstrip("/") == stack.url)
    row = browser.find_element(By.CSS_SELECTOR, f'a.open[href="/anomalies/{eid}"]')
    state = row.find_element(By.XPATH, "./ancestor::tr").find_element(By.CSS_SELECTOR, ".state")
    assert state.text == "acknowledged"

    annotated_in_influxdb(stack, eid)


def annotated_in_influxdb(stack: Stack, eid: str) -> None:
    """The running agent drained the journal's outbox: an ``anomaly_annotation`` point, and the
    episode's own ``anomaly`` point marked acknowledged."""
    deadline = time.monotonic() + 20
    while not (rows := stack.influx.query("SELECT * FROM anomaly_annotation", DATABASE)):
        assert time.monotonic() < deadline, "no anomaly_annotation point in InfluxDB"
        time.sleep(0.5)
    assert [(r["episode_id"], r["verdict"], r["who"]) for r in rows] == [
        (eid, "false-alarm", "Browser Test")
    ]
    assert rows[0]["text"] == "False alarm (Browser Test): spindle run-in after service"
    episode = stack.influx.query(f"SELECT state, verdict FROM anomaly WHERE id = '{eid}'", DATABASE)
    assert [(r["state"], r["verdict"]) for r in episode] == [("acknowledged", "false-alarm")]
