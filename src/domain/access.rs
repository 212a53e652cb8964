//! Roles on a project and what each allows: plain rules, no users or storage here.

use serde::{Deserialize, Serialize};

/// A member's role on one project, from most to least allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    /// Everything: sharing and deleting too.
    Owner,
    /// Read, subscribe, run commands, undo and redo.
    Editor,
    /// Read and subscribe only.
    Viewer,
}

impl Role {
    /// The role as the contract spells it (OWNER, EDITOR, VIEWER).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "OWNER",
            Role::Editor => "EDITOR",
            Role::Viewer => "VIEWER",
        }
    }

    /// Parses the contract's spelling, case-insensitively (`owner` on the command line).
    pub fn parse(s: &str) -> Option<Role> {
        match s.to_ascii_uppercase().as_str() {
            "OWNER" => Some(Role::Owner),
            "EDITOR" => Some(Role::Editor),
            "VIEWER" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// Whether this role may do what `needed` may (roles are ordered: OWNER > EDITOR > VIEWER).
    pub fn allows(self, needed: Role) -> bool {
        self <= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn each_role_allows_what_the_roles_below_it_allow() {
        assert!(Role::Owner.allows(Role::Editor));
        assert!(Role::Editor.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Editor));
        assert!(!Role::Editor.allows(Role::Owner));
        assert_eq!(Role::parse("owner"), Some(Role::Owner));
    }
}
