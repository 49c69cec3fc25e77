"""The notebook container's entry point.

Started as root (the appliance runs the container as user 0 with only CAP_SETUID and CAP_SETGID), it
binds Jupyter's unix socket itself, in a directory the notebook account cannot write, so no code in a
kernel can replace what nginx connects to; then it becomes the notebook account (APPLIANCE_NB_UID and
APPLIANCE_NB_GID: no capability survives the switch, and no-new-privileges keeps it so) and runs tini
and JupyterLab on that socket. Started as any other user (a plain `docker run` of the image), it runs
tini and JupyterLab, which binds the socket itself. A command given to the container runs instead of
JupyterLab, under tini, as the notebook account.

Python's user site (PYTHONUSERBASE, where a notebook's `%pip install` goes; bind-mounted from the server)
is the kernels' alone: this script runs with -s as root (the image's ENTRYPOINT) and starts Jupyter Server
with -s, so nothing a notebook installed runs as root or inside the server that checks XSRF and origins.
"""
import ctypes
import os
import site
import socket
import sys

SOCKET = os.environ["APPLIANCE_JUPYTER_SOCKET"]
TINI = "/usr/bin/tini"
SERVE = "--serve"  # the second stage, under tini
PR_SET_DUMPABLE = 4


def become_notebook_account(bind):
    """Returns the listening socket when bound (kept open: exec hands its descriptor on)."""
    listening = None
    if bind:
        from tornado.netutil import bind_unix_socket
        listening = bind_unix_socket(SOCKET, mode=0o660)  # root's; its group is the directory's (setgid)
        os.set_inheritable(listening.fileno(), True)
        os.environ["APPLIANCE_SOCKET_FD"] = str(listening.fileno())
    gid, uid = int(os.environ["APPLIANCE_NB_GID"]), int(os.environ["APPLIANCE_NB_UID"])
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    return listening


def make_user_site():
    """The user site-packages directory, made as the notebook account: Python puts it on a kernel's sys.path
    only if it exists when the kernel starts, and a `%pip install` into it should import without a restart."""
    try:
        os.makedirs(site.getusersitepackages(), exist_ok=True)
    except OSError:
        pass  # not mounted (a plain `docker run`): the image's own directory is read-only to this account


def serve():
    """JupyterLab, on the socket the first stage bound when there is one."""
    fd = os.environ.pop("APPLIANCE_SOCKET_FD", None)
    if fd is not None:
        from jupyter_server import serverapp
        listening = socket.socket(fileno=int(fd))
        os.set_inheritable(listening.fileno(), False)  # the kernels must not get it
        serverapp.unix_socket_in_use = lambda path: False
        serverapp.bind_unix_socket = lambda path, mode: listening
    # Kernels run as the same account: keep them from ptrace-ing this process or reading its /proc files.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    from jupyterlab.labapp import main
    sys.argv = ["jupyter-lab", "--no-browser"]
    sys.exit(main())


if __name__ == "__main__":
    command = sys.argv[1:]
    if command == [SERVE]:
        serve()
    if os.geteuid() == 0 and "APPLIANCE_NB_UID" in os.environ:
        bound = become_notebook_account(bind=not command)
    os.umask(0o002)  # the notebooks are shared with the operator's group
    make_user_site()
    os.execv(TINI, [TINI, "--", *(command or [sys.executable, "-s", __file__, SERVE])])
