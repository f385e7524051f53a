"""The Dagster and MLflow UIs of the running stack in a real browser (marked integration): Debian's chromium and
chromium-driver through selenium, no browser download. Runs after test_stack.py on the same stack (the
package-scoped ``running_stack``), so the graph has been materialized by the debounced retrain there. It clicks
as a user would: the lineage graphs, a Materialize button, a backfill of every drop from the partition dialog.
"""

import json
import os
import time
from pathlib import Path

import pytest

from finetune_assets_tests.launch.test_stack import FINISHED, failures, gql, runs, tag, wait_for

pytestmark = pytest.mark.integration

# The browser test: Debian's chromium + chromium-driver through selenium (no browser download). Screenshots go
# to FINETUNE_ASSETS_TEST_ARTIFACTS (default .test-artifacts/ in the repo, ignored by git).
ARTIFACTS = Path(
    os.environ.get("FINETUNE_ASSETS_TEST_ARTIFACTS") or Path(__file__).parents[2] / ".test-artifacts"
)


@pytest.fixture(scope="module")
def browser():
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        if os.environ.get("CI"):
            raise RuntimeError("CI must install chromium and chromium-driver: bash scripts/setup.sh --stack")
        pytest.skip("chromium / chromium-driver not installed (bash scripts/setup.sh --stack)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1600,1100"):  # fmt: skip
        options.add_argument(flag)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    (ARTIFACTS / "browser").mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def open_page(driver, url: str, *must_show: str, timeout_s: float = 60) -> str:
    """Load ``url``, dismiss Dagster's one-time community dialog, wait until the page shows every text of
    ``must_show``; returns the page's text."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    deadline = time.monotonic() + timeout_s
    text = ""
    while time.monotonic() < deadline:
        for skip in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            skip.click()
        text = driver.find_element(By.TAG_NAME, "body").text
        if all(t in text for t in must_show):
            return text
        time.sleep(1)
    driver.save_screenshot(str(ARTIFACTS / "browser" / "timeout.png"))
    missing = [t for t in must_show if t not in text]
    raise AssertionError(f"{url} never showed {missing}")


def settle(driver, pending_text: str, timeout_s: float = 20) -> None:
    """Wait (at most ``timeout_s``) until the page no longer shows ``pending_text``: for the screenshots."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pending_text in driver.find_element(By.TAG_NAME, "body").text:
        time.sleep(1)


def body(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


BACKFILLS = """
{ partitionBackfillsOrError(limit: 50) { ... on PartitionBackfills { results { id partitionNames } } } }
"""


def backfills(where) -> list[dict]:
    return gql(where, BACKFILLS)["partitionBackfillsOrError"]["results"]


PARTITION_KEYS = """
query($path: [String!]!) { assetNodeOrError(assetKey: {path: $path}) { ... on AssetNode { partitionKeys } } }
"""


def partition_keys(where, asset: str) -> list[str]:
    return gql(where, PARTITION_KEYS, path=[asset])["assetNodeOrError"]["partitionKeys"]


def assets_by_group() -> dict[str, set[str]]:
    """The code location's assets by group, from the definitions themselves."""
    from finetune_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    groups: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        groups.setdefault(graph.get(key).group_name, set()).add(key.to_user_string())
    return groups


def test_browser_shows_the_graph_materializes_on_click_renders_the_report_and_mlflow_compares(
    running_stack, browser
):
    from selenium.webdriver.common.by import By

    from finetune_assets_tests.defs.conftest import EXPECTED_ASSETS

    where, _ = running_stack
    ui = f"http://127.0.0.1:{where.ports.dagster_webserver}"
    groups = assets_by_group()
    assert set().union(*groups.values()) == EXPECTED_ASSETS
    for group, names in groups.items():  # each group's lineage graph shows each of its assets as a node
        open_page(browser, f"{ui}/locations/finetune_assets/asset-groups/{group}/lineage", *sorted(names))
        settle(browser, "Loading")  # the nodes' statuses arrive after the graph
        browser.save_screenshot(str(ARTIFACTS / "browser" / f"asset_graph_{group}.png"))

    # A materialization launched by clicking: retrieval_index's Materialize button, then the run succeeds.
    before = {r["runId"] for r in runs(where)}
    open_page(browser, f"{ui}/assets/retrieval_index", "Materialize")
    browser.find_element(By.XPATH, "//button[normalize-space()='Materialize']").click()

    def clicked():  # an asset job's run: the sensor's retrain (for test_stack's re-ingested drop) may start too
        return [r for r in runs(where) if r["runId"] not in before and r["jobName"] == "__ASSET_JOB"]

    launched = wait_for(clicked, 60, "the clicked run")
    run_id = launched[0]["runId"]
    done = wait_for(lambda: [r for r in runs(where, runIds=[run_id]) if r["status"] in FINISHED], 300, "it")
    assert done[0]["status"] == "SUCCESS", failures(where, run_id)

    # A backfill launched from the UI: raw_corpus' "Materialize…" dialog, every partition, "Launch backfill".
    # The partitions include test_stack's `_broken` drop, which fails alone while the others are re-ingested.
    before = {b["id"] for b in backfills(where)}
    open_page(browser, f"{ui}/assets/raw_corpus", "Materialize…")
    browser.find_element(By.XPATH, "//button[normalize-space()='Materialize…']").click()
    wait_for(lambda: "Launch backfill" in body(browser), 60, "the backfill dialog", every_s=1)
    # a script click: the dialog's own layers can cover the button at the point a pointer click lands (CI)
    browser.execute_script(
        "arguments[0].click();", browser.find_element(By.XPATH, "//button[normalize-space()='All']")
    )
    partitions = partition_keys(where, "raw_corpus")
    wait_for(
        lambda: f"{len(partitions)} partitions" in body(browser), 30, "all partitions selected", every_s=1
    )
    browser.save_screenshot(str(ARTIFACTS / "browser" / "backfill_dialog.png"))
    launch = browser.find_element(By.XPATH, "//button[normalize-space()='Launch backfill']")
    browser.execute_script("arguments[0].click();", launch)
    backfill = wait_for(
        lambda: [b for b in backfills(where) if b["id"] not in before], 60, "the UI's backfill"
    )[0]
    assert sorted(backfill["partitionNames"]) == sorted(partitions)

    def backfill_runs():
        found = runs(where, tags=[{"key": "dagster/backfill", "value": backfill["id"]}])
        return (
            found if len(found) == len(partitions) and all(r["status"] in FINISHED for r in found) else None
        )

    status = {tag(r, "dagster/partition"): r["status"] for r in wait_for(backfill_runs, 300, "its runs")}
    assert status == {p: "FAILURE" if p == "_broken" else "SUCCESS" for p in partitions}

    # eval_reports' page: the report's Markdown with its plot rendered (an inlined PNG that decodes)
    open_page(browser, f"{ui}/assets/eval_reports", "Show Markdown")
    browser.find_element(By.XPATH, "//*[contains(text(), 'Show Markdown')]").click()
    time.sleep(2)
    images = [
        i for i in browser.find_elements(By.TAG_NAME, "img") if i.get_attribute("src").startswith("data:")
    ]
    assert images and all(int(i.get_attribute("naturalWidth")) > 100 for i in images)
    browser.execute_script("arguments[0].scrollIntoView();", images[0])
    browser.save_screenshot(str(ARTIFACTS / "browser" / "eval_reports_report.png"))

    # MLflow's compare view: the variants' evaluation runs side by side, with the same metric names
    from mlflow import MlflowClient

    client = MlflowClient(where.client_env()["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("finetune_assets")
    evals = client.search_runs([experiment.experiment_id], "tags.variant != ''", max_results=50)
    evals = [r for r in evals if r.info.run_name.startswith("eval-")][:4]
    assert {r.info.run_name for r in evals} == {"eval-base", "eval-inst", "eval-dpo", "eval-tr"}
    ids = json.dumps([r.info.run_id for r in evals]).replace(" ", "")
    mlflow_ui = where.client_env()["MLFLOW_TRACKING_URI"]
    compare = f'{mlflow_ui}/#/compare-runs?runs={ids}&experiments=["{experiment.experiment_id}"]'
    # the four runs side by side and the metric rows (a virtualized list: its first rows are in the page)
    open_page(browser, compare, "Comparing 4 Runs", "eval-base", "eval-inst", "eval-dpo", "eval-tr",
              "fa_domain_mc/acc")  # fmt: skip
    browser.save_screenshot(str(ARTIFACTS / "browser" / "mlflow_compare.png"))
