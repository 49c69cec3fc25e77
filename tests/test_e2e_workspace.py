"""The data-science workspace through the appliance (nginx, TLS, login) in a real browser: widgets move and
the kernel sees it, `%matplotlib widget` draws, jupyterlab-git answers (issue 17).

Widgets need nothing more behind nginx: their JupyterLab parts ship prebuilt in the wheels (served under
/lab/extensions/ like JupyterLab's own), and their messages (comm) travel on the kernel's websocket.
"""
import pytest

import jupyter_api
from appliance import layout
from helpers import ARTIFACTS, PASSWORD, URL, in_droplet

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
NOTEBOOKS = layout.notebooks_dir("ds")


def test_a_slider_moves_the_kernel_value_and_ipympl_draws(appliance):
    from playwright.sync_api import sync_playwright

    import workspace_browser as wb
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=wb.CHROMIUM_ARGS)
        try:
            # Our private CA is not in Chromium's store; test_up_reports_how_to_log_in checks the fingerprint.
            context = browser.new_context(http_credentials={"username": "ds", "password": PASSWORD},
                                          ignore_https_errors=True, viewport={"width": 1400, "height": 900})
            page = context.new_page()
            failed = []
            page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
            wb.open_notebook(page, URL)
            assert wb.slider_moves_the_kernel_value(page) != 3
            assert "Figure" in wb.ipympl_draws(page)
            page.screenshot(path=str(ARTIFACTS / "widgets.png"))
            assert not [f for f in failed if "/lab/extensions/" in f], failed  # every extension's assets load
        finally:
            browser.close()


def git(session, path, action, **body):
    r = session.post(f"{URL}/git/{path}/{action}", json=body)
    return r.status_code, r.json()


def test_jupyterlab_git_works_in_the_notebooks_without_a_credential_helper(appliance):
    s = jupyter_api.session(appliance["ca"], "ds", PASSWORD)
    settings = s.get(f"{URL}/git/settings").json()
    assert settings["gitVersion"].startswith("2.") and settings["serverVersion"]
    assert s.put(f"{URL}/api/contents/repo17", json={"type": "directory"}).status_code in (200, 201)
    status, body = git(s, "repo17", "init")  # its first commit needs an identity, which JupyterLab then asks for
    assert status == 200 or "tell me who you are" in body["message"], body
    assert git(s, "repo17", "config", options={"user.name": "Test", "user.email": "test@example.org"})[1]["code"] == 0
    assert git(s, "repo17", "init") == (200, {"code": 0})
    status, body = git(s, "repo17", "log", history_count=5)
    assert status == 200 and [c["commit_msg"] for c in body["commits"]] == ['"First Commit"']
    # everything git wrote is in the notebooks (the repository's own config): nothing outside HOME, /tmp
    # and the notebooks was needed, and the container's root filesystem stays read-only
    assert "email = test@example.org" in in_droplet("cat", f"{NOTEBOOKS}/repo17/.git/config")
    assert in_droplet("stat", "-c", "%U", f"{NOTEBOOKS}/repo17/.git/config").strip() == layout.NOTEBOOK_ACCOUNT
    # a repository the operator made (another owner) is not "dubious": the image's /etc/gitconfig trusts it
    uid = in_droplet("id", "-u", "ds").strip()
    in_droplet("docker", "exec", "-u", f"{uid}:{uid}", "-e", "HOME=/tmp", layout.CONTAINER, "git", "init", "-q",
               f"{layout.IMAGE_NOTEBOOKS}/operator-repo")  # HOME is the notebook account's (0700)
    assert in_droplet("stat", "-c", "%u", f"{NOTEBOOKS}/operator-repo/.git").strip() == uid
    status, body = git(s, "operator-repo", "status")
    assert status == 200 and body["code"] == 0, body
