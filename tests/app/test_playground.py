"""The playground page (GET / and /playground) in a real browser: Debian's chromium, headless,
driven by selenium through the system chromedriver, against a real uvicorn server over the tiny
models with an API key configured. What the page shows for teacher, student and cascade is
checked against the API's own answer for the same input; the page is also checked at 390 px
(no horizontal scroll), with a wrong key (the service's 401 shown) and without a key (/models'
401 in the models panel). A screenshot goes to the test's tmp dir and /tmp/playground-screenshot.png.

Without chromium and chromedriver (`apt-get install chromium chromium-driver`) or selenium the
browser tests skip; the HTTP checks of the page run everywhere."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.polling import wait_for
from tests.reliability.server import Server, running

try:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the dev extra installs it
    webdriver = None  # type: ignore[assignment]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path("/tmp/playground-screenshot.png")
KEY = "playground-test-key"
WAIT_S = 60

_missing = [what for what, present in (
    ("selenium (pip install selenium)", webdriver is not None),
    (f"chromium ({CHROMIUM}; apt-get install chromium)", Path(CHROMIUM).exists() or shutil.which("chromium")),
    (f"chromedriver ({CHROMEDRIVER}; apt-get install chromium-driver)", Path(CHROMEDRIVER).exists()),
) if not present]
needs_browser = pytest.mark.skipif(bool(_missing), reason="browser test needs " + ", ".join(_missing))


@pytest.fixture(scope="module")
def server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("playground") / "server.log"
    with running(model_repo, log, {"DISTILSERVE_API_KEYS": f'["{KEY}"]'}) as s:
        yield s


@pytest.fixture(scope="module")
def api(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions", "--hide-scrollbars"):
        options.add_argument(arg)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")  # Selenium Manager: no network calls (the driver is given)
        try:
            driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        except WebDriverException as exc:  # installed but cannot start: say why
            pytest.fail(f"chromium did not start through {CHROMEDRIVER}: {exc.msg}")
        try:
            yield driver
        finally:
            driver.quit()


# --- the page over plain HTTP (no browser needed) ---------------------------------------------


def test_page_is_public_html_and_not_in_the_schema(server: Server, api: httpx.Client) -> None:
    pages = [httpx.get(server.url + path, timeout=30) for path in ("/", "/playground")]  # no key: public
    for page in pages:
        assert page.status_code == 200, page.text[:300]
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["x-request-id"]
    assert pages[0].content == pages[1].content
    html = pages[0].text
    assert "<script>" in html
    assert "<style>" in html
    # no external assets: nothing loaded from anywhere but this service
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "external asset in the page"
    assert "connect-src 'self'" in pages[0].headers["content-security-policy"]
    assert httpx.post(server.url + "/classify", json={"inputs": "a film"}, timeout=30).status_code == 401
    paths = api.get("/openapi.json").json()["paths"]
    assert "/" not in paths
    assert "/playground" not in paths


def test_page_is_package_data() -> None:
    """The serving image installs the package: the page must travel as package data."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["app"]
    assert any((root / "app").glob(pattern) for pattern in patterns)
    assert (root / "app/http/static/playground.html").exists()


# --- the page in chromium -----------------------------------------------------------------------


def _wait(driver: Any, predicate: Callable[[Any], Any], what: str) -> Any:
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(predicate, message=f"waiting for {what}")


def _type(driver: Any, element_id: str, text: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(text)


def _column(driver: Any, role: str) -> WebElement:
    return driver.find_element(By.ID, f"col-{role}")


def _submit(driver: Any) -> dict[str, WebElement]:
    """Press run; wait until every column has answered (or failed) for this run; the columns."""
    run = int(driver.find_element(By.ID, "form").get_attribute("data-run") or 0) + 1
    driver.find_element(By.ID, "run").click()

    def finished(d: Any) -> bool:
        cols = [_column(d, role) for role in ("teacher", "student", "cascade")]
        return all(c.get_attribute("data-run") == str(run) and c.get_attribute("data-state") in ("ok", "error")
                   for c in cols)

    _wait(driver, finished, f"run {run} to finish in every column")
    return {role: _column(driver, role) for role in ("teacher", "student", "cascade")}


def _text(col: WebElement, css: str) -> str:
    return str(col.find_element(By.CSS_SELECTOR, css).text)


def _api(api: httpx.Client, path: str, body: dict[str, Any]) -> httpx.Response:
    return api.post(path, json=body)


def _check_meta(col: WebElement, server: Server) -> None:
    """Latency measured in the page; the X-Request-ID shown is one the server logged."""
    assert re.fullmatch(r"\d+\.\d ms", _text(col, ".latency")), _text(col, ".latency")
    rid = _text(col, ".rid")
    assert rid
    assert rid != "–"
    wait_for(lambda: rid in {line.get("request_id") for line in server.json_logs()}, 10,
             what=f"request id {rid!r} in the server's access log (written within 0.1 s)")


def _check_error_column(col: WebElement, response: httpx.Response) -> None:
    """A model the API refuses: the column shows the service's error as it came."""
    error = response.json()["error"]
    assert col.get_attribute("data-state") == "error"
    assert _text(col, ".error .message") == error["message"]
    assert _text(col, ".error .status") == f"{response.status_code} {error['type']}"


@needs_browser
def test_playground_in_chromium(browser: Any, server: Server, api: httpx.Client, tmp_path: Path) -> None:
    started = time.perf_counter()
    driver = browser
    driver.set_window_size(1280, 1000)
    driver.get(server.url + "/playground")
    assert driver.title.startswith("distilserve playground")

    # no key typed: the page loads (public), /models answers 401 and the panel says so
    _wait(driver, lambda d: d.find_element(By.ID, "models").get_attribute("data-state") == "error", "/models' 401")
    assert "missing API key" in driver.find_element(By.ID, "models").text

    # a wrong key: every column shows the service's 401
    _type(driver, "api-key", "not-the-key")
    _type(driver, "text", "a great film")
    cols = _submit(driver)
    wrong = httpx.post(server.url + "/classify", json={"inputs": "a great film", "model": "teacher"},
                       headers={"Authorization": "Bearer not-the-key"}, timeout=30)
    assert wrong.status_code == 401
    for role in ("teacher", "student", "cascade"):
        _check_error_column(cols[role], wrong)
    _check_meta(cols["teacher"], server)

    # the right key: /models lists what the API lists
    _type(driver, "api-key", KEY)
    driver.find_element(By.ID, "reload-models").click()
    _wait(driver, lambda d: d.find_element(By.ID, "models").get_attribute("data-state") == "ok", "/models")
    shown = {e.get_attribute("data-name") for e in driver.find_elements(By.CSS_SELECTOR, "#models tr[data-name]")}
    listed = api.get("/models").json()
    assert {m["name"] for m in listed["models"]} <= shown

    # classification: each column's labels are the API's, top label first
    text = "a funny story with the best actor, not boring at all"
    Select(driver.find_element(By.ID, "task")).select_by_value("classification")
    _type(driver, "text", text)
    cols = _submit(driver)
    top: dict[str, str] = {}
    for role, col in cols.items():
        response = _api(api, "/classify", {"inputs": text, "model": role, "top_k": None})
        if response.status_code != 200:
            assert role == "cascade", response.text  # a cascade may not be served here
            _check_error_column(col, response)
            continue
        labels = response.json()["results"][0]
        assert col.get_attribute("data-state") == "ok", col.text
        assert _text(col, ".top-label") == labels[0]["label"]
        rows = col.find_elements(By.CSS_SELECTOR, "ol.labels li")
        assert [(r.find_element(By.CSS_SELECTOR, ".label").text, r.find_element(By.CSS_SELECTOR, ".score").text)
                for r in rows] == [(label["label"], f"{label['score']:.3f}") for label in labels]
        _check_meta(col, server)
        top[role] = labels[0]["label"]
    agreement = driver.find_element(By.CSS_SELECTOR, '#agreement li[data-pair="teacher-student"]')
    assert agreement.get_attribute("data-agree") == str(top["teacher"] == top["student"]).lower()
    assert ("same label" if top["teacher"] == top["student"] else "different labels") in agreement.text

    # sentence similarity: the API's cosine, to 4 decimals
    Select(driver.find_element(By.ID, "task")).select_by_value("similarity")
    _type(driver, "sentence-a", "a man plays the guitar")
    _type(driver, "sentence-b", "a woman is playing music")
    cols = _submit(driver)
    body = {"inputs": {"source_sentence": "a man plays the guitar", "sentences": ["a woman is playing music"]}}
    scores = {}
    for role in ("teacher", "student"):
        response = _api(api, "/similarity", {**body, "model": role})
        assert response.status_code == 200, response.text
        scores[role] = response.json()["scores"][0]
        assert _text(cols[role], ".similarity") == f"{scores[role]:.4f}"
    agreement = driver.find_element(By.CSS_SELECTOR, '#agreement li[data-pair="teacher-student"]')
    assert f"{abs(scores['teacher'] - scores['student']):.4f}" in agreement.text

    # extractive QA: the API's answer, highlighted at its offsets in the context
    question, context = "where do penguins live?", "penguins live in the southern hemisphere, in antarctica."
    Select(driver.find_element(By.ID, "task")).select_by_value("qa")
    _type(driver, "question", question)
    _type(driver, "context", context)
    cols = _submit(driver)
    answers: dict[str, str] = {}
    for role, col in cols.items():
        response = _api(api, "/qa", {"question": question, "context": context, "model": role})
        if response.status_code != 200:
            assert role == "cascade", response.text
            _check_error_column(col, response)
            continue
        best = response.json()["results"][0][0]
        assert _text(col, ".answer") == (best["answer"] or "(no answer)")
        assert _text(col, ".context mark") == context[best["start"]:best["end"]].strip()
        _check_meta(col, server)
        answers[role] = best["answer"]
    agreement = driver.find_element(By.CSS_SELECTOR, '#agreement li[data-pair="teacher-student"]')
    assert agreement.get_attribute("data-agree") == str(answers["teacher"] == answers["student"]).lower()

    # the desktop screenshot: the whole page, columns side by side
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, min(int(height) + 40, 4000))
    xs = {round(cols[role].rect["x"]) for role in cols}
    assert len(xs) == 3, f"columns not side by side at 1280 px: {xs}"
    shot = tmp_path / "playground.png"
    assert driver.save_screenshot(str(shot))
    shutil.copyfile(shot, SCREENSHOT)

    # 390 px wide: no horizontal scroll, the columns stacked
    driver.set_window_size(390, 900)
    inner = driver.execute_script("return window.innerWidth")
    assert inner <= 400, f"the window did not narrow to 390 px (innerWidth {inner})"
    scroll = driver.execute_script("return document.documentElement.scrollWidth")
    assert scroll <= inner, f"horizontal scroll at {inner} px: scrollWidth {scroll}"
    xs = {round(cols[role].rect["x"]) for role in cols}
    assert len(xs) == 1, f"columns not stacked at 390 px: {xs}"
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(390, min(int(height) + 40, 6000))
    narrow = tmp_path / "playground-390.png"
    assert driver.save_screenshot(str(narrow))
    shutil.copyfile(narrow, SCREENSHOT.with_name("playground-screenshot-390.png"))
    print(f"playground browser test: {time.perf_counter() - started:.1f} s; screenshots {shot}, {SCREENSHOT}")
    assert os.path.getsize(SCREENSHOT) > 10_000
