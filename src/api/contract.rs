//! Checks an SDL against a contract: every type, field, argument, default and
//! enum value the contract names exists with the same type, and nothing the
//! SDL adds is required (so clients written against the contract keep working).
//!
//! `talus-tally schema --check CONTRACT.graphql` runs it against this server.

use std::collections::BTreeMap;

use async_graphql::parser::parse_schema;
use async_graphql::parser::types::{
    FieldDefinition, InputValueDefinition, ServiceDocument, TypeDefinition, TypeKind,
    TypeSystemDefinition,
};
use async_graphql::{Positioned, Value as ConstValue};

/// The ways `sdl` breaks `contract`, one line each (empty: it keeps it); Err if either does not parse.
pub fn check(contract: &str, sdl: &str) -> Result<Vec<String>, String> {
    let contract =
        parse_schema(contract).map_err(|e| format!("the contract does not parse: {e}"))?;
    let exported = parse_schema(sdl).map_err(|e| format!("the SDL does not parse: {e}"))?;
    let (want, have) = (types(&contract), types(&exported));
    let mut problems = Vec::new();
    for (name, c) in &want {
        let Some(s) = have.get(name) else {
            problems.push(format!("{} {name} is missing", kind_name(&c.kind)));
            continue;
        };
        if kind_name(&c.kind) != kind_name(&s.kind) {
            problems.push(format!(
                "{name} is a {}, the contract says {}",
                kind_name(&s.kind),
                kind_name(&c.kind)
            ));
            continue;
        }
        for directive in &c.directives {
            let d = &directive.node.name.node;
            if !s.directives.iter().any(|x| x.node.name.node == *d) {
                problems.push(format!("{name} lacks @{d}"));
            }
        }
        match (&c.kind, &s.kind) {
            (TypeKind::Object(c), TypeKind::Object(s)) => {
                for i in names(&c.implements) {
                    if !names(&s.implements).contains(&i) {
                        problems.push(format!("{name} does not implement {i}"));
                    }
                }
                check_fields(name, &c.fields, &s.fields, &mut problems);
            }
            (TypeKind::Interface(c), TypeKind::Interface(s)) => {
                check_fields(name, &c.fields, &s.fields, &mut problems);
            }
            (TypeKind::InputObject(c), TypeKind::InputObject(s)) => {
                check_inputs(name, &c.fields, &s.fields, &mut problems);
            }
            (TypeKind::Enum(c), TypeKind::Enum(s)) => {
                for v in &c.values {
                    let v = &v.node.value.node;
                    if !s.values.iter().any(|x| x.node.value.node == *v) {
                        problems.push(format!("enum {name} lacks {v}"));
                    }
                }
            }
            (TypeKind::Union(c), TypeKind::Union(s)) => {
                for m in names(&c.members) {
                    if !names(&s.members).contains(&m) {
                        problems.push(format!("union {name} lacks {m}"));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(problems)
}

fn types(doc: &ServiceDocument) -> BTreeMap<String, &TypeDefinition> {
    doc.definitions
        .iter()
        .filter_map(|d| match d {
            TypeSystemDefinition::Type(t) => Some((t.node.name.node.to_string(), &t.node)),
            _ => None,
        })
        .collect()
}

fn kind_name(kind: &TypeKind) -> &'static str {
    match kind {
        TypeKind::Scalar => "scalar",
        TypeKind::Object(_) => "type",
        TypeKind::Interface(_) => "interface",
        TypeKind::Union(_) => "union",
        TypeKind::Enum(_) => "enum",
        TypeKind::InputObject(_) => "input",
    }
}

/// Default values compare as values: `24` and `24.0` are the same Float default.
fn same_default(a: Option<&Positioned<ConstValue>>, b: Option<&Positioned<ConstValue>>) -> bool {
    match (a.map(|v| &v.node), b.map(|v| &v.node)) {
        (None, None) => true,
        (Some(ConstValue::Number(x)), Some(ConstValue::Number(y))) => x.as_f64() == y.as_f64(),
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

fn show_default(v: Option<&Positioned<ConstValue>>) -> String {
    v.map_or("none".to_string(), |v| v.node.to_string())
}

/// Compares the contract's input values (arguments or input fields) with the SDL's; extra SDL ones must be optional.
fn check_inputs(
    place: &str,
    contract: &[Positioned<InputValueDefinition>],
    sdl: &[Positioned<InputValueDefinition>],
    problems: &mut Vec<String>,
) {
    for want in contract {
        let name = want.node.name.node.as_str();
        match sdl.iter().find(|have| have.node.name.node == name) {
            None => problems.push(format!("{place}: `{name}` is missing")),
            Some(have) => {
                if have.node.ty.node.to_string() != want.node.ty.node.to_string() {
                    problems.push(format!(
                        "{place}: `{name}` is `{}`, the contract says `{}`",
                        have.node.ty.node, want.node.ty.node
                    ));
                }
                if !same_default(
                    have.node.default_value.as_ref(),
                    want.node.default_value.as_ref(),
                ) {
                    problems.push(format!(
                        "{place}: `{name}` defaults to {}, the contract says {}",
                        show_default(have.node.default_value.as_ref()),
                        show_default(want.node.default_value.as_ref())
                    ));
                }
            }
        }
    }
    for extra in sdl {
        let name = extra.node.name.node.as_str();
        let required = !extra.node.ty.node.nullable && extra.node.default_value.is_none();
        if required && !contract.iter().any(|c| c.node.name.node == name) {
            problems.push(format!(
                "{place}: `{name}` is required but not in the contract, so contract clients would break"
            ));
        }
    }
}

fn check_fields(
    type_name: &str,
    contract: &[Positioned<FieldDefinition>],
    sdl: &[Positioned<FieldDefinition>],
    problems: &mut Vec<String>,
) {
    for want in contract {
        let name = want.node.name.node.as_str();
        let Some(have) = sdl.iter().find(|f| f.node.name.node == name) else {
            problems.push(format!("{type_name}.{name} is missing"));
            continue;
        };
        if have.node.ty.node.to_string() != want.node.ty.node.to_string() {
            problems.push(format!(
                "{type_name}.{name} is `{}`, the contract says `{}`",
                have.node.ty.node, want.node.ty.node
            ));
        }
        check_inputs(
            &format!("{type_name}.{name}"),
            &want.node.arguments,
            &have.node.arguments,
            problems,
        );
    }
}

fn names(list: &[Positioned<async_graphql::Name>]) -> Vec<String> {
    list.iter().map(|n| n.node.to_string()).collect()
}
