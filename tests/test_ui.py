"""The Prefect UI in a real browser: a `prefect server`, a run of the real `imagenet18 run` command against it,
and headless Chromium (Debian's package, driven by Playwright) on the run's page: the run, its task runs, its
artifacts and the curves PNG in its summary. Screenshots go to IMAGENET18_SCREENSHOTS (default tests/output/)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.prefect_server import BIN, background, prefect_server

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Locator, Page, Route

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# One worker runs the module, so its one demo run serves every test (pytest -n: docs/testing.md).
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install "
                                                           "chromium; .ci/run installs it)"),
              pytest.mark.server, pytest.mark.slow, pytest.mark.xdist_group("ui")]
playwright_api = pytest.importorskip("playwright.sync_api", reason="the Playwright driver is not installed "
                                                                   "(pip install -e '.[test]')")
expect = playwright_api.expect

REPO = Path(__file__).resolve().parents[1]
SCREENSHOTS = Path(os.environ.get("IMAGENET18_SCREENSHOTS") or REPO / "tests" / "output")
STAGES = ("validate-and-plan", "authorize-launch", "prepare-dataset", "replicate-dataset", "prepare-cluster",
          "provision-cluster", "train", "evaluate", "teardown")
ARTIFACTS = ("imagenet18-plan", "imagenet18-progress", "imagenet18-epochs", "imagenet18-summary")
WAIT_MS = 60_000
EPOCHS = 4  # of cpu-tiny's 8: rows for the table, and epochs left to train after the first one's line
VIEWPORT = {"width": 1400, "height": 900}
# Besides --no-sandbox (root in CI): nothing that talks to Google's services, and a proxy that goes nowhere for
# everything but the server on 127.0.0.1, so neither the browser nor the page can reach the network.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--no-default-browser-check", "--disable-default-apps", "--disable-breakpad",
                 "--disable-domain-reliability", "--disable-client-side-phishing-detection", "--no-pings",
                 "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication"]
NOWHERE_PROXY = {"server": "http://127.0.0.1:9", "bypass": "127.0.0.1"}


@dataclass
class DemoRun:
    ui: str  # the server's root, where the UI is
    flow_run_id: str
    name: str
    artifacts: dict[str, str]  # key -> type, as the API has them
    console: str  # what `imagenet18 run` printed
    epoch_ends: dict[int, float]  # epoch -> when it ended, by the trainer's clock (its metrics records)
    offsite: list[str] = field(default_factory=list)  # what the pages asked of hosts other than the server


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_data) -> Iterator[DemoRun]:
    """A local `prefect server` and one completed run of `imagenet18 run --machines 1` against it."""
    home = tmp_path_factory.mktemp("ui")
    with prefect_server(home) as env, temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]}):
        run_env = {k: v for k, v in env.items() if not k.startswith("WANDB")}
        run_env.update(IMAGENET18_HOME=str(home / "imagenet18"), PYTHONUNBUFFERED="1")
        command = [str(BIN / "imagenet18"), "run", "--machines", "1", "--dataset", str(tiny_data), "--schedule",
                   "cpu-tiny", "--epochs", str(EPOCHS)]
        with background(command, run_env, home / "run.log") as run:
            returncode = run.wait(timeout=900)
        assert returncode == 0, f"imagenet18 run failed ({returncode}):\n{(home / 'run.log').read_text()[-5000:]}"
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["imagenet18"])))
            assert len(runs) == 1, f"one imagenet18 flow run on the fresh server, not {len(runs)}"
            run = runs[0]
            artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        assert run.state is not None and run.state.is_completed(), run.state
        [metrics] = (home / "imagenet18" / "runs").glob("*/metrics.jsonl")
        epoch_ends = {r["epoch"]: r["time"] for r in map(json.loads, metrics.read_text().splitlines())
                      if r["type"] == "epoch"}
        yield DemoRun(env["PREFECT_API_URL"].removesuffix("/api"), str(run.id), run.name,
                      {a.key: a.type for a in artifacts if a.key}, (home / "run.log").read_text(), epoch_ends)


@pytest.fixture(scope="module")
def browser(demo_run: DemoRun) -> Iterator[BrowserContext]:
    """Headless Chromium; requests to any host but the server are refused and recorded in demo_run.offsite."""
    with playwright_api.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                                          proxy=NOWHERE_PROXY)
        try:
            context = chromium.new_context(viewport=VIEWPORT)
            context.set_default_timeout(WAIT_MS)

            def route(request_route: Route) -> None:
                if request_route.request.url.startswith(demo_run.ui + "/"):
                    request_route.continue_()
                else:
                    demo_run.offsite.append(request_route.request.url)
                    request_route.abort()

            context.route("**/*", route)
            yield context
        finally:
            chromium.close()


@pytest.fixture
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.new_page()
    yield page
    page.close()


def _screenshot(page: Page, name: str) -> Path:
    """The whole page: the UI scrolls inside its layout rather than the document, so the viewport is first grown
    to the tallest scrolling content."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = page.evaluate("() => Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], min(height, 6000))})
    path = SCREENSHOTS / name
    page.screenshot(path=path, full_page=True)
    page.set_viewport_size(VIEWPORT)
    return path


def _open_run(page: Page, demo_run: DemoRun, tab: str | None = None) -> None:
    page.goto(f"{demo_run.ui}/runs/flow-run/{demo_run.flow_run_id}")
    expect(page.get_by_text(demo_run.name).first).to_be_visible(timeout=WAIT_MS)
    if tab:
        page.get_by_role("tablist").get_by_text(tab, exact=True).click()


def _task_run_link(page: Page, stage: str) -> Locator:
    """The stage's task run in the Task Runs tab; Prefect names task runs <task>-<3 hex digits>."""
    name = re.compile(rf"^{re.escape(stage)}-[0-9a-f]{{3}}$")
    return page.get_by_role("tabpanel", name="Task Runs").get_by_role("link", name=name)


def test_the_flow_run_page_shows_the_run_and_its_task_runs(demo_run: DemoRun, page: Page) -> None:
    _open_run(page, demo_run, tab="Task Runs")
    try:
        header = page.get_by_role("banner")
        expect(header.get_by_text("Completed", exact=True)).to_be_visible(timeout=WAIT_MS)
        expect(header.get_by_text(f"{len(STAGES)} Task runs", exact=True)).to_be_visible(timeout=WAIT_MS)
        for stage in STAGES:
            expect(_task_run_link(page, stage)).to_be_visible(timeout=WAIT_MS)
    finally:
        _screenshot(page, "flow-run.png")  # the run graph (task runs, artifacts) above the Task Runs tab


def test_the_artifacts_tab_lists_the_runs_artifacts(demo_run: DemoRun, page: Page) -> None:
    missing = [key for key in ARTIFACTS if key not in demo_run.artifacts]
    assert not missing, f"the run made no artifact with key(s) {missing} (it made {sorted(demo_run.artifacts)})"
    _open_run(page, demo_run, tab="Artifacts")
    try:
        for key in ARTIFACTS:
            expect(page.get_by_role("tabpanel", name="Artifacts").get_by_text(key, exact=True),
                   f"artifact {key} on the run's Artifacts tab").to_be_visible(timeout=WAIT_MS)
    finally:
        _screenshot(page, "artifacts.png")


def _open_artifact(page: Page, demo_run: DemoRun, key: str) -> None:
    """From the run's Artifacts tab, as a user would: click the artifact's card."""
    if key not in demo_run.artifacts:
        pytest.fail(f"the run made no artifact with key {key} (it made {sorted(demo_run.artifacts)})")
    _open_run(page, demo_run, tab="Artifacts")
    card = page.get_by_role("tabpanel", name="Artifacts").get_by_text(key, exact=True)
    expect(card, f"artifact {key} on the run's Artifacts tab").to_be_visible(timeout=WAIT_MS)
    card.click()
    expect(page).to_have_url(re.compile(r"/artifacts/artifact/[0-9a-f-]{36}$"), timeout=WAIT_MS)


def test_the_summary_shows_the_curves_png(demo_run: DemoRun, page: Page) -> None:
    _open_artifact(page, demo_run, "imagenet18-summary")
    try:
        expect(page.get_by_role("heading", name=demo_run.name)).to_be_visible(timeout=WAIT_MS)
        curves = page.get_by_role("img", name=re.compile("curves"))
        expect(curves).to_be_visible(timeout=WAIT_MS)
        page.wait_for_function("image => image.complete && image.naturalWidth > 0", arg=curves.element_handle(),
                               timeout=WAIT_MS)
    finally:
        _screenshot(page, "summary.png")


def test_the_plan_shows_resources_and_cost(demo_run: DemoRun, page: Page) -> None:
    _open_artifact(page, demo_run, "imagenet18-plan")
    try:
        expect(page.get_by_role("heading", name=f"Plan: {demo_run.name}")).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_role("columnheader", name="resource")).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_text(re.compile(r"\$\d[\d,]*\.\d\d/h")).first).to_be_visible(timeout=WAIT_MS)
    finally:
        _screenshot(page, "plan.png")


def test_the_epoch_table_has_a_row_per_epoch(demo_run: DemoRun, page: Page) -> None:
    _open_artifact(page, demo_run, "imagenet18-epochs")
    try:
        for column in ("epoch", "hours", "lr", "top-1", "top-5"):
            expect(page.get_by_role("columnheader", name=column, exact=True)).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_role("columnheader", name=re.compile("loss"))).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("tbody tr")).to_have_count(EPOCHS, timeout=WAIT_MS)
    finally:
        _screenshot(page, "epochs.png")


def test_the_progress_of_a_completed_run_is_100_percent(demo_run: DemoRun, page: Page) -> None:
    _open_artifact(page, demo_run, "imagenet18-progress")
    try:
        expect(page.get_by_text("Progress: 100%")).to_be_visible(timeout=WAIT_MS)
    finally:
        _screenshot(page, "progress.png")


def test_the_pages_ask_nothing_of_other_hosts(demo_run: DemoRun, page: Page) -> None:
    demo_run.offsite.clear()
    _open_artifact(page, demo_run, "imagenet18-summary")
    _open_run(page, demo_run, tab="Task Runs")
    expect(_task_run_link(page, "train")).to_be_visible(timeout=WAIT_MS)
    assert demo_run.offsite == [], "the UI works without network access"


def test_the_command_prints_machine_0s_epoch_lines_as_epochs_end(demo_run: DemoRun) -> None:
    printed = {int(epoch): clock for clock, epoch in
               re.findall(r"^(\d\d:\d\d:\d\d\.\d+) .*machine 0 \| ~~(\d+)\s", demo_run.console, re.MULTILINE)}
    assert sorted(printed) == list(range(EPOCHS)), demo_run.console[-3000:]

    def seconds(clock: str) -> float:
        hours, minutes, rest = clock.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(rest)

    last_end = dt.datetime.fromtimestamp(demo_run.epoch_ends[EPOCHS - 1])  # the console's clock is local time
    assert seconds(printed[0]) < seconds(last_end.strftime("%H:%M:%S.%f")), \
        "each epoch's line is printed when it ends, not at the end: the first before the last epoch ended"
    assert f"{demo_run.name}: top-1 " in demo_run.console and "imagenet18 tensorboard --run" in demo_run.console
