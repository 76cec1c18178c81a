"""The dashboard at ``/ui``, driven in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, through Selenium) against a real mesh with real traffic.

The screenshot of each run is saved under pytest's tmp dir and copied to
``$PYMESH_ARTIFACTS/dashboard.png`` (default ``tests/artifacts/``, ignored by git).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from meshtest import Echo, Mesh, cluster, dead_address, listener, poll, route
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
UI_TIMEOUT = 20.0  # seconds for the page to show what it should (it refreshes every second)
MAX_REQUESTS = 20_000  # the background traffic stops here even if the test never stops it

ARTIFACTS = Path(os.environ.get("PYMESH_ARTIFACTS", Path(__file__).parent / "artifacts"))


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1440,1200",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def text(driver: WebDriver, css: str) -> str:
    """The text of every element matching ``css``, joined by newlines ('' if none).

    Read in one script, so that the page re-rendering between finding an element and
    reading it (it refreshes every second) cannot leave a stale reference.
    """
    script = (
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(e => e.innerText).join('\\n');"
    )
    return str(driver.execute_script(script, css))


def number(shown: str) -> float | None:
    """A number as the page shows it ('1,234', '0.0'); None for '—' or nothing."""
    try:
        return float(shown.replace(",", "").split()[0])
    except (ValueError, IndexError):
        return None


def wait_for(driver: WebDriver, check: Callable[[], Any], what: str) -> Any:
    """Poll the page (bounded) until ``check`` answers something truthy."""
    return poll(check, UI_TIMEOUT, interval=0.1, what=f"the dashboard to show {what}")


class Traffic:
    """Requests to ``url`` from a background thread until ``stop()`` (or MAX_REQUESTS)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent = 0
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as c:
            while not self._stop.is_set() and self.sent < MAX_REQUESTS:
                self.failed += c.get(self.url).status_code != 200
                self.sent += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()


def config(a: Echo, b: Echo, dead: str) -> dict[str, Any]:
    web = cluster(
        "web",
        a.address,
        b.address,
        outlier_detection={
            "consecutive_5xx": 3,
            "base_ejection": "5m",
            "max_ejection_percent": 50,
        },
    )
    spare = cluster(
        "spare", dead, health_check={"tcp": True, "interval": "100ms", "unhealthy_threshold": 1}
    )
    routes = [route("web", name="api", prefix="/api"), route("spare", name="fallback")]
    return {"listeners": [listener("ingress", routes)], "clusters": [web, spare]}


def test_the_page_and_its_assets_are_served_without_a_token_and_the_data_is_not(
    echo: Callable[..., Echo], mesh: Callable[..., Mesh]
) -> None:
    a = echo("a")
    m = mesh({"listeners": [listener("in", [route("c")])], "clusters": [cluster("c", a.address)]})
    with httpx.Client(base_url=m.admin_url, timeout=10) as anon:
        page = anon.get("/ui")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/ui/app.js"' in page.text
        for asset, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            r = anon.get(f"/ui/{asset}")
            assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert anon.get("/ui/mesh.yaml").status_code == 404
        assert anon.get("/ui/..%2Fapp.py").status_code == 404
        assert anon.get("/stats").status_code == 401
    assert "/ui" not in m.get("/openapi.json").json()["paths"]


def test_the_dashboard_shows_live_numbers_health_and_history_under_traffic(
    echo: Callable[..., Echo],
    mesh: Callable[..., Mesh],
    browser: WebDriver,
    tmp_path: Path,
) -> None:
    a, b = echo("a"), echo("b")
    m = mesh(config(a, b, dead_address()))
    version = m.stats()["config_version"]

    log_in(browser, m, version)
    maths(browser)
    idle(browser, m, a, b)
    under_traffic(browser, m.listener("ingress"))

    # A new version appears in the history; its diff opens on a click.
    changed = config(a, b, dead_address())
    changed["listeners"][0]["routes"].insert(0, route("web", name="beta", prefix="/beta"))
    assert m.put_config(changed).status_code == 200
    wait_for(browser, lambda: text(browser, "#version") == f"v{version + 1}", "the new version")
    row = f'#history tr[data-version="{version + 1}"]'
    wait_for(browser, lambda: "serving" in text(browser, row), "the new version serving")
    assert text(browser, f'#history tr[data-version="{version}"]')
    browser.find_element(By.CSS_SELECTOR, row).click()
    wait_for(browser, lambda: "routes[beta]" in text(browser, "#diff"), "the diff")
    wait_for(browser, lambda: text(browser, '#routes tr[data-route="beta"]'), "the new route")

    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    saved = shutil.copy(shot, ARTIFACTS / "dashboard.png")
    print(f"dashboard screenshot: {saved}")


def log_in(browser: WebDriver, m: Mesh, version: int) -> None:
    # Without a token the page asks for one; a wrong one is refused and asked for again.
    browser.get(f"{m.admin_url}/ui")
    wait_for(browser, lambda: browser.find_element(By.ID, "login").is_displayed(), "the login")
    assert not browser.find_element(By.ID, "dash").is_displayed()
    browser.find_element(By.ID, "token").send_keys("pmk_not-a-real-token-at-all")
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_for(browser, lambda: "refused" in text(browser, "#login-error"), "the refusal")

    # A token in the URL fragment is taken once and dropped from the address bar.
    browser.get(f"{m.admin_url}/ui#token={m.token}")
    wait_for(browser, lambda: text(browser, "#version") == f"v{version}", "the config version")
    assert "token" not in browser.current_url
    assert not browser.find_element(By.ID, "login").is_displayed()
    wait_for(browser, lambda: "live" in text(browser, "#status"), "that it is live")


def maths(browser: WebDriver) -> None:
    # The page's own functions: Prometheus text parsing and histogram_quantile's interpolation.
    parsed = browser.execute_script(
        "return parseMetrics(arguments[0]);",
        '# HELP x y\npymesh_requests_total{listener="l",route="r\\"q",status_class="5xx"} 7\n',
    )
    assert parsed == [
        {
            "name": "pymesh_requests_total",
            "labels": {"listener": "l", "route": 'r"q', "status_class": "5xx"},
            "value": 7,
        }
    ]
    buckets = "[[0.001, 40], [0.01, 90], [0.1, 100], [Infinity, 100]]"
    p50, p99, none = browser.execute_script(
        f"const b = {buckets};"
        "return [quantile(0.5, b), quantile(0.99, b), quantile(0.5, [[1, 0], [Infinity, 0]])];"
    )
    assert p50 == pytest.approx(0.001 + 0.009 * (10 / 50))
    assert p99 == pytest.approx(0.01 + 0.09 * (9 / 10))
    assert none is None


def idle(browser: WebDriver, m: Mesh, a: Echo, b: Echo) -> None:
    # Routes, clusters, endpoints and listeners are listed; nothing flows yet.
    wait_for(browser, lambda: number(text(browser, "#kpi-rps")) == 0.0, "0 requests/s")
    assert text(browser, '#routes tr[data-route="api"] td.name') == "api"
    assert text(browser, '#routes tr[data-route="fallback"] td.name') == "fallback"
    assert number(text(browser, '#routes tr[data-route="api"] .rps')) == 0.0
    assert "ingress" in text(browser, '#listeners tr[data-listener="ingress"]')
    assert m.listener("ingress").removeprefix("http://") in text(browser, "#listeners")
    web_endpoints = '[data-cluster="web"] .endpoints li'
    wait_for(
        browser,
        lambda: text(browser, f"{web_endpoints}.healthy").count("healthy") == 2,
        "both web endpoints healthy",
    )
    assert a.address in text(browser, web_endpoints) and b.address in text(browser, web_endpoints)
    wait_for(
        browser,
        lambda: "unhealthy" in text(browser, '[data-cluster="spare"] .endpoints li.unhealthy'),
        "the dead spare endpoint unhealthy",
    )


def under_traffic(browser: WebDriver, ingress: str) -> None:
    # Requests/s, latency and success appear for the route, its cluster and the total.
    traffic = Traffic(f"{ingress}/api/hello")
    api_row, web = '#routes tr[data-route="api"]', '[data-cluster="web"]'
    try:
        wait_for(browser, lambda: (number(text(browser, "#kpi-rps")) or 0) > 0, "requests/s > 0")
        wait_for(browser, lambda: (number(text(browser, f"{api_row} .rps")) or 0) > 0, "api req/s")
        wait_for(browser, lambda: "100 %" in text(browser, api_row), "api's success rate")
        assert "µs" in text(browser, api_row) or "ms" in text(browser, api_row), "p50/p99 shown"
        wait_for(browser, lambda: (number(text(browser, f"{web} .rps")) or 0) > 0, "web req/s")
        assert number(text(browser, '[data-cluster="spare"] .rps')) == 0.0
        wait_for(browser, lambda: "/" in text(browser, "#kpi-latency"), "p50 / p99")
        assert browser.find_elements(By.CSS_SELECTOR, "#spark-rps svg path.line")
    finally:
        traffic.stop()

    # 5xx answers lower the success rate; three in a row eject one of web's endpoints (sent
    # alone: round robin gives each endpoint three in a row, and 50 % caps ejections at one).
    with httpx.Client(timeout=5) as c:
        statuses = [c.get(f"{ingress}/api/fail?status=503").status_code for _ in range(6)]
    assert statuses == [503] * 6
    wait_for(browser, lambda: "1 ejected" in text(browser, f"{web} header"), "1 ejected")
    wait_for(
        browser,
        lambda: (number(text(browser, f"{api_row} td:nth-child(5)")) or 100) < 100,
        "api's success rate below 100 %",
    )
    assert traffic.sent > 0 and traffic.failed == 0
