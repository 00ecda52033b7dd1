//! The personas directory: one persona per `*.toml` file, loaded all-or-nothing
//! per file. A file that fails keeps its last good version in force (and its
//! current error for display); the other files load normally. A removed file
//! retires its persona. Only files whose content changed are parsed again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tracing::{info, warn};

use super::persona::Persona;
use super::validate::{parse_persona, FileError, Rule};

/// Whether a directory entry is a persona file (not a dotfile or editor leftover).
pub fn is_persona_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && !name.starts_with('#')
        && !name.ends_with('~')
        && !name.ends_with(".swp")
        && name.ends_with(".toml")
        && name.len() > ".toml".len()
}

/// The state of one file.
#[derive(Debug, Clone)]
pub struct FileState {
    pub path: PathBuf,
    /// The persona in force from this file: the current version, or the last good one.
    pub persona: Option<Arc<Persona>>,
    /// The text of the version in force.
    pub text: Option<Arc<str>>,
    /// The file's current errors (empty when it loaded).
    pub errors: Vec<FileError>,
    /// The current version, when it parsed and validated.
    parsed: Option<(Arc<Persona>, Arc<str>)>,
    parse_errors: Vec<FileError>,
    /// Content last parsed, to skip unchanged files.
    content: Option<Vec<u8>>,
    /// Why the file is not read at all (a link, over the size limit).
    refused: Option<String>,
}

impl FileState {
    /// The id a file declares, read leniently: for listing a file that fails
    /// validation and has no version in force.
    fn declared_id(&self) -> Option<String> {
        let text = std::str::from_utf8(self.content.as_deref()?).ok()?;
        let v: toml::Table = toml::from_str(text).ok()?;
        v.get("id")?.as_str().map(str::to_string)
    }
}

/// What a reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    pub loaded: Vec<String>,
    pub failed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
}

/// A persona's entry for listings (persona-list, the API).
#[derive(Debug, Clone, Serialize)]
pub struct PersonaEntry {
    pub id: String,
    pub name: String,
    pub priority: i64,
    /// "ok", or "error" when the file's current version does not load.
    pub status: &'static str,
    pub file: PathBuf,
    pub error: Option<String>,
    /// False when the file's error keeps no earlier version in force.
    pub in_force: bool,
}

/// Every persona file of a directory.
#[derive(Debug, Default)]
pub struct Catalog {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Files that are links are read through them (the admin opted in).
    follow_links: bool,
    /// Personas parsed elsewhere (a request's, off the loop's thread), by
    /// the path they are written to and their exact content: a reload that
    /// reads those bytes there takes the persona instead of parsing again.
    prepared: BTreeMap<PathBuf, (Vec<u8>, Arc<Persona>)>,
}

impl Catalog {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Catalog {
            dir: dir.into(),
            files: BTreeMap::new(),
            follow_links: false,
            prepared: BTreeMap::new(),
        }
    }

    /// `persona` is what `content` parses to: the next reload that reads
    /// exactly these bytes at `path` uses it (any other content is parsed).
    pub fn prepare(&mut self, path: &Path, content: &[u8], persona: Arc<Persona>) {
        self.prepared
            .insert(path.to_path_buf(), (content.to_vec(), persona));
    }

    /// Reads persona files that are symbolic links through them
    /// (`personas_follow_links`); off, a link is refused by name.
    pub fn follow_links(&mut self, on: bool) {
        self.follow_links = on;
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the directory. Never fails as a whole: a directory that cannot be
    /// read keeps everything in force and is reported as an error.
    pub fn reload(&mut self) -> Result<ReloadReport, std::io::Error> {
        let mut report = ReloadReport::default();
        let mut present = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            // a link is listed (and refused when read), a directory is not
            let kind = entry.file_type();
            if is_persona_file(&path) && kind.is_ok_and(|k| k.is_file() || k.is_symlink()) {
                present.push(path);
            }
        }
        present.sort();
        // retire removed files
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for p in gone {
            if let Some(st) = self.files.remove(&p) {
                let id = st.persona.map(|p| p.id.clone()).unwrap_or_default();
                info!(file = %p.display(), persona = %id, "persona file removed: persona retired");
                report.removed.push(id);
            }
        }
        let mut changed_paths: Vec<PathBuf> = Vec::new();
        for path in &present {
            let st = self.files.entry(path.clone()).or_insert_with(|| FileState {
                path: path.clone(),
                persona: None,
                text: None,
                errors: Vec::new(),
                parsed: None,
                parse_errors: Vec::new(),
                content: None,
                refused: None,
            });
            let content = match crate::files::read_persona(path, self.follow_links) {
                Ok(c) => c,
                Err(crate::files::ReadError::Io(e)) => {
                    // vanished between listing and reading: the next reload retires it
                    warn!(file = %path.display(), error = %e, "cannot read persona file");
                    continue;
                }
                // a link, a huge file: refused by name, never read (so no
                // error ever quotes what a link pointed at)
                Err(why) => {
                    let why = why.to_string();
                    if st.refused.as_deref() == Some(why.as_str()) {
                        report.unchanged += 1;
                        continue;
                    }
                    st.refused = Some(why.clone());
                    st.content = None;
                    st.parsed = None;
                    st.parse_errors = vec![FileError {
                        file: path.clone(),
                        line: 0,
                        col: 0,
                        rule: Rule::Syntax(format!("not read: {why}")),
                    }];
                    changed_paths.push(path.clone());
                    continue;
                }
            };
            st.refused = None;
            if st.content.as_deref() == Some(content.as_slice()) {
                report.unchanged += 1;
                continue;
            }
            changed_paths.push(path.clone());
            let prepared = self
                .prepared
                .remove(path)
                .filter(|(c, _)| *c == content)
                .map(|(_, p)| p);
            let parsed = match (prepared, std::str::from_utf8(&content)) {
                (Some(p), Ok(_)) => Ok(p),
                (None, Ok(text)) => parse_persona(text, path).map(Arc::new),
                (_, Err(e)) => Err(vec![FileError {
                    file: path.clone(),
                    line: 1,
                    col: 1,
                    rule: Rule::Syntax(format!(
                        "not UTF-8 text (invalid byte at offset {})",
                        e.valid_up_to()
                    )),
                }]),
            };
            let text: Arc<str> = String::from_utf8_lossy(&content).into();
            st.content = Some(content);
            match parsed {
                Ok(p) => {
                    st.parsed = Some((p, text));
                    st.parse_errors.clear();
                }
                Err(errs) => {
                    st.parsed = None;
                    st.parse_errors = errs;
                }
            }
        }
        self.prepared.clear();
        if !changed_paths.is_empty() || !report.removed.is_empty() {
            self.settle();
        }
        for st in self
            .files
            .values()
            .filter(|st| changed_paths.contains(&st.path))
        {
            let id = st
                .persona
                .as_ref()
                .map(|p| p.id.clone())
                .unwrap_or_else(|| st.path.display().to_string());
            if st.errors.is_empty() {
                report.loaded.push(id);
            } else {
                report.failed.push(id);
                for e in &st.errors {
                    if st.persona.is_some() {
                        warn!(error = %e, "persona file has errors: its last good version stays in force");
                    } else {
                        warn!(error = %e, "persona file has errors: not loaded");
                    }
                }
            }
        }
        Ok(report)
    }

    /// Decides what each file puts in force, in file-name order: its current
    /// version if it loaded and its id is not taken by an earlier file, else its
    /// last good version (if that id is free). A duplicate id names both files.
    fn settle(&mut self) {
        let mut owner: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (path, st) in self.files.iter_mut() {
            st.errors = st.parse_errors.clone();
            let last_good = st.persona.take().zip(st.text.take());
            let mut in_force = None;
            if let Some((p, text)) = st.parsed.clone() {
                match owner.get(&p.id) {
                    Some(first) => {
                        let (line, col) = st
                            .content
                            .as_deref()
                            .and_then(|c| std::str::from_utf8(c).ok())
                            .and_then(|t| t.find("id").map(|o| super::line_col(t, o)))
                            .unwrap_or((1, 1));
                        st.errors.push(FileError {
                            file: path.clone(),
                            line,
                            col,
                            rule: Rule::DuplicateId {
                                id: p.id.clone(),
                                other: first.display().to_string(),
                            },
                        });
                    }
                    None => in_force = Some((p, text)),
                }
            }
            if in_force.is_none() {
                in_force = last_good.filter(|(p, _)| !owner.contains_key(&p.id));
            }
            if let Some((p, _)) = &in_force {
                owner.insert(p.id.clone(), path.clone());
            }
            (st.persona, st.text) = in_force
                .map(|(p, t)| (Some(p), Some(t)))
                .unwrap_or((None, None));
        }
    }

    /// Personas in force, in evaluation order: priority high to low, then id.
    pub fn personas(&self) -> Vec<Arc<Persona>> {
        let mut v: Vec<Arc<Persona>> = self
            .files
            .values()
            .filter_map(|f| f.persona.clone())
            .collect();
        v.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
        v
    }

    /// Every file with its persona and status, for listings.
    pub fn entries(&self) -> Vec<PersonaEntry> {
        let mut out: Vec<PersonaEntry> = self
            .files
            .values()
            .map(|f| {
                let error = (!f.errors.is_empty()).then(|| {
                    f.errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                });
                PersonaEntry {
                    id: f
                        .persona
                        .as_ref()
                        .map(|p| p.id.clone())
                        .unwrap_or_else(|| f.declared_id().unwrap_or_default()),
                    name: f
                        .persona
                        .as_ref()
                        .map(|p| p.name.clone())
                        .unwrap_or_default(),
                    priority: f.persona.as_ref().map(|p| p.priority).unwrap_or(0),
                    status: if f.errors.is_empty() { "ok" } else { "error" },
                    file: f.path.clone(),
                    error,
                    in_force: f.persona.is_some(),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.id.cmp(&b.id))
                .then_with(|| a.file.cmp(&b.file))
        });
        out
    }

    /// The file that holds a persona (in force, or failing with this id in it).
    pub fn file_of(&self, id: &str) -> Option<&FileState> {
        self.files
            .values()
            .find(|f| f.persona.as_ref().is_some_and(|p| p.id == id))
    }

    /// The persona in force with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Persona>> {
        self.files
            .values()
            .filter_map(|f| f.persona.clone())
            .find(|p| p.id == id)
    }

    /// All current errors of all files.
    pub fn errors(&self) -> Vec<FileError> {
        self.files.values().flat_map(|f| f.errors.clone()).collect()
    }
}
