// A real, certified OpenID provider (npm "oidc-provider") for akoutpost's
// interoperability tests.
//
// Usage: node server.mjs CONFIG.json
//
// CONFIG.json:
//   {
//     "port": 0,                    // 0 picks a free port
//     "issuerPath": "/oidc",        // optional; the issuer is http://127.0.0.1:<port><issuerPath>
//     "clients": [{"client_id": ..., "client_secret": ..., "redirect_uris": [...],
//                  "post_logout_redirect_uris": [...], "token_endpoint_auth_method": ...,
//                  "backchannel_logout_uri": ..., "backchannel_logout_session_required": true}],
//     "users": [{"username", "password", "sub", "name", "email", "groups": [...],
//                "entitlements": [...], "ak_proxy": {...},
//                "app_password": ...}],  // optional; see "appPasswordGrant"
//     "requirePkce": false,         // optional; true makes PKCE mandatory for every client
//     "ttl": {"IdToken": 3600, ...}, // optional; overrides of the token lifetimes, in seconds
//     "hosts": {"a.test": "127.0.0.1"}, // optional; where the provider's own requests (the
//                                   // back-channel logout POSTs) connect for these host
//                                   // names; loopback is allowed (oidc-provider refuses it)
//     "exitWithStdin": false,       // optional; exit when standard input closes (set by
//                                   // the Python harness so an orphaned provider cannot linger)
//     "introspection": false,       // optional; true enables token introspection (RFC 7662), whose
//                                   // active answers for a user's access token carry the user's
//                                   // claims, as authentik's do (see extraTokenClaims below)
//     "appPasswordGrant": false     // optional; true adds the stand-in for authentik's
//                                   // client_credentials grant with username and app password
//                                   // (see appPasswordGrant below)
//   }
//
// Listens on 127.0.0.1 only and prints exactly one line, "READY <port>", on
// standard output once it accepts connections; everything else goes to
// standard error.  Exits on SIGTERM.
//
// The login interaction is ours (devInteractions are off): a plain HTML form
// with "login" and "password" fields checked against the configured users;
// consent is granted automatically for whatever scopes and claims the client
// asked for.

import * as crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import * as http from 'node:http';

import Provider from 'oidc-provider';

// oidc-provider prints its notices with console.info; standard output is
// reserved for the READY line.
console.info = console.error;
console.log = console.error;

const HOST = '127.0.0.1';
const MAX_FORM_BYTES = 64 * 1024;

const CONFIG_KEYS = new Set([
  'port', 'issuerPath', 'clients', 'users', 'requirePkce', 'ttl', 'hosts', 'exitWithStdin',
  'introspection', 'appPasswordGrant',
]);

function fatal(message) {
  process.stderr.write(`server.mjs: ${message}\n`);
  process.exit(2);
}

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
for (const key of Object.keys(config)) {
  if (!CONFIG_KEYS.has(key)) {
    fatal(`unknown configuration key ${JSON.stringify(key)}`);
  }
}
const users = config.users ?? [];
const issuerPath = config.issuerPath ?? '';
// The path every provider URL hangs under, without a trailing slash.
const prefix = issuerPath.endsWith('/') ? issuerPath.slice(0, -1) : issuerPath;

function escapeHtml(value) {
  return String(value)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

function page(title, body) {
  return `<!DOCTYPE html>
<html>
<head><meta charset="utf-8"><title>${escapeHtml(title)}</title></head>
<body>
<h1>${escapeHtml(title)}</h1>
${body}
</body>
</html>
`;
}

function sendHtml(res, status, html) {
  const body = Buffer.from(html, 'utf8');
  res.writeHead(status, {
    'Content-Type': 'text/html; charset=utf-8',
    'Content-Length': body.length,
    'Cache-Control': 'no-store',
  });
  res.end(body);
}

function sendJson(res, status, document) {
  const body = Buffer.from(JSON.stringify(document), 'utf8');
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': body.length,
    'Cache-Control': 'no-store',
  });
  res.end(body);
}

async function readForm(req) {
  return new URLSearchParams(await readText(req));
}

function readText(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_FORM_BYTES) {
        reject(new Error('form too large'));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function accountClaims(user) {
  return {
    sub: user.sub,
    name: user.name,
    preferred_username: user.username,
    nickname: user.username,
    email: user.email,
    email_verified: true,
    groups: user.groups ?? [],
    entitlements: user.entitlements ?? [],
    ak_proxy: user.ak_proxy ?? {},
  };
}

const accountScopes = {
  profile: ['name', 'preferred_username', 'nickname', 'groups'],
  email: ['email', 'email_verified'],
  entitlements: ['entitlements'],
  ak_proxy: ['ak_proxy'],
};

function loginForm(uid, message) {
  const notice = message ? `<p class="error">${escapeHtml(message)}</p>\n` : '';
  return page('Sign-in', `${notice}<form method="post" action="${escapeHtml(`${prefix}/interaction/${uid}/login`)}">
<label>Username <input type="text" name="login" autofocus></label>
<label>Password <input type="password" name="password"></label>
<button type="submit">Sign-in</button>
</form>`);
}

function generateSigningKey() {
  const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { privateKey, jwk: { ...jwk, use: 'sig', alg: 'RS256', kid: crypto.randomUUID() } };
}

// The provider's one signing key: oidc-provider signs its ID tokens with it,
// and so does the app-password stand-in below.
const signingKey = generateSigningKey();

function signJwt(claims) {
  const encode = (value) => Buffer.from(JSON.stringify(value), 'utf8').toString('base64url');
  const input = `${encode({ alg: 'RS256', typ: 'JWT', kid: signingKey.jwk.kid })}.${encode(claims)}`;
  const signature = crypto.sign('sha256', Buffer.from(input, 'ascii'), signingKey.privateKey);
  return `${input}.${signature.toString('base64url')}`;
}

// The provider's outgoing requests (back-channel logout) with node:http, so
// that test host names resolve through config.hosts and loopback is allowed;
// oidc-provider's own fetch refuses special-use addresses.
function outgoingFetch(url, options) {
  const target = new URL(url);
  if (target.protocol !== 'http:') {
    return Promise.reject(new Error(`only http is supported here, not ${target.protocol}`));
  }
  const hosts = config.hosts ?? {};
  const address = hosts[target.hostname] ?? target.hostname;
  const body = options.body === undefined ? undefined : Buffer.from(String(options.body), 'utf8');
  const headers = Object.fromEntries(new Headers(options.headers).entries());
  if (body !== undefined) {
    headers['content-length'] = String(body.length);
  }
  headers.host = target.host;
  return new Promise((resolve, reject) => {
    const req = http.request({
      host: address,
      port: target.port || 80,
      path: `${target.pathname}${target.search}`,
      method: options.method ?? 'GET',
      headers,
      signal: options.signal,
    }, (res) => {
      const chunks = [];
      res.on('data', (chunk) => chunks.push(chunk));
      res.on('end', () => {
        const status = res.statusCode;
        const payload = [204, 304].includes(status) ? null : Buffer.concat(chunks);
        resolve(new Response(payload, { status }));
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

function providerConfiguration() {
  return {
    clients: (config.clients ?? []).map((client) => ({
      grant_types: ['authorization_code'],
      response_types: ['code'],
      ...client,
    })),
    jwks: { keys: [signingKey.jwk] },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    // The claims authentik's default scope mappings release.
    claims: { openid: ['sub'], ...accountScopes },
    scopes: ['openid', 'profile', 'email', 'entitlements', 'ak_proxy', 'offline_access'],
    // authentik puts the scope claims in the ID token, and the outpost reads
    // them from there; by default oidc-provider keeps them for userinfo only.
    conformIdTokenClaims: false,
    responseTypes: ['code'],
    pkce: { required: () => Boolean(config.requirePkce) },
    fetch: outgoingFetch,
    // authentik's introspection answers carry the ID token's claims; here an
    // access token issued for a user carries that user's claims in "extra",
    // which oidc-provider's introspection answer includes.
    extraTokenClaims: async (ctx, token) => {
      const user = config.introspection && users.find((candidate) => candidate.sub === token.accountId);
      return user ? accountClaims(user) : undefined;
    },
    features: {
      devInteractions: { enabled: false },
      introspection: { enabled: Boolean(config.introspection) },
      backchannelLogout: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx, form) => {
          // Put the confirmation inside the form, so that a form parser
          // submitting it says "yes, sign me out".
          const withButton = form.replace(
            '</form>',
            '<input type="hidden" name="logout" value="yes"/><button type="submit">Yes, sign me out</button></form>',
          );
          ctx.type = 'html';
          ctx.body = page('Sign-out', withButton);
        },
        postLogoutSuccessSource: async (ctx) => {
          ctx.type = 'html';
          ctx.body = page('Signed out', '<p>Your sign-out was successful.</p>');
        },
      },
    },
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      ClientCredentials: 600,
      DeviceCode: 600,
      BackchannelAuthenticationRequest: 600,
      PreAuthorizedCode: 600,
      Grant: 86400,
      IdToken: 3600,
      Interaction: 600,
      RefreshToken: 86400,
      Session: 86400,
      ...(config.ttl ?? {}),
    },
    interactions: {
      url: async (ctx, interaction) => `${prefix}/interaction/${interaction.uid}`,
    },
    findAccount: async (ctx, sub) => {
      const user = users.find((candidate) => candidate.sub === sub);
      if (!user) {
        return undefined;
      }
      return { accountId: user.sub, claims: async () => accountClaims(user) };
    },
    clientBasedCORS: () => false,
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', Object.entries(out)
        .map(([key, value]) => `<p><strong>${escapeHtml(key)}</strong>: ${escapeHtml(value)}</p>`)
        .join('\n'));
    },
  };
}

async function grantConsent(provider, req, res, details) {
  const { prompt, grantId, session, params } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (prompt.details.missingOIDCScope) {
    grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
  }
  if (prompt.details.missingOIDCClaims) {
    grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  }
  if (prompt.details.missingResourceScopes) {
    for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes)) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
  }
  await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, {
    mergeWithLastSubmission: true,
  });
}

async function interaction(provider, req, res, uid, action) {
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (error) {
    sendHtml(res, 400, page('Error', `<p>${escapeHtml(error.message)}</p>`));
    return;
  }
  if (details.uid !== uid) {
    sendHtml(res, 400, page('Error', '<p>interaction mismatch</p>'));
    return;
  }

  if (action === undefined && req.method === 'GET') {
    switch (details.prompt.name) {
      case 'login':
        sendHtml(res, 200, loginForm(uid));
        return;
      case 'consent':
        await grantConsent(provider, req, res, details);
        return;
      default:
        sendHtml(res, 501, page('Error', `<p>unsupported prompt ${escapeHtml(details.prompt.name)}</p>`));
        return;
    }
  }

  if (action === 'login' && req.method === 'POST' && details.prompt.name === 'login') {
    const form = await readForm(req);
    const user = users.find((candidate) => candidate.username === form.get('login'));
    if (!user || user.password !== form.get('password')) {
      sendHtml(res, 200, loginForm(uid, 'Invalid username or password.'));
      return;
    }
    await provider.interactionFinished(req, res, { login: { accountId: user.sub } }, {
      mergeWithLastSubmission: false,
    });
    return;
  }

  sendHtml(res, 405, page('Error', '<p>method not allowed</p>'));
}

const INTERACTION = /^\/interaction\/([A-Za-z0-9_-]+)(?:\/(login))?(?:\?.*)?$/;

// A stand-in for authentik's client_credentials grant with a username and an
// app password (what authentik's outpost sends for "Authorization: Basic"),
// which oidc-provider does not have.  Its semantics are authentik's: the
// client is named by client_id and its secret is not checked; the password
// must be the user's app password (never the account password).  The answer
// carries an ID token for the user, signed with the provider's key, and an
// access token that oidc-provider itself issued (so it can be introspected).
// It runs before oidc-provider sees the request, since oidc-provider would
// insist on client authentication first.
async function appPasswordGrant(provider, res, form) {
  const clientId = form.get('client_id');
  let client;
  try {
    client = clientId ? await provider.Client.find(clientId) : undefined;
  } catch {
    client = undefined;
  }
  if (!client) {
    sendJson(res, 401, { error: 'invalid_client', error_description: 'unknown client' });
    return;
  }
  const user = users.find((candidate) => candidate.username === form.get('username'));
  if (!user || !user.app_password || user.app_password !== form.get('password')) {
    console.error(`app password refused for ${JSON.stringify(form.get('username'))}`);
    sendJson(res, 400, { error: 'invalid_grant', error_description: 'invalid username or app password' });
    return;
  }
  const scope = (form.get('scope') ?? '').split(' ').filter((name) => name === 'openid' || name in accountScopes).join(' ');
  const lifetime = config.ttl?.IdToken ?? 3600;
  const now = Math.floor(Date.now() / 1000);
  const idToken = signJwt({
    ...accountClaims(user),
    iss: provider.issuer,
    aud: clientId,
    iat: now,
    exp: now + lifetime,
    auth_time: now,
  });
  const accessToken = new provider.AccessToken({
    accountId: user.sub, client, scope, gty: 'client_credentials',
  });
  console.error(`app password grant for ${user.username} to ${clientId}`);
  sendJson(res, 200, {
    access_token: await accessToken.save(),
    token_type: 'Bearer',
    expires_in: lifetime,
    id_token: idToken,
    scope,
  });
}

function makeHandler(provider) {
  const callback = provider.callback();
  return async (req, res) => {
    const url = req.url;
    if (prefix && url !== prefix && !url.startsWith(`${prefix}/`)) {
      sendHtml(res, 404, page('Not found', ''));
      return;
    }
    const path = url.slice(prefix.length) || '/';
    const match = INTERACTION.exec(path);
    if (match) {
      await interaction(provider, req, res, match[1], match[2]);
      return;
    }
    if (config.appPasswordGrant && req.method === 'POST' && path === '/token') {
      const body = await readText(req);
      const form = new URLSearchParams(body);
      if (form.get('grant_type') === 'client_credentials' && form.has('username')) {
        await appPasswordGrant(provider, res, form);
        return;
      }
      // Already read: oidc-provider takes a parsed body from req.body.
      req.body = body;
    }
    // oidc-provider works out its mount path from originalUrl, as it does
    // when mounted by express or koa-mount.
    req.originalUrl = url;
    req.url = path;
    await callback(req, res);
  };
}

const server = http.createServer();
let handler = null;
server.on('request', (req, res) => {
  if (!handler) {
    sendHtml(res, 503, page('Starting', ''));
    return;
  }
  handler(req, res).catch((error) => {
    console.error(error);
    if (!res.headersSent) {
      sendHtml(res, 500, page('Error', `<p>${escapeHtml(error.message)}</p>`));
    } else {
      res.destroy();
    }
  });
});

function shutDown() {
  server.closeAllConnections();
  server.close();
  process.exit(0);
}

process.on('SIGTERM', shutDown);
process.on('SIGINT', shutDown);
if (config.exitWithStdin) {
  process.stdin.on('end', shutDown);
  process.stdin.on('close', shutDown);
  process.stdin.resume();
}

async function start() {
  const { port } = server.address();
  const provider = new Provider(`http://${HOST}:${port}${issuerPath}`, providerConfiguration());
  provider.on('server_error', (ctx, error) => console.error('server_error', error));
  provider.on('backchannel.error', (ctx, error, client) => {
    console.error(`backchannel.error ${client.clientId}: ${error.message}`);
  });
  provider.on('backchannel.success', (ctx, client) => console.error(`backchannel.success ${client.clientId}`));
  // oidc-provider checks static client metadata on first use only; a
  // mistake in a test's configuration should stop the start instead.
  for (const { client_id: clientId } of config.clients ?? []) {
    try {
      await provider.Client.find(clientId);
    } catch (error) {
      fatal(`client ${JSON.stringify(clientId)}: ${error.error_description ?? error.message}`);
    }
  }
  handler = makeHandler(provider);
  process.stdout.write(`READY ${port}\n`);
}

server.listen(config.port ?? 0, HOST, () => {
  start().catch((error) => fatal(error.stack ?? String(error)));
});
