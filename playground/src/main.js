// The Talus Tally playground: GraphiQL talking to this server's /graphql,
// queries and mutations over HTTP, subscriptions over graphql-ws.
import { createElement } from 'react';
import { createRoot } from 'react-dom/client';
import { GraphiQL } from 'graphiql';
import { createGraphiQLFetcher } from '@graphiql/toolkit';
import { createClient } from 'graphql-ws';
import 'graphiql/style.css';
import './style.css';
import { exampleTabs, newTabQuery } from './examples.js';

// The page is served by the GraphQL server itself, so the endpoint is on the
// same host; ws:// or wss:// follows the page's http:// or https://.
const url = new URL('/graphql', window.location.href).href;
const wsUrl = url.replace(/^http/, 'ws');

// The headers of the latest request (GraphiQL's Headers tab). Over HTTP they
// are sent as they are; a websocket has no headers, so its connection_init
// carries the Authorization one, as the server expects when authentication is on.
let headers = {};
const authorization = () => {
  const entry = Object.entries(headers || {}).find(([k]) => k.toLowerCase() === 'authorization');
  return entry ? { authorization: String(entry[1]) } : {};
};

const base = createGraphiQLFetcher({
  url,
  wsClient: createClient({ url: wsUrl, connectionParams: authorization }),
});
const fetcher = (params, options) => {
  headers = options?.headers ?? {};
  return base(params, options);
};

createRoot(document.getElementById('graphiql')).render(
  createElement(
    GraphiQL,
    {
      fetcher,
      defaultTabs: exampleTabs,
      defaultQuery: newTabQuery,
      // Most examples take variables: show that pane from the start.
      defaultEditorToolsVisibility: 'variables',
    },
    createElement(GraphiQL.Logo, null, 'Talus Tally'),
  ),
);
