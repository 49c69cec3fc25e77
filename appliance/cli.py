"""Command line: parse, build the frozen config, run one command, exit.

This is the only module that exits; everything else raises ApplianceError.
"""
import argparse
import os
import sys

from . import config
from .errors import ApplianceError

DESCRIPTION = """\
Provision a secure, containerized Jupyter appliance: a data-science Jupyter
image in a container, behind nginx with TLS and a bcrypt password, notebooks
kept on the host. Without --host, commands act on a local droplet (a Debian 12
container with systemd and sshd on this machine)."""


def say(msg):
    if sys.stdout.isatty():  # over a progress line that may be showing
        sys.stdout.write("\r\033[K")
    print(msg, flush=True)


def _target_flags(p, server=True):
    g = p.add_argument_group("target")
    g.add_argument("--config", metavar="FILE", help="TOML file with settings (same names as the flags)")
    g.add_argument("--host", help="IP or DNS name of the server (default: the local droplet)")
    g.add_argument("--domain", metavar="NAME", help="DNS name for the certificate and the URL")
    g.add_argument("--user", help="Linux user on the server and login name in the browser (default ds)")
    g.add_argument("--password-file", metavar="F", help="file holding the password (or set $APPLIANCE_PASSWORD)")
    g.add_argument("--state-dir", metavar="DIR", help="where CA, certificate and htpasswd are kept "
                   "(default .appliance/ beside provision.py)")
    if server:
        g.add_argument("--ssh-user", help="SSH login (default root; e.g. ubuntu with sudo on EC2)")
        g.add_argument("--ssh-port", type=int, help="SSH port (default 22)")
        g.add_argument("--ssh-key", metavar="PATH", help="private key for SSH")
        g.add_argument("--ssh-host-key-fingerprint", metavar="SHA256:...", help="the server's SSH host key "
                       "fingerprint: pinned on first contact instead of trusting whatever key answers")
        g.add_argument("--image", help="notebook image (default scipy)")


def _worker_flags(p):
    g = p.add_argument_group("Dask cluster (docs/cluster.md)")
    g.add_argument("--workers", type=int, metavar="N", help="N local worker droplets (0: no cluster; default: as "
                   "the last up)")
    g.add_argument("--worker-host", action="append", metavar="HOST", help="a worker server, with --host "
                   "(repeatable; default: as the last up)")
    g.add_argument("--worker-memory", metavar="SIZE", help="each worker's memory limit, e.g. 2g (default: 75%% "
                   "of the worker server's RAM)")


def _tls_flags(p):
    g = p.add_argument_group("certificate (default: one from the appliance's private CA)")
    g.add_argument("--tls", choices=config.TLS_MODES, help="private: the private CA's certificate (default); "
                   "acme: one browsers trust, from Let's Encrypt (or --acme-directory) for --domain, renewed on the "
                   "server by itself")
    g.add_argument("--acme-email", metavar="ADDR", help="contact for the ACME account (expiry warnings)")
    g.add_argument("--acme-directory", metavar="URL", help=f"the ACME CA's directory (default {config.LETSENCRYPT}; "
                   f"Let's Encrypt's staging: {config.LETSENCRYPT_STAGING})")
    g.add_argument("--acme-ca-bundle", metavar="FILE", help="PEM file of CA certificates trusted for the ACME "
                   "directory only (a test or in-house ACME CA)")


def _cloud_flags(p, create=False):
    g = p.add_argument_group("cloud (credentials: $DIGITALOCEAN_TOKEN or doctl's config; AWS's standard chain)")
    g.add_argument("--cloud", choices=("digitalocean", "aws"), required=not create,
                   help="create the server through this provider's API instead of giving --host")
    g.add_argument("--name", help="the server's name (default appliance): a second run finds it again")
    g.add_argument("--region", help="region (default fra1 on DigitalOcean, eu-central-1 on AWS)")
    if create:
        g.add_argument("--size", help="DigitalOcean droplet size (default s-2vcpu-4gb)")
        g.add_argument("--instance-type", help="AWS instance type (default t3.medium)")
        g.add_argument("--volume-gb", type=int, help="size of the notebooks volume (default 10)")
        g.add_argument("--ssh-from", metavar="CIDR", help="let SSH in only from this network (default anywhere)")
    else:
        g.add_argument("--config", metavar="FILE", help="TOML file with settings (same names as the flags)")
        g.add_argument("--ssh-key", metavar="PATH", help="the SSH key registered with the provider")
        g.add_argument("--state-dir", metavar="DIR", help="the state directory (default .appliance/)")


def _ca_flag(p):
    p.add_argument("--ca-bundle", metavar="PATH", help="CA certificates trusted while building the image "
                   "(default: the ones this machine trusts, e.g. a TLS-intercepting proxy's; 'none': only the "
                   "image's own)")


def _build_on_flag(p):
    p.add_argument("--build-on", choices=config.BUILD_ON, help="where the notebook image is built: here (and "
                   "sent to the server), server (it fetches the packages itself), or auto (default: the server "
                   "when the upload to it is slow and it reaches the package index)")


def _image_flags(p):
    p.add_argument("--image", help="image to build (default scipy)")
    p.add_argument("--base-image", metavar="REF", help="root image (default debian:bookworm-slim)")
    _ca_flag(p)
    p.add_argument("--package", action="append", default=[], metavar="NAME==VER",
                   help="add a Python package on top (repeatable)")


def parser():
    p = argparse.ArgumentParser(prog="provision.py", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="provision the server (or the local droplet) into the appliance")
    _target_flags(up)
    _tls_flags(up)
    _ca_flag(up)
    _build_on_flag(up)
    _worker_flags(up)
    _cloud_flags(up, create=True)

    down = sub.add_parser("down", help="stop and remove the local droplet, or destroy the --cloud server "
                          "(notebooks are kept)")
    down.add_argument("--purge", action="store_true", help="also delete the notebooks (local droplet: and engine "
                      "data; --cloud: the volume, its snapshots, the firewall and the SSH key)")
    down.add_argument("--yes", action="store_true", help="do not ask before --purge on a --cloud server")
    _cloud_flags(down)
    down.set_defaults(cloud=None)
    for action in down._actions:
        if action.dest == "cloud":
            action.required = False

    snapshot = sub.add_parser("snapshot", help="snapshot the --cloud server's notebooks volume (or list them)")
    snapshot.add_argument("action", nargs="?", choices=("list",), help="list the snapshots instead")
    snapshot.add_argument("--keep", type=int, default=7, metavar="N", help="keep the newest N (default 7)")
    _cloud_flags(snapshot)

    status = sub.add_parser("status", help="show the appliance's health; exit 0 only when healthy")
    _target_flags(status)
    status.add_argument("--json", action="store_true", help="print the facts as JSON")

    logs = sub.add_parser("logs", help="print the notebook server's, nginx's or the login verifier's log")
    _target_flags(logs)
    logs.add_argument("--worker", metavar="NAME", help="with --service dask-worker: which worker (default the first)")
    logs.add_argument("--service", choices=("jupyter", "nginx", "auth", "dask-scheduler", "dask-worker"),
                      default="jupyter",
                      help="whose log (default jupyter)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines (Ctrl+C ends)")

    backup = sub.add_parser("backup", help="save the notebooks into a local .tar.gz with checksums")
    _target_flags(backup)
    backup.add_argument("--out", required=True, metavar="FILE", help="archive to write (e.g. notebooks.tar.gz)")

    restore = sub.add_parser("restore", help="put the notebooks of a backup archive back on the server")
    _target_flags(restore)
    restore.add_argument("archive", metavar="FILE", help="archive made by backup")

    passwd = sub.add_parser("passwd", help="set a new login password (from --password-file, "
                            "$APPLIANCE_PASSWORD or a prompt); old sessions end")
    _target_flags(passwd)

    rebuild = sub.add_parser("rebuild", help="build the notebook image with extra packages and roll it out; "
                             "notebooks are untouched")
    _target_flags(rebuild)
    _tls_flags(rebuild)
    rebuild.add_argument("--package", action="append", default=[], metavar="NAME==VER",
                         help="add (or change the version of) a Python package; remembered for later runs")
    rebuild.add_argument("--clear-packages", action="store_true", help="drop the packages added before")
    rebuild.add_argument("--bake", action="store_true", help="add what notebooks installed with %%pip install "
                         "(kept on the server beside the notebooks) to the image, then remove it from there")
    _ca_flag(rebuild)
    _build_on_flag(rebuild)

    token = sub.add_parser("token", help="API tokens for tools (VS Code, a local JupyterLab, scripts)")
    actions = token.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make a token; prints it once, with the URL to paste")
    _target_flags(create)
    create.add_argument("--name", dest="token_name", metavar="NAME",
                        help="a name to list and revoke it by (default token-<date>-<time>)")
    create.add_argument("--expires", default="90d", metavar="WHEN",
                        help="lifetime: hours, days or weeks (12h, 90d, 52w) or never (default 90d)")
    listing = actions.add_parser("list", help="show the tokens: name, created, expires, last used")
    _target_flags(listing)
    revoke = actions.add_parser("revoke", help="revoke a token by name; refused from the next request on")
    _target_flags(revoke)
    revoke.add_argument("token_name", metavar="NAME")

    render = sub.add_parser("render", help="write every file the server would get under DIR; touches no server")
    _target_flags(render, server=False)
    _tls_flags(render)
    render.add_argument("--out", required=True, metavar="DIR", help="output directory")

    build = sub.add_parser("build", help="build a notebook image with the local Docker engine")
    _image_flags(build)

    images = sub.add_parser("images", help="print the versions manifest of a built image")
    images.add_argument("--image", default="scipy", help="image name (default scipy)")
    return p


def _config(args):
    fields = {f: getattr(args, f, None) for f in ("host", "domain", "user", "password_file", "state_dir",
                                                  "ssh_user", "ssh_port", "ssh_key", "image",
                                                  "ssh_host_key_fingerprint", "cloud", "name", "region",
                                                  "size", "instance_type", "volume_gb", "ssh_from", "workers",
                                                  "worker_memory", "tls", "acme_email", "acme_directory",
                                                  "acme_ca_bundle", "build_on")}
    if getattr(args, "worker_host", None):
        fields["worker_hosts"] = ",".join(args.worker_host)
    return config.load(fields, config_file=getattr(args, "config", None))


def cmd_render(args):
    from . import render
    cfg = _config(args)
    state, cert, where = render.prepare(cfg)
    files = render.render(cfg, state, args.out)
    for item in files:
        say(f"  {os.path.join(args.out, item.path.lstrip('/'))}")
    say(f"Rendered {len(files)} files for {cfg.url}")
    say(f"Certificate SHA-256 fingerprint: {render.tls.fingerprint(cert)}"
        + (f" (the private CA's, served until {cfg.acme_directory_url} gives one)" if cfg.tls == "acme" else ""))
    say(f"Login: {cfg.user}, with {where}")


def cmd_build(args):
    from . import images
    name = images.build(args.image or "scipy", base_image=args.base_image, ca_bundle=args.ca_bundle,
                        packages=tuple(args.package), say=say)
    say(f"Built {name}")


def cmd_images(args):
    from . import images
    say(images.format_manifest(images.manifest(args.image)))


def cmd_up(args):
    cfg = _config(args)
    if cfg.cloud:
        from . import cloud
        return cloud.up(cfg, ca_bundle=args.ca_bundle, say=say) and 0
    from . import deploy
    deploy.up(cfg, ca_bundle=args.ca_bundle, say=say)


def cmd_down(args):
    if args.cloud:
        from . import cloud
        cfg = _config(args)
        if args.purge and not args.yes:
            if not sys.stdin.isatty():
                raise config.ConfigError("--purge deletes the notebooks volume and its snapshots: add --yes")
            answer = input(f"Delete the server {cfg.name}, its notebooks volume and snapshots, firewall and SSH "
                           f"key on {cfg.cloud}? Type the name to confirm: ")
            if answer.strip() != cfg.name:
                raise config.ConfigError("not confirmed; nothing was deleted")
        removed = cloud.down(cfg, purge=args.purge, say=say)
        say(f"Removed: {', '.join(removed) or 'nothing (no such server)'}")
        if not args.purge:
            say("Kept: the notebooks volume, its snapshots, the firewall and the SSH key (--purge removes them)")
        return
    from . import droplet
    droplet.down(purge=args.purge, say=say)


def cmd_snapshot(args):
    from . import cloud
    cfg = _config(args)
    prov = cloud.provider(cfg)
    if args.action == "list":
        for snap in sorted(prov.snapshots(cfg.name), key=lambda s: (s["created"], s["name"])):
            say(f"{snap['created']}  {snap['name']}  {snap['id']}  {snap['size_gb']} GB")
        return
    if args.keep < 1:
        raise config.ConfigError(f"--keep {args.keep}: keep at least 1 snapshot")
    made, deleted = cloud.snapshot(prov, cfg.name, args.keep, say=say)
    say(f"Snapshot {made}" + (f"; deleted the older {', '.join(deleted)}" if deleted else ""))


def cmd_status(args):
    from . import ops
    return ops.status(_config(args), as_json=args.json, say=say)


def cmd_logs(args):
    from . import ops
    return ops.logs(_config(args), service=args.service, follow=args.follow, say=say, worker=args.worker)


def cmd_backup(args):
    from . import ops
    ops.backup(_config(args), args.out, say=say)


def cmd_restore(args):
    from . import ops
    ops.restore(_config(args), args.archive, say=say)


def cmd_passwd(args):
    from . import ops
    ops.passwd(_config(args), say=say)


def cmd_rebuild(args):
    from . import ops
    ops.rebuild(_config(args), packages=tuple(args.package), clear=args.clear_packages, bake=args.bake,
                ca_bundle=args.ca_bundle, say=say)


def cmd_token(args):
    from . import tokens
    cfg = _config(args)
    if args.action == "create":
        tokens.create(cfg, name=args.token_name, expires=args.expires, say=say)
    elif args.action == "list":
        tokens.list_tokens(cfg, say=say)
    else:
        tokens.revoke(cfg, args.token_name, say=say)


COMMANDS = {"render": cmd_render, "build": cmd_build, "images": cmd_images, "up": cmd_up, "down": cmd_down,
            "snapshot": cmd_snapshot,
            "status": cmd_status, "logs": cmd_logs, "backup": cmd_backup, "restore": cmd_restore,
            "passwd": cmd_passwd, "rebuild": cmd_rebuild, "token": cmd_token}


def run(argv=None):
    """Run one command; returns the exit code."""
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except ApplianceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept, run the same command again", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one readable line, the traceback only on request
        if os.environ.get("APPLIANCE_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (set APPLIANCE_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 70


def main():
    sys.exit(run())
