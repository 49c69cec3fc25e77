"""The password and the bcrypt htpasswd file nginx checks it against.

The password comes from --password-file, $APPLIANCE_PASSWORD or a hidden
prompt (twice) -- never from argv. Without any of them and without a terminal
a strong one is generated, printed once and kept 0600 in the state directory.
An htpasswd that already holds the user is kept as it is unless a different
password is given, so re-running never rotates anything.
"""
import getpass
import os
import secrets
import sys

from passlib.apache import HtpasswdFile
from passlib.context import CryptContext

from .errors import ConfigError, StateError

ENV_PASSWORD = "APPLIANCE_PASSWORD"
GENERATED = "password"  # state file holding a generated password
MIN_LENGTH = 8


def validate_password(password, source):
    if not password:
        raise ConfigError(f"the password from {source} is empty")
    if any(c in password for c in "\n\r\0"):
        raise ConfigError(f"the password from {source} contains a line break or NUL character")
    if len(password.encode()) > 72:
        raise ConfigError(f"the password from {source} is longer than 72 bytes, bcrypt's limit")
    if len(password) < MIN_LENGTH:
        raise ConfigError(f"the password from {source} is shorter than {MIN_LENGTH} characters")
    return password


def _read_password_file(path):
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the password file {path}: {getattr(exc, 'strerror', exc)}") from None
    return validate_password(text[:-1] if text.endswith("\n") else text, f"file {path}")


def _prompt():
    first = getpass.getpass("New password for the notebook login: ")
    validate_password(first, "the prompt")
    if getpass.getpass("Repeat the password: ") != first:
        raise ConfigError("the two passwords differ")
    return first


def given_password(cfg, env=None):
    """The password the user gave this run (file or env), or None."""
    env = os.environ if env is None else env
    if cfg.password_file:
        return _read_password_file(cfg.password_file)
    if env.get(ENV_PASSWORD) is not None:
        return validate_password(env[ENV_PASSWORD], f"${ENV_PASSWORD}")
    return None


def _context(rounds):
    return CryptContext(schemes=["bcrypt"], bcrypt__ident="2y", bcrypt__default_rounds=rounds)


def _load(state, rounds):
    data = state.read("htpasswd")
    if data is None:
        return None
    try:
        return HtpasswdFile.from_string(data, context=_context(rounds))
    except (ValueError, UnicodeDecodeError):
        raise StateError(f"{state.file('htpasswd')} is not an htpasswd file; move it away to start over") from None


def ensure_htpasswd(cfg, state, env=None, interactive=None, force_new=False):
    """Make sure the state's htpasswd holds cfg.user; returns a line saying where the password is."""
    interactive = sys.stdin.isatty() if interactive is None else interactive
    password = given_password(cfg, env)
    stored = _load(state, cfg.bcrypt_rounds)
    try:
        known = stored is not None and (stored.check_password(cfg.user, password) if password
                                        else cfg.user in stored.users())
    except ValueError:
        raise StateError(f"{state.file('htpasswd')} holds a hash this tool cannot read; move it away") from None
    generated = state.read(GENERATED)
    if known and not force_new:
        return _where(state, generated, cfg.user, password)
    if password is None and generated is not None and not force_new:
        password = generated.decode()
    if password is None and interactive:
        password = _prompt()
    if password is None:
        password = secrets.token_urlsafe(18)
        state.write(GENERATED, password, secret=True)
        generated = None  # new: shown in the final lines of this run, only there
    elif generated is not None and generated.decode() != password:
        state.file(GENERATED).unlink()
    htpasswd = HtpasswdFile(new=True, context=_context(cfg.bcrypt_rounds))
    htpasswd.set_password(cfg.user, password)
    state.write("htpasswd", htpasswd.to_string(), secret=True)
    if generated is None and state.read(GENERATED) == password.encode():
        return f"the new password {password} (generated, shown only now; kept in {state.file(GENERATED)})"
    return _where(state, state.read(GENERATED), cfg.user, password)


def _where(state, generated, user, password):
    if generated is not None and (password is None or password == generated.decode()):
        return f"the generated password in {state.file(GENERATED)}"
    return f"the password you set for {user!r}"
