#!/usr/bin/env python3
"""Drives the hub's dashboard in headless Chromium (Debian's chromium and chromedriver, through
Selenium): opens every page, fails on any console error or a page that shows an error, saves a
screenshot of each, and optionally confirms an alert's fault through the page's own button and
checks that a change made elsewhere (a device added through the API) shows up without a reload.

Used by crates/impeller-hub/tests/hub/dashboard.rs and scripts/dashboard-screenshots.sh.
"""

import argparse
import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

# Each page, and text its heading must hold once its data has loaded.
PAGES = [
    ("fleet", "#/fleet", "Fleet"),
    ("device", "#/device/{device}", "{device}"),
    ("models", "#/models", "Models"),
    ("deployments", "#/deployments", "Deployments"),
    ("drift", "#/drift", "Drift"),
    ("audit", "#/audit", "Audit trail"),
]


def busiest_device(url, token):
    """The device with the most alerts, for a run without --device."""
    fleet, after = [], ""
    while True:
        req = urllib.request.Request(f"{url}/api/v1/fleet?limit=1000{after}",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            page = json.load(resp)
        fleet += page["items"]
        if "next_after" not in page:
            break
        after = f"&after={page['next_after']}"
    if not fleet:
        sys.exit("the hub has no devices")
    return max(fleet, key=lambda d: (d["alerts"], d["id"]))["id"]


def click(wait, locator):
    """Clicks an element; the page re-renders every few seconds, so a click may land on an
    element just replaced: find it again and retry."""
    for attempt in range(3):
        try:
            wait.until(ec.element_to_be_clickable(locator)).click()
            return
        except StaleElementReferenceException:
            if attempt == 2:
                raise


def console_errors(driver):
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True, help="the hub's HTTP address, e.g. http://127.0.0.1:8080")
    ap.add_argument("--token", required=True, help="an operator API token")
    ap.add_argument("--device", help="the device page to open (default: the one with most alerts)")
    ap.add_argument("--confirm-alert", type=int, metavar="SEQ", help="open this alert of the device and confirm it")
    ap.add_argument("--abort-deployment", metavar="NAME", help="abort this deployment with the page's button")
    ap.add_argument("--live-device", metavar="NAME",
                    help="add this device through the API (an admin token) and wait for the audit page to show it")
    ap.add_argument("--screenshots", required=True, help="folder for one PNG per page")
    ap.add_argument("--width", type=int, default=1400)
    args = ap.parse_args()
    os.makedirs(args.screenshots, exist_ok=True)
    device = args.device or busiest_device(args.url, args.token)

    options = webdriver.ChromeOptions()
    options.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--window-size={args.width},1000"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    failures = []
    try:
        # The link `impeller demo` prints: the token in the fragment, kept for the tab.
        driver.get(f"{args.url}/#token={args.token}")
        wait = WebDriverWait(driver, 30)
        for name, fragment, heading in PAGES:
            fragment, heading = fragment.format(device=device), heading.format(device=device)
            driver.get(f"{args.url}/{fragment}")
            try:
                wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#main h1"), heading))
            except Exception:
                failures.append(f"{name}: heading `{heading}` never appeared; page shows: "
                                f"{driver.find_element(By.ID, 'main').text[:300]!r}")
                continue
            errors = driver.find_elements(By.CSS_SELECTOR, "#main > p.error")
            if errors:
                failures.append(f"{name}: the page shows an error: {errors[0].text}")
            # Full height, so the screenshot shows the whole page.
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(args.width, min(max(height + 40, 800), 6000))
            driver.save_screenshot(os.path.join(args.screenshots, f"{name}.png"))
            driver.set_window_size(args.width, 1000)
            for e in console_errors(driver):
                failures.append(f"{name}: console error: {e['message']}")
            print(f"{name}: loaded")

        if args.live_device:
            driver.get(f"{args.url}/#/audit")
            wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#main h1"), "Audit trail"))
            WebDriverWait(driver, 15).until(
                lambda d: d.find_element(By.ID, "live").get_attribute("data-mode") == "stream")
            # A reload would drop this; the new row must come without one.
            driver.execute_script("window.__noReload = true")
            body = json.dumps({"id": args.live_device, "tags": {"site": "north"}, "profile": "gw"}).encode()
            req = urllib.request.Request(f"{args.url}/api/v1/devices", data=body, method="POST",
                                         headers={"Authorization": f"Bearer {args.token}",
                                                  "Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=30).close()
            added = time.monotonic()
            try:
                # Well before the 30 s slow refresh: the event stream has to bring it.
                WebDriverWait(driver, 10).until(
                    ec.text_to_be_present_in_element((By.ID, "main"), args.live_device))
                if not driver.execute_script("return window.__noReload === true"):
                    failures.append("live: the page reloaded to show the change")
                print(f"live: {args.live_device} on the audit page {time.monotonic() - added:.1f} s after it was added")
            except Exception:
                failures.append(f"live: {args.live_device} did not appear on the audit page within 10 s")
            for e in console_errors(driver):
                failures.append(f"live: console error: {e['message']}")

        if args.confirm_alert is not None:
            driver.get(f"{args.url}/#/device/{device}")
            row = (By.CSS_SELECTOR, f"tr[data-action='open-alert'][data-seq='{args.confirm_alert}']")
            click(wait, row)
            button = (By.CSS_SELECTOR, "#modal button[data-verdict='confirmed']")
            wait.until(ec.element_to_be_clickable(button))
            driver.find_element(By.ID, "work-order").send_keys("WO-BROWSER-1")
            driver.find_element(*button).click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "feedback-message"), "Recorded"))
            wait.until(ec.text_to_be_present_in_element((By.ID, "verdict"), "confirmed fault"))
            time.sleep(0.3)
            driver.save_screenshot(os.path.join(args.screenshots, "alert.png"))
            for e in console_errors(driver):
                failures.append(f"alert: console error: {e['message']}")
            print(f"alert {device}/{args.confirm_alert}: confirmed through the page")
        if args.abort_deployment:
            driver.get(f"{args.url}/#/deployments")
            button = (By.CSS_SELECTOR, f"button[data-action='abort'][data-name='{args.abort_deployment}']")
            click(wait, button)
            # Armed, the button holds the page still until its second click.
            wait.until(ec.text_to_be_present_in_element(button, "Click again"))
            click(wait, button)
            wait.until(ec.text_to_be_present_in_element((By.ID, "main"), "Aborted: aborted from the dashboard"))
            for e in console_errors(driver):
                failures.append(f"abort: console error: {e['message']}")
            print(f"deployment {args.abort_deployment}: aborted through the page")
    finally:
        driver.quit()
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
