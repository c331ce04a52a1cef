"""The web playground in headless Chromium (Debian's chromium + chromium-driver: `make browser-deps`):
type a description, press Generate, watch highlighted code stream in. Skipped where Chromium is absent.
A screenshot is kept in runs/test-artifacts/playground.png."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from codetune.config import Config, load_config
from codetune.serve import create_app, running_server

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "runs" / "test-artifacts"
KEY = "sk-playground-51c2"
DESCRIPTION = "Return the sum of a and b."

if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("Chromium and chromedriver are not installed (make browser-deps)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver")


def _chromium() -> Any:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        "--window-size=1280,860",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def test_type_a_description_and_watch_code_stream_in(trained_run: Config, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model = Path(trained_run.train.output_dir) / "final"
    cfg = load_config(
        None,
        {
            "generate": {"max_new_tokens": 24},
            "serve": {
                "models": [f"tiny={model}"],
                "api_keys": [KEY],
                "access_log": str(tmp_path / "a.jsonl"),
            },
        },
    )
    with running_server(create_app(cfg)) as url:
        # What the page should end up showing: the start typed in, then the model's greedy continuation.
        body = {"model": "tiny", "description": DESCRIPTION, "code": "def ", "max_tokens": 24}
        headers = {"Authorization": f"Bearer {KEY}"}
        answer = httpx.post(url + "/v1/generate", json=body, headers=headers, timeout=60).json()
        expected = "def " + answer["choices"][0]["text"]

        driver = _chromium()
        try:
            driver.get(url + "/")
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#model option[value='tiny']"))
            find = driver.find_element
            assert find(By.ID, "key-row").is_displayed()  # the server wants a key: the page asks for it
            find(By.ID, "api-key").send_keys(KEY)
            find(By.ID, "description").send_keys(DESCRIPTION)
            find(By.ID, "code").send_keys("def ")
            max_tokens = find(By.ID, "max-tokens")
            max_tokens.clear()
            max_tokens.send_keys("24")
            find(By.ID, "generate").click()
            wait.until(lambda d: d.find_element(By.ID, "output").get_attribute("data-done") == "true")

            output = find(By.ID, "output")
            assert find(By.ID, "status").text.startswith("done"), find(By.ID, "status").text
            assert output.get_attribute("textContent") == expected
            assert int(output.get_attribute("data-chunks")) >= 2  # streamed in pieces
            keywords = [s.text for s in output.find_elements(By.CSS_SELECTOR, "span.tok-kw")]
            assert keywords[0] == "def"  # highlighted
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            assert driver.save_screenshot(str(ARTIFACTS / "playground.png"))

            html = driver.execute_script(
                "return codetuneHighlight(arguments[0], 'python')", "def f(x):\n    return 'a<b'  # 1"
            )
            assert html == (
                '<span class="tok-kw">def</span> <span class="tok-fn">f</span>(x):\n    '
                '<span class="tok-kw">return</span> <span class="tok-str">\'a&lt;b\'</span>  '
                '<span class="tok-com"># 1</span>'
            )

            # Infill on a model without FIM tokens: the server's 400 is shown, not a blank page.
            find(By.CSS_SELECTOR, "input[name='mode'][value='infill']").find_element(By.XPATH, "..").click()
            code = find(By.ID, "code")
            code.clear()
            code.send_keys("def add(a, b):\n    return <FILL>\n")
            find(By.ID, "generate").click()
            wait.until(lambda d: d.find_element(By.ID, "output").get_attribute("data-done") == "true")
            assert "no fill-in-the-middle tokens" in output.get_attribute("textContent")
            assert find(By.ID, "status").text == "error"
        finally:
            driver.quit()
