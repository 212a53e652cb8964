// A schema built from the server's introspection prints exactly like the
// repository's schema.graphql: no invented schema description, no drift.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  buildClientSchema,
  buildSchema,
  getIntrospectionQuery,
  lexicographicSortSchema,
  printSchema,
} from 'graphql';
import { startServer } from './server.mjs';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

test('introspection rebuilds schema.graphql with no schema description', async () => {
  const response = await fetch(server.url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/graphql-response+json' },
    body: JSON.stringify({
      query: getIntrospectionQuery({
        descriptions: true,
        schemaDescription: true,
        specifiedByUrl: true,
        directiveIsRepeatable: true,
        inputValueDeprecation: true,
        oneOf: true,
      }),
    }),
  });
  assert.equal(response.status, 200);
  const result = await response.json();
  assert.equal(result.errors, undefined, JSON.stringify(result.errors));
  assert.equal(result.data.__schema.description, null);
  const fromServer = printSchema(lexicographicSortSchema(buildClientSchema(result.data)));
  const sdl = readFileSync(path.join(repo, 'schema.graphql'), 'utf8');
  const fromFile = printSchema(lexicographicSortSchema(buildSchema(sdl)));
  assert.equal(fromServer, fromFile);
});
