"""Progress: long steps never go silent, and the change summary names every changed task."""
import io
import os
import sys
import time
from pathlib import Path

import ansible_runner

from appliance import console, playbook

PLAYBOOK = """
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Write a plain file and a secret one
      ansible.builtin.copy: {{dest: "{out}/{{{{ item.name }}}}", content: "{{{{ item.name }}}}\\n", mode: "0600"}}
      loop: [{{name: plain, secret: false}}, {{name: secret, secret: true}}]
      no_log: "{{{{ item.secret }}}}"
    - name: Write only a secret file
      ansible.builtin.copy: {{dest: "{out}/only-secret", content: "s\\n", mode: "0600"}}
      no_log: true
    - name: Change nothing
      ansible.builtin.stat: {{path: "{out}"}}
"""


def run(tmp_path, progress):
    playbook = tmp_path / "pb.yml"
    playbook.write_text(PLAYBOOK.format(out=tmp_path / "out"))
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "runner").mkdir(exist_ok=True)
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    try:
        return ansible_runner.run(private_data_dir=str(tmp_path / "runner"), playbook=str(playbook),
                                  inventory="localhost,", quiet=True, event_handler=progress,
                                  envvars={"ANSIBLE_NOCOLOR": "True"})
    finally:
        progress.finish()


def test_tasks_changed_behind_no_log_are_named(tmp_path):
    progress = playbook.Progress(io.StringIO())
    runner = run(tmp_path, progress)
    assert runner.status == "successful"
    changed = sum(runner.stats["changed"].values())
    assert changed == 2 and len(progress.changed_tasks) == changed, progress.changed_tasks
    assert progress.changed_tasks == ["Write a plain file and a secret one", "Write only a secret file"]
    second = playbook.Progress(io.StringIO())  # nothing differs now
    runner = run(tmp_path, second)
    assert sum(runner.stats["changed"].values()) == 0 and second.changed_tasks == []


def test_a_long_step_says_it_still_runs(monkeypatch):
    monkeypatch.setattr(console, "HEARTBEAT", 1)
    out, said = io.StringIO(), []
    with console.working("Copying things", said.append, out) as ticker:
        time.sleep(1.5)
        ticker.update("Copying things: 5 MB sent")
        time.sleep(1.5)
    assert said == ["Copying things"]
    lines = out.getvalue().splitlines()
    assert len(lines) >= 2 and lines[-1].startswith("  ... Copying things: 5 MB sent ("), lines
    quiet = io.StringIO()
    with console.working("Quick", said.append, quiet):
        pass
    assert quiet.getvalue() == ""
