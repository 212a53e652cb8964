//! The graph's nodes by id: a dense vector of nodes and a small hash index from id to slot.
//!
//! A command touches one node picked from a graph that may hold 100,000 nodes
//! (over 100 MB with their properties), far more than fits in cache. A hash
//! map storing whole nodes in its buckets spreads them over a sparse table,
//! so finding one costs a cache miss on the control bytes, another on the
//! bucket, and another on the node's properties. Here the index holds only
//! (id, slot) pairs, about 2.5 MB for 100,000 nodes, which stays in cache;
//! the node itself is one miss in a dense vector. Removal swaps the last node
//! into the freed slot, so the vector never has holes. The index hashes with
//! foldhash, seeded per table, which is several times cheaper than SipHash
//! for 16-byte ids and still not predictable from outside.
//!
//! Each node sits behind an `Arc`, so a copy of the whole table (what a
//! snapshot serialises while the session goes on) costs one reference count
//! per node instead of a deep copy: cloning 100,000 nodes deeply took 54 to
//! 165 ms under the session's read lock, which every write waited for. A
//! write to a node the copy still shares clones that node alone
//! (`Arc::make_mut`); with no copy alive it writes in place.
//!
//! Serialised exactly like the `HashMap<NodeId, Node>` it replaces: an object
//! keyed by node id.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::graph::{Node, NodeId};

type Index = HashMap<NodeId, u32, foldhash::fast::RandomState>;

#[derive(Clone, Default)]
pub(crate) struct NodeTable {
    nodes: Vec<Arc<Node>>,
    index: Index,
}

impl NodeTable {
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub(crate) fn get(&self, id: &NodeId) -> Option<&Node> {
        let slot = *self.index.get(id)?;
        self.nodes.get(slot as usize).map(|n| &**n)
    }

    pub(crate) fn get_mut(&mut self, id: &NodeId) -> Option<&mut Node> {
        let slot = *self.index.get(id)?;
        self.nodes.get_mut(slot as usize).map(Arc::make_mut)
    }

    pub(crate) fn contains_key(&self, id: &NodeId) -> bool {
        self.index.contains_key(id)
    }

    /// Adds `node` under its id, replacing (and returning) any node with that id.
    pub(crate) fn insert(&mut self, node: Node) -> Option<Node> {
        if let Some(&slot) = self.index.get(&node.id) {
            let old = std::mem::replace(&mut self.nodes[slot as usize], Arc::new(node));
            return Some(unshare(old));
        }
        let slot = u32::try_from(self.nodes.len()).expect("fewer than 2^32 nodes");
        self.index.insert(node.id, slot);
        self.nodes.push(Arc::new(node));
        None
    }

    pub(crate) fn remove(&mut self, id: &NodeId) -> Option<Node> {
        let slot = self.index.remove(id)? as usize;
        let node = self.nodes.swap_remove(slot);
        if let Some(moved) = self.nodes.get(slot) {
            self.index.insert(moved.id, slot as u32);
        }
        Some(unshare(node))
    }

    /// Every node, in no particular order.
    pub(crate) fn values(&self) -> impl ExactSizeIterator<Item = &Node> + '_ {
        self.nodes.iter().map(|n| &**n)
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &NodeId> + '_ {
        self.nodes.iter().map(|n| &n.id)
    }
}

/// The node itself: moved out when no copy of the table shares it, cloned otherwise.
fn unshare(node: Arc<Node>) -> Node {
    Arc::try_unwrap(node).unwrap_or_else(|shared| (*shared).clone())
}

/// Equal when they hold the same nodes, wherever they sit in the vector.
impl PartialEq for NodeTable {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.values().all(|n| other.get(&n.id) == Some(n))
    }
}

impl fmt::Debug for NodeTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.values().map(|n| (&n.id, n)))
            .finish()
    }
}

impl Serialize for NodeTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.nodes.len()))?;
        for node in self.values() {
            map.serialize_entry(&node.id, node)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for NodeTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TableVisitor;

        impl<'de> Visitor<'de> for TableVisitor {
            type Value = NodeTable;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of node ids to nodes")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<NodeTable, A::Error> {
                let mut table = NodeTable::default();
                let hint = access.size_hint().unwrap_or(0).min(1 << 16);
                table.nodes.reserve(hint);
                table.index.reserve(hint);
                while let Some((id, node)) = access.next_entry::<NodeId, Node>()? {
                    if id != node.id {
                        return Err(serde::de::Error::custom(format!(
                            "node stored under id {id} has id {}",
                            node.id
                        )));
                    }
                    table.insert(node);
                }
                Ok(table)
            }
        }

        deserializer.deserialize_map(TableVisitor)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use uuid::Uuid;

    use super::*;
    use crate::domain::Properties;

    fn node(n: u128) -> Node {
        Node {
            id: Uuid::from_u128(n),
            type_id: "task".into(),
            name: format!("Task {n}"),
            properties: Properties::new(),
            children: Vec::new(),
            parent: None,
            created_at: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
        }
    }

    #[test]
    fn finds_every_node_after_removals_move_slots() {
        let mut table = NodeTable::default();
        for n in 1..=10 {
            assert!(table.insert(node(n)).is_none());
        }
        // Remove from the front, the middle and the end; each moves the last node into the hole.
        for n in [1, 5, 10, 2] {
            assert_eq!(
                table.remove(&Uuid::from_u128(n)).map(|x| x.id),
                Some(Uuid::from_u128(n))
            );
            assert!(table.remove(&Uuid::from_u128(n)).is_none());
        }
        assert_eq!(table.len(), 6);
        for n in [3, 4, 6, 7, 8, 9] {
            assert_eq!(
                table.get(&Uuid::from_u128(n)).map(|x| x.name.as_str()),
                Some(format!("Task {n}").as_str())
            );
        }
        for n in [1, 2, 5, 10] {
            assert!(!table.contains_key(&Uuid::from_u128(n)));
        }
        table.get_mut(&Uuid::from_u128(9)).unwrap().name = "Nine".into();
        assert_eq!(table.get(&Uuid::from_u128(9)).unwrap().name, "Nine");
        let mut replaced = node(9);
        replaced.name = "Again".into();
        assert_eq!(table.insert(replaced).unwrap().name, "Nine");
        assert_eq!(table.len(), 6);
    }

    #[test]
    fn a_copy_shares_nodes_until_either_side_writes_one() {
        let mut table = NodeTable::default();
        for n in 1..=4 {
            table.insert(node(n));
        }
        let copy = table.clone();
        let shared = |t: &NodeTable, c: &NodeTable, n: u128| {
            let id = Uuid::from_u128(n);
            let (a, b) = (t.index[&id], c.index[&id]);
            Arc::ptr_eq(&t.nodes[a as usize], &c.nodes[b as usize])
        };
        assert!((1..=4).all(|n| shared(&table, &copy, n)));
        // Writes to the original change neither the copy nor its other nodes.
        table.get_mut(&Uuid::from_u128(2)).unwrap().name = "Two".into();
        assert_eq!(table.remove(&Uuid::from_u128(3)).unwrap().name, "Task 3");
        table.insert(node(5));
        assert_eq!(copy.get(&Uuid::from_u128(2)).unwrap().name, "Task 2");
        assert_eq!(copy.get(&Uuid::from_u128(3)).unwrap().name, "Task 3");
        assert!(!copy.contains_key(&Uuid::from_u128(5)));
        assert_eq!(copy.len(), 4);
        assert!(!shared(&table, &copy, 2));
        assert!(shared(&table, &copy, 1) && shared(&table, &copy, 4));
        // With the copy gone, a write is in place again.
        drop(copy);
        let before = Arc::as_ptr(&table.nodes[table.index[&Uuid::from_u128(1)] as usize]);
        table.get_mut(&Uuid::from_u128(1)).unwrap().name = "One".into();
        let after = Arc::as_ptr(&table.nodes[table.index[&Uuid::from_u128(1)] as usize]);
        assert_eq!(before, after);
    }

    #[test]
    fn equality_ignores_slot_order_and_serde_round_trips() {
        let mut a = NodeTable::default();
        let mut b = NodeTable::default();
        for n in 1..=4 {
            a.insert(node(n));
            b.insert(node(5 - n));
        }
        assert_eq!(a, b);
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json.as_object().unwrap().len(), 4);
        assert_eq!(json[Uuid::from_u128(3).to_string()]["name"], "Task 3");
        let back: NodeTable = serde_json::from_value(json).unwrap();
        assert_eq!(back, a);
        b.get_mut(&Uuid::from_u128(2)).unwrap().name = "Other".into();
        assert_ne!(a, b);

        let mut wrong = serde_json::to_value(&a).unwrap();
        let entries = wrong.as_object_mut().unwrap();
        let moved = entries.remove(&Uuid::from_u128(3).to_string()).unwrap();
        entries.insert(Uuid::from_u128(99).to_string(), moved);
        assert!(serde_json::from_value::<NodeTable>(wrong).is_err());
    }
}
