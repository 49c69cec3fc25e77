"""The server's layout, defined once: every path, mode, group and name the appliance uses on the server
and inside its container.

Everything else takes these values from here: render.py (the files and the templates' context), the
Ansible roles (through `role_vars`, passed as extra vars by deploy.py), ops.py, and what runs on the
server (server/remote.py, bench/client.py, the image's healthcheck), which get them as arguments or
build arguments because they cannot import this package there.
"""
ETC = "/etc/appliance"                      # the appliance's configuration
ETC_MODE = "0755"
TLS_DIR = f"{ETC}/tls"
TLS_DIR_MODE = "0750"                       # root:root: only nginx's master (root) reads the key
TLS_CERT = f"{TLS_DIR}/server.crt"
TLS_KEY = f"{TLS_DIR}/server.key"
CA_CERT = f"{TLS_DIR}/ca.crt"
TLS_KEY_MODE = "0600"                       # root:root
HTPASSWD = f"{ETC}/htpasswd"
TOKENS = f"{ETC}/tokens.json"               # SHA-256 of each API token, with name and expiry (SECRET_MODE);
                                            # written by `provision.py token` only, re-read by the verifier
TOKEN_HEADER = "X-Appliance-Token"          # nginx -> Jupyter: the name of the token that let a request in
SESSION_KEY = f"{ETC}/session.key"          # the session cookies' key: 32 random bytes made on the server by the
                                            # web role (SECRET_MODE); the verifier reads it
SESSION_NGINX = f"{ETC}/session-nginx.conf"  # nginx's part of the cookie check (the signing key derived from the
SESSION_NGINX_MODE = "0600"                 # key and the htpasswd), root only, made on the server by SESSION_SERVICE
SESSION_COOKIE = "__Host-appliance-session"  # issued by the verifier after a password login, checked by nginx
IDENTITY_PROVIDER = "appliance_identity.ApplianceIdentityProvider"  # images/base/appliance_identity.py
JUPYTER_CONFIG = f"{ETC}/jupyter_server_config.py"

# --tls acme: a certificate from an ACME CA (Let's Encrypt), obtained and renewed on the server by Debian's
# certbot (webroot plugin, HTTP-01 answered by the appliance's nginx on port 80). nginx keeps reading TLS_CERT
# and TLS_KEY: ACME_SCRIPT copies the ACME certificate there (certbot's deploy hook), or the private CA's
# (FALLBACK_*) while there is none.
ACME_CONFIG = f"{ETC}/acme.json"            # ACME_SCRIPT's settings: domain, contact, directory, paths
ACME_CA_BUNDLE = f"{ETC}/acme-ca.pem"       # --acme-ca-bundle: trusted by certbot for the ACME API only
FALLBACK_CERT = f"{TLS_DIR}/private.crt"    # the private CA's certificate and key, kept beside the ACME one:
FALLBACK_KEY = f"{TLS_DIR}/private.key"     # served until it exists, and after a first request that failed
VAR = "/var/lib/appliance"                  # the appliance's state on the server
VAR_MODE = "0755"
DIGEST_RECORD = f"{VAR}/last-run.json"       # `up`'s fast path: the last full run's inputs and what it left (0600)
ACME_WEBROOT = f"{VAR}/acme-webroot"        # certbot writes the challenge here; nginx serves only its
                                            # .well-known/acme-challenge/ on port 80
ACME_STATUS = f"{VAR}/acme-status.json"     # every request and renewal: time, result, message
CERTBOT_DIR = "/etc/letsencrypt"            # certbot's own: accounts, live/, archive/, renewal/*.conf
CERTBOT_DEBIAN_TIMER = "certbot.timer"      # Debian's: disabled and masked while the appliance's runs

FILE_MODE = "0644"                          # root-owned, readable by all
SECRET_MODE = "0640"                        # root:WEB_GROUP: the login verifier reads it, nobody else
WEB_GROUP = "www-data"                      # nginx's workers and the login verifier run in it

NGINX = "nginx"                             # the web server's systemd unit
NGINX_SITE = "/etc/nginx/sites-available/jupyter.conf"
NGINX_SITE_LINK = "/etc/nginx/sites-enabled/jupyter.conf"
NGINX_DEFAULT_SITE = "/etc/nginx/sites-enabled/default"   # Debian's, removed
NGINX_ACCESS_LOG = "/var/log/nginx/access.log"            # the site's, without query strings (tokens)

LIB = "/usr/local/lib/appliance"            # code the server runs
LIB_MODE = "0755"
AUTHD = f"{LIB}/authd.py"                   # the login verifier (appliance/server/authd.py)
OBSOLETE = (f"{LIB}/session.js",)           # installed by earlier versions, removed
AUTH_SERVICE = "appliance-auth"             # its systemd units
AUTH_UNIT = f"/etc/systemd/system/{AUTH_SERVICE}.service"
AUTH_SOCKET_UNIT = f"/etc/systemd/system/{AUTH_SERVICE}.socket"
AUTH_SOCKET = f"/run/{AUTH_SERVICE}/auth.sock"
SESSION_SERVICE = "appliance-session"       # remakes SESSION_NGINX and reloads nginx when the htpasswd or key changes
SESSION_UNIT = f"/etc/systemd/system/{SESSION_SERVICE}.service"
SESSION_PATH_UNIT = f"/etc/systemd/system/{SESSION_SERVICE}.path"
ACME_SCRIPT = f"{LIB}/acme.py"              # obtain, renew, install, remove (appliance/server/acme.py)
ACME_SERVICE = "appliance-certbot"          # its units: the renewal service and its timer
ACME_UNIT = f"/etc/systemd/system/{ACME_SERVICE}.service"
ACME_TIMER_UNIT = f"/etc/systemd/system/{ACME_SERVICE}.timer"

CONTAINER = "jupyter"                       # the notebook container's name
NOTEBOOK_ACCOUNT = "jupyter"                # runs Jupyter and the kernels: no login, no sudo, no SSH key
JUPYTER_SOCKET_DIR = "/run/jupyter"         # on the server: root:WEB_GROUP, bind-mounted into the container;
JUPYTER_SOCKET_DIR_MODE = "02750"           # the socket is bound as root there (images/base/start.py)
JUPYTER_SOCKET = f"{JUPYTER_SOCKET_DIR}/jupyter.sock"
JUPYTER_TMPFILES = "/etc/tmpfiles.d/appliance-jupyter.conf"  # recreates the socket directory at boot
NOTEBOOKS_MODE = "02770"                    # <user>:NOTEBOOK_ACCOUNT: the operator and Jupyter share them
PACKAGES_MODE = "0700"                      # NOTEBOOK_ACCOUNT's own: nobody else writes (or reads) there

# Inside the image (images/base/Dockerfile makes these directories; it takes the socket as a build argument).
IMAGE_NOTEBOOKS = "/home/ds/notebooks"      # the image's notebook directory
IMAGE_JUPYTER_CONFIG = "/etc/jupyter/jupyter_server_config.py"
IMAGE_SOCKET_DIR = "/run/jupyter"
IMAGE_SOCKET = f"{IMAGE_SOCKET_DIR}/jupyter.sock"
IMAGE_HOME = "/home/ds"                     # HOME in the image: a private tmpfs in the running container
# What a notebook's `%pip install` adds: the kernels' Python user base (PYTHONUSERBASE, a build argument),
# bind-mounted from packages_dir(user). Under the venv (sys.prefix) on purpose: pip upgrades and uninstalls
# only what lies under sys.prefix (docs/images.md, "%pip install that sticks").
IMAGE_USER_PACKAGES = "/opt/venv/user-packages"

# The Dask cluster (appliance/cluster.py, ansible/roles/dask): host networking, the firewall lets only peers in.
DASK_SCHEDULER_PORT = 8786
DASK_DASHBOARD_PORT = 8787                  # on the scheduler's loopback; nginx proxies /dask/ to it
DASK_WORKER_PORT = 8788
DASK_NANNY_PORT = 8789
DASK_SCHEDULER_CONTAINER = "dask-scheduler"
DASK_WORKER_CONTAINER = "dask-worker"
DASK_TLS_DIR = f"{ETC}/dask"                # root:NOTEBOOK_ACCOUNT 0750; keys 0640
DASK_CLIENT_DIR = f"{DASK_TLS_DIR}/client"  # the notebook container's: the CA, its certificate and key
DASK_IMAGE_TLS_DIR = "/etc/dask"            # where the container sees its directory (read-only)
DASK_SPILL_DIR = "/var/lib/dask"            # a worker's spill-to-disk directory

DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"
DOCKER_DATA = "/var/lib/docker"
SSHD_DROPIN = "/etc/ssh/sshd_config.d/10-appliance.conf"
AUTO_UPGRADES = "/etc/apt/apt.conf.d/20auto-upgrades"
SYSCTL_FILE = "/etc/sysctl.d/60-appliance.conf"
SWAP_FILE = "/swapfile"


def notebooks_dir(user):
    """The notebooks directory on the server (mounted into the container)."""
    return f"/home/{user}/notebooks"


def packages_dir(user):
    """What notebooks installed with `%pip install`, on the server beside the notebooks (mounted into the
    container at IMAGE_USER_PACKAGES); `rebuild --bake` moves it into the image."""
    return f"/home/{user}/notebook-packages"


def sudoers_file(user):
    return f"/etc/sudoers.d/90-{user}"


def server_paths(user):
    """Where the appliance writes on the server: the filesystems whose free space matters."""
    return ["/", ETC, DOCKER_DATA, notebooks_dir(user)]


def tmpfiles_line():
    """systemd-tmpfiles' line recreating the socket directory at boot (it lives in /run)."""
    return f"d {JUPYTER_SOCKET_DIR} {int(JUPYTER_SOCKET_DIR_MODE, 8):o} root {WEB_GROUP} -\n"


def role_vars(user):
    """The layout as the Ansible roles take it (ansible/roles/*/meta/argument_specs.yml)."""
    return {
        "base_user": user,
        "base_sudoers_file": sudoers_file(user),
        "base_swap_file": SWAP_FILE,
        "base_sysctl_file": SYSCTL_FILE,
        "docker_daemon_json": DOCKER_DAEMON_JSON,
        "web_group": WEB_GROUP,
        "web_dirs": [{"path": ETC, "group": "root", "mode": ETC_MODE},
                     {"path": TLS_DIR, "group": "root", "mode": TLS_DIR_MODE},
                     {"path": LIB, "group": "root", "mode": LIB_MODE}],
        "web_nginx_site": NGINX_SITE,
        "web_nginx_site_link": NGINX_SITE_LINK,
        "web_nginx_default_site": NGINX_DEFAULT_SITE,
        "web_nginx_service": NGINX,
        "web_auth_service": AUTH_SERVICE,
        "web_session_key": SESSION_KEY,
        "web_session_key_mode": SECRET_MODE,
        "web_session_nginx": SESSION_NGINX,
        "web_session_nginx_mode": SESSION_NGINX_MODE,
        "web_session_service": SESSION_SERVICE,
        "web_authd": AUTHD,
        "web_htpasswd": HTPASSWD,
        "web_obsolete_files": list(OBSOLETE),
        "web_tls_cert": TLS_CERT,
        "web_tls_key": TLS_KEY,
        "web_tls_key_mode": TLS_KEY_MODE,
        "web_fallback_cert": FALLBACK_CERT,
        "web_fallback_key": FALLBACK_KEY,
        "web_acme_config": ACME_CONFIG,
        "web_acme_script": ACME_SCRIPT,
        "web_acme_service": ACME_SERVICE,
        "web_acme_dirs": [VAR, ACME_WEBROOT],
        "web_acme_dirs_mode": VAR_MODE,
        "web_certbot_debian_timer": CERTBOT_DEBIAN_TIMER,
        "jupyter_user": user,
        "jupyter_account": NOTEBOOK_ACCOUNT,
        "jupyter_image_home": IMAGE_HOME,
        "jupyter_web_group": WEB_GROUP,
        "jupyter_container": CONTAINER,
        "jupyter_socket_dir": JUPYTER_SOCKET_DIR,
        "jupyter_socket_dir_mode": JUPYTER_SOCKET_DIR_MODE,
        "jupyter_notebooks_dir": notebooks_dir(user),
        "jupyter_notebooks_mode": NOTEBOOKS_MODE,
        "jupyter_packages_dir": packages_dir(user),
        "jupyter_packages_mode": PACKAGES_MODE,
        "jupyter_image_packages": IMAGE_USER_PACKAGES,
        "jupyter_config": JUPYTER_CONFIG,
        "jupyter_image_notebooks": IMAGE_NOTEBOOKS,
        "jupyter_image_socket_dir": IMAGE_SOCKET_DIR,
        "jupyter_image_config": IMAGE_JUPYTER_CONFIG,
        "dask_account": NOTEBOOK_ACCOUNT,
        "dask_image_home": IMAGE_HOME,
        "dask_tls_dir": DASK_TLS_DIR,
        "dask_image_tls_dir": DASK_IMAGE_TLS_DIR,
        "dask_spill_dir": DASK_SPILL_DIR,
        "dask_all_ports": [DASK_SCHEDULER_PORT, DASK_WORKER_PORT, DASK_NANNY_PORT],
        "dask_scheduler_container": DASK_SCHEDULER_CONTAINER,
        "dask_worker_container": DASK_WORKER_CONTAINER,
        "hardening_sshd_dropin": SSHD_DROPIN,
        "hardening_auto_upgrades": AUTO_UPGRADES,
    }
