// The frontend clients people use, unmodified, against the real server:
// Apollo Client (default InMemoryCache, no type policies) over HTTP, graphql-ws
// and multipart subscriptions, with persisted queries; urql with its document
// cache and with graphcache, subscriptions over graphql-sse. Each must read
// back exactly what the server sent, and replaying history (since: 0) must
// leave cached live nodes as they are.
//
// Run with `node --test tests/js/` after `npm ci` in tests/js (.ci/js-test).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import WebSocket from 'ws';
import { print } from 'graphql';
import { ApolloClient, ApolloLink, HttpLink, InMemoryCache, gql } from '@apollo/client';
import { GraphQLWsLink } from '@apollo/client/link/subscriptions';
import { PersistedQueryLink } from '@apollo/client/link/persisted-queries';
import { getMainDefinition } from '@apollo/client/utilities';
import { createClient as createWsClient } from 'graphql-ws';
import { createClient as createSseClient } from 'graphql-sse';
import { Client, cacheExchange, fetchExchange, subscriptionExchange } from '@urql/core';
import { cacheExchange as graphcache } from '@urql/exchange-graphcache';
import { startServer } from './server.mjs';

let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

// The README's operations.
const TEMPLATES = gql`
  query Templates {
    templates {
      id
      name
      rootType { id typeId }
      nodeTypes { id typeId name allowedChildren properties { id propertyId type options { id optionId name } } }
    }
  }
`;

const EVENTS = gql`
  subscription Events($sessionId: ID!, $since: Int) {
    sessionEvents(sessionId: $sessionId, since: $since) {
      __typename seq clientId commandId
      ... on NodeCreated { node { nodeId name typeId } parentId index }
      ... on PropertyChanged { nodeId propertyId oldValue newValue }
      ... on NodeDeleted { nodeId deletedIds }
      ... on NodeRenamed { nodeId oldName newName }
      ... on CommandExecuted { commandType version }
      ... on CommandUndone { commandType version }
      ... on ClientJoined { client { clientId name } activeClients }
    }
  }
`;

const GRAPH = gql`
  query Graph($sessionId: ID!) {
    graph(sessionId: $sessionId) { seq version nodes { id name typeId parentId properties } }
  }
`;

/** A plain GraphQL POST, as the server answers it (no client, no cache). */
async function raw(query, variables = {}) {
  const response = await fetch(server.url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/graphql-response+json' },
    body: JSON.stringify({ query: typeof query === 'string' ? query : print(query), variables }),
  });
  const body = await response.json();
  assert.equal(body.errors, undefined, JSON.stringify(body.errors));
  return body.data;
}

/** `value` without the `__typename` fields clients add to every selection. */
function withoutTypenames(value) {
  if (Array.isArray(value)) return value.map(withoutTypenames);
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([k]) => k !== '__typename')
        .map(([k, v]) => [k, withoutTypenames(v)]),
    );
  }
  return value;
}

/** Events as a plain graphql-ws client receives them, through seq `last`. */
async function eventsOverWs(sessionId, last) {
  const client = createWsClient({ url: server.url.replace('http', 'ws'), webSocketImpl: WebSocket, lazy: false, connectionParams: { clientId: 'raw-ws' } });
  try {
    return await collect(
      (sink) => client.subscribe({ query: print(EVENTS), variables: { sessionId, since: 0 } }, sink),
      last,
    );
  } finally {
    await client.dispose();
  }
}

/**
 * Subscribes with `subscribe(sink) -> unsubscribe` and resolves with the
 * `sessionEvents` payloads through seq `last` (joins of other clients included).
 */
function collect(subscribe, last) {
  return new Promise((resolve, reject) => {
    const events = [];
    let stop = () => {};
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`only ${events.length} events arrived: ${JSON.stringify(events.at(-1))}`));
    }, 15_000);
    stop = subscribe({
      next: (result) => {
        if (result.errors) {
          clearTimeout(timer);
          reject(new Error(JSON.stringify(result.errors)));
          return;
        }
        const event = result.data.sessionEvents;
        events.push(event);
        if (event.seq >= last) {
          clearTimeout(timer);
          stop();
          resolve(events);
        }
      },
      error: (e) => {
        clearTimeout(timer);
        reject(e instanceof Error ? e : new Error(JSON.stringify(e)));
      },
      complete: () => {},
    });
  });
}

/** Events of an Apollo `client.subscribe` through seq `last`. */
function apolloEvents(client, sessionId, last) {
  return collect((sink) => {
    const subscription = client
      .subscribe({ query: EVENTS, variables: { sessionId, since: 0 } })
      .subscribe({ next: (r) => sink.next(r), error: sink.error, complete: sink.complete });
    return () => subscription.unsubscribe();
  }, last);
}

/** A project with some history: a phase created, renamed, its status set and cleared. */
async function projectWithHistory(name) {
  const session = (
    await raw(`mutation($n: String!) { createProject(templateId: "restomod", name: $n) { id graph { roots { id } } } }`, { n: name })
  ).createProject;
  const sessionId = session.id;
  const rootId = session.graph.roots[0].id;
  const phase = (
    await raw(`mutation($s: ID!, $r: ID!) { createNode(sessionId: $s, input: { parentId: $r, typeId: "phase", name: "Bodywork" }) { nodeId } }`, { s: sessionId, r: rootId })
  ).createNode.nodeId;
  await raw(`mutation($s: ID!, $n: ID!) { execute(sessionId: $s, command: { renameNode: { nodeId: $n, name: "Paint" } }) { version } }`, { s: sessionId, n: phase });
  await raw(`mutation($s: ID!, $n: ID!) { updateProperty(sessionId: $s, nodeId: $n, propertyId: "status", value: "In Progress") { version } }`, { s: sessionId, n: phase });
  const { graph } = await raw(GRAPH, { sessionId });
  return { sessionId, rootId, phase, seq: graph.seq };
}

function apollo(links) {
  return new ApolloClient({ link: links, cache: new InMemoryCache() });
}

function wsLink(clientId) {
  return new GraphQLWsLink(createWsClient({ url: server.url.replace('http', 'ws'), webSocketImpl: WebSocket, connectionParams: { clientId, name: clientId } }));
}

test('Apollo InMemoryCache reads back the templates exactly as the server sent them', async () => {
  const client = apollo(new HttpLink({ uri: server.url }));
  const { data } = await client.query({ query: TEMPLATES });
  const expected = await raw(TEMPLATES);
  assert.deepEqual(withoutTypenames(data), expected);
  // The case that used to break: two templates with a "status" property of different options.
  const restomod = data.templates.find((t) => t.id === 'restomod');
  const phase = restomod.nodeTypes.find((t) => t.typeId === 'phase');
  const status = phase.properties.find((p) => p.propertyId === 'status');
  const want = expected.templates.find((t) => t.id === 'restomod').nodeTypes.find((t) => t.typeId === 'phase').properties.find((p) => p.propertyId === 'status');
  assert.deepEqual(status.options.map((o) => o.name), want.options.map((o) => o.name));
  // And from the cache alone.
  assert.deepEqual(withoutTypenames(client.readQuery({ query: TEMPLATES })), expected);
});

test('Apollo with graphql-ws: a since: 0 replay leaves the cached live node as it is', async () => {
  const { sessionId, phase, seq } = await projectWithHistory('Apollo replay');
  const client = apollo(
    ApolloLink.split(
      ({ query }) => {
        const d = getMainDefinition(query);
        return d.kind === 'OperationDefinition' && d.operation === 'subscription';
      },
      wsLink('apollo-ws'),
      new HttpLink({ uri: server.url }),
    ),
  );
  const { data } = await client.query({ query: GRAPH, variables: { sessionId } });
  assert.equal(data.graph.nodes.find((n) => n.id === phase).name, 'Paint');
  const events = await apolloEvents(client, sessionId, seq + 1);
  const created = events.find((e) => e.__typename === 'NodeCreated' && e.node.nodeId === phase);
  assert.equal(created.node.name, 'Bodywork', 'the event is the node as it was created');
  const cached = client.readQuery({ query: GRAPH, variables: { sessionId } });
  assert.equal(cached.graph.nodes.find((n) => n.id === phase).name, 'Paint', 'the live node is untouched');
  const plain = await eventsOverWs(sessionId, seq + 1);
  assert.deepEqual(withoutTypenames(events.slice(0, seq)), withoutTypenames(plain.slice(0, seq)));
  client.stop();
});

test('Apollo multipart HTTP subscriptions receive the same events as graphql-ws', async () => {
  const { sessionId, seq } = await projectWithHistory('Apollo multipart');
  const client = apollo(new HttpLink({ uri: server.url, headers: { 'x-client-id': 'apollo-multipart' } }));
  const events = await apolloEvents(client, sessionId, seq + 1);
  const plain = await eventsOverWs(sessionId, seq + 1);
  assert.deepEqual(withoutTypenames(events.slice(0, seq)), withoutTypenames(plain.slice(0, seq)));
  const join = events.find((e) => e.__typename === 'ClientJoined');
  assert.equal(join.client.clientId, 'apollo-multipart');
  client.stop();
});

test("Apollo's PersistedQueryLink registers a query once, then sends only its hash", async () => {
  const bodies = [];
  const fetchAndRecord = (uri, options) => {
    bodies.push(options.body ? JSON.parse(options.body) : { get: uri });
    return fetch(uri, options);
  };
  const persisted = new PersistedQueryLink({ sha256: (q) => createHash('sha256').update(q).digest('hex') });
  const client = () =>
    new ApolloClient({
      link: persisted.concat(new HttpLink({ uri: server.url, fetch: fetchAndRecord })),
      cache: new InMemoryCache(),
    });
  const first = await client().query({ query: TEMPLATES });
  const second = await client().query({ query: TEMPLATES });
  assert.deepEqual(second.data, first.data);
  assert.deepEqual(withoutTypenames(first.data), await raw(TEMPLATES));
  // First: hash only (not found), then hash + query; second client: hash only, found.
  assert.equal(bodies.length, 3, JSON.stringify(bodies));
  assert.equal(bodies[0].query, undefined);
  assert.ok(bodies[1].query);
  assert.equal(bodies[2].query, undefined);
  assert.ok(bodies[2].extensions.persistedQuery.sha256Hash);
});

function urql(exchange, clientId) {
  const sse = createSseClient({ url: server.url, headers: { 'x-client-id': clientId } });
  return new Client({
    url: server.url,
    exchanges: [
      exchange,
      fetchExchange,
      subscriptionExchange({
        forwardSubscription: (request) => ({
          subscribe: (sink) => ({ unsubscribe: sse.subscribe({ ...request, query: request.query || '' }, sink) }),
        }),
      }),
    ],
  });
}

for (const [name, exchange] of [
  ['document cache', () => cacheExchange],
  // No keys, no schema: graphcache's defaults. Its warnings about matching
  // fragments without a schema are advice to the developer, not failures.
  ['graphcache', () => graphcache({ logger: () => {} })],
]) {
  test(`urql (${name}) reads back what the server sent; graphql-sse events match graphql-ws`, async () => {
    const client = urql(exchange(), `urql-${name}`);
    const templates = await client.query(TEMPLATES, {}).toPromise();
    assert.equal(templates.error, undefined);
    assert.deepEqual(withoutTypenames(templates.data), await raw(TEMPLATES));

    const { sessionId, phase, seq } = await projectWithHistory(`urql ${name}`);
    const graph = await client.query(GRAPH, { sessionId }).toPromise();
    assert.equal(graph.data.graph.nodes.find((n) => n.id === phase).name, 'Paint');
    const events = await collect((sink) => {
      const { unsubscribe } = client
        .subscription(EVENTS, { sessionId, since: 0 })
        .subscribe((result) => (result.error ? sink.error(result.error) : sink.next(result)));
      return unsubscribe;
    }, seq + 1);
    const plain = await eventsOverWs(sessionId, seq + 1);
    assert.deepEqual(withoutTypenames(events.slice(0, seq)), withoutTypenames(plain.slice(0, seq)));
    const again = await client.query(GRAPH, { sessionId }, { requestPolicy: 'cache-only' }).toPromise();
    assert.equal(again.data.graph.nodes.find((n) => n.id === phase).name, 'Paint', 'the replay did not touch the cached node');
  });
}
