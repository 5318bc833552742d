"""The walk explorer as a person uses it, in headless Chromium: notebook 08 in JupyterLab,
and the self-contained page of ``dgmn-ref explore-export`` opened from ``file://``.

The notebook (``test_explorer_in_jupyterlab``):

Starts JupyterLab on 127.0.0.1 (token, free port, HOME and JUPYTER_* in a temporary folder,
root_dir = a temporary copy of notebooks/ so nothing committed is modified), opens the
notebook, runs all cells from the Run menu, clicks a pixel of the explorer's neighbours picture
(an ipympl canvas) and checks that the node under that pixel is selected (the status line's
``data-node``, placed with its ``data-image-box``), that the figure changed and that the node
sliders followed; then moves the "node column x" slider with the keyboard and unticks "uniform
positions", checking each time that the figure changed.
Screenshots are written to ``artifacts/browser/`` (ignored by git) and their paths printed.

The page (``test_explorer_page``): exported from the committed checkpoint into a temporary
folder, opened with no server, two pixels clicked on two different pictures; the selected
node, the red marker and the drawn neighbours must follow each click.

Skips, with the reason, when /usr/bin/chromium, playwright or jupyterlab is missing
(``.ci/run`` installs Debian's chromium). Never downloads a browser.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "08_explore_walks.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
STATUS = "#jp-main-statusbar .jp-StatusBar-TextItem"
EXPLORER = ".dgmn-explorer"
FIGURE = f"{EXPLORER} .jupyter-matplotlib-figure"  # the ipympl canvas widget, redrawn in place
CANVAS = f"{EXPLORER} .jupyter-matplotlib-canvas-div"  # where ipympl takes the mouse events
STATUS_NODE = f"{EXPLORER} .dgmn-node"  # data-node="y,x", data-size, data-image-box
MIN_CHANGE = 0.002  # fraction of the figure's pixels that must change


def browser_requirements() -> str | None:
    """Why no headless Chromium can be driven here, or None."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} not found (install Debian's chromium: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as error:
        return f"the playwright Python package is missing ({error})"
    return None


def requirements() -> str | None:
    """Why the JupyterLab test cannot run here, or None."""
    reason = browser_requirements()
    if reason:
        return reason
    if shutil.which("jupyter-lab", path=str(Path(sys.executable).parent)) is None:
        return f"jupyter-lab not found beside {sys.executable} (pip install jupyterlab)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout:.0f} s")


def pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def ink(png: bytes) -> float:
    """Fraction of pixels that are not near-white (a blank or half-drawn figure has few)."""
    return float((pixels(png).min(axis=-1) < 235).mean())


def changed_fraction(before: bytes, after: bytes) -> float:
    a, b = pixels(before), pixels(after)
    if a.shape != b.shape:
        return 1.0
    return float((np.abs(a - b).max(axis=-1) > 16).mean())


def wait_for_redraw(output, before: bytes, timeout: float = 30.0) -> tuple[bytes, float]:
    """Screenshots of the figure until it differs from ``before`` (then once more, for
    the last queued redraw); returns the last screenshot and its changed fraction."""
    deadline, after = time.monotonic() + timeout, before
    while time.monotonic() < deadline:
        time.sleep(0.5)
        after = output.screenshot()
        if changed_fraction(before, after) > MIN_CHANGE:
            time.sleep(1.0)
            after = output.screenshot()
            break
    return after, changed_fraction(before, after)


def test_explorer_in_jupyterlab(tmp_path):
    reason = requirements()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright

    started = time.monotonic()
    root = tmp_path / "notebooks"
    shutil.copytree(REPO / "notebooks", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    home = tmp_path / "home"
    env = {
        **os.environ,
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(home / "jupyter"),
        "JUPYTER_DATA_DIR": str(home / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(home / "jupyter-runtime"),
        "IPYTHONDIR": str(home / "ipython"),
        "MPLCONFIGDIR": str(home / "mpl"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    env.pop("MPLBACKEND", None)  # the kernel must use the inline backend
    # No "get notified about Jupyter news?" toast over the figure.
    labconfig = home / "jupyter" / "labconfig"
    labconfig.mkdir(parents=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    port, token = free_port(), secrets.token_hex(16)
    log = (tmp_path / "jupyter.log").open("w")
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "jupyter-lab"),
            "--no-browser",
            f"--port={port}",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.token={token}",
            f"--ServerApp.root_dir={root}",
            "--allow-root",
        ],
        env=env,
        cwd=root,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its kernels go in its process group
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    names = ("before", "clicked", "after", "no_uniform", "page")
    shots = {name: ARTIFACTS / f"{name}.png" for name in names}
    for path in shots.values():
        path.unlink(missing_ok=True)
    page = None
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_server(f"{base}/api/status?token={token}", server)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1800, "height": 1000})
                page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={token}")
                # The kernel is connected once the status bar says "| Idle".
                expect(page.locator(STATUS).filter(has_text="| Idle")).to_be_visible(timeout=60_000)
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

                output = page.locator(FIGURE).first
                status = page.locator(STATUS_NODE).first
                expect(status).to_have_attribute(
                    "data-image-box", re.compile(r"\d"), timeout=90_000
                )
                expect(output.locator("canvas").first).to_be_visible(timeout=30_000)
                output.scroll_into_view_if_needed()
                time.sleep(2.0)  # let the first image arrive and paint
                before = output.screenshot(path=str(shots["before"]))

                # Click a pixel of the neighbours picture: the node under it is selected.
                start = tuple(map(int, status.get_attribute("data-node").split(",")))
                h, w = map(int, status.get_attribute("data-size").split(","))
                left, top, right, bottom = map(
                    float, status.get_attribute("data-image-box").split(",")
                )
                target = (3, (start[1] + w // 2) % w)
                canvas = page.locator(CANVAS).first
                box = canvas.bounding_box()
                point = {
                    "x": (left + (right - left) * (target[1] + 0.5) / w) * box["width"],
                    "y": (top + (bottom - top) * (target[0] + 0.5) / h) * box["height"],
                }
                canvas.click(position=point)
                expect(status).to_have_attribute(
                    "data-node", f"{target[0]},{target[1]}", timeout=30_000
                )
                clicked, fraction = wait_for_redraw(output, before)
                shots["clicked"].write_bytes(clicked)
                print(f"click at {point} -> node {target}: {fraction:.2%} of pixels changed")
                assert fraction > MIN_CHANGE, (
                    f"clicking node {target} left the figure unchanged ({fraction:.3%} differ); "
                    f"see {shots['before']} and {shots['clicked']}"
                )
                # The sliders follow the click (and stay the keyboard fallback).
                sliders = page.locator(f"{EXPLORER} .widget-hslider")
                for description, value in (("node row y", target[0]), ("node column x", target[1])):
                    readout = sliders.filter(has_text=description).locator(".widget-readout")
                    expect(readout).to_have_text(str(value), timeout=10_000)

                slider = sliders.filter(has_text="node column x")
                readout = slider.locator(".widget-readout")
                start = int(readout.inner_text())
                steps = 4 if start + 4 < w else -4
                slider.locator(".noUi-handle").focus()
                for _ in range(abs(steps)):
                    page.keyboard.press("ArrowRight" if steps > 0 else "ArrowLeft")
                expect(readout).to_have_text(str(start + steps), timeout=10_000)
                expect(status).to_have_attribute(
                    "data-node", f"{target[0]},{start + steps}", timeout=30_000
                )
                after, fraction = wait_for_redraw(output, clicked)
                shots["after"].write_bytes(after)
                print(f"node x {start} -> {start + steps}: {fraction:.2%} of pixels changed")
                assert fraction > MIN_CHANGE, (
                    f"moving the node slider from x={start} to x={start + steps} left the "
                    f"explorer's figure unchanged ({fraction:.3%} of pixels differ); see "
                    f"{shots['clicked']} and {shots['after']}"
                )

                # Toggle uniform vs learned positions: the rings of eq. (3) disappear.
                page.locator(f"{EXPLORER} .widget-checkbox").filter(
                    has_text="uniform positions"
                ).locator("input").uncheck()
                unticked, fraction = wait_for_redraw(output, after)
                shots["no_uniform"].write_bytes(unticked)
                print(f"uniform positions off: {fraction:.2%} of pixels changed")
                assert fraction > MIN_CHANGE, "unticking 'uniform positions' changed nothing"
                for name in ("before", "clicked", "after", "no_uniform"):
                    drawn = ink(shots[name].read_bytes())
                    assert drawn > 0.2, f"{shots[name]} is nearly blank ({drawn:.1%} ink)"
                page.screenshot(path=str(shots["page"]), full_page=True)
                for name, path in shots.items():
                    print(f"screenshot {name}: {path}")
                print(f"browser part: {time.monotonic() - started:.1f} s")
            finally:
                if page is not None and not shots["page"].exists():
                    page.screenshot(path=str(shots["page"]), full_page=True)
                    print(f"screenshot page (at failure): {shots['page']}")
                browser.close()
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        except ProcessLookupError:
            pass
        log.close()
    assert time.monotonic() - started < 120, "the browser test must finish within 2 minutes"


def canvas_pixel(page, canvas: str, y: float, x: float) -> list[int]:
    """RGBA of one pixel of a canvas, read in the page."""
    return page.evaluate(
        "([id, y, x]) => Array.from(document.getElementById(id).getContext('2d')"
        ".getImageData(Math.round(x), Math.round(y), 1, 1).data)",
        [canvas, y, x],
    )


def canvas_bytes(page, canvas: str) -> bytes:
    """A PNG screenshot of one canvas, for :func:`changed_fraction`."""
    return page.locator(f"#{canvas}").screenshot()


def click_node(page, canvas: str, node: tuple[int, int], size: tuple[int, int]) -> None:
    """Click the centre of the image block that feature pixel ``node`` covers."""
    box = page.locator(f"#{canvas}").bounding_box()
    page.locator(f"#{canvas}").click(
        position={
            "x": (node[1] + 0.5) * box["width"] / size[1],
            "y": (node[0] + 0.5) * box["height"] / size[0],
        }
    )


def test_explorer_page(tmp_path, one_thread):
    """The page with no Python: click two pixels, the drawn neighbourhood follows."""
    reason = browser_requirements()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    from dgmn_ref import cli
    from dgmn_ref.figures import explore, viz

    started = time.monotonic()
    checkpoint = REPO / "notebooks" / "checkpoints" / "08_explore_walks"
    page_file = tmp_path / "explorer.html"
    assert cli.main(["explore-export", str(checkpoint), "--out", str(page_file)]) == 0
    print(f"export: {time.monotonic() - started:.1f} s")
    size_mb = page_file.stat().st_size / 1e6
    assert size_mb <= 5.0, f"the page is {size_mb:.2f} MB for four frames; expected <= 5 MB"
    # What the page must draw, from Python: the walked positions of the clicked nodes.
    model, cfg = explore.load_model(checkpoint)
    frames = explore.load_frames(cfg)
    data = viz.extract_from_model(model, frames.images)["context"]
    size = data.size
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    clicks = [("neighbours", 0, (9, 3)), ("sources", 2, (3, 20))]  # (canvas, frame, node)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(page_file.as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            previous, previous_node = canvas_bytes(page, "neighbours"), None
            for canvas, frame, node in clicks:
                page.select_option("#frame", str(frame))
                click_node(page, canvas, node, size)
                body = page.locator("body")
                assert body.get_attribute("data-node") == f"{node[0]},{node[1]}", (
                    f"clicked node {node} on {canvas}, the page selected "
                    f"{body.get_attribute('data-node')}"
                )
                assert page.locator("#node").inner_text() == f"(y={node[0]}, x={node[1]})"
                # The red receiving-node marker sits at the click on every picture.
                for view in ("neighbours", "sources", "lengths"):
                    width = page.evaluate(f"document.getElementById('{view}').width")
                    zoom = width / frames.pictures.shape[2]
                    cy = (node[0] + 0.5) * frames.pictures.shape[1] / size[0] * zoom
                    cx = (node[1] + 0.5) * frames.pictures.shape[2] / size[1] * zoom
                    red = canvas_pixel(page, view, cy, cx)
                    assert red[:3] == [255, 0, 0], f"{view}: no red node marker at {node}: {red}"
                # The neighbours drawn are this node's walked positions (to the quantisation).
                drawn = page.evaluate("window.dgmnExplorer.drawn")
                assert [n["rate"] for n in drawn] == list(data.rates)
                for s, n in enumerate(drawn):
                    expected = data.walked[s, frame, :, :, node[0], node[1]].double().numpy()
                    assert np.abs(np.asarray(n["walked"]) - expected).max() < 0.01
                sources = dict(page.evaluate("window.dgmnExplorer.sources"))
                heat = viz.message_sources(data, node, frame).double().numpy().ravel()
                strongest = int(np.abs(heat).argmax())
                assert abs(sources[strongest] - heat[strongest]) < 0.02 * np.abs(heat).max()
                now = canvas_bytes(page, "neighbours")
                changed = changed_fraction(previous, now)
                assert changed > MIN_CHANGE, (
                    f"clicking {node} after {previous_node} drew nothing new"
                )
                previous, previous_node = now, node
                page.screenshot(path=str(ARTIFACTS / f"page-{node[0]}-{node[1]}.png"))
            # Toggles: rate 12 off, then the uniform positions off.
            page.locator("input.rate[data-s='3']").uncheck()
            assert [n["rate"] for n in page.evaluate("window.dgmnExplorer.drawn")] == [1, 3, 6]
            page.locator("#uniform").uncheck()
            assert changed_fraction(previous, canvas_bytes(page, "neighbours")) > MIN_CHANGE
            page.screenshot(path=str(ARTIFACTS / "page-toggles.png"))
            assert not errors, f"JavaScript errors: {errors}"
            assert all(url.startswith(("file:", "data:")) for url in requests), requests
        finally:
            browser.close()
    print(f"explorer page {size_mb:.2f} MB; browser part {time.monotonic() - started:.1f} s")
    assert time.monotonic() - started < 120, "the page test must finish within 2 minutes"
