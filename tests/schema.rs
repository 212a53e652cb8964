//! The exported schema: `schema.graphql` matches the code, and the contract checker
//! (`talus-tally schema --check`) reports what breaks a contract.

use talus_tally::api::contract::check;

#[test]
fn schema_graphql_at_the_repo_root_is_the_sdl_the_code_exports() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    let file = std::fs::read_to_string(path).expect("schema.graphql exists at the repo root");
    assert!(
        file == talus_tally::sdl(),
        "schema.graphql is out of date with the code; run `cargo run -- schema > schema.graphql`"
    );
}

#[test]
fn a_contract_the_schema_keeps_reports_nothing() {
    let contract = r#"
        type Query { templates: [Template!]!, graph(sessionId: ID!): Graph! }
        type Template { id: ID!, nodeType(typeId: ID!): NodeType }
        type NodeType { id: ID!, typeId: ID!, allowedChildren: [ID!]! }
        type Graph { seq: Int!, nodes: [Node!]! }
        type Node { id: ID! }
        type Mutation { cleanupSessions(maxInactiveHours: Float = 24): CleanupResult! }
        type CleanupResult { sessionsRemoved: Int! }
        enum Role { OWNER EDITOR VIEWER }
        interface SessionEvent { seq: Int!, userId: ID }
        type NodeCreated implements SessionEvent { seq: Int!, userId: ID, node: NodeSnapshot! }
        type NodeSnapshot { nodeId: ID! }
        input CommandInput @oneOf { createNode: CreateNodeInput }
        input CreateNodeInput { typeId: ID!, parentId: ID }
    "#;
    assert_eq!(check(contract, &talus_tally::sdl()), Ok(vec![]));
}

#[test]
fn the_contract_check_notices_a_changed_type() {
    let problems = check("type Session { lastSeq: String! }", &talus_tally::sdl()).unwrap();
    assert_eq!(
        problems,
        ["Session.lastSeq is `Int!`, the contract says `String!`"]
    );
}

#[test]
fn the_contract_check_notices_missing_names_values_defaults_and_directives() {
    let contract = r#"
        type Nowhere { x: Int }
        type Session { id: ID!, elsewhere: Int }
        enum Role { OWNER ADMIN }
        type Mutation { cleanupSessions(maxInactiveHours: Float = 12): CleanupResult! }
        input DeleteNodeInput @deprecatedInput { nodeId: ID! }
        type NodeCreated implements Elsewhere { seq: Int! }
        input CreateNodeInput { typeId: ID! }
    "#;
    let problems = check(contract, &talus_tally::sdl()).unwrap();
    assert_eq!(problems.len(), 6, "{problems:#?}");
    for expected in [
        "type Nowhere is missing",
        "Session.elsewhere is missing",
        "enum Role lacks ADMIN",
        "Mutation.cleanupSessions: `maxInactiveHours` defaults to 24.0, the contract says 12",
        "DeleteNodeInput lacks @deprecatedInput",
        "NodeCreated does not implement Elsewhere",
    ] {
        assert!(
            problems.iter().any(|p| p == expected),
            "expected `{expected}` among {problems:#?}"
        );
    }
}

#[test]
fn the_contract_check_refuses_a_contract_that_does_not_parse() {
    assert!(check("type {", &talus_tally::sdl())
        .unwrap_err()
        .contains("the contract does not parse"));
}
