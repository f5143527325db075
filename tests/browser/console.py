"""Browser tests of the spanlake web console, run by tests/it/console.rs.

Each scenario drives the console in headless Chromium (Debian's chromium and
chromium-driver, through Selenium) against a `spanlake serve` that the Rust
test started, as a person would: it types and clicks, then checks what the
page shows. It saves a PNG screenshot at each step under --out and prints
`screenshot: PATH`. It exits 1 with the reason on the first failed check.

    python console.py SCENARIO --url URL --key KEY --project ID --out DIR [--expect JSON]

Scenarios: query, export, retention, wrong-role (see each function).
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

TIMEOUT = 60


class Failed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failed(message)


class Console:
    """One headless Chromium on the console, with a fresh profile."""

    def __init__(self, url, out):
        self.url = url.rstrip("/")
        self.out = out
        self.shots = 0
        self.profile = tempfile.mkdtemp(prefix="spanlake-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = os.environ.get("SPANLAKE_CHROMIUM", "/usr/bin/chromium")
        for flag in [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", "--window-size=1360,1000",
        ]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = webdriver.ChromeService(
            executable_path=os.environ.get("SPANLAKE_CHROMEDRIVER", "/usr/bin/chromedriver"))
        self.driver = webdriver.Chrome(options=options, service=service)
        self.driver.set_window_size(1360, 1000)

    def close(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def shot(self, name):
        self.shots += 1
        path = os.path.join(self.out, f"{self.shots:02d}-{name}.png")
        # The whole page, not only the window: an open dialog shows all of
        # itself (CSSOM, which the page's CSP allows), and the window grows.
        self.driver.execute_script(
            "for (const d of document.querySelectorAll('dialog[open]')) d.style.maxHeight = 'none'")
        height = self.driver.execute_script(
            "return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight,"
            " ...[...document.querySelectorAll('dialog[open]')].map(d => d.scrollHeight + 80))")
        self.driver.set_window_size(1360, max(1000, min(int(height) + 40, 4000)))
        self.driver.save_screenshot(path)
        self.driver.set_window_size(1360, 1000)
        self.driver.execute_script(
            "for (const d of document.querySelectorAll('dialog[open]')) d.style.maxHeight = ''")
        print(f"screenshot: {path}", flush=True)
        return path

    def find(self, css, root=None):
        return (root or self.driver).find_element(By.CSS_SELECTOR, css)

    def all(self, css, root=None):
        return (root or self.driver).find_elements(By.CSS_SELECTOR, css)

    def wait(self, css, timeout=TIMEOUT, what=None):
        """The first visible element matching `css`, waiting for it."""
        try:
            return WebDriverWait(self.driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
                lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()), False))
        except TimeoutException:
            self.shot("timeout")
            raise Failed(f"timed out waiting for {what or css}; page text:\n{self.text('body')[:3000]}")

    def wait_until(self, predicate, what, timeout=TIMEOUT):
        try:
            return WebDriverWait(self.driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(lambda d: predicate())
        except TimeoutException:
            self.shot("timeout")
            raise Failed(f"timed out waiting for {what}; page text:\n{self.text('body')[:3000]}")

    def text(self, css):
        elements = self.all(css)
        return elements[0].text if elements else ""

    def click(self, css):
        element = self.wait(css)
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()
        return element

    def type(self, css, text, clear=True):
        element = self.wait(css)
        if clear:
            element.send_keys(Keys.CONTROL, "a")
            element.send_keys(Keys.DELETE)
        element.send_keys(text)
        return element

    def set_value(self, css, text):
        """Set a long text at once (typing is slow), then fire `input`."""
        element = self.wait(css)
        self.driver.execute_script(
            "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input', {bubbles: true}));",
            element, text)
        return element

    def open(self, path=""):
        self.driver.get(f"{self.url}/{path}")

    def sign_in(self, key):
        self.open()
        self.type("#api-key", key)
        self.click("#sign-in")
        self.wait("#projects, #main h1", what="the projects page")
        self.wait_until(lambda: self.text("#main h1") == "Projects", "the projects page")
        stored = self.driver.execute_script("return sessionStorage.getItem('spanlake.apiKey')")
        check(stored == key, "the key is not in sessionStorage")
        local = self.driver.execute_script("return localStorage.length")
        check(local == 0, "the console wrote to localStorage")
        self.check_key_not_in_url(key)

    def check_key_not_in_url(self, key):
        check(key not in self.driver.current_url, f"the API key is in the URL {self.driver.current_url}")

    def go_project(self, project, tab):
        self.open(f"#/p/{project}/{tab}")
        self.wait(f"#tab-{tab}[aria-current=page]", what=f"the {tab} tab")

    def severe_logs(self):
        """Errors the page logged (a CSP violation, a script error); failed
        API calls the test provoked on purpose (4xx) are left out."""
        logs = self.driver.get_log("browser")
        return [entry["message"] for entry in logs if entry["level"] == "SEVERE"
                and not re.search(r"the server responded with a status of (4\d\d)", entry["message"])]

    def check_no_page_errors(self):
        errors = self.severe_logs()
        check(not errors, f"the page logged errors: {errors}")

    def dialog(self, id_):
        return self.wait(f"dialog#{id_}[open]", what=f"the dialog {id_}")

    def check_focus_inside(self, id_):
        inside = self.driver.execute_script(
            f"return document.getElementById('{id_}').contains(document.activeElement)")
        check(inside, f"focus is not inside the dialog {id_}")


def caret_under(pre_text, word):
    """Whether the caret line of a diagnostic block points at `word` of the
    line above it (same column, same width)."""
    lines = pre_text.split("\n")
    for i in range(1, len(lines)):
        match = re.search(r"\^+", lines[i])
        if match and lines[i].strip().startswith("^"):
            above = lines[i - 1]
            return above[match.start():match.end()] == word
    return False


# ------------------------------------------------------------------ scenarios

def scenario_query(c, args, expect):
    """Sign in; run a query and see its rows as a table and as JSON; page
    with the cursor; a bad query shows the caret under the mistake and the
    hint; a span holding `<script>` and HTML renders as text."""
    c.open()
    c.wait("#api-key", what="the sign-in form")
    label = c.find("label[for=api-key]").text
    check("API key" in label, "the key input has no label")
    c.shot("sign-in")
    # A wrong key is refused with the server's message.
    c.type("#api-key", "sl-not-a-key")
    c.click("#sign-in")
    c.wait_until(lambda: "unauthorized" in c.text(".alert"), "the refusal of a wrong key")
    c.sign_in(args.key)
    check(args.project in c.text("#projects"), "the project is not listed")
    c.shot("projects")

    c.go_project(args.project, "query")
    page_query = f"select: id | from: project_logs('{args.project}') | sort: id | limit: 5"
    c.set_value("#query-text", page_query)
    c.click("#run-query")
    c.wait_until(lambda: "5 rows on page 1" in c.text("#query-summary"), "the first page")
    first = [td.text for td in c.all("#query-table tbody tr td:first-child")]
    check(first == expect["ids"][:5], f"page 1 shows {first}, expected {expect['ids'][:5]}")
    c.shot("query-page-1")
    c.click("#next-page")
    c.wait_until(lambda: "on page 2" in c.text("#query-summary"), "the second page")
    second = [td.text for td in c.all("#query-table tbody tr td:first-child")]
    check(second == expect["ids"][5:10], f"page 2 shows {second}, expected {expect['ids'][5:10]}")
    c.click("#prev-page")
    c.wait_until(lambda: "on page 1" in c.text("#query-summary"), "page 1 again")
    c.click("#view-json")
    rows = json.loads(c.wait("#query-json").text)
    check([r["id"] for r in rows] == expect["ids"][:5], f"the JSON view shows {rows}")
    c.click("#view-table")

    # The hostile span: every field is text on the page, nothing runs.
    title = c.driver.title
    c.set_value("#query-text",
                f"select: id, input, output, metadata, span_attributes.name as name\n"
                f"| from: project_logs('{args.project}') | filter: id = 'xss'")
    c.click("#run-query")
    c.wait_until(lambda: "1 row on page 1" in c.text("#query-summary"), "the hostile span")
    cells = [td.text for td in c.all("#query-table tbody td")]
    check(expect["script"] in cells, f"the <script> input is not shown as text: {cells}")
    check(any(expect["img"] in cell for cell in cells), f"the HTML metadata is not shown as text: {cells}")
    check(expect["bold"] in cells, f"the name with HTML is not shown as text: {cells}")
    check(not c.all("#query-results script, #query-results img, #query-results b"),
          "span data became elements")
    check(c.driver.title == title, "a span's script ran (the title changed)")
    check(c.driver.execute_script("return window.__pwned === undefined"), "a span's script ran")
    c.shot("hostile-span-as-text")

    # A bad query: where, the caret under the mistake, and the hint.
    c.set_value("#query-text", f"select: scroes | from: project_logs('{args.project}')")
    c.click("#run-query")
    block = c.wait(".alert .diagnostic", what="the diagnostic")
    check("BTQL" in c.text(".alert"), f"no error code: {c.text('.alert')}")
    check(caret_under(block.text, "scroes"), f"the caret is not under `scroes`:\n{block.text}")
    check("did you mean `scores`" in c.text(".alert .help"), f"no hint: {c.text('.alert')}")
    c.shot("bad-query-caret")
    c.check_key_not_in_url(args.key)
    c.check_no_page_errors()

    # The page's policy refuses inline script, even one the page itself
    # would insert (as a rendering mistake might).
    c.driver.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.__inline = 1';"
        " document.body.append(s)")
    time.sleep(0.2)
    check(c.driver.execute_script("return window.__inline === undefined"), "an inline script ran")
    refused = [m for m in c.driver.get_log("browser") if "Content Security Policy" in m["message"]]
    check(refused, "no CSP refusal was logged for the inline script")

    # Sign out forgets the key.
    c.click("#sign-out")
    c.wait("#api-key", what="the sign-in form after signing out")
    check(c.driver.execute_script("return sessionStorage.getItem('spanlake.apiKey')") is None,
          "the key stayed in sessionStorage after signing out")


def fill_export_dialog(c, name, path, role, endpoint, data="spans"):
    c.type("#a-name", name)
    c.click(f"#a-data-{data}")
    c.type("#a-export-path", path)
    c.type("#a-role-arn", role)
    Select(c.find("#a-format")).select_by_value("parquet")
    c.click("#a-advanced summary")
    c.type("#a-endpoint", endpoint)
    c.type("#a-batch-size", "500")
    Select(c.find("#a-partitioning")).select_by_value("day")
    Select(c.find("#a-compression")).select_by_value("zstd")


def test_steps(c):
    """{step: outcome} of the test result shown."""
    c.wait("#test-result", what="the test result")
    return {li.get_attribute("data-step"): li.get_attribute("data-outcome") for li in c.all("#test-result li")}


def s3_get(endpoint, bucket, key):
    """An object from the S3 test server. moto refuses anonymous reads of
    private objects but, without IAM enforcement, accepts any signature: a
    dummy SigV4 header names the caller."""
    request = urllib.request.Request(f"{endpoint}/{bucket}/{key}", headers={
        "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request,"
                         " SignedHeaders=host, Signature=0"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read()


def scenario_export(c, args, expect):
    """A Parquet export to the S3 server, through the dialog: custom BTQL is
    validated as typed; Test passes every step before saving; the role helper
    shows the policies; Run now; the run in the history and its chart;
    DuckDB reads the exported rows; Reset and Pause change the status."""
    endpoint, bucket = expect["endpoint"], expect["bucket"]
    c.sign_in(args.key)
    c.go_project(args.project, "automations")
    c.wait("#automations-panel", what="the automations list")
    c.click("#new-automation")
    c.dialog("automation-dialog")
    c.check_focus_inside("automation-dialog")
    # Every input of the dialog has a label.
    unlabeled = c.driver.execute_script(
        "return [...document.querySelectorAll('#automation-dialog input, #automation-dialog select,"
        " #automation-dialog textarea')].filter(e => !e.labels || !e.labels.length).map(e => e.id)")
    check(not unlabeled, f"inputs without a label: {unlabeled}")

    # Custom BTQL: checked as it is typed.
    c.click("#a-data-query")
    c.set_value("#a-btql", f"select: nme | from: project_logs('{args.project}')")
    block = c.wait("#btql-check .diagnostic", what="the BTQL error while typing")
    check(caret_under(block.text, "nme"), f"no caret under `nme`:\n{block.text}")
    c.shot("dialog-btql-error")
    c.set_value("#a-btql", f"select: id, created | from: project_logs('{args.project}') | filter: is_root")
    c.wait("#btql-valid", what="the valid query notice")
    check("valid" in c.text("#btql-valid"), c.text("#btql-check"))

    fill_export_dialog(c, "nightly-parquet", f"s3://{bucket}/console/spans", expect["role_arn"], endpoint)
    # Test before saving: every step passes.
    c.click("#dialog-test-button")
    steps = test_steps(c)
    check(steps == {s: "ok" for s in ["assume", "connect", "write", "read", "delete"]},
          f"test steps {steps}: {c.text('#test-result')}")
    check(":unsaved" in c.text("#test-result"), "the unsaved external id is not shown")
    # Role setup: the external id pattern and the policies with bucket and prefix.
    c.click("#role-setup")
    c.wait_until(lambda: c.text("#trust-policy") != "", "the trust policy")
    trust = json.loads(c.text("#trust-policy"))
    check(trust["Statement"][0]["Condition"]["StringLike"]["sts:ExternalId"].endswith(f":{args.project}:*"),
          f"trust policy {trust}")
    permissions = json.loads(c.text("#permissions-policy"))
    check(permissions["Statement"][0]["Resource"] == f"arn:aws:s3:::{bucket}/console/spans/*",
          f"permissions policy {permissions}")
    c.shot("dialog-test-passed")
    c.click("#dialog-save")
    c.wait_until(lambda: not c.all("dialog#automation-dialog"), "the dialog to close after saving")
    row = c.wait("tr[data-automation=nightly-parquet]", what="the new export in the list")
    check("S3 export" in row.text and f"s3://{bucket}/console/spans" in row.text and "1h" in row.text,
          f"list row: {row.text}")
    check("active" in c.text("tr[data-automation=nightly-parquet] .cell-status"), row.text)
    c.shot("automations-list")

    # The status modal. A new active export is due at once: `serve`'s
    # scheduler runs it within a second or two, and its run shows up.
    c.click("tr[data-automation=nightly-parquet] .open-status")
    c.dialog("status-dialog")
    c.check_focus_inside("status-dialog")
    c.wait("#status-facts", what="the status")

    def refresh_status():
        c.click("#status-refresh")
        c.wait("#status-facts", what="the refreshed status")
        return c.text("#history")

    # Until the scheduled run has finished (it may show as running first).
    c.wait_until(lambda: "schedule" in refresh_status() and "running" not in c.text("#history"),
                 "the scheduled run to finish", timeout=90)
    scheduled = c.text("#history")
    check("succeeded" in scheduled and str(expect["rows"]) in scheduled, scheduled)
    # Run now: the scheduled run exported everything, so nothing is new.
    c.click("#run-now")
    c.wait("#run-result", what="the run's result")
    check("Nothing new to export" in c.text("#run-result"), c.text("#run-result"))

    # Pause: the status says so, in words, and the scheduler stops.
    c.click("#pause-resume")
    c.wait_until(lambda: "paused" in c.text("#status-overall"), "the paused status")
    check(c.text("#pause-resume") == "Resume", "the button does not offer Resume")
    c.shot("status-paused")
    # Reset, with a confirmation that says what it does.
    c.click("#reset")
    c.dialog("confirm-dialog")
    c.check_focus_inside("confirm-dialog")
    text = c.text("#confirm-text")
    check("from the beginning" in text and "cursor" in text, f"the confirmation says: {text}")
    c.shot("reset-confirmation")
    # Escape cancels: nothing changes.
    runs_before = len(c.all("#history tbody tr"))
    c.find("#confirm-no").send_keys(Keys.ESCAPE)
    c.wait_until(lambda: not c.all("dialog#confirm-dialog"), "Escape to close the confirmation")
    c.check_focus_inside("status-dialog")
    refresh_status()
    check(runs_before >= 1 and len(c.all("#history tbody tr")) == runs_before, "Escape reset anyway")
    c.click("#reset")
    c.click("#confirm-yes")
    c.wait_until(lambda: c.all("#history-empty"), "the history to be empty after reset")
    check("never" in c.text("#status-last-run"), c.text("#status-facts"))
    check("none" in c.text("#status-cursor"), c.text("#status-facts"))
    c.shot("status-after-reset")

    # Run now after the reset: every row again, in a manual run.
    c.click("#run-now")
    c.wait("#run-result", what="the run's result")
    result = c.text("#run-result")
    check(f"Exported {expect['rows']} rows" in result, result)
    c.wait_until(lambda: len(c.all("#history tbody tr")) == 1, "one run in the history")
    history = c.text("#history")
    check("manual" in history and "succeeded" in history and str(expect["rows"]) in history, history)
    check("start →" in history, f"no cursor range: {history}")
    bars = c.all("#history-chart rect.bar")
    check(len(bars) == 1 and bars[0].get_attribute("data-rows") == str(expect["rows"]), "the history chart")
    check(c.all("#history-chart circle.duration-dot"), "no duration in the chart")
    check("yes" in c.text("#status-keeping-up"), c.text("#status-facts"))
    check(c.text("#status-cursor") not in ("", "none: the next run starts from the beginning"), "no cursor")
    check("paused" in c.text("#status-overall"), "Run now resumed the export")
    c.shot("status-after-run")

    # DuckDB reads the files of that run's manifest: the right count.
    manifest_key = c.find("#run-result").get_attribute("data-manifest")
    check(manifest_key and "/_manifests/" in manifest_key, f"no manifest key: {manifest_key}")
    manifest = json.loads(s3_get(endpoint, bucket, manifest_key))
    keys = [f["key"] for f in manifest["files"]]
    check(keys and all(k.endswith(".parquet") for k in keys), f"manifest files {keys}")
    folder = tempfile.mkdtemp(dir=args.out, prefix="exported-")
    for i, key in enumerate(keys):
        with open(os.path.join(folder, f"{i}.parquet"), "wb") as f:
            f.write(s3_get(endpoint, bucket, key))
    import duckdb
    count, ids = duckdb.connect().execute(
        f"select count(*), count(distinct id) from read_parquet('{folder}/*.parquet')").fetchone()
    check(count == expect["rows"] == manifest["rows"] and ids == expect["rows"],
          f"DuckDB read {count} rows ({ids} ids), the manifest says {manifest['rows']}, expected {expect['rows']}")
    print(f"duckdb: {count} rows in {len(keys)} files", flush=True)

    # Test after saving: the saved export presents its own external id.
    c.click("#status-test")
    c.wait_until(lambda: test_steps(c).get("delete") == "ok", "the saved export's test")
    check(set(test_steps(c).values()) == {"ok"}, c.text("#test-result"))
    check(":unsaved" not in c.text("#test-result li[data-step=assume]"), c.text("#test-result"))

    # Edit: the export path and the type are fixed; the interval changes.
    c.click("#status-edit")
    c.dialog("automation-dialog")
    check(c.find("#a-export-path").get_attribute("readonly") is not None, "the export path is editable")
    check(not c.find("#a-kind-retention").is_enabled(), "the type is editable")
    Select(c.find("#a-interval")).select_by_value("4h")
    c.click("#dialog-save")
    c.wait_until(lambda: not c.all("dialog#automation-dialog"), "the edit dialog to close")
    c.wait_until(lambda: "4h" in c.text("tr[data-automation=nightly-parquet]"), "the new interval in the list")
    c.click("tr[data-automation=nightly-parquet] .open-status")
    c.dialog("status-dialog")
    c.wait("#status-facts", what="the status")
    c.find("#status-dialog").send_keys(Keys.ESCAPE)
    c.wait_until(lambda: not c.all("dialog#status-dialog"), "Escape to close the status")
    c.wait_until(lambda: "paused" in c.text("tr[data-automation=nightly-parquet] .cell-status"),
                 "the list to show paused")
    c.check_no_page_errors()


def scenario_edit_object_export(c, args, expect):
    """An export of an experiment (made over the API), edited in the dialog:
    the experiment is shown read-only, and a new interval saved keeps it an
    export of that experiment (the test then reads the stored config)."""
    c.sign_in(args.key)
    c.go_project(args.project, "automations")
    row = "tr[data-automation=experiment-export]"
    c.wait(row, what="the export in the list")
    c.click(f"{row} .open-status")
    c.dialog("status-dialog")
    c.wait("#status-facts", what="the status")
    c.click("#status-edit")
    c.dialog("automation-dialog")
    shown = c.find("#a-object")
    check(shown.get_attribute("readonly") is not None, "the exported experiment is editable")
    check(shown.get_attribute("value") == f"experiment {expect['object_id']}",
          f"the dialog shows {shown.get_attribute('value')!r}")
    Select(c.find("#a-interval")).select_by_value("4h")
    c.shot("edit-object-export")
    c.click("#dialog-save")
    c.wait_until(lambda: not c.all("dialog#automation-dialog"), "the edit dialog to close")
    c.wait_until(lambda: "4h" in c.text(row), "the new interval in the list")
    c.check_no_page_errors()


def scenario_retention(c, args, expect):
    """A retention automation through the dialog: 0 days refused unless
    forced; the preview (cutoff, rows, traces, files, bytes) and the chart
    of rows per day with the cutoff marked; then a run deletes the rows."""
    c.sign_in(args.key)
    c.go_project(args.project, "automations")
    c.click("#new-automation")
    c.dialog("automation-dialog")
    c.type("#a-name", "keep-5-days")
    c.click("#a-kind-retention")
    c.wait("#r-days", what="the retention fields")
    check(not c.find("#a-export-path").is_displayed(), "export fields shown for a retention")
    c.type("#r-days", "0")
    c.click("#dialog-test-button")
    c.wait_until(lambda: "0 deletes every row" in c.text("#dialog-problems"), "0 days to be refused")
    c.type("#r-days", "5")
    c.click("#dialog-test-button")
    c.wait("#retention-preview", what="the preview")
    c.wait("#retention-chart", what="the chart")
    facts = c.text("#retention-preview dl")
    check(f"Rows to delete\n{expect['rows_to_delete']}" in facts, f"preview: {facts}")
    check("Cutoff" in facts and "Files to drop whole" in facts and "Files to rewrite" in facts
          and "Bytes to reclaim" in facts and "Traces" in facts, f"preview: {facts}")
    bars = c.all("#retention-chart rect.bar")
    check(len(bars) == expect["days"], f"{len(bars)} bars for {expect['days']} days")
    expired = c.all("#retention-chart rect.bar.expired")
    expired_rows = sum(int(b.get_attribute("data-rows")) for b in expired)
    check(expired and expired_rows <= expect["rows_to_delete"], f"{len(expired)} expired bars, {expired_rows} rows")
    check(c.all("#cutoff-line") and "cutoff" in c.text("#retention-chart text.cutoff-label"), "no cutoff line")
    c.shot("retention-preview-chart")
    c.click("#dialog-save")
    c.wait_until(lambda: not c.all("dialog#automation-dialog"), "the dialog to close after saving")
    row = c.wait("tr[data-automation=keep-5-days]", what="the retention in the list")
    check("Data retention" in row.text and "older than 5 days" in row.text and "24h" in row.text, row.text)
    c.click("tr[data-automation=keep-5-days] .open-status")
    c.dialog("status-dialog")
    # A new retention is due at once: the scheduler runs it within a second
    # or two and deletes what the preview announced; Run now then finds
    # nothing more to delete.
    def history():
        c.click("#status-refresh")
        c.wait("#status-facts", what="the refreshed status")
        return c.all("#history tbody tr")
    c.wait_until(lambda: len(history()) >= 1 and "running" not in c.text("#history"),
                 "the scheduled retention run to finish", timeout=90)
    first = c.text("#history")
    check("schedule" in first and "succeeded" in first and str(expect["rows_to_delete"]) in first, first)
    c.click("#run-now")
    c.wait("#run-result", what="the retention run's result")
    check("Deleted 0 rows" in c.text("#run-result"), c.text("#run-result"))
    c.wait_until(lambda: len(c.all("#history tbody tr")) == 2, "two runs in the history")
    check(len(c.all("#history-chart rect.bar")) == 2, "the history chart has no bar per run")
    c.shot("retention-after-run")
    c.click("#delete")
    c.dialog("confirm-dialog")
    check("Logs already deleted stay deleted" in c.text("#confirm-text"), c.text("#confirm-text"))
    c.click("#confirm-yes")
    c.wait_until(lambda: not c.all("dialog#status-dialog"), "the status to close after deleting")
    c.wait_until(lambda: not c.all("tr[data-automation=keep-5-days]"), "the list without the deleted retention")
    c.check_no_page_errors()


def scenario_wrong_role(c, args, expect):
    """An export whose role cannot be assumed: the test names the failing
    step (assume), why (the STS answer) and the fix; the steps after it did
    not run. With the right role every step passes."""
    c.sign_in(args.key)
    c.go_project(args.project, "automations")
    c.click("#new-automation")
    c.dialog("automation-dialog")
    fill_export_dialog(c, "wrong-role", f"s3://{expect['bucket']}/console", expect["wrong_role_arn"], expect["endpoint"])
    c.click("#dialog-test-button")
    steps = test_steps(c)
    check(steps == {"assume": "fail", "connect": "notrun", "write": "notrun", "read": "notrun", "delete": "notrun"},
          f"steps {steps}: {c.text('#test-result')}")
    verdict = c.text("#test-verdict")
    check("failed at step “assume”" in verdict, verdict)
    message = c.text("#test-result li[data-step=assume] .message")
    check("403" in message, f"no STS status in: {message}")
    check("trust policy" in message and "sts:ExternalId" in message, f"no fix in: {message}")
    check(expect["wrong_role_arn"] in message, f"the role is not named: {message}")
    c.shot("wrong-role")
    c.type("#a-role-arn", expect["role_arn"])
    c.click("#dialog-test-button")
    c.wait_until(lambda: test_steps(c).get("delete") == "ok", "every step to pass with the right role")
    check(set(test_steps(c).values()) == {"ok"}, c.text("#test-result"))
    c.shot("right-role")
    c.check_no_page_errors()


SCENARIOS = {
    "query": scenario_query,
    "edit-object-export": scenario_edit_object_export,
    "export": scenario_export,
    "retention": scenario_retention,
    "wrong-role": scenario_wrong_role,
}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--expect", default="{}")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    started = time.monotonic()
    console = Console(args.url, args.out)
    try:
        SCENARIOS[args.scenario](console, args, json.loads(args.expect))
        console.shot("end")
    except Failed as failure:
        console.shot("failed")
        print(f"FAILED: {failure}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        console.close()
    print(f"scenario {args.scenario} passed in {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
