"""Jupyter Server's identity provider behind the appliance's nginx.

nginx lets a request reach Jupyter's unix socket only after the login verifier said yes (a browser's
password or a tool's token), so every request here is logged in. What Jupyter must tell apart is how:
a request a token let in carries the header named by `trusted_header` (the token's name), which nginx
sets on every request from the verifier's answer alone (a client's own header of that name is replaced,
or dropped when the verifier named no token). Those requests are token-authenticated, so Jupyter does
not ask them for the _xsrf cookie, as for its own tokens. Browser requests are not: XSRF checks stay.
Origin checks stay on for both (Jupyter skips them for its own tokens): a token does not make a
cross-origin browser request acceptable. Jupyter never sees a token itself (nginx strips it), so
this provider has none and offers no login page.
"""
from jupyter_server.auth.identity import IdentityProvider, User
from traitlets import Unicode


class ApplianceIdentityProvider(IdentityProvider):
    trusted_header = Unicode("X-Appliance-Token", config=True,
                             help="Header nginx sets to the name of the token that let a request in")
    user_name = Unicode("ds", config=True, help="The appliance's one user")

    @property
    def auth_enabled(self):
        return True  # nginx authenticated the request

    @property
    def login_available(self):
        return False

    def get_user(self, handler):
        token_name = handler.request.headers.get(self.trusted_header)
        if token_name:
            handler._token_authenticated = True
            return User(username=self.user_name, name=f"{self.user_name} (token {token_name})")
        return User(username=self.user_name)

    def should_check_origin(self, handler):
        return True
