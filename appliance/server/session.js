// The session cookie, checked inside nginx (njs 0.7, Debian's libnginx-mod-http-js): a request with a valid
// one goes straight to Jupyter, without asking the login verifier (authd.py, which issues the cookie after a
// password login). The site sets $appliance_login to verdict(r):
//   "session"   - a valid session cookie, no token anywhere: proxied as it is, as a password login;
//   "anonymous" - no Authorization header, no token parameter, no valid cookie: nginx answers 401 itself;
//   "check"     - anything else (a password, a token, another scheme): asked to the verifier, as before.
// The cookie is "expiry.user.mac" (expiry in epoch seconds, user in base64url); mac is HMAC-SHA256 of
// "expiry.user" under HMAC-SHA256(the session key, SHA-256 of the htpasswd file), base64url: a new htpasswd
// ends every session at once. Both files are read on every check (they are small); $appliance_session_key,
// $appliance_htpasswd and $appliance_session_cookie come from the site (js_var).
import fs from 'fs';
import crypto from 'crypto';

const KEY_BYTES = 32;  // authd.py's SESSION_KEY_BYTES

function verdict(r) {
    const authorization = r.headersIn.Authorization;
    if (authorization !== undefined && !authorization.startsWith('Basic ')) {
        return 'check';  // a token (or another scheme): the verifier's, never the fast path
    }
    if (tokenParameter(r.variables.args || '')) {
        return 'check';  // the verifier strips it: the raw token must never reach Jupyter
    }
    if (validSession(r)) {
        return 'session';
    }
    return authorization === undefined ? 'anonymous' : 'check';
}

// Whether the query may hold a `token` parameter, whatever its name's percent-encoding (when in doubt: yes).
function tokenParameter(args) {
    let query;
    try {
        query = decodeURIComponent(args.replace(/\+/g, ' '));
    } catch (e) {
        return true;
    }
    return /(^|&)token(=|&|$)/.test(query);
}

function validSession(r) {
    const cookie = r.variables['cookie_' + r.variables.appliance_session_cookie];
    const parts = cookie ? cookie.split('.') : [];
    if (parts.length !== 3 || !/^[0-9]{1,12}$/.test(parts[0]) || Number(parts[0]) <= Date.now() / 1000) {
        return false;
    }
    let expected;
    try {
        const secret = fs.readFileSync(r.variables.appliance_session_key);
        if (secret.length < KEY_BYTES) {
            return false;
        }
        const passwords = crypto.createHash('sha256').update(fs.readFileSync(r.variables.appliance_htpasswd)).digest();
        const key = crypto.createHmac('sha256', secret).update(passwords).digest();
        expected = crypto.createHmac('sha256', key).update(parts[0] + '.' + parts[1]).digest('base64url');
    } catch (e) {
        r.error('session cookie not checked: ' + e.message);
        return false;
    }
    return same(expected, parts[2]);
}

// Constant time for strings of the same length (the MAC's length is no secret).
function same(a, b) {
    if (a.length !== b.length) {
        return false;
    }
    let diff = 0;
    for (let i = 0; i < a.length; i++) {
        diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
    }
    return diff === 0;
}

export default {verdict};
