// tests/idp/server.js — a real OpenID Connect provider (panva's oidc-provider) on
// loopback for the portcullis integration tests (SPEC §5 oidc, §8; issue 6).
//
//   node tests/idp/server.js --port 0 --cert CERT.pem --key KEY.pem
//   node tests/idp/server.js --port 0 --http          (plain http, for debugging)
//   ... --log-requests   also write "idp: request METHOD /path" on stderr as each
//                        request arrives (no query string), so a test can count the
//                        calls the daemon made
//
// Listens on 127.0.0.1 only. When ready it prints exactly one line on stdout,
//   idp: listening on https://127.0.0.1:PORT
// and that URL is the issuer. Everything else goes to stderr (little of it;
// IDP_DEBUG=1 logs every request).
//
// The provider's own endpoints (oidc-provider defaults):
//   /.well-known/openid-configuration  discovery
//   /jwks                              public keys (one RSA/RS256, one EC P-256/ES256)
//   /token                             token endpoint (client_credentials for portcullis-svc)
//   /token/introspection               RFC 7662 (client_secret_basic)
//   /token/revocation                  RFC 7009
//   /me                                userinfo (opaque tokens without an audience only)
//   /auth                              authorization endpoint; devInteractions: any login/password, then consent
//                                      (driven by tests/browser.rs in Chromium)
//
// Clients:
//   portcullis-cli         public (auth method none), authorization_code + refresh_token, PKCE,
//                          redirect http://127.0.0.1:8765/callback (native: any loopback port)
//   portcullis-svc         secret "svc-secret", client_credentials, resource https://portcullis.test
//   portcullis-introspect  secret "introspect-secret", for introspection
//   portcullis-web         secret "web-secret", authorization_code + PKCE (client_secret_basic),
//                          redirect https://127.0.0.1:<any port>/v1/oidc/callback (the browser login)
//
// Resource servers (resourceIndicators): https://portcullis.test and https://other.test,
// both JWT access tokens (RS256), TTL 300 s, scope "openid profile groups".
//
// Test-only endpoints (JSON, no authentication; the socket is bound to 127.0.0.1):
//   GET  /test/token?sub=&groups=a,b&resource=&format=jwt|opaque&alg=RS256|ES256&ttl=&client=&scope=&extra=0
//        mint an access token with the provider's AccessToken model
//        -> {"access_token","token_type","expires_in","kid","format","aud"}
//   POST /test/account  {"sub","groups":[...]}   set the groups of an account
//   POST /test/sign     {"header":{},"claims":{},"key":"rsa"|"ec"|"none"|"hs256-rsa-public"}
//        a compact JWS signed with the provider's current key -> {"token"}
//   GET  /test/public-pem?key=rsa|ec   -> {"pem","kid"} (SPKI PEM of the current key)
//   POST /test/rotate   new RSA and EC keys; the JWKS then lists only those -> {"kids":[...]}
//   POST /test/revoke   {"token"} revoke through the real /token/revocation -> {"revoked":bool}
//   GET  /apis/user.openshift.io/v1/users/~   OpenShift user API stand-in (Bearer <opaque token>)
//
// Introspection and revocation are oidc-provider's own. It does not store JWT access
// tokens, so it introspects only opaque ones: the tests of introspection modes use
// opaque tokens (format=opaque, with resource= for an audience).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as querystring from 'node:querystring';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

// oidc-provider prints its notices with console.info, i.e. on stdout; stdout carries
// only the "listening" line.
console.log = console.error;
console.info = console.error;

const PORTCULLIS = 'https://portcullis.test';
const OTHER = 'https://other.test';
const SCOPE = 'openid profile groups';
const DEFAULT_TTL = 300;
const BODY_LIMIT = 64 * 1024;
const DEBUG = process.env.IDP_DEBUG === '1';

function log(...args) {
  console.error('idp:', ...args);
}

// ---------------------------------------------------------------- arguments

function parseArgs(argv) {
  const opts = { port: 0, cert: null, key: null, http: false, logRequests: false };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    const value = () => {
      i += 1;
      if (i >= argv.length) usage(`${a} needs a value`);
      return argv[i];
    };
    switch (a) {
      case '--port': {
        const v = value();
        if (!/^\d+$/.test(v) || Number(v) > 65535) usage(`bad port ${v}`);
        opts.port = Number(v);
        break;
      }
      case '--cert': opts.cert = value(); break;
      case '--key': opts.key = value(); break;
      case '--http': opts.http = true; break;
      case '--log-requests': opts.logRequests = true; break;
      case '-h': case '--help': usage(null); break;
      default: usage(`unknown argument ${a}`);
    }
  }
  if (!opts.http && (!opts.cert || !opts.key)) usage('--cert and --key are required (or --http)');
  return opts;
}

function usage(message) {
  if (message) log(message);
  console.error('usage: node tests/idp/server.js [--port N] [--log-requests] (--cert CERT.pem --key KEY.pem | --http)');
  process.exit(message ? 2 : 0);
}

// ---------------------------------------------------------------- storage
// One in-memory store for the whole process, shared by every Provider instance
// (a key rotation makes a new Provider; tokens, grants and sessions survive it).

const store = new Map(); // "Model:id" -> { payload, expiresAt }
const grantIndex = new Map(); // grantId -> Set of store keys
const uidIndex = new Map(); // "Model:uid" -> id
const userCodeIndex = new Map(); // "Model:userCode" -> id

class Adapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(key, { payload, expiresAt });
    if (payload.grantId) {
      let keys = grantIndex.get(payload.grantId);
      if (!keys) {
        keys = new Set();
        grantIndex.set(payload.grantId, keys);
      }
      keys.add(key);
    }
    if (payload.uid) uidIndex.set(this.key(payload.uid), id);
    if (payload.userCode) userCodeIndex.set(this.key(payload.userCode), id);
  }

  async find(id) {
    const key = this.key(id);
    const entry = store.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      store.delete(key);
      return undefined;
    }
    return entry.payload;
  }

  async findByUid(uid) {
    const id = uidIndex.get(this.key(uid));
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = userCodeIndex.get(this.key(userCode));
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    store.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const key of grantIndex.get(grantId) ?? []) store.delete(key);
    grantIndex.delete(grantId);
  }
}

setInterval(() => {
  const now = Date.now();
  for (const [key, entry] of store) if (entry.expiresAt <= now) store.delete(key);
  for (const [grantId, keys] of grantIndex) {
    for (const key of keys) if (!store.has(key)) keys.delete(key);
    if (keys.size === 0) grantIndex.delete(grantId);
  }
  for (const index of [uidIndex, userCodeIndex]) {
    for (const [k, id] of index) if (!store.has(`${k.split(':')[0]}:${id}`)) index.delete(k);
  }
}, 60_000).unref();

// ---------------------------------------------------------------- accounts

const accountGroups = new Map(); // sub -> [group...]
const noExtraClaims = new WeakSet(); // tokens minted with extra=0

function groupsOf(sub) {
  return accountGroups.get(sub) ?? [];
}

function accountClaims(sub) {
  const groups = groupsOf(sub);
  return {
    sub,
    preferred_username: sub,
    name: sub,
    groups,
    user: { name: sub },
    ocp: { groups },
  };
}

async function findAccount(_ctx, id) {
  if (typeof id !== 'string' || !id) return undefined;
  return {
    accountId: id,
    async claims() {
      return accountClaims(id);
    },
  };
}

// Claims of the access token (JWT payload, introspection response): the user's
// name and groups, plus nested copies for dot-path claim tests.
async function extraTokenClaims(_ctx, token) {
  if (noExtraClaims.has(token)) return undefined;
  const sub = token.accountId ?? token.clientId; // ClientCredentials tokens have no account
  const { preferred_username, groups, user, ocp } = accountClaims(sub);
  return { preferred_username, groups, user, ocp };
}

// ---------------------------------------------------------------- clients, resources

const BROWSER_CALLBACK = 'https://127.0.0.1/v1/oidc/callback';

const CLIENTS = [
  {
    client_id: 'portcullis-cli',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1:8765/callback'],
  },
  {
    client_id: 'portcullis-svc',
    client_secret: 'svc-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  },
  {
    // The daemon's browser login (SPEC §12): a confidential web client. Its
    // redirect URI is the daemon's /v1/oidc/callback on any loopback port (see
    // allowBrowserCallback).
    client_id: 'portcullis-web',
    client_secret: 'web-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: [BROWSER_CALLBACK],
  },
  {
    client_id: 'portcullis-introspect',
    client_secret: 'introspect-secret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  },
];
const CLIENT_BY_ID = new Map(CLIENTS.map((c) => [c.client_id, c]));

function resourceServer(audience, { format = 'jwt', alg = 'RS256', ttl = DEFAULT_TTL } = {}) {
  return {
    audience,
    scope: SCOPE,
    accessTokenFormat: format,
    accessTokenTTL: ttl,
    jwt: { sign: { alg } },
    identifier: () => audience,
    get scopes() {
      return new Set(SCOPE.split(' '));
    },
  };
}

const RESOURCES = new Map([
  [PORTCULLIS, resourceServer(PORTCULLIS)],
  [OTHER, resourceServer(OTHER)],
]);

// ---------------------------------------------------------------- keys

const keyHistory = new Map(); // kid -> public KeyObject, every key this process made

async function makeKey(type) {
  const { privateKey, publicKey } = type === 'rsa'
    ? crypto.generateKeyPairSync('rsa', { modulusLength: 2048 })
    : crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const alg = type === 'rsa' ? 'RS256' : 'ES256';
  const publicJwk = publicKey.export({ format: 'jwk' });
  const kid = await jose.calculateJwkThumbprint(publicJwk);
  keyHistory.set(kid, { publicKey, alg });
  return {
    kid,
    alg,
    privateKey,
    publicKey,
    privateJwk: { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' },
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }),
  };
}

// ---------------------------------------------------------------- provider

const COOKIE_KEYS = [crypto.randomBytes(32).toString('base64url')];

function makeProvider(issuer, keys) {
  const provider = new Provider(issuer, {
    adapter: Adapter,
    clients: CLIENTS,
    jwks: { keys: [keys.rsa.privateJwk, keys.ec.privateJwk] },
    findAccount,
    extraTokenClaims,
    scopes: ['openid', 'offline_access', 'profile', 'groups'],
    claims: {
      openid: ['sub'],
      profile: ['preferred_username', 'name', 'user'],
      groups: ['groups', 'ocp'],
    },
    cookies: { keys: COOKIE_KEYS },
    pkce: { required: () => true },
    clientBasedCORS: () => false,
    features: {
      devInteractions: { enabled: true },
      introspection: {
        enabled: true,
        // Confidential clients may introspect any token; public ones only their own.
        allowedPolicy: async (_ctx, client, token) => client.clientAuthMethod !== 'none'
          || token.clientId === client.clientId,
      },
      revocation: { enabled: true },
      userinfo: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf ?? PORTCULLIS,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator, client) => {
          const rs = RESOURCES.get(indicator);
          if (!rs) throw new errors.InvalidTarget();
          if (client.clientId === 'portcullis-svc' && indicator !== PORTCULLIS) {
            throw new errors.InvalidTarget();
          }
          return rs;
        },
      },
    },
    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? DEFAULT_TTL,
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? DEFAULT_TTL,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: 86400,
      Grant: 86400,
      Session: 86400,
      Interaction: 3600,
    },
  });
  allowBrowserCallback(provider);
  provider.on('server_error', (_ctx, err) => log('server_error:', err?.stack ?? err));
  return { provider, handler: provider.callback(), keys };
}

// The tests' daemons listen on kernel-chosen ports, so portcullis-web may use
// https://127.0.0.1:<any port>/v1/oidc/callback (oidc-provider allows any loopback
// port only for native clients over http).
function allowBrowserCallback(provider) {
  const allowed = provider.Client.prototype.redirectUriAllowed;
  // eslint-disable-next-line no-param-reassign
  provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
    if (this.clientId === 'portcullis-web') {
      try {
        const u = new URL(value);
        return u.protocol === 'https:' && u.hostname === '127.0.0.1' && u.port !== ''
          && u.pathname === '/v1/oidc/callback' && u.search === '' && u.hash === ''
          && u.username === '' && u.password === '';
      } catch {
        return false;
      }
    }
    return allowed.call(this, value);
  };
}

// The provider that answers requests now; replaced as a whole by /test/rotate.
let current;

// ---------------------------------------------------------------- helpers

function sendJson(res, status, body, headers = {}) {
  if (res.headersSent) return;
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(text),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(text);
}

class BadRequest extends Error {}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > BODY_LIMIT) throw new BadRequest('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

async function readJson(req) {
  const body = await readBody(req);
  if (body.length === 0) return {};
  try {
    const v = JSON.parse(body.toString('utf8'));
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v;
  } catch (e) {
    throw new BadRequest(`body is not a JSON object: ${e.message}`);
  }
}

function isCompactJws(token) {
  if (typeof token !== 'string' || token.split('.').length !== 3) return false;
  try {
    return typeof jose.decodeProtectedHeader(token).alg === 'string';
  } catch {
    return false;
  }
}

function epoch() {
  return Math.floor(Date.now() / 1000);
}

function groupsParam(v) {
  if (Array.isArray(v)) {
    if (!v.every((g) => typeof g === 'string')) throw new BadRequest('groups must be strings');
    return v;
  }
  if (typeof v === 'string') return v.split(',').filter(Boolean);
  throw new BadRequest('groups must be a list or a comma-separated string');
}

// ---------------------------------------------------------------- test endpoints

async function testToken(url) {
  const { provider } = current;
  const q = url.searchParams;
  const sub = q.get('sub');
  if (!sub) throw new BadRequest('sub is required');
  if (q.has('groups')) accountGroups.set(sub, groupsParam(q.get('groups')));

  const format = q.get('format') ?? 'jwt';
  if (format !== 'jwt' && format !== 'opaque') throw new BadRequest('format must be jwt or opaque');
  const alg = q.get('alg') ?? 'RS256';
  if (alg !== 'RS256' && alg !== 'ES256') throw new BadRequest('alg must be RS256 or ES256');
  const ttlText = q.get('ttl') ?? String(DEFAULT_TTL);
  if (!/^\d+$/.test(ttlText) || Number(ttlText) < 1) throw new BadRequest('ttl must be a positive integer');
  const ttl = Number(ttlText);
  let resource = q.get('resource') || null;
  if (!resource && format === 'jwt') resource = PORTCULLIS;
  if (resource && !URL.canParse(resource)) throw new BadRequest('resource must be an absolute URL');
  const scope = q.get('scope') ?? SCOPE;

  const clientId = q.get('client') ?? 'portcullis-cli';
  const client = await provider.Client.find(clientId);
  if (!client) throw new BadRequest(`no client ${clientId}`);

  const grant = new provider.Grant({ accountId: sub, clientId });
  grant.addOIDCScope(scope);
  grant.addOIDCClaims(['preferred_username', 'name', 'groups', 'user', 'ocp']);
  if (resource) grant.addResourceScope(resource, scope);
  const grantId = await grant.save();

  const token = new provider.AccessToken({
    accountId: sub,
    client,
    grantId,
    gty: 'authorization_code',
    scope,
    expiresIn: ttl,
    ...(resource ? { resourceServer: resourceServer(resource, { format, alg, ttl }) } : {}),
  });
  if (q.get('extra') === '0') noExtraClaims.add(token);
  const value = await token.save();
  return {
    access_token: value,
    token_type: 'Bearer',
    expires_in: ttl,
    kid: format === 'jwt' ? jose.decodeProtectedHeader(value).kid : null,
    format,
    aud: resource,
  };
}

async function testAccount(req) {
  const { sub, groups } = await readJson(req);
  if (typeof sub !== 'string' || !sub) throw new BadRequest('sub is required');
  accountGroups.set(sub, groupsParam(groups ?? []));
  return { sub, groups: groupsOf(sub) };
}

function b64json(v) {
  return Buffer.from(JSON.stringify(v)).toString('base64url');
}

async function testSign(req) {
  const { header = {}, claims = {}, key = 'rsa' } = await readJson(req);
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    throw new BadRequest('header must be an object');
  }
  if (typeof claims !== 'object' || claims === null) throw new BadRequest('claims must be JSON object');
  const { keys } = current;
  const merge = (defaults) => {
    const h = { ...defaults, ...header };
    for (const k of Object.keys(h)) if (h[k] === null) delete h[k]; // null removes a default
    return h;
  };
  const payload = new TextEncoder().encode(JSON.stringify(claims));
  switch (key) {
    case 'rsa':
    case 'ec': {
      const k = keys[key];
      const h = merge({ alg: k.alg, typ: 'at+jwt', kid: k.kid });
      try {
        return { token: await new jose.CompactSign(payload).setProtectedHeader(h).sign(k.privateKey) };
      } catch (e) {
        throw new BadRequest(`cannot sign: ${e.message}`);
      }
    }
    case 'none': {
      // An unsecured JWS (RFC 7515 appendix A.5): empty signature.
      const h = merge({ alg: 'none', typ: 'at+jwt' });
      return { token: `${b64json(h)}.${b64json(claims)}.` };
    }
    case 'hs256-rsa-public': {
      // The algorithm-confusion attack: HMAC keyed with the RSA public key's PEM text.
      const h = merge({ alg: 'HS256', typ: 'at+jwt', kid: keys.rsa.kid });
      const input = `${b64json(h)}.${b64json(claims)}`;
      const mac = crypto.createHmac('sha256', Buffer.from(keys.rsa.publicPem)).update(input).digest('base64url');
      return { token: `${input}.${mac}` };
    }
    default:
      throw new BadRequest('key must be rsa, ec, none or hs256-rsa-public');
  }
}

function testPublicPem(url) {
  const which = url.searchParams.get('key') ?? 'rsa';
  if (which !== 'rsa' && which !== 'ec') throw new BadRequest('key must be rsa or ec');
  const k = current.keys[which];
  return { pem: k.publicPem, kid: k.kid };
}

let rotating = Promise.resolve();

async function testRotate() {
  // Serialise rotations; requests keep going to the old provider until the swap.
  const run = rotating.then(async () => {
    const keys = { rsa: await makeKey('rsa'), ec: await makeKey('ec') };
    current = makeProvider(current.provider.issuer, keys);
    log(`rotated keys: ${keys.rsa.kid} ${keys.ec.kid}`);
    return { kids: [keys.rsa.kid, keys.ec.kid] };
  });
  rotating = run.catch(() => {});
  return run;
}

// Revoke through the real revocation endpoint, as the client the token belongs to
// (oidc-provider only lets a token's own client revoke it).
async function testRevoke(req) {
  const { token } = await readJson(req);
  if (typeof token !== 'string' || !token) throw new BadRequest('token is required');
  let client;
  if (isCompactJws(token)) {
    client = CLIENT_BY_ID.get('portcullis-introspect');
  } else {
    const { provider } = current;
    const found = await provider.AccessToken.find(token) ?? await provider.ClientCredentials.find(token);
    if (!found) return { revoked: false };
    client = CLIENT_BY_ID.get(found.clientId);
    if (!client) return { revoked: false };
  }
  const form = { token, token_type_hint: 'access_token' };
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (client.client_secret) {
    headers.authorization = basicAuth(client.client_id, client.client_secret);
  } else {
    form.client_id = client.client_id;
  }
  const status = await selfRequest('POST', '/token/revocation', headers, querystring.stringify(form));
  if (status !== 200) throw new Error(`revocation endpoint answered ${status}`);
  return { revoked: true };
}

function basicAuth(id, secret) {
  const enc = (s) => encodeURIComponent(s);
  return `Basic ${Buffer.from(`${enc(id)}:${enc(secret)}`).toString('base64')}`;
}

let selfUrl;

function selfRequest(method, path, headers, body) {
  const url = new URL(path, selfUrl);
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(url, {
      method,
      headers: { ...headers, 'content-length': Buffer.byteLength(body) },
      rejectUnauthorized: false, // ourselves, on loopback
    }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
    req.end(body);
  });
}

// ---------------------------------------------------------------- OpenShift stand-in

async function openshiftUser(req, res) {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  const token = m && await current.provider.AccessToken.find(m[1]);
  if (!token || !token.isValid || !token.accountId) {
    sendJson(res, 401, {
      kind: 'Status',
      apiVersion: 'v1',
      metadata: {},
      status: 'Failure',
      message: 'Unauthorized',
      reason: 'Unauthorized',
      code: 401,
    });
    return;
  }
  const name = token.accountId;
  sendJson(res, 200, {
    kind: 'User',
    apiVersion: 'user.openshift.io/v1',
    metadata: { name, uid: crypto.createHash('sha256').update(name).digest('hex').slice(0, 32) },
    identities: [`portcullis-test-idp:${name}`],
    groups: groupsOf(name),
  });
}

let LOG_REQUESTS = false;

async function handle(req, res) {
  const started = Date.now();
  if (LOG_REQUESTS) log(`request ${req.method} ${(req.url ?? '/').split('?')[0]}`);
  if (DEBUG) res.on('finish', () => log(`${req.method} ${req.url} -> ${res.statusCode} (${Date.now() - started} ms)`));
  try {
    const url = new URL(req.url ?? '/', selfUrl);
    const route = `${req.method} ${url.pathname}`;
    switch (route) {
      case 'GET /test/token': sendJson(res, 200, await testToken(url)); return;
      case 'POST /test/account': sendJson(res, 200, await testAccount(req)); return;
      case 'POST /test/sign': sendJson(res, 200, await testSign(req)); return;
      case 'GET /test/public-pem': sendJson(res, 200, testPublicPem(url)); return;
      case 'POST /test/rotate': sendJson(res, 200, await testRotate()); return;
      case 'POST /test/revoke': sendJson(res, 200, await testRevoke(req)); return;
      case 'GET /apis/user.openshift.io/v1/users/~': await openshiftUser(req, res); return;
      default:
        if (url.pathname.startsWith('/test/')) {
          sendJson(res, 404, { error: 'not_found', message: `no test endpoint ${route}` });
          return;
        }
    }
    current.handler(req, res);
  } catch (e) {
    if (e instanceof BadRequest) {
      sendJson(res, 400, { error: 'bad_request', message: e.message });
    } else {
      log(`${req.method} ${req.url}: ${e?.stack ?? e}`);
      sendJson(res, 500, { error: 'server_error', message: String(e?.message ?? e) });
    }
  }
}

// ---------------------------------------------------------------- main

process.on('unhandledRejection', (e) => log('unhandled rejection:', e?.stack ?? e));
process.on('uncaughtException', (e) => log('uncaught exception:', e?.stack ?? e));
for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(sig, () => process.exit(0));

const opts = parseArgs(process.argv.slice(2));
LOG_REQUESTS = opts.logRequests;
let server;
try {
  server = opts.http
    ? http.createServer(handle)
    : https.createServer({ cert: fs.readFileSync(opts.cert), key: fs.readFileSync(opts.key) }, handle);
} catch (e) {
  log(`cannot set up the server: ${e.message}`);
  process.exit(1);
}
server.on('clientError', (_err, socket) => socket.destroy());
server.on('tlsClientError', () => {});
server.on('error', (e) => {
  log(`cannot listen: ${e.message}`);
  process.exit(1);
});
server.listen(opts.port, '127.0.0.1', async () => {
  try {
    const { port } = server.address();
    selfUrl = `${opts.http ? 'http' : 'https'}://127.0.0.1:${port}`;
    current = makeProvider(selfUrl, { rsa: await makeKey('rsa'), ec: await makeKey('ec') });
    process.stdout.write(`idp: listening on ${selfUrl}\n`);
  } catch (e) {
    log(`startup failed: ${e?.stack ?? e}`);
    process.exit(1);
  }
});
