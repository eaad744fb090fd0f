// Drives independent JavaScript implementations for the Python interop tests.
//
// Reads a JSON array of operations on stdin and writes a JSON array of results on stdout, one
// per operation, in order. A failure is a result ({ok: false, error}), never a crash, so the
// tests can assert what each library refuses. Libraries:
//   jose                     (JWS/JWT: verify agentauth tokens, sign client assertions)
//   http-message-signatures  (RFC 9421, "hms": sign and verify requests)
//   http-message-sig         (RFC 9421, "sig": sign and verify requests)
import crypto from "node:crypto";
import * as jose from "jose";
import { httpbis, createSigner, createVerifier } from "http-message-signatures";
import { createSignature, verifySignature } from "http-message-sig";

const privateKey = (jwk) => crypto.createPrivateKey({ key: jwk, format: "jwk" });
const publicKey = (jwk) => crypto.createPublicKey({ key: jwk, format: "jwk" });

// Header objects keep repeated fields as arrays, as Node's http module does.
function headerObject(lines) {
  const headers = {};
  for (const [name, value] of lines) {
    if (name in headers) {
      headers[name] = [].concat(headers[name], value);
    } else {
      headers[name] = value;
    }
  }
  return headers;
}

function linesOf(headers) {
  const lines = [];
  for (const [name, value] of Object.entries(headers)) {
    for (const one of [].concat(value)) lines.push([name, String(one)]);
  }
  return lines;
}

const operations = {
  // jose: verify a JWT against a JWKS, as a resource server would.
  async "jose.verify"({ token, jwks, issuer, audience, typ }) {
    const { payload, protectedHeader } = await jose.jwtVerify(token, jose.createLocalJWKSet(jwks), {
      issuer,
      audience,
      typ,
    });
    return { alg: protectedHeader.alg, payload };
  },

  // jose: sign a JWT (a client assertion) with a private JWK.
  async "jose.sign"({ alg, jwk, header, payload }) {
    const key = await jose.importJWK(jwk, alg);
    const token = await new jose.SignJWT(payload).setProtectedHeader({ ...header, alg }).sign(key);
    return { token };
  },

  // http-message-signatures: sign a request. params: the signature parameters to emit, in
  // order; values: their values (created as epoch seconds).
  async "hms.sign"({ method, url, lines, components, params, values, jwk, label }) {
    const key = createSigner(privateKey(jwk), "ed25519", values.keyid);
    const paramValues = { ...values };
    if ("created" in paramValues) paramValues.created = new Date(paramValues.created * 1000);
    const signed = await httpbis.signMessage(
      { key, fields: components, params, paramValues, name: label },
      { method, url, headers: headerObject(lines) },
    );
    return { lines: linesOf(signed.headers) };
  },

  // http-message-signatures: verify a request with the given public JWK.
  async "hms.verify"({ method, url, lines, jwk, requiredFields }) {
    const verified = await httpbis.verifyMessage(
      {
        keyLookup: async () => ({
          id: "presented",
          algs: ["ed25519"],
          verify: createVerifier(publicKey(jwk), "ed25519"),
        }),
        requiredFields,
        tolerance: 5,
      },
      { method, url, headers: headerObject(lines) },
    );
    if (verified !== true) throw new Error(`verifyMessage returned ${verified}`);
    return { verified };
  },

  // http-message-sig: sign a request described field by field.
  async "sig.sign"({ method, url, lines, components, parameters, jwk, label }) {
    const key = privateKey(jwk);
    const signer = { algorithm: "ed25519", sign: (data) => crypto.sign(null, data, key) };
    const message = {
      kind: "request",
      method,
      targetUri: url,
      fields: lines.map(([name, value]) => ({ name, value })),
    };
    const fields = await createSignature(message, { label, components, parameters, signer });
    return { signatureInput: fields.signatureInput, signature: fields.signature };
  },

  // http-message-sig: verify a request with the given public JWK.
  async "sig.verify"({ method, url, lines, jwk, label, requiredComponents, now }) {
    const key = publicKey(jwk);
    const message = {
      kind: "request",
      method,
      targetUri: url,
      fields: lines.map(([name, value]) => ({ name, value })),
    };
    const verified = await verifySignature(message, {
      label,
      policy: {
        algorithms: ["ed25519"],
        requiredComponents,
        requiredParameters: ["created"],
        maxAge: 60,
        clockSkew: 5,
        now,
      },
      resolveVerifier: () => ({
        algorithm: "ed25519",
        verify: (data, signature) => crypto.verify(null, data, key, signature),
      }),
    });
    return { label: verified.label, parameters: verified.parameters };
  },
};

const input = JSON.parse(await new Promise((resolve) => {
  let text = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => (text += chunk));
  process.stdin.on("end", () => resolve(text));
}));

const results = [];
for (const { op, ...args } of input) {
  try {
    results.push({ ok: true, ...(await operations[op](args)) });
  } catch (error) {
    results.push({ ok: false, error: `${error.code ?? error.name}: ${error.message}` });
  }
}
process.stdout.write(JSON.stringify(results));
