// DPoP proofs from an independent client implementation: panva's `dpop`
// package (npm, v2), which signs with WebCrypto. Used by
// integration/tests/dpop.rs to check that the tokenbind filter accepts what a
// widely used client produces.
//
// Usage: node proof.mjs <ES256|Ed25519> <htm> <htu> <count>
//
// Protocol (line-delimited JSON on stdout, the access token on stdin, so the
// token never appears on a command line or in the environment):
//   1. generates a key pair and prints {"alg", "jwk", "jkt"}: the public JWK
//      and the RFC 7638 thumbprint computed by the package;
//   2. reads one line from stdin: the access token (minted by the caller with
//      cnf.jkt bound to that key);
//   3. prints {"proofs": [...]}: <count> proofs for <htm> <htu> with `ath`
//      for that token, each with a fresh jti.
// Errors go to stderr with exit status 1. Never prints the access token.

import { createInterface } from 'node:readline';
import { generateKeyPair, generateProof, calculateThumbprint } from 'dpop';

function fail(message) {
  process.stderr.write(`proof.mjs: ${message}\n`);
  process.exit(1);
}

const [alg, htm, htu, countArg] = process.argv.slice(2);
const count = Number.parseInt(countArg ?? '', 10);
if (!['ES256', 'Ed25519'].includes(alg) || !htm || !htu || !(count >= 1 && count <= 1000)) {
  fail('usage: node proof.mjs <ES256|Ed25519> <htm> <htu> <count 1..1000> (access token on stdin)');
}

async function readLine() {
  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    rl.close();
    return line.trim();
  }
  return '';
}

try {
  // The public key must be extractable (it goes into the proof's jwk); the
  // private key stays non-extractable, as a real client would keep it.
  const keypair = await generateKeyPair(alg);
  const jwk = await crypto.subtle.exportKey('jwk', keypair.publicKey);
  const publicJwk = Object.fromEntries(
    ['kty', 'crv', 'x', 'y', 'n', 'e'].filter((k) => jwk[k] !== undefined).map((k) => [k, jwk[k]]),
  );
  const jkt = await calculateThumbprint(keypair.publicKey);
  process.stdout.write(`${JSON.stringify({ alg, jwk: publicJwk, jkt })}\n`);

  const accessToken = await readLine();
  if (!accessToken) fail('no access token on stdin');

  const proofs = [];
  for (let i = 0; i < count; i++) {
    proofs.push(await generateProof(keypair, htu, htm, undefined, accessToken));
  }
  process.stdout.write(`${JSON.stringify({ proofs })}\n`);
} catch (e) {
  fail(e?.stack ?? String(e));
}
