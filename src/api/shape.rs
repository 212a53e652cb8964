//! Request-shape limits checked on the parsed document, before the engine validates or executes it.
//!
//! Validating a document costs time in proportion to the document with every
//! fragment spread replaced by its fragment, and that can be exponential in
//! the document's size: 30 fragments that each spread the previous one twice
//! are 1.2 KB of text and 2^30 fields, which pinned a worker for minutes.
//! `check` measures the expanded document in time linear in the text (each
//! fragment is measured once and its totals reused, with saturating sums) and
//! refuses it, with LIMIT_EXCEEDED naming the limit, before the engine's own
//! depth check or validation walks it.

use std::collections::HashMap;

use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use async_graphql::{Name, Positioned, ServerError};

use super::ApiLimits;

/// What a selection set amounts to once its fragments are expanded.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    fields: usize,
    aliases: usize,
    spreads: usize,
    introspection: usize,
    /// Nesting of selection sets (fields, spreads and inline fragments), as the engine counts it.
    depth: usize,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.fields = self.fields.saturating_add(other.fields);
        self.aliases = self.aliases.saturating_add(other.aliases);
        self.spreads = self.spreads.saturating_add(other.spreads);
        self.introspection = self.introspection.saturating_add(other.introspection);
        self.depth = self.depth.max(other.depth);
    }
}

struct Walk<'d> {
    doc: &'d ExecutableDocument,
    limits: &'d ApiLimits,
    done: HashMap<&'d Name, Totals>,
    /// Fragments being measured: a spread of one of these is a cycle.
    open: Vec<&'d Name>,
}

fn limit_error(message: String) -> ServerError {
    let mut e = ServerError::new(message, None);
    e.extensions
        .get_or_insert_with(Default::default)
        .set("code", "LIMIT_EXCEEDED");
    e
}

impl<'d> Walk<'d> {
    /// `level` is the nesting at which `set` starts; deeper than the limit is
    /// refused at once, which also bounds this recursion.
    fn set(
        &mut self,
        set: &'d Positioned<SelectionSet>,
        level: usize,
    ) -> Result<Totals, ServerError> {
        if level > self.limits.max_depth {
            return Err(limit_error(format!(
                "the query is nested more than {} levels deep, counting fragment spreads (the limit max-depth is {})",
                self.limits.max_depth, self.limits.max_depth
            )));
        }
        let mut totals = Totals::default();
        for selection in &set.node.items {
            let inner = match &selection.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    let mut t = Totals {
                        fields: 1,
                        aliases: usize::from(field.alias.is_some()),
                        introspection: usize::from(matches!(
                            field.name.node.as_str(),
                            "__schema" | "__type"
                        )),
                        ..Totals::default()
                    };
                    if !field.selection_set.node.items.is_empty() {
                        let child = self.set(&field.selection_set, level + 1)?;
                        t.add(child);
                        t.depth = child.depth + 1;
                    }
                    t
                }
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    let mut t = self.fragment(name, level + 1)?;
                    t.spreads = t.spreads.saturating_add(1);
                    t.depth += 1;
                    t
                }
                Selection::InlineFragment(inline) => {
                    let mut t = self.set(&inline.node.selection_set, level + 1)?;
                    t.depth += 1;
                    t
                }
            };
            totals.add(inner);
        }
        Ok(totals)
    }

    fn fragment(&mut self, name: &'d Name, level: usize) -> Result<Totals, ServerError> {
        if let Some(t) = self.done.get(name) {
            if level + t.depth > self.limits.max_depth {
                return self.set_too_deep();
            }
            return Ok(*t);
        }
        if self.open.contains(&name) {
            // Refused here: the engine's complexity and depth visitors follow
            // spreads without a guard and would recurse until the stack overflows.
            let mut e = ServerError::new(
                format!("cannot spread fragment \"{name}\" within itself"),
                None,
            );
            e.extensions
                .get_or_insert_with(Default::default)
                .set("code", "BAD_USER_INPUT");
            return Err(e);
        }
        // An unknown fragment is validation's to report.
        let Some(fragment) = self.doc.fragments.get(name) else {
            return Ok(Totals::default());
        };
        self.open.push(name);
        let t = self.set(&fragment.node.selection_set, level);
        self.open.pop();
        let t = t?;
        self.done.insert(name, t);
        Ok(t)
    }

    fn set_too_deep(&self) -> Result<Totals, ServerError> {
        Err(limit_error(format!(
            "the query is nested more than {} levels deep, counting fragment spreads (the limit max-depth is {})",
            self.limits.max_depth, self.limits.max_depth
        )))
    }
}

/// Refuses a document whose expanded shape passes one of the limits; linear in the document's size.
pub fn check(doc: &ExecutableDocument, limits: &ApiLimits) -> Result<(), ServerError> {
    let mut walk = Walk {
        doc,
        limits,
        done: HashMap::new(),
        open: Vec::new(),
    };
    let mut totals = Totals::default();
    for (_, operation) in doc.operations.iter() {
        totals.add(walk.set(&operation.node.selection_set, 0)?);
    }
    // Fragments no operation uses are still validated (and then refused as unused).
    for (name, _) in doc.fragments.iter() {
        if !walk.done.contains_key(name) {
            totals.add(walk.fragment(name, 1)?);
        }
    }
    let over = |what: &str, count: usize, flag: &str, limit: usize| {
        Err(limit_error(format!(
            "the query has {}{count} {what} once its fragments are expanded (the limit {flag} is {limit})",
            if count == usize::MAX { "more than " } else { "" },
        )))
    };
    if totals.fields > limits.max_fields {
        return over("fields", totals.fields, "max-fields", limits.max_fields);
    }
    if totals.aliases > limits.max_aliases {
        return over("aliases", totals.aliases, "max-aliases", limits.max_aliases);
    }
    if totals.spreads > limits.max_fragment_spreads {
        return over(
            "fragment spreads",
            totals.spreads,
            "max-fragment-spreads",
            limits.max_fragment_spreads,
        );
    }
    if totals.introspection > limits.max_introspection_fields {
        return over(
            "__schema/__type fields",
            totals.introspection,
            "max-introspection-fields",
            limits.max_introspection_fields,
        );
    }
    Ok(())
}
