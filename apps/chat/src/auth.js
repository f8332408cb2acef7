// OIDC authorization code + PKCE (S256) for a public browser client: Auth0 in production (always with
// the API `audience`, or Auth0 hands out a token no API accepts) and the dev issuer locally.
// The access token and ID token live in memory only (this module's object): script on another origin,
// a browser extension reading storage, or a copied profile never finds them at rest. The refresh token
// is the one thing kept in sessionStorage (this tab only, gone when the tab closes): a reload renews the
// session silently with it instead of sending the user through the sign-in page again. The issuer
// rotates it on every use and (Auth0 reuse detection) revokes the whole family if an old one comes back.
// The authorization response is checked for `state`, the ID token's `nonce`, and the `iss` parameter
// (RFC 9207, mix-up defence) against the configured issuer.

const KEY = "ctllm.refresh";
const PENDING = "ctllm.auth.pending";
const RENEW_MARGIN_S = 60;

function b64url(bytes) {
  let text = "";
  for (const b of new Uint8Array(bytes)) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomString(bytes = 32) {
  return b64url(crypto.getRandomValues(new Uint8Array(bytes)));
}

async function challengeFor(verifier) {
  return b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
}

function claims(jwt) {
  try {
    const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return {};
  }
}

export class AuthError extends Error {}

export class Auth {
  constructor(config, onChange) {
    this.config = config;
    this.onChange = onChange;
    this.redirectUri = location.origin + "/";
    this.session = null; // {access_token, id_token, refresh_token, expires_at}: memory only
    this.discovery = null;
    this.timer = null;
    this.renewing = null;
  }

  get subject() {
    return this.session ? claims(this.session.access_token).sub || "" : "";
  }

  get user() {
    if (!this.session) return null;
    const id = claims(this.session.id_token || "");
    return id.name || id.email || id.sub || claims(this.session.access_token).sub || "signed in";
  }

  async metadata() {
    if (!this.discovery) {
      const issuer = this.config.issuer.replace(/\/$/, "");
      const response = await fetch(issuer + "/.well-known/openid-configuration");
      if (!response.ok) throw new AuthError(`the sign-in service answered ${response.status}`);
      this.discovery = await response.json();
    }
    return this.discovery;
  }

  async signIn() {
    const meta = await this.metadata();
    const verifier = randomString(48);
    const state = randomString(16);
    const nonce = randomString(16);
    sessionStorage.setItem(PENDING, JSON.stringify({ verifier, state, nonce, path: location.pathname }));
    const params = new URLSearchParams({
      response_type: "code",
      client_id: this.config.clientId,
      redirect_uri: this.redirectUri,
      scope: this.config.scope || "openid profile email offline_access",
      state,
      nonce,
      code_challenge: await challengeFor(verifier),
      code_challenge_method: "S256",
      audience: this.config.audience,
    });
    location.assign(`${meta.authorization_endpoint}?${params}`);
  }

  /** RFC 9207: the response's `iss` must be our issuer; required when the issuer says it sends one. */
  async checkIssuer(iss) {
    const meta = await this.metadata();
    const expected = meta.issuer || this.config.issuer;
    if (iss === null) {
      if (meta.authorization_response_iss_parameter_supported) {
        throw new AuthError("the sign-in response did not say which issuer sent it; sign in again");
      }
      return;
    }
    if (iss !== expected || expected.replace(/\/$/, "") !== this.config.issuer.replace(/\/$/, "")) {
      throw new AuthError(`the sign-in response came from another issuer (${iss}); sign in again`);
    }
  }

  /** On load: finish a sign-in redirect if the URL carries one. Returns true when signed in. */
  async start() {
    const url = new URL(location.href);
    const code = url.searchParams.get("code");
    const error = url.searchParams.get("error");
    if (code || error) {
      const pending = JSON.parse(sessionStorage.getItem(PENDING) || "null");
      sessionStorage.removeItem(PENDING);
      history.replaceState(null, "", (pending && pending.path) || "/");
      await this.checkIssuer(url.searchParams.get("iss"));
      if (error) throw new AuthError(url.searchParams.get("error_description") || error);
      if (!pending || pending.state !== url.searchParams.get("state")) {
        throw new AuthError("the sign-in response did not match this tab's request; sign in again");
      }
      const tokens = await this.token({
        grant_type: "authorization_code",
        code,
        code_verifier: pending.verifier,
        redirect_uri: this.redirectUri,
      });
      if (tokens.id_token && claims(tokens.id_token).nonce !== pending.nonce) {
        throw new AuthError("the sign-in response was not for this request; sign in again");
      }
      this.store(tokens);
    } else {
      const refresh = sessionStorage.getItem(KEY);
      if (refresh) {
        // A reload: the tokens were in memory only; the refresh token brings the session back silently.
        this.session = { refresh_token: refresh, expires_at: 0 };
        await this.renew().catch(() => this.clear());
      }
    }
    this.schedule();
    return Boolean(this.session);
  }

  async token(params) {
    const meta = await this.metadata();
    const response = await fetch(meta.token_endpoint, {
      method: "POST",
      headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ client_id: this.config.clientId, ...params }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new AuthError(body.error_description || body.error || `token endpoint ${response.status}`);
    return body;
  }

  store(tokens) {
    this.session = {
      access_token: tokens.access_token,
      id_token: tokens.id_token || (this.session && this.session.id_token),
      refresh_token: tokens.refresh_token || (this.session && this.session.refresh_token),
      expires_at: Date.now() / 1000 + Number(tokens.expires_in || 3600),
    };
    if (this.session.refresh_token) sessionStorage.setItem(KEY, this.session.refresh_token);
    this.schedule();
    this.onChange();
  }

  expiresIn() {
    return this.session ? this.session.expires_at - Date.now() / 1000 : 0;
  }

  schedule() {
    clearTimeout(this.timer);
    if (!this.session || !this.session.refresh_token) return;
    const lifetime = Math.max(this.expiresIn(), 0);
    // Renew a minute before expiry, or at 80 % of a short lifetime.
    const delay = Math.max(lifetime > 5 * RENEW_MARGIN_S ? lifetime - RENEW_MARGIN_S : lifetime * 0.8, 1) * 1000;
    this.timer = setTimeout(
      () =>
        this.renew().catch(() => {
          if (this.session) this.expired(); // no session: signed out meanwhile, nothing has expired
        }),
      delay,
    );
  }

  /** Silent renewal with the (rotating) refresh token; concurrent callers share one request. */
  renew() {
    if (!this.session || !this.session.refresh_token) return Promise.reject(new AuthError("no refresh token"));
    if (!this.renewing) {
      const session = this.session;
      this.renewing = this.token({ grant_type: "refresh_token", refresh_token: session.refresh_token })
        .then((tokens) => {
          // Signed out (or signed in anew) while this was in flight: its tokens belong to a session that is gone.
          if (this.session !== session) throw new AuthError("signed out during renewal");
          this.store(tokens);
        })
        .finally(() => {
          this.renewing = null;
        });
    }
    return this.renewing;
  }

  /** A valid access token for the API, renewed first if it is about to expire. */
  async accessToken() {
    if (!this.session) throw new AuthError("not signed in");
    if (this.expiresIn() < 10) await this.renew();
    return this.session.access_token;
  }

  expired() {
    this.clear();
    this.onChange("Your session has expired. Sign in again.");
  }

  clear() {
    clearTimeout(this.timer);
    this.session = null;
    sessionStorage.removeItem(KEY);
  }

  async signOut() {
    const idToken = this.session && this.session.id_token;
    this.clear();
    let meta = null;
    try {
      meta = await this.metadata();
    } catch {
      // the issuer is unreachable: signing out locally is all we can do
    }
    const back = this.redirectUri;
    if (meta && meta.end_session_endpoint) {
      const params = new URLSearchParams({ client_id: this.config.clientId, post_logout_redirect_uri: back });
      if (idToken) params.set("id_token_hint", idToken);
      location.assign(`${meta.end_session_endpoint}?${params}`);
    } else if (meta && /\.auth0\.com$/.test(new URL(meta.issuer).hostname)) {
      const params = new URLSearchParams({ client_id: this.config.clientId, returnTo: back });
      location.assign(`${meta.issuer.replace(/\/$/, "")}/v2/logout?${params}`);
    } else {
      location.assign(back);
    }
  }
}
