"""One browser harness for every page test: Debian's chromium driven by Selenium through Debian's
chromium-driver. Where either is missing the test skips with the reason, except under CI
(CI=true), where a missing browser is a failure: CI installs both."""

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _missing(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the browser tests (.ci/run installs them)")
    pytest.skip(reason)


@pytest.fixture
def browser(tmp_path):
    """A headless chromium under Selenium (a fresh profile per test), quit afterwards."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        _missing("needs Debian's chromium and chromium-driver for the browser tests "
                 "(apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("needs selenium for the browser tests (pip install -e '.[test]')")
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager look for a browser online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--disable-sync", "--window-size=1200,900",
                f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def no_alert(driver) -> bool:
    """True when no alert/confirm/prompt dialog is open (a page script did not open one)."""
    from selenium.common.exceptions import NoAlertPresentException
    try:
        driver.switch_to.alert  # noqa: B018  (reading it raises when there is none)
    except NoAlertPresentException:
        return True
    return False
