// The tabs a newcomer sees on a first visit: one step of the workflow each.
// GraphiQL keeps the tabs in the browser's local storage afterwards, so these
// show again only after "Clear local storage" in GraphiQL's settings.
//
// Plain data with no imports: the browser test (tests/browser) imports this
// file too, and checks every document against the running server's schema.

const welcome = `# Welcome to the Talus Tally playground.
#
# Each tab is one step; go through them left to right:
#   Templates       the kinds of project (this tab)
#   CreateProject   a new project in a live session
#   Events          watch what happens in the session
#   CreateNode      add a node to the project's graph
#   UpdateProperty  set a property of that node
#   Undo            undo the last command, or Redo it
#   Graph           the whole graph of the session
#
# If the server runs with authentication on (--jwt-secret),
# get a dev token with
#   talus-tally token --jwt-secret SECRET --sub alice
# and put {"Authorization": "Bearer <token>"} in the
# Headers tab below; subscriptions send it too.
#
# Run with the run button or Ctrl-Enter. Ctrl-Space
# completes names; the Docs button (top left) describes
# every type and field.
#
# A template lists node types: a node type's typeId is
# what creating a node takes, and its allowedChildren
# the typeIds that may go under it. A new project's root
# node has the template's rootType. Every id is unique
# on the server (a node type's id is
# "<templateId>/<typeId>"), so client caches never mix
# two templates' types.
`;

const templates = `${welcome}
query Templates {
  templates {
    id
    name
    rootType {
      id
      typeId
    }
    nodeTypes {
      id
      typeId
      name
      allowedChildren
      properties {
        id
        propertyId
        name
        type
        required
        options {
          id
          optionId
          name
        }
      }
    }
  }
}
`;

const createProject = `# Creates a project from the built-in general template
# (id "project") and opens it in a new session, with
# the project's root node in place.
#
# Keep two ids of the result for the next tabs:
#   id                 the session: their "sessionId"
#   graph.roots[0].id  the root node: CreateNode's
#                      "parentId"
mutation CreateProject {
  createProject(templateId: "project", name: "My first project") {
    id
    version
    graph {
      roots {
        id
        name
        typeId
      }
    }
  }
}
`;

const events = `# Streams every event of a session as it happens, over
# a WebSocket. Paste the session id from CreateProject
# into the variables below, then run.
#
# Run this in a second browser window (open this page
# again): a running subscription stops when anything
# else runs in the same window. Run the commands
# (CreateNode, UpdateProperty, Undo) in the first window
# and watch their events arrive here: the result pane
# shows the newest event, its seq one above the last.
# Run again to stop.
#
# Optional variable "since": first replay the stored
# events with a greater seq (0: the whole history),
# then go on with live ones.
subscription Events($sessionId: ID!, $since: Int) {
  sessionEvents(sessionId: $sessionId, since: $since) {
    __typename
    seq
    commandId
    clientId
    ... on NodeCreated {
      node {
        nodeId
        name
        typeId
      }
      parentId
      index
    }
    ... on PropertyChanged {
      nodeId
      propertyId
      oldValue
      newValue
    }
    ... on NodeDeleted {
      nodeId
      deletedIds
    }
    ... on CommandExecuted {
      commandType
      version
    }
    ... on CommandUndone {
      commandType
      version
    }
    ... on CommandRedone {
      commandType
      version
    }
    ... on ClientJoined {
      client {
        clientId
        name
      }
      activeClients
    }
    ... on ClientLeft {
      client {
        clientId
        name
      }
      activeClients
    }
    ... on PresenceChanged {
      joined {
        clientId
        name
      }
      left {
        clientId
        name
      }
      joinedCount
      leftCount
      activeClients
    }
  }
}
`;

const createNode = `# Adds a node under another one. Paste into the
# variables below:
#   sessionId  the session id from CreateProject
#   parentId   the root node's id (CreateProject's
#              graph.roots[0].id)
#   typeId     a type allowed under the root: one of
#              the root type's allowedChildren
#              (Templates tab)
# The template decides which types exist and what may
# go where: a wrong type fails with CHILD_NOT_ALLOWED
# and says which are allowed.
#
# The result's nodeId is the new node, for
# UpdateProperty.
mutation CreateNode(
  $sessionId: ID!
  $parentId: ID!
  $typeId: ID!
  $name: String
) {
  createNode(
    sessionId: $sessionId
    input: { parentId: $parentId, typeId: $typeId, name: $name }
  ) {
    version
    nodeId
    events {
      __typename
      seq
    }
  }
}
`;

const updateProperty = `# Sets one property of a node. Paste into the
# variables below:
#   sessionId   the session id from CreateProject
#   nodeId      the nodeId from CreateNode
#   propertyId  a property of the node's type
#               (Templates tab: properties
#               { propertyId })
#   value       JSON of the property's type: "text",
#               42, true, or a SELECT option's optionId;
#               null clears the property
mutation UpdateProperty(
  $sessionId: ID!
  $nodeId: ID!
  $propertyId: ID!
  $value: JSON
) {
  updateProperty(
    sessionId: $sessionId
    nodeId: $nodeId
    propertyId: $propertyId
    value: $value
  ) {
    version
    events {
      __typename
      seq
      ... on PropertyChanged {
        propertyId
        oldValue
        newValue
      }
    }
    canUndo
    canRedo
  }
}
`;

const undoRedo = `# Every command can be undone, and an undone one
# redone. Two operations here: the run button asks
# which one to run. Paste the session id from
# CreateProject into the variables below.
#
# Undo fails with NOTHING_TO_UNDO when there is nothing
# to take back; Redo with NOTHING_TO_REDO when nothing
# was undone since the last command.
mutation Undo($sessionId: ID!) {
  undo(sessionId: $sessionId) {
    version
    canUndo
    canRedo
    events {
      __typename
      seq
    }
  }
}

mutation Redo($sessionId: ID!) {
  redo(sessionId: $sessionId) {
    version
    canUndo
    canRedo
    events {
      __typename
      seq
    }
  }
}
`;

const graph = `# The live graph of a session: every node, parents
# before children. Paste the session id from
# CreateProject into the variables below.
#
# seq is the last event this graph reflects, read
# together with the nodes: a client that subscribes to
# Events with since = seq misses nothing and sees
# nothing twice.
query Graph($sessionId: ID!) {
  graph(sessionId: $sessionId) {
    version
    seq
    nodeCount
    nodes {
      id
      name
      typeId
      parentId
      properties
      missingRequired
    }
  }
}
`;

/** Turns a variables object into the text of GraphiQL's variables pane. */
const vars = (value) => JSON.stringify(value, null, 2);

const SESSION = 'PASTE-THE-SESSION-ID';

/** GraphiQL's `defaultTabs`: shown on a first visit, in this order. */
export const exampleTabs = [
  { query: templates },
  { query: createProject },
  { query: events, variables: vars({ sessionId: SESSION }) },
  {
    query: createNode,
    variables: vars({
      sessionId: SESSION,
      parentId: 'PASTE-THE-ROOT-NODE-ID',
      typeId: 'PASTE-A-TYPEID',
      name: 'My first node',
    }),
  },
  {
    query: updateProperty,
    variables: vars({
      sessionId: SESSION,
      nodeId: 'PASTE-THE-NODE-ID',
      propertyId: 'PASTE-A-PROPERTY-ID',
      value: 'a new value',
    }),
  },
  { query: undoRedo, variables: vars({ sessionId: SESSION }) },
  { query: graph, variables: vars({ sessionId: SESSION }) },
];

/** What a tab opened with "+" starts with. */
export const newTabQuery = `# A new tab. Ctrl-Space completes names; the Docs
# button (top left) describes the whole API.
`;
