//! The template catalog: the built-in templates plus those read from a templates directory.
//!
//! Loading never fails as a whole: a file that cannot be read or does not
//! validate becomes a `TemplateError` entry (served as `templateErrors`) and
//! the other templates load as usual. A template that loads with warnings (a
//! property type this server does not know, kept as opaque JSON) is served,
//! and its warnings are kept beside the errors (`warnings`) and logged. A
//! catalog is immutable once built; share it behind an `Arc`.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use crate::domain::template::{Template, TemplateError};

/// The templates compiled into the binary: (id, file name, text).
const BUILTIN: [(&str, &str, &str); 2] = [
    (
        "project",
        "project.yaml",
        include_str!("../templates/project.yaml"),
    ),
    (
        "restomod",
        "restomod.yaml",
        include_str!("../templates/restomod.yaml"),
    ),
];

/// A template file larger than this is refused unread; real templates are a few kilobytes.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Templates by id, the files that failed to load, and warnings about files that loaded.
#[derive(Debug, Clone, Default)]
pub struct TemplateCatalog {
    templates: BTreeMap<String, Arc<Template>>,
    errors: Vec<TemplateError>,
    warnings: Vec<TemplateWarning>,
}

/// Something about a template that loaded which deserves a look: which file, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateWarning {
    pub file: String,
    pub message: String,
}

impl TemplateCatalog {
    /// The built-in templates only.
    pub fn builtin() -> TemplateCatalog {
        let mut catalog = TemplateCatalog::default();
        for (id, file, text) in BUILTIN {
            match Template::from_yaml(id, file, text) {
                Ok(template) => {
                    catalog.keep_warnings(file, &template);
                    catalog.insert(template);
                }
                // A test keeps this from happening; a broken build should still start.
                Err(error) => catalog.errors.push(error),
            }
        }
        catalog
    }

    /// The built-in templates, then every `*.yaml` / `*.yml` file directly in `dir`.
    ///
    /// A file's id is its name without extension; a file with a built-in's id
    /// replaces that built-in. Files are read in name order, so errors come out
    /// in a stable order and of `x.yaml` and `x.yml` the first one wins (the
    /// other is reported). A directory that cannot be read is one error entry.
    pub fn load_dir(dir: &Path) -> TemplateCatalog {
        let mut catalog = TemplateCatalog::builtin();
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                catalog.errors.push(TemplateError {
                    file: dir.display().to_string(),
                    message: format!("cannot read the templates directory: {e}"),
                });
                return catalog;
            }
        };
        let mut files: Vec<_> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                let extension = path.extension().and_then(|e| e.to_str());
                matches!(extension, Some("yaml" | "yml")) && path.is_file()
            })
            .collect();
        files.sort();

        let mut from_dir: BTreeMap<String, String> = BTreeMap::new();
        for path in files {
            let file = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let fail = |message: String| TemplateError {
                file: file.clone(),
                message,
            };
            let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
                catalog
                    .errors
                    .push(fail("the file name is not valid UTF-8".into()));
                continue;
            };
            if id.is_empty() || id.starts_with('.') {
                continue; // Hidden files, such as editor backups.
            }
            if let Some(first) = from_dir.get(id) {
                catalog.errors.push(fail(format!(
                    "template id '{id}' is already defined by {first}"
                )));
                continue;
            }
            match read_text(&path)
                .and_then(|text| Template::from_yaml(id, &file, &text).map_err(|e| e.message))
            {
                Ok(template) => {
                    from_dir.insert(id.to_owned(), file.clone());
                    catalog.keep_warnings(&file, &template);
                    catalog.insert(template);
                }
                Err(message) => catalog.errors.push(fail(message)),
            }
        }
        catalog
    }

    /// Adds a template, replacing (and returning) one with the same id.
    pub fn insert(&mut self, template: Template) -> Option<Arc<Template>> {
        self.templates
            .insert(template.id.clone(), Arc::new(template))
    }

    pub fn get(&self, id: &str) -> Option<Arc<Template>> {
        self.templates.get(id).cloned()
    }

    /// Every template, sorted by id.
    pub fn list(&self) -> Vec<Arc<Template>> {
        self.templates.values().cloned().collect()
    }

    /// The files that failed to load, in the order they were read.
    pub fn errors(&self) -> &[TemplateError] {
        &self.errors
    }

    /// Warnings about templates that loaded, in the order the files were read.
    pub fn warnings(&self) -> &[TemplateWarning] {
        &self.warnings
    }

    fn keep_warnings(&mut self, file: &str, template: &Template) {
        self.warnings
            .extend(template.warnings.iter().map(|message| TemplateWarning {
                file: file.to_owned(),
                message: message.clone(),
            }));
    }
}

fn read_text(path: &Path) -> Result<String, String> {
    let size = fs::metadata(path)
        .map_err(|e| format!("cannot read the file: {e}"))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!(
            "the file is {size} bytes; templates are limited to {MAX_FILE_BYTES}"
        ));
    }
    let bytes = fs::read(path).map_err(|e| format!("cannot read the file: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::template::PropertyType;
    use std::collections::HashSet;

    fn ids(catalog: &TemplateCatalog) -> Vec<String> {
        catalog.list().iter().map(|t| t.id.clone()).collect()
    }

    #[test]
    fn builtin_catalog_holds_project_and_restomod_without_errors() {
        let catalog = TemplateCatalog::builtin();
        assert_eq!(catalog.errors(), &[]);
        assert_eq!(catalog.warnings(), &[]);
        assert_eq!(ids(&catalog), ["project", "restomod"]);
        assert_eq!(catalog.get("restomod").unwrap().name, "Restomod Creator");
        assert!(catalog.get("nope").is_none());
    }

    #[test]
    fn builtin_restomod_keeps_the_original_types_properties_and_options() {
        let restomod = TemplateCatalog::builtin().get("restomod").unwrap();
        assert_eq!(restomod.alias.as_deref(), Some("restomod_v1"));
        assert_eq!(restomod.version, "1.0");
        assert!(restomod.warnings.is_empty());
        /// (type id, name, allowed children, (property id, type)).
        type Shape<'a> = (&'a str, &'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);
        let shape: Vec<Shape> = restomod
            .node_types
            .iter()
            .map(|t| {
                (
                    t.id.as_str(),
                    t.name.as_str(),
                    t.allowed_children.iter().map(String::as_str).collect(),
                    t.properties
                        .iter()
                        .map(|p| (p.id.as_str(), p.kind.as_str()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            [
                (
                    "project_root",
                    "Project",
                    vec!["phase"],
                    vec![("vehicle", "text"), ("vin", "text"), ("budget", "currency")]
                ),
                (
                    "phase",
                    "Phase",
                    vec!["job"],
                    vec![("status", "select"), ("start_date", "date")]
                ),
                (
                    "job",
                    "Job",
                    vec!["task"],
                    vec![("priority", "select"), ("description", "text")]
                ),
                (
                    "task",
                    "Task",
                    vec!["part"],
                    vec![
                        ("status", "select"),
                        ("cost", "currency"),
                        ("impact", "number"),
                        ("effort", "number"),
                        ("estimated_hours", "number"),
                        ("notes", "text")
                    ]
                ),
                (
                    "part",
                    "Part",
                    vec![],
                    vec![
                        ("sku", "text"),
                        ("supplier", "text"),
                        ("status", "select"),
                        ("cost", "currency"),
                        ("quantity", "number"),
                        ("link", "text")
                    ]
                ),
            ]
        );
        let options = |type_id: &str| -> Vec<String> {
            let t = restomod.node_type(type_id).unwrap();
            let status = t.property("status").or(t.property("priority")).unwrap();
            status
                .options
                .iter()
                .map(|o| format!("{} {}", o.bullet.as_deref().unwrap_or("-"), o.name))
                .collect()
        };
        assert_eq!(
            options("phase"),
            ["◯ Planned", "◐ In Progress", "✓ Completed"]
        );
        assert_eq!(
            options("job"),
            ["- Low", "- Medium", "- High", "- Critical"]
        );
        assert_eq!(
            options("task"),
            ["◯ Not Started", "◐ In Progress", "● Blocked", "✓ Done"]
        );
        assert_eq!(
            options("part"),
            [
                "◯ Need to Order",
                "◐ Ordered",
                "◐ Shipped",
                "● Received",
                "✓ Installed"
            ]
        );
        let required: Vec<&str> = restomod
            .node_types
            .iter()
            .flat_map(|t| t.properties.iter().filter(|p| p.required))
            .map(|p| p.id.as_str())
            .collect();
        assert_eq!(required, ["vehicle"]);
        let quantity = restomod.node_type("part").unwrap().property("quantity");
        assert_eq!(quantity.unwrap().default, Some(serde_json::json!(1)));
    }

    #[test]
    fn builtin_project_template_uses_every_original_property_type_and_nests_workstreams() {
        let project = TemplateCatalog::builtin().get("project").unwrap();
        assert_eq!(project.root_type().id, "project");
        assert!((4..=6).contains(&project.node_types.len()));
        let workstream = project.node_type("workstream").unwrap();
        assert!(workstream.allows_child("workstream"));
        let kinds: HashSet<PropertyType> = project
            .node_types
            .iter()
            .flat_map(|t| t.properties.iter().map(|p| p.kind))
            .collect();
        use PropertyType::*;
        for kind in [Text, Number, Currency, Boolean, Date, Select] {
            assert!(kinds.contains(&kind), "project.yaml has no {kind} property");
        }
        let task = project.node_type("task").unwrap();
        let initial = task.initial_properties();
        let medium = task.property("priority").unwrap().option("Medium").unwrap();
        assert_eq!(initial["priority"], serde_json::json!(medium.id));
        assert_eq!(initial["status"], serde_json::json!("not_started"));
        assert_eq!(initial["billable"], serde_json::json!(true));
    }

    #[test]
    fn load_dir_adds_good_files_reports_broken_ones_and_overrides_builtins() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &[u8]| fs::write(dir.path().join(name), text).unwrap();
        write("kanban.yml", b"name: Kanban\nnode_types:\n  - id: board\n    allowed_children: [card]\n  - id: card\n");
        write("broken.yaml", b"name: Broken\nnode_types: []\n");
        write("garbage.yaml", b"node_types: [unclosed");
        write("binary.yaml", &[0xff, 0xfe, 0x00]);
        write(
            "restomod.yaml",
            b"name: My Restomod\nnode_types: [{id: car}]\n",
        );
        write("notes.txt", b"not a template");
        write(
            "kanban.yaml",
            b"name: Kanban again\nnode_types: [{id: x}]\n",
        );
        fs::create_dir(dir.path().join("folder.yaml")).unwrap();

        let catalog = TemplateCatalog::load_dir(dir.path());
        assert_eq!(ids(&catalog), ["kanban", "project", "restomod"]);
        assert_eq!(catalog.get("restomod").unwrap().name, "My Restomod");
        assert_eq!(catalog.get("kanban").unwrap().name, "Kanban again");

        let errors: Vec<(&str, &str)> = catalog
            .errors()
            .iter()
            .map(|e| (e.file.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert_eq!(errors[0], ("binary.yaml", "the file is not UTF-8 text"));
        assert_eq!(errors[1].0, "broken.yaml");
        assert!(errors[1].1.contains("no node types"));
        assert_eq!(errors[2].0, "garbage.yaml");
        assert!(errors[2].1.contains("not valid YAML"));
        assert_eq!(
            errors[3],
            (
                "kanban.yml",
                "template id 'kanban' is already defined by kanban.yaml"
            )
        );
    }

    #[test]
    fn load_dir_serves_a_template_with_an_unknown_property_type_and_keeps_the_warning() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("future.yaml"),
            "name: Future\nnode_types:\n  - id: item\n    properties:\n      - {id: spot, type: geo_point}\n      - {id: n, type: string}\n",
        )
        .unwrap();
        for fixture in ["budget.yaml", "studio.yaml", "garage.yaml"] {
            let text = fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/fixtures/templates")
                    .join(fixture),
            )
            .unwrap();
            fs::write(dir.path().join(fixture), text).unwrap();
        }
        let catalog = TemplateCatalog::load_dir(dir.path());
        assert_eq!(catalog.errors(), &[]);
        assert_eq!(
            ids(&catalog),
            ["budget", "future", "garage", "project", "restomod", "studio"]
        );
        let future = catalog.get("future").unwrap();
        let spot = future.node_types[0].property("spot").unwrap();
        assert_eq!(spot.kind, PropertyType::Opaque);
        assert_eq!(catalog.warnings().len(), 1, "{:?}", catalog.warnings());
        assert_eq!(catalog.warnings()[0].file, "future.yaml");
        assert!(catalog.warnings()[0]
            .message
            .contains("property 'spot' has unknown type 'geo_point'"));
    }

    #[test]
    fn load_dir_of_a_missing_directory_keeps_the_builtins_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let catalog = TemplateCatalog::load_dir(&missing);
        assert_eq!(ids(&catalog), ["project", "restomod"]);
        assert_eq!(catalog.errors().len(), 1);
        assert!(catalog.errors()[0]
            .message
            .starts_with("cannot read the templates directory"));
    }

    #[test]
    fn insert_replaces_a_template_with_the_same_id() {
        let mut catalog = TemplateCatalog::builtin();
        let replacement =
            Template::from_yaml("project", "p.yaml", "node_types: [{id: a}]").unwrap();
        let old = catalog.insert(replacement).unwrap();
        assert_eq!(old.name, "Project");
        assert_eq!(catalog.get("project").unwrap().name, "project");
    }
}
