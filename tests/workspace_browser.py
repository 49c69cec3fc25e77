"""JupyterLab in Chromium (Playwright): a notebook, its cells, and the widgets the scipy image ships.

Shared by the browser tests; each step waits on what a person would see, never on a sleep.
"""
import re

from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LONG = 120_000


def open_notebook(page, url):
    """A new notebook from the launcher, its kernel idle."""
    page.goto(f"{url}/lab?reset", timeout=LONG)
    page.locator(".jp-LauncherCard[data-category='Notebook']").first.click(timeout=LONG)
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").wait_for(timeout=LONG)


def run_cell(page, code, shows, timeout=60_000):
    """Type `code` into a new last cell and run it until the locator `shows` (relative to that cell) appears;
    returns the cell. The kernel's websocket may connect after the status shows Idle: run again until then."""
    cells = page.locator(".jp-Notebook .jp-Cell")
    last = cells.last
    if last.locator(".cm-content").inner_text().strip():  # the first cell is empty; later ones get a new cell
        last.locator(".cm-content").click()
        page.keyboard.press("Escape")
        page.keyboard.press("b")  # insert a cell below, in command mode
        last = cells.last
    last.locator(".cm-content").click()
    page.keyboard.type(code)
    target = shows(last)
    for _ in range(max(1, timeout // 5_000)):
        page.keyboard.press("Control+Enter")
        try:
            target.first.wait_for(timeout=5_000)
            return last
        except PlaywrightTimeout:
            last.locator(".cm-content").click()
    target.first.wait_for(timeout=1_000)
    return last


def printed(text):
    return lambda cell: cell.locator(".jp-OutputArea-output", has_text=text)


def slider_moves_the_kernel_value(page):
    """An IntSlider renders; moving it in the page changes the value the kernel sees. Returns that value."""
    cell = run_cell(page, "import ipywidgets as w; s = w.IntSlider(value=3, min=0, max=10); s",
                    lambda c: c.locator(".widget-hslider .noUi-handle"))
    readout = cell.locator(".widget-readout").first
    assert readout.inner_text().strip() == "3"
    handle = cell.locator(".widget-hslider .noUi-handle").first
    handle.focus()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    if readout.inner_text().strip() == "3":  # no keyboard support: drag the handle instead
        box = handle.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] / 2 + 80, box["y"] + box["height"] / 2, steps=8)
        page.mouse.up()
    shown = readout.inner_text().strip()
    assert shown != "3", "the slider did not move"
    run_cell(page, "print(f'kernel sees {s.value}')", printed(f"kernel sees {shown}"))
    return int(shown)


def ipympl_draws(page):
    """`%matplotlib widget` puts an interactive ipympl canvas on the page, with pixels drawn on it."""
    cell = run_cell(page, "%matplotlib widget\nimport matplotlib.pyplot as plt; fig, ax = plt.subplots(); "
                          "ax.plot([0, 1, 2], [0, 1, 4]);",
                    lambda c: c.locator(".jupyter-matplotlib-canvas-div canvas"))
    canvas = cell.locator(".jupyter-matplotlib-canvas-div canvas").first
    page.wait_for_function("c => c.width > 0 && c.height > 0", arg=canvas.element_handle(), timeout=30_000)
    # the figure arrives as an image over the kernel's websocket: some pixel is not blank once it is drawn
    drawn = page.wait_for_function("""c => {
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < data.length; i += 4) {
            if (data[i + 3] && (data[i] < 250 || data[i + 1] < 250 || data[i + 2] < 250)) return true;
        }
        return false;
    }""", arg=canvas.element_handle(), timeout=30_000)
    assert drawn.json_value() is True
    return re.sub(r"\s+", " ", cell.locator(".jupyter-matplotlib-figure").first.inner_text())
