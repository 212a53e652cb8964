//! A node's property values: a small map from property id to value, kept sorted in one allocation.
//!
//! Nodes have a handful of properties, and a command reads or writes one of
//! them on one node picked from a graph that may hold 100,000 nodes and not fit
//! in cache. A `BTreeMap` leaf is a fixed ~600-byte allocation whose length
//! and keys lie on different cache lines; this map is a sorted vector sized to
//! its entries, with ids stored inline (`Key`), so a lookup scans a few
//! adjacent cache lines of one small allocation. It serialises exactly as a
//! JSON object with its keys in order, like the `BTreeMap` it replaces.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::graph::Key;

/// Property id -> normalised value, sorted by id; ids are unique.
#[derive(Clone, Default, PartialEq)]
pub struct Properties(Vec<(Key, Value)>);

impl Properties {
    pub fn new() -> Self {
        Properties(Vec::new())
    }

    fn position(&self, id: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(id))
    }

    pub fn get(&self, id: &str) -> Option<&Value> {
        self.position(id).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, id: &str) -> bool {
        self.position(id).is_ok()
    }

    /// Sets `id` to `value`; returns the value it replaces.
    pub fn insert(&mut self, id: Key, value: Value) -> Option<Value> {
        match self.position(&id) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                // Grow by one: nodes rarely gain properties, so keep the allocation tight.
                self.0.reserve_exact(1);
                self.0.insert(i, (id, value));
                None
            }
        }
    }

    pub fn remove(&mut self, id: &str) -> Option<Value> {
        let i = self.position(id).ok()?;
        Some(self.0.remove(i).1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries in id order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Key, &Value)> + '_ {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &Key> + '_ {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = &Value> + '_ {
        self.0.iter().map(|(_, v)| v)
    }
}

/// Like `BTreeMap`'s: panics when `id` has no value, so for tests and known-present ids only.
impl std::ops::Index<&str> for Properties {
    type Output = Value;

    fn index(&self, id: &str) -> &Value {
        self.get(id)
            .unwrap_or_else(|| panic!("property '{id}' has no value"))
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Later entries win over earlier ones with the same id, as with a map.
impl<K: Into<Key>> FromIterator<(K, Value)> for Properties {
    fn from_iter<I: IntoIterator<Item = (K, Value)>>(iter: I) -> Self {
        let mut entries: Vec<(Key, Value)> = iter.into_iter().map(|(k, v)| (k.into(), v)).collect();
        // Stable, so among equal ids the last one given stays last; keep that one.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(Key, Value)> = Vec::with_capacity(entries.len());
        for entry in entries {
            match out.last_mut() {
                Some(last) if last.0 == entry.0 => *last = entry,
                _ => out.push(entry),
            }
        }
        out.shrink_to_fit();
        Properties(out)
    }
}

impl<'a> IntoIterator for &'a Properties {
    type Item = (&'a Key, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (Key, Value)>,
        fn(&'a (Key, Value)) -> (&'a Key, &'a Value),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k.as_str(), v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PropertiesVisitor;

        impl<'de> Visitor<'de> for PropertiesVisitor {
            type Value = Properties;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of property ids to values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Properties, A::Error> {
                let mut entries = Vec::with_capacity(access.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = access.next_entry::<Key, Value>()? {
                    entries.push(entry);
                }
                Ok(entries.into_iter().collect())
            }
        }

        deserializer.deserialize_map(PropertiesVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;

    #[test]
    fn behaves_like_a_sorted_map() {
        let mut props = Properties::new();
        let mut model = BTreeMap::new();
        let ops: [(&str, Option<Value>); 9] = [
            ("quantity", Some(json!(1))),
            ("cost", Some(json!("0.10"))),
            ("status", Some(json!("a"))),
            ("cost", Some(json!("0.20"))),
            ("zeta", None),
            ("quantity", None),
            ("alpha", Some(json!(true))),
            ("quantity", Some(json!(3))),
            ("status", None),
        ];
        for (id, value) in ops {
            match value {
                Some(v) => assert_eq!(
                    props.insert(id.into(), v.clone()),
                    model.insert(id.to_string(), v)
                ),
                None => assert_eq!(props.remove(id), model.remove(id)),
            }
            let entries: Vec<(String, Value)> = props
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            let expected: Vec<(String, Value)> = model.clone().into_iter().collect();
            assert_eq!(entries, expected);
            assert_eq!(props.len(), model.len());
            for id in ["alpha", "cost", "quantity", "status", "zeta"] {
                assert_eq!(props.get(id), model.get(id));
                assert_eq!(props.contains_key(id), model.contains_key(id));
            }
        }
    }

    #[test]
    fn serialises_as_an_object_in_id_order_and_reads_back() {
        let props: Properties = [("b", json!(2)), ("a", json!("x")), ("b", json!(3))]
            .into_iter()
            .collect();
        assert_eq!(props.len(), 2);
        assert_eq!(props.get("b"), Some(&json!(3)), "the later duplicate wins");
        let text = serde_json::to_string(&props).unwrap();
        assert_eq!(text, r#"{"a":"x","b":3}"#);
        let back: Properties = serde_json::from_str(r#"{"b":3,"a":"x"}"#).unwrap();
        assert_eq!(back, props);
        assert!(serde_json::from_str::<Properties>("[1]").is_err());
    }
}
