"""Running the playbooks of ansible/ through ansible-runner, with a live progress display.

Each run gets a fresh private 0700 directory (the extra vars go in a file there, never on a command
line); Ctrl+C cancels the playbook cleanly; a failure is one block naming the task, host and message.
"""
import os
import signal
import sys
import tempfile
from pathlib import Path

import ansible_runner

from . import console
from .errors import DeployError

ANSIBLE = Path(__file__).resolve().parent.parent / "ansible"


class Progress:
    """Turns ansible-runner events into a live display and a summary.

    The current task shows through a console ticker (a spinner on a terminal, a line every few seconds
    elsewhere); results other than ok/skipped are printed. A task counts as changed when its result or
    any of its loop items says so, including results hidden by no_log (their text still says changed).
    """

    def __init__(self, out=sys.stdout):
        self.out, self.tty = out, out.isatty()
        self.task_no, self.task, self.failures, self.changed_tasks = 0, "", [], []
        self.item_changed = False
        self.ticker = console.Ticker("starting Ansible", out).start()

    def _line(self, text):
        if self.tty:
            self.out.write("\r\033[K")
        self.out.write(text + "\n")
        self.out.flush()

    def __call__(self, event):
        kind, data = event.get("event"), event.get("event_data", {})
        res = data.get("res", {}) or {}
        changed = bool(res.get("changed")) or event.get("stdout", "").startswith("changed")
        if kind == "playbook_on_play_start":
            self._line(f"PLAY {data.get('play', '')}")
        elif kind == "playbook_on_task_start":
            self.task_no += 1
            self.task, self.item_changed = data.get("task", ""), False
            self.ticker.update(f"[task {self.task_no}] {self.task}")
        elif kind == "runner_item_on_ok":
            self.item_changed |= changed
        elif kind in ("runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped"):
            status = {"runner_on_ok": "changed" if changed or self.item_changed else "ok",
                      "runner_on_failed": "failed", "runner_on_unreachable": "unreachable",
                      "runner_on_skipped": "skipped"}[kind]
            if kind == "runner_on_failed" and data.get("ignore_errors"):
                status = "failed (ignored)"
            elif kind in ("runner_on_failed", "runner_on_unreachable"):
                self.failures.append((data.get("task", self.task), data.get("host", ""), _message(res)))
            if status == "changed":
                self.changed_tasks.append(data.get("task", self.task))
            if not self.tty or status not in ("ok", "skipped"):
                self._line(f"[task {self.task_no}] {data.get('task', self.task)} | {data.get('host', '')}: {status}")
        return True

    def finish(self):
        self.ticker.stop()


def _message(res):
    if res.get("_ansible_no_log"):
        return "(output hidden: the task handles secrets)"
    parts = [str(res.get("msg", "")).strip()]
    for key in ("stderr", "stdout", "module_stderr"):
        text = str(res.get(key, "") or "").strip()
        if text:
            parts.append("\n".join(text.splitlines()[-15:]))
    return "\n".join(p for p in parts if p) or "no message"


def run_playbook(target, playbook, extravars, say, abort=lambda: False):
    """Run one playbook of ansible/ against one target; returns the number of changed tasks. It stops early
    when abort() turns true (the caller then raises its own error)."""
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix="appliance-runner-") as private:
        os.chmod(private, 0o700)
        inventory = {"appliance": {"hosts": {target.host: {
            "ansible_host": target.host, "ansible_port": target.port, "ansible_user": target.user,
            "ansible_python_interpreter": "/usr/bin/python3",
            **({"ansible_ssh_private_key_file": target.key} if target.key else {})}}}}
        envvars = {
            "ANSIBLE_SSH_ARGS": " ".join(o for o in target.ssh_options() if o not in ("-i", target.key)),
            "ANSIBLE_PIPELINING": "True", "ANSIBLE_NOCOLOR": "True", "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "False",
            "ANSIBLE_LOCALHOST_WARNING": "False", "ANSIBLE_FORCE_COLOR": "False",
        }
        progress, interrupted = Progress(), []
        # Ctrl+C: ansible-playbook runs in its own session, so ask the runner to stop it, then stop too.
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        try:
            runner = ansible_runner.run(private_data_dir=private, playbook=str(ANSIBLE / playbook),
                                        inventory=inventory, extravars=extravars, envvars=envvars, quiet=True,
                                        event_handler=progress, cancel_callback=lambda: bool(interrupted) or abort())
        finally:  # (extravars go in a file under the 0700 directory, not on a command line)
            signal.signal(signal.SIGINT, previous)
            progress.finish()
        if interrupted:
            raise KeyboardInterrupt
        if abort():
            return 0
        stats = runner.stats or {}
        if runner.status != "successful" or progress.failures:
            block = "\n".join(f"  task: {task}\n  host: {host}\n  " + msg.replace("\n", "\n  ")
                              for task, host, msg in progress.failures) or "\n".join(
                                  runner.stdout.read().splitlines()[-20:])
            say(f"\nProvisioning failed:\n{block}\n")
            raise DeployError(f"provisioning {target.host} failed at task "
                              f"{progress.failures[0][0] if progress.failures else '(see above)'!r}")
        changed = sum((stats.get("changed") or {}).values())
        say(f"{playbook}: {sum((stats.get('ok') or {}).values())} ok, changed={changed}"
            + (f" ({', '.join(progress.changed_tasks)})" if changed else ""))
        return changed
