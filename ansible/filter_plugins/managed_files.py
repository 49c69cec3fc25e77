"""managed_files_pending: the files of ansible/tasks/managed-files.yml that are not in place on the server.

A file is in place when the server's check printed exactly `SHA256 MODE GROUP PATH` for it (mode in
octal as `stat -c %a` prints it). The digest is of the local src file or of the content text.
"""
import hashlib


def expected_line(item):
    if item.get("src"):
        with open(item["src"], "rb") as f:
            data = f.read()
    else:
        data = str(item["content"]).encode()
    return f"{hashlib.sha256(data).hexdigest()} {int(str(item['mode']), 8):o} {item['group']} {item['path']}"


def managed_files_pending(files, installed_lines):
    installed = set(installed_lines)
    return [item for item in files if expected_line(item) not in installed]


class FilterModule:
    def filters(self):
        return {"managed_files_pending": managed_files_pending}
