//! Durable state (SPEC §7): baselines, the persona each domain wears, manual
//! activations, and transition events. `RedbStore` under `--state-dir`
//! (every write is committed with fsync before it returns, so a baseline is on
//! disk before the change it protects is made); `MemoryStore` for tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::model::tuning::{Change, DefinitionOriginal, Knob, Tuning};
use crate::rules::Override;
use crate::time::Millis;

/// A knob a transition left alone because this host cannot apply it at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub knob: String,
    pub reason: String,
}

/// A transition or a notable happening, kept and logged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub time: Millis,
    pub domain: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub reason: String,
    /// "ok", "failed", "drift", "threshold", "threshold_cleared".
    pub result: String,
    pub changes: Vec<Change>,
    pub error: Option<String>,
    /// Knobs skipped as unsupported on this host (the rest was applied).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped>,
}

/// The persona a domain wears, as recorded.
/// `persona` and `since` are required (a record without them is damaged);
/// what later releases added has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worn {
    pub persona: String,
    pub since: Millis,
    /// The persona also wrote the persistent definition (its revert must too).
    #[serde(default)]
    pub persist: bool,
    /// The domain's id while it wore it: another id means it was restarted.
    #[serde(default)]
    pub id: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("state store: {0}")]
    Io(String),
    #[error("state store: corrupt record for {key}: {message}")]
    Corrupt { key: String, message: String },
    /// Written by a later release, in a format this one does not know.
    #[error("{path} was written by a newer virt-persona (record format {found}; this release reads formats up to {known}): run that release again, or restore the state directory's backup")]
    TooNew {
        path: PathBuf,
        found: u64,
        known: u64,
    },
    /// The state file itself is not a readable redb database.
    #[error("state store {path} is damaged: {message}")]
    Damaged { path: PathBuf, message: String },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The state-store port. Keys are domain UUIDs (stable across renames).
pub trait StateStore: Send {
    /// The recorded original value of every knob the daemon changed.
    fn baseline(&self, uuid: &str) -> Result<Tuning>;
    /// Records the original values of knobs not recorded yet (older records win).
    fn record_baseline(&mut self, uuid: &str, originals: &[Change]) -> Result<()>;
    /// Drops the records of these knobs (they are back at their original values).
    fn clear_baseline(&mut self, uuid: &str, knobs: &[Knob]) -> Result<()>;
    /// What the persistent definition said, before a persona that persists
    /// wrote it, for each knob such a persona changed.
    fn definition(&self, uuid: &str) -> Result<Vec<DefinitionOriginal>>;
    /// Replaces those records (an empty list removes them).
    fn set_definition(&mut self, uuid: &str, originals: &[DefinitionOriginal]) -> Result<()>;
    /// Adds definition originals for knobs without one yet (the first one
    /// recorded is the true original, as for [`StateStore::record_baseline`]).
    fn record_definition(&mut self, uuid: &str, originals: &[DefinitionOriginal]) -> Result<()> {
        let mut all = self.definition(uuid)?;
        let before = all.len();
        for o in originals {
            if !all.iter().any(|a| a.knob == o.knob) {
                all.push(o.clone());
            }
        }
        if all.len() == before {
            return Ok(());
        }
        self.set_definition(uuid, &all)
    }
    /// Drops the definition originals of knobs the definition is back at.
    fn clear_definition(&mut self, uuid: &str, knobs: &[Knob]) -> Result<()> {
        let mut all = self.definition(uuid)?;
        let before = all.len();
        all.retain(|a| !knobs.contains(&a.knob));
        if all.len() == before {
            return Ok(());
        }
        self.set_definition(uuid, &all)
    }
    fn worn(&self, uuid: &str) -> Result<Option<Worn>>;
    fn set_worn(&mut self, uuid: &str, worn: Option<&Worn>) -> Result<()>;
    fn override_(&self, uuid: &str) -> Result<Option<Override>>;
    /// Sets or clears the manual activation; one that ends here (cleared,
    /// or replaced by another) is added to [`StateStore::ended_manuals`] in
    /// the same write.
    fn set_override(&mut self, uuid: &str, o: Option<&Override>) -> Result<()>;
    /// The ids of the manual activations of a domain that ended on this
    /// host (see [`Override::id`]), oldest first, at most [`ENDED_KEPT`]:
    /// what keeps another host's record of one from bringing it back.
    fn ended_manuals(&self, uuid: &str) -> Result<Vec<u64>>;
    fn append_event(&mut self, e: &Event) -> Result<()>;
    /// Events of one domain (by name) or all, at or after `since`, oldest first.
    fn events(&self, domain: Option<&str>, since: Millis) -> Result<Vec<Event>> {
        self.recent_events(domain, since, usize::MAX)
    }
    /// The same, only the newest `limit` of them: what the API serves, so a
    /// request never loads the whole history on the loop's thread.
    fn recent_events(
        &self,
        domain: Option<&str>,
        since: Millis,
        limit: usize,
    ) -> Result<Vec<Event>>;
    /// Forgets everything about a domain that was undefined.
    fn forget(&mut self, uuid: &str) -> Result<()>;
    /// The signals pushed to this host (API, Alertmanager), as kept: what a
    /// restarted daemon starts with. Polled sources' values and other
    /// hosts' cluster signals are not kept here: they come again.
    fn signals(&self) -> Result<Vec<StoredSignal>> {
        Ok(vec![])
    }
    /// Keeps a pushed signal (replacing the one of its name and domain).
    fn put_signal(&mut self, _s: &StoredSignal) -> Result<()> {
        Ok(())
    }
    /// Forgets a pushed signal.
    fn remove_signal(&mut self, _name: &str, _domain: Option<&str>) -> Result<()> {
        Ok(())
    }
}

/// A signal pushed to this host, as the state store keeps it. The stored
/// form (JSON) is a contract: fields are only ever added, with defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSignal {
    pub name: String,
    pub value: f64,
    /// When it expires, ms since the Unix epoch.
    pub expires: Millis,
    /// The domain's UUID; `None`: host-wide.
    #[serde(default)]
    pub domain: Option<String>,
}

impl StoredSignal {
    fn key(name: &str, domain: Option<&str>) -> String {
        format!("{name}\u{0}{}", domain.unwrap_or(""))
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Io(e.to_string()))
}

fn from_json<T: for<'de> Deserialize<'de>>(key: &str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

fn merge_baseline(mut t: Tuning, originals: &[Change]) -> Tuning {
    for c in originals {
        if t.get(&c.knob).is_none() {
            t.set(c);
        }
    }
    t
}

fn drop_knobs(t: &Tuning, knobs: &[Knob]) -> Tuning {
    let mut out = Tuning::default();
    for c in t.changes() {
        if !knobs.contains(&c.knob) {
            out.set(&c);
        }
    }
    out
}

/// Errors that mean the file is not a database redb can read (as opposed to
/// one it cannot open now: locked by another daemon, no permission).
fn is_damage(e: &redb::DatabaseError) -> bool {
    match e {
        redb::DatabaseError::UpgradeRequired(_) => true,
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// The state store's page cache: enough for every baseline and recent events.
const CACHE_BYTES: usize = 1 << 20;

/// Manual activations whose end is remembered per domain.
pub const ENDED_KEPT: usize = 16;

/// The ended list after `old` gives way to `new`: `old`'s id added when it
/// ends (`None` when nothing changes).
fn ended_after(
    old: Option<&Override>,
    new: Option<&Override>,
    mut list: Vec<u64>,
) -> Option<Vec<u64>> {
    let old = old.filter(|o| o.id != 0)?;
    if new.is_some_and(|n| n.id == old.id) || list.contains(&old.id) {
        return None;
    }
    list.push(old.id);
    let extra = list.len().saturating_sub(ENDED_KEPT);
    list.drain(..extra);
    Some(list)
}

/// In memory, for tests.
#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    baselines: HashMap<String, Tuning>,
    definitions: HashMap<String, Vec<DefinitionOriginal>>,
    worn: HashMap<String, Worn>,
    overrides: HashMap<String, Override>,
    ended: HashMap<String, Vec<u64>>,
    events: Vec<Event>,
    signals: std::collections::BTreeMap<String, StoredSignal>,
}

impl StateStore for MemoryStore {
    fn baseline(&self, uuid: &str) -> Result<Tuning> {
        Ok(self.baselines.get(uuid).cloned().unwrap_or_default())
    }
    fn record_baseline(&mut self, uuid: &str, originals: &[Change]) -> Result<()> {
        let t = merge_baseline(self.baseline(uuid)?, originals);
        self.baselines.insert(uuid.to_string(), t);
        Ok(())
    }
    fn clear_baseline(&mut self, uuid: &str, knobs: &[Knob]) -> Result<()> {
        let t = drop_knobs(&self.baseline(uuid)?, knobs);
        if t == Tuning::default() {
            self.baselines.remove(uuid);
        } else {
            self.baselines.insert(uuid.to_string(), t);
        }
        Ok(())
    }
    fn definition(&self, uuid: &str) -> Result<Vec<DefinitionOriginal>> {
        Ok(self.definitions.get(uuid).cloned().unwrap_or_default())
    }
    fn set_definition(&mut self, uuid: &str, originals: &[DefinitionOriginal]) -> Result<()> {
        if originals.is_empty() {
            self.definitions.remove(uuid);
        } else {
            self.definitions
                .insert(uuid.to_string(), originals.to_vec());
        }
        Ok(())
    }
    fn worn(&self, uuid: &str) -> Result<Option<Worn>> {
        Ok(self.worn.get(uuid).cloned())
    }
    fn set_worn(&mut self, uuid: &str, worn: Option<&Worn>) -> Result<()> {
        match worn {
            Some(w) => self.worn.insert(uuid.to_string(), w.clone()),
            None => self.worn.remove(uuid),
        };
        Ok(())
    }
    fn override_(&self, uuid: &str) -> Result<Option<Override>> {
        Ok(self.overrides.get(uuid).cloned())
    }
    fn set_override(&mut self, uuid: &str, o: Option<&Override>) -> Result<()> {
        if let Some(list) = ended_after(self.overrides.get(uuid), o, self.ended_manuals(uuid)?) {
            self.ended.insert(uuid.to_string(), list);
        }
        match o {
            Some(o) => self.overrides.insert(uuid.to_string(), o.clone()),
            None => self.overrides.remove(uuid),
        };
        Ok(())
    }
    fn ended_manuals(&self, uuid: &str) -> Result<Vec<u64>> {
        Ok(self.ended.get(uuid).cloned().unwrap_or_default())
    }
    fn append_event(&mut self, e: &Event) -> Result<()> {
        self.events.push(e.clone());
        Ok(())
    }
    fn recent_events(
        &self,
        domain: Option<&str>,
        since: Millis,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let mut out: Vec<Event> = self
            .events
            .iter()
            .rev()
            .filter(|e| e.time >= since && domain.is_none_or(|d| e.domain == d))
            .take(limit)
            .cloned()
            .collect();
        out.reverse();
        Ok(out)
    }
    fn forget(&mut self, uuid: &str) -> Result<()> {
        self.baselines.remove(uuid);
        self.definitions.remove(uuid);
        self.worn.remove(uuid);
        self.overrides.remove(uuid);
        self.ended.remove(uuid);
        Ok(())
    }
    fn signals(&self) -> Result<Vec<StoredSignal>> {
        Ok(self.signals.values().cloned().collect())
    }
    fn put_signal(&mut self, sig: &StoredSignal) -> Result<()> {
        self.signals.insert(
            StoredSignal::key(&sig.name, sig.domain.as_deref()),
            sig.clone(),
        );
        Ok(())
    }
    fn remove_signal(&mut self, name: &str, domain: Option<&str>) -> Result<()> {
        self.signals.remove(&StoredSignal::key(name, domain));
        Ok(())
    }
}

/// One write of [`RedbStore::put_all`]: table, key, value (`None`: removed).
type Write<'a> = (Table, &'a str, Option<&'a [u8]>);
type Table = TableDefinition<'static, &'static str, &'static [u8]>;

const BASELINES: TableDefinition<&str, &[u8]> = TableDefinition::new("baselines");
const WORN: TableDefinition<&str, &[u8]> = TableDefinition::new("worn");
/// Per domain: the persistent definition's originals ([`DefinitionOriginal`]).
const DEFINITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("definitions");
const OVERRIDES: TableDefinition<&str, &[u8]> = TableDefinition::new("overrides");
/// JSON list of the ids of manual activations that ended here, per domain
/// (added in 0.3; a file without it has none).
const MANUAL_ENDED: TableDefinition<&str, &[u8]> = TableDefinition::new("manual_ended");
/// Signals pushed to this host: `name \0 domain-uuid` → [`StoredSignal`] (JSON).
const SIGNALS: TableDefinition<&str, &[u8]> = TableDefinition::new("signals");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// (domain, event number): a domain's history without reading everyone's.
const EVENTS_BY_DOMAIN: TableDefinition<(&str, u64), ()> = TableDefinition::new("events_by_domain");

/// What the file itself says of its records: `format` (see [`STATE_FORMAT`]).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The version of the records in `state.redb`. A file without one was
/// written by 0.1.0 (format 1: the same JSON records). Records decode
/// forward-compatibly: a field a later release added is its default when an
/// older record lacks it, and a field this release does not know is skipped.
/// A file whose format is newer than this release knows is not opened: it
/// may hold records this release would misread, and rewrite.
/// - 1: 0.1.0 (no `meta` table)
/// - 2: `meta.format` recorded; every record as in 1
pub const STATE_FORMAT: u64 = 2;

/// The version of the chunks in `history.redb` (1: 0.1.0, no `meta` table;
/// 2: the same chunks, `meta.format` recorded).
pub const HISTORY_FORMAT: u64 = 2;

/// Reads `meta.format` (1 when there is none: a file from before it), refuses
/// a format newer than `known`, and records `known` once the file is ours.
fn check_format(
    tx: &redb::WriteTransaction,
    path: &Path,
    known: u64,
) -> std::result::Result<u64, StoreError> {
    let err = |e: &dyn std::fmt::Display| StoreError::Open {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut meta = tx.open_table(META).map_err(|e| err(&e))?;
    let found = meta
        .get("format")
        .map_err(|e| err(&e))?
        .map(|v| v.value())
        .unwrap_or(1);
    if found > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    if found != known {
        meta.insert("format", known).map_err(|e| err(&e))?;
    }
    Ok(found)
}

/// Most events kept; older ones are dropped as new ones come.
pub const MAX_EVENTS: u64 = 100_000;

/// redb file `state.redb` in the state directory.
pub struct RedbStore {
    db: redb::Database,
    next_event: u64,
    max_events: u64,
}

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Io(e.to_string())
}

impl RedbStore {
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_keeping(dir, MAX_EVENTS)
    }

    /// Like [`RedbStore::open`], keeping at most `max_events` events.
    pub fn open_keeping(dir: &Path, max_events: u64) -> Result<Self> {
        let path = dir.join("state.redb");
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(&e))?;
        let existed = path.exists();
        // redb's page cache defaults to 1 GiB and grows with the file (events,
        // history): the daemon's memory must not, so it is capped
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| {
                if is_damage(&e) {
                    StoreError::Damaged {
                        path: path.clone(),
                        message: e.to_string(),
                    }
                } else {
                    open_err(&e)
                }
            })?;
        // create the tables so readers never see them missing
        let tx = db.begin_write().map_err(|e| open_err(&e))?;
        let found = check_format(&tx, &path, STATE_FORMAT)?;
        if existed && found != STATE_FORMAT {
            tracing::info!(file = %path.display(), from = found, to = STATE_FORMAT, "state file format recorded (records are read as they are)");
        }
        {
            tx.open_table(BASELINES).map_err(|e| open_err(&e))?;
            tx.open_table(WORN).map_err(|e| open_err(&e))?;
            tx.open_table(DEFINITIONS).map_err(|e| open_err(&e))?;
            tx.open_table(OVERRIDES).map_err(|e| open_err(&e))?;
            tx.open_table(MANUAL_ENDED).map_err(|e| open_err(&e))?;
            tx.open_table(SIGNALS).map_err(|e| open_err(&e))?;
            let events = tx.open_table(EVENTS).map_err(|e| open_err(&e))?;
            let mut index = tx.open_table(EVENTS_BY_DOMAIN).map_err(|e| open_err(&e))?;
            // a state file from before the index: build it once
            if index.is_empty().map_err(|e| open_err(&e))? {
                for item in events.iter().map_err(|e| open_err(&e))? {
                    let (k, v) = item.map_err(|e| open_err(&e))?;
                    if let Ok(e) = serde_json::from_slice::<Event>(v.value()) {
                        index
                            .insert((e.domain.as_str(), k.value()), ())
                            .map_err(|e| open_err(&e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| open_err(&e))?;
        let rx = db.begin_read().map_err(|e| open_err(&e))?;
        let next_event = rx
            .open_table(EVENTS)
            .map_err(|e| open_err(&e))?
            .last()
            .map_err(|e| open_err(&e))?
            .map(|(k, _)| k.value() + 1)
            .unwrap_or(0);
        Ok(RedbStore {
            db,
            next_event,
            max_events: max_events.max(1),
        })
    }

    /// Opens the store; a state file that is damaged (not a database redb can
    /// read) is kept aside as `state.redb.damaged-<unix time>` and a new one
    /// made. Returns why the daemon must only observe: a damaged file kept
    /// aside (now or at an earlier start) holds originals the new file lacks,
    /// so acting could record tuned values as originals. Removing the kept
    /// file (once its originals are recovered or restored by hand) ends it.
    pub fn open_or_set_aside(dir: &Path) -> Result<(Self, Option<String>)> {
        let store = match Self::open(dir) {
            Err(StoreError::Damaged { path, message }) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = dir.join(format!("state.redb.damaged-{secs}"));
                std::fs::rename(&path, &aside).map_err(|e| StoreError::Open {
                    path: path.clone(),
                    message: format!("damaged ({message}), and it cannot be kept aside: {e}"),
                })?;
                tracing::error!(file = %aside.display(), %message, "the state file is damaged: kept aside, a new one made");
                Self::open(dir)?
            }
            other => other?,
        };
        let mut kept: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("state.redb.damaged-"))
            })
            .collect();
        kept.sort();
        let why = kept.last().map(|p| {
            format!(
                "the state file was damaged and is kept aside as {}: it holds the original values this daemon would restore, so it only observes (no change to any domain) until that file is removed",
                p.display()
            )
        });
        Ok((store, why))
    }

    fn get(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<Option<Vec<u8>>> {
        let rx = self.db.begin_read().map_err(io)?;
        let t = rx.open_table(table).map_err(io)?;
        Ok(t.get(key).map_err(io)?.map(|v| v.value().to_vec()))
    }

    fn put(&self, table: Table, key: &str, value: Option<&[u8]>) -> Result<()> {
        self.put_all(&[(table, key, value)])
    }

    /// Several writes (a value, or `None` to remove it) in one transaction.
    fn put_all(&self, writes: &[Write<'_>]) -> Result<()> {
        let tx = self.db.begin_write().map_err(io)?;
        for (table, key, value) in writes {
            let mut t = tx.open_table(*table).map_err(io)?;
            match value {
                Some(v) => {
                    t.insert(*key, *v).map_err(io)?;
                }
                None => {
                    t.remove(*key).map_err(io)?;
                }
            }
        }
        tx.commit().map_err(io)
    }
}

impl StateStore for RedbStore {
    fn baseline(&self, uuid: &str) -> Result<Tuning> {
        match self.get(BASELINES, uuid)? {
            Some(b) => from_json(uuid, &b),
            None => Ok(Tuning::default()),
        }
    }
    fn record_baseline(&mut self, uuid: &str, originals: &[Change]) -> Result<()> {
        let before = self.baseline(uuid)?;
        let t = merge_baseline(before.clone(), originals);
        if t != before {
            self.put(BASELINES, uuid, Some(&to_json(&t)?))?;
        }
        Ok(())
    }
    fn clear_baseline(&mut self, uuid: &str, knobs: &[Knob]) -> Result<()> {
        let t = drop_knobs(&self.baseline(uuid)?, knobs);
        if t == Tuning::default() {
            self.put(BASELINES, uuid, None)
        } else {
            self.put(BASELINES, uuid, Some(&to_json(&t)?))
        }
    }
    fn definition(&self, uuid: &str) -> Result<Vec<DefinitionOriginal>> {
        match self.get(DEFINITIONS, uuid)? {
            Some(b) => from_json(uuid, &b),
            None => Ok(Vec::new()),
        }
    }
    fn set_definition(&mut self, uuid: &str, originals: &[DefinitionOriginal]) -> Result<()> {
        if originals.is_empty() {
            return self.put(DEFINITIONS, uuid, None);
        }
        self.put(DEFINITIONS, uuid, Some(&to_json(&originals)?))
    }
    fn worn(&self, uuid: &str) -> Result<Option<Worn>> {
        self.get(WORN, uuid)?
            .map(|b| from_json(uuid, &b))
            .transpose()
    }
    fn set_worn(&mut self, uuid: &str, worn: Option<&Worn>) -> Result<()> {
        let v = worn.map(to_json).transpose()?;
        self.put(WORN, uuid, v.as_deref())
    }
    fn override_(&self, uuid: &str) -> Result<Option<Override>> {
        self.get(OVERRIDES, uuid)?
            .map(|b| from_json(uuid, &b))
            .transpose()
    }
    fn set_override(&mut self, uuid: &str, o: Option<&Override>) -> Result<()> {
        let v = o.map(to_json).transpose()?;
        let old = self.override_(uuid)?;
        match ended_after(old.as_ref(), o, self.ended_manuals(uuid)?) {
            Some(list) => {
                let list = to_json(&list)?;
                self.put_all(&[
                    (MANUAL_ENDED, uuid, Some(list.as_slice())),
                    (OVERRIDES, uuid, v.as_deref()),
                ])
            }
            None => self.put(OVERRIDES, uuid, v.as_deref()),
        }
    }
    fn ended_manuals(&self, uuid: &str) -> Result<Vec<u64>> {
        Ok(self
            .get(MANUAL_ENDED, uuid)?
            .map(|b| from_json(uuid, &b))
            .transpose()?
            .unwrap_or_default())
    }
    fn append_event(&mut self, e: &Event) -> Result<()> {
        let v = to_json(e)?;
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut t = tx.open_table(EVENTS).map_err(io)?;
            let mut index = tx.open_table(EVENTS_BY_DOMAIN).map_err(io)?;
            t.insert(self.next_event, v.as_slice()).map_err(io)?;
            index
                .insert((e.domain.as_str(), self.next_event), ())
                .map_err(io)?;
            if self.next_event >= self.max_events {
                let old = self.next_event - self.max_events;
                let evicted = t.remove(old).map_err(io)?;
                if let Some(Ok(ev)) = evicted.map(|v| serde_json::from_slice::<Event>(v.value())) {
                    index.remove((ev.domain.as_str(), old)).map_err(io)?;
                }
            }
        }
        tx.commit().map_err(io)?;
        self.next_event += 1;
        Ok(())
    }
    /// Newest first until an event older than `since` (events are appended in
    /// time order), then returned oldest first. A domain's events come from the
    /// index, so one domain's history does not read every domain's.
    fn recent_events(
        &self,
        domain: Option<&str>,
        since: Millis,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let rx = self.db.begin_read().map_err(io)?;
        let t = rx.open_table(EVENTS).map_err(io)?;
        let mut out = Vec::new();
        // newest first: stops at `since` or once `limit` are taken
        let mut take = |k: u64, v: &[u8]| -> Result<bool> {
            let e: Event = from_json(&k.to_string(), v)?;
            if e.time < since || out.len() >= limit {
                return Ok(false);
            }
            out.push(e);
            Ok(true)
        };
        match domain {
            None => {
                for item in t.iter().map_err(io)?.rev() {
                    let (k, v) = item.map_err(io)?;
                    if !take(k.value(), v.value())? {
                        break;
                    }
                }
            }
            Some(d) => {
                let index = rx.open_table(EVENTS_BY_DOMAIN).map_err(io)?;
                for item in index.range((d, 0)..=(d, u64::MAX)).map_err(io)?.rev() {
                    let (k, _) = item.map_err(io)?;
                    let n = k.value().1;
                    let Some(v) = t.get(n).map_err(io)? else {
                        continue;
                    };
                    if !take(n, v.value())? {
                        break;
                    }
                }
            }
        }
        out.reverse();
        Ok(out)
    }
    fn forget(&mut self, uuid: &str) -> Result<()> {
        self.put(BASELINES, uuid, None)?;
        self.put(DEFINITIONS, uuid, None)?;
        self.put(WORN, uuid, None)?;
        self.put(MANUAL_ENDED, uuid, None)?;
        self.put(OVERRIDES, uuid, None)
    }
    fn signals(&self) -> Result<Vec<StoredSignal>> {
        let rx = self.db.begin_read().map_err(io)?;
        let t = rx.open_table(SIGNALS).map_err(io)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(io)? {
            let (k, v) = item.map_err(io)?;
            match serde_json::from_slice::<StoredSignal>(v.value()) {
                Ok(sig) => out.push(sig),
                // one bad record costs that signal, not the others
                Err(e) => {
                    tracing::warn!(key = %k.value().replace('\0', "/"), error = %e, "a stored signal does not decode: skipped")
                }
            }
        }
        Ok(out)
    }
    fn put_signal(&mut self, sig: &StoredSignal) -> Result<()> {
        let v = to_json(sig)?;
        self.put(
            SIGNALS,
            &StoredSignal::key(&sig.name, sig.domain.as_deref()),
            Some(&v),
        )
    }
    fn remove_signal(&mut self, name: &str, domain: Option<&str>) -> Result<()> {
        self.put(SIGNALS, &StoredSignal::key(name, domain), None)
    }
}

#[cfg(test)]
impl Event {
    /// A successful transition to persona "p", for unit tests.
    pub(crate) fn example(time: Millis, domain: &str) -> Event {
        Event {
            time,
            domain: domain.into(),
            from: None,
            to: Some("p".into()),
            reason: "criteria".into(),
            result: "ok".into(),
            changes: vec![],
            error: None,
            skipped: vec![],
        }
    }
}

/// History chunks: (series `UUID/metric`, resolution code, start) → `f32` slots, little-endian.
const HISTORY: TableDefinition<(&str, u8, i64), &[u8]> = TableDefinition::new("history");

/// Forecasts as issued, per series `UUID/metric`: JSON of
/// `Vec<crate::issued::Issued>`.
const ISSUED: TableDefinition<&str, &[u8]> = TableDefinition::new("issued");

/// Metric history for forecasts (see [`crate::history`]): redb file
/// `history.redb` in the state directory, apart from `state.redb` so that
/// writing history never waits on, or delays, the control loop's writes. Only
/// the forecast worker thread uses it. Writes whole chunks, once a minute.
pub struct HistoryDb {
    db: redb::Database,
    path: PathBuf,
}

impl HistoryDb {
    /// Opens (or creates) it. A damaged file is kept aside as
    /// `history.redb.damaged-<unix time>` and a new one made: history is
    /// worth less than a running daemon, and import can seed it again.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("history.redb");
        let open = |path: &Path| -> std::result::Result<redb::Database, redb::DatabaseError> {
            redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create(path)
        };
        let db = match open(&path) {
            Ok(db) => db,
            Err(e) if is_damage(&e) => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = dir.join(format!("history.redb.damaged-{secs}"));
                std::fs::rename(&path, &aside).map_err(io)?;
                tracing::error!(file = %aside.display(), error = %e, "the history file is damaged: kept aside, history starts again");
                open(&path).map_err(|e| StoreError::Open {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
            Err(e) => {
                return Err(StoreError::Open {
                    path: path.clone(),
                    message: e.to_string(),
                })
            }
        };
        let tx = db.begin_write().map_err(io)?;
        check_format(&tx, &path, HISTORY_FORMAT)?;
        tx.open_table(HISTORY).map_err(io)?;
        tx.open_table(ISSUED).map_err(io)?;
        tx.commit().map_err(io)?;
        Ok(HistoryDb { db, path })
    }

    /// Every series' issued forecasts (a record that does not decode is
    /// skipped with a warning: the record starts again, the history stays).
    pub fn load_issued(
        &self,
    ) -> Result<Vec<(crate::history::SeriesKey, Vec<crate::issued::Issued>)>> {
        let rx = self.db.begin_read().map_err(io)?;
        let t = rx.open_table(ISSUED).map_err(io)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(io)? {
            let (k, v) = item.map_err(io)?;
            let Some(key) = crate::history::SeriesKey::from_key(k.value()) else {
                continue;
            };
            match serde_json::from_slice(v.value()) {
                Ok(log) => out.push((key, log)),
                Err(e) => {
                    tracing::warn!(series = k.value(), error = %e, "issued forecasts not readable: their record starts again")
                }
            }
        }
        Ok(out)
    }

    /// Stores one series' issued forecasts (none: removes them).
    pub fn save_issued(
        &self,
        key: &crate::history::SeriesKey,
        log: &[crate::issued::Issued],
    ) -> Result<()> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut t = tx.open_table(ISSUED).map_err(io)?;
            let k = key.to_key();
            if log.is_empty() {
                t.remove(k.as_str()).map_err(io)?;
            } else {
                t.insert(k.as_str(), to_json(&log)?.as_slice())
                    .map_err(io)?;
            }
        }
        tx.commit().map_err(io)
    }

    /// Every chunk stored (chunks with a key or size it cannot read are skipped).
    pub fn load(&self) -> Result<Vec<(crate::history::ChunkId, Vec<f32>)>> {
        use crate::history::{ChunkId, Res, SeriesKey};
        let rx = self.db.begin_read().map_err(io)?;
        let t = rx.open_table(HISTORY).map_err(io)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(io)? {
            let (k, v) = item.map_err(io)?;
            let (series, res, start) = k.value();
            let (Some(key), Some(res)) = (SeriesKey::from_key(series), Res::from_code(res)) else {
                continue;
            };
            let bytes = v.value();
            if bytes.len() != res.slots() * 4 {
                continue;
            }
            let slots = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            out.push((ChunkId { key, res, start }, slots));
        }
        Ok(out)
    }

    /// Writes and deletes chunks in one transaction.
    pub fn save(&self, changes: &crate::history::Changes) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut t = tx.open_table(HISTORY).map_err(io)?;
            for id in &changes.delete {
                let key = id.key.to_key();
                t.remove((key.as_str(), id.res.code(), id.start))
                    .map_err(io)?;
            }
            let mut buf = Vec::new();
            for (id, slots) in &changes.put {
                buf.clear();
                for v in slots {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
                let key = id.key.to_key();
                t.insert((key.as_str(), id.res.code(), id.start), buf.as_slice())
                    .map_err(io)?;
            }
        }
        tx.commit().map_err(io)
    }

    /// The file's size in bytes.
    pub fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tuning::KnobValue;

    fn exercise(s: &mut dyn StateStore) {
        let c = |k: Knob, v: u64| Change {
            knob: k,
            value: KnobValue::Unsigned(v),
        };
        s.record_baseline("u1", &[c(Knob::CpuShares, 1024), c(Knob::BlkioWeight, 100)])
            .unwrap();
        // an older record wins
        s.record_baseline(
            "u1",
            &[c(Knob::CpuShares, 2048), c(Knob::MemoryHardLimit, 5)],
        )
        .unwrap();
        let b = s.baseline("u1").unwrap();
        assert_eq!(
            (b.cpu_shares, b.blkio_weight, b.memory_hard_limit),
            (Some(1024), Some(100), Some(5))
        );
        s.clear_baseline("u1", &[Knob::CpuShares]).unwrap();
        assert_eq!(s.baseline("u1").unwrap().cpu_shares, None);
        s.clear_baseline("u1", &[Knob::BlkioWeight, Knob::MemoryHardLimit])
            .unwrap();
        assert_eq!(s.baseline("u1").unwrap(), Tuning::default());

        s.set_worn(
            "u1",
            Some(&Worn {
                persona: "p".into(),
                since: 5,
                persist: false,
                id: Some(3),
            }),
        )
        .unwrap();
        assert_eq!(s.worn("u1").unwrap().unwrap().persona, "p");
        s.set_override(
            "u1",
            Some(&Override {
                persona: "q".into(),
                until: Some(9),
                id: 7,
            }),
        )
        .unwrap();
        assert_eq!(s.override_("u1").unwrap().unwrap().until, Some(9));
        // the same activation again (a new end) is not an end; another one
        // replacing it, or a revert, is — once each, the newest kept
        let o = |id: u64| Override {
            persona: "q".into(),
            until: None,
            id,
        };
        s.set_override("u1", Some(&o(7))).unwrap();
        assert!(s.ended_manuals("u1").unwrap().is_empty());
        s.set_override("u1", Some(&o(8))).unwrap();
        s.set_override("u1", None).unwrap();
        s.set_override("u1", None).unwrap();
        assert_eq!(s.ended_manuals("u1").unwrap(), [7, 8]);
        s.set_override("u1", Some(&o(0))).unwrap();
        s.set_override("u1", None).unwrap();
        assert_eq!(
            s.ended_manuals("u1").unwrap(),
            [7, 8],
            "a 0.2 record has no id"
        );
        for id in 100..100 + ENDED_KEPT as u64 {
            s.set_override("u1", Some(&o(id))).unwrap();
        }
        s.set_override("u1", None).unwrap();
        let ended = s.ended_manuals("u1").unwrap();
        assert_eq!(ended.len(), ENDED_KEPT);
        assert_eq!(ended.last(), Some(&(100 + ENDED_KEPT as u64 - 1)));
        s.set_override("u1", Some(&o(7))).unwrap();
        for i in 0..3 {
            s.append_event(&event(i, if i == 1 { "b" } else { "a" }))
                .unwrap();
        }
        assert_eq!(s.events(Some("a"), 0).unwrap().len(), 2);
        assert_eq!(s.events(None, 1).unwrap().len(), 2);
        s.forget("u1").unwrap();
        assert!(s.worn("u1").unwrap().is_none() && s.override_("u1").unwrap().is_none());
        assert!(s.ended_manuals("u1").unwrap().is_empty());
    }

    /// A record lacking what a later release added decodes with defaults,
    /// and one carrying fields this release does not know decodes too.
    #[test]
    fn records_decode_forward_and_backward() {
        let t: Tuning = from_json("u", br#"{"cpu_shares":7}"#).unwrap();
        assert_eq!(t.cpu_shares, Some(7));
        assert!(t.vcpu_pin.is_empty() && t.interfaces.is_empty());
        let t: Tuning = from_json(
            "u",
            br#"{"cpu_shares":7,"disks":{"vda":{"total_bytes_sec":5}},"interfaces":{"vnet0":{"inbound":{"average":3}}}}"#,
        )
        .unwrap();
        assert_eq!(t.interfaces["vnet0"].inbound.unwrap().average, 3);
        let w: Worn = from_json("u", br#"{"persona":"p","since":5,"later":true}"#).unwrap();
        assert_eq!((w.persist, w.id), (false, None));
        let e: Event = from_json("1", br#"{"time":1,"domain":"d"}"#).unwrap();
        assert_eq!(e.result, "");
        // what must be there is still required
        assert!(matches!(
            from_json::<Worn>("u", br#"{"since":5}"#),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// A file from before `meta` is read and gets this release's format; one
    /// from a newer release is refused, named, and left as it was.
    #[test]
    fn a_state_file_from_a_newer_release_is_refused() {
        let d = tempfile::tempdir().unwrap();
        drop(RedbStore::open(d.path()).unwrap());
        {
            let db = redb::Database::open(d.path().join("state.redb")).unwrap();
            let rx = db.begin_read().unwrap();
            let meta = rx.open_table(META).unwrap();
            assert_eq!(meta.get("format").unwrap().unwrap().value(), STATE_FORMAT);
            drop(meta);
            drop(rx);
            let tx = db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("format", STATE_FORMAT + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        match RedbStore::open(d.path()) {
            Err(e @ StoreError::TooNew { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("newer virt-persona"), "{msg}");
                assert!(
                    msg.contains(&format!("format {}", STATE_FORMAT + 1)),
                    "{msg}"
                );
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a newer format was opened"),
        }
        // open_or_set_aside does not set it aside either: it is not damaged
        assert!(matches!(
            RedbStore::open_or_set_aside(d.path()),
            Err(StoreError::TooNew { .. })
        ));
        assert!(d.path().join("state.redb").exists());
    }

    #[test]
    fn memory_store() {
        exercise(&mut MemoryStore::default());
    }

    #[test]
    fn pushed_signals_survive_a_reopen_and_a_bad_record_costs_only_itself() {
        let d = tempfile::tempdir().unwrap();
        let sig = |name: &str, domain: Option<&str>, value: f64| StoredSignal {
            name: name.into(),
            value,
            expires: 5_000,
            domain: domain.map(String::from),
        };
        {
            let mut s = RedbStore::open(d.path()).unwrap();
            s.put_signal(&sig("lb.rps", None, 1.0)).unwrap();
            s.put_signal(&sig("lb.rps", None, 2.0)).unwrap();
            s.put_signal(&sig("lb.rps", Some("u1"), 3.0)).unwrap();
            s.put_signal(&sig("gone", None, 4.0)).unwrap();
            s.remove_signal("gone", None).unwrap();
            // a record a later release might write badly, or a damaged one
            s.put(SIGNALS, "junk\u{0}", Some(b"{not json")).unwrap();
        }
        let s = RedbStore::open(d.path()).unwrap();
        let mut got = s.signals().unwrap();
        got.sort_by(|a, b| a.domain.cmp(&b.domain));
        assert_eq!(
            got,
            vec![sig("lb.rps", None, 2.0), sig("lb.rps", Some("u1"), 3.0)]
        );
        // the stored form: named fields, a missing domain is host-wide
        let old: StoredSignal =
            serde_json::from_str(r#"{"name":"x","value":1.5,"expires":9}"#).unwrap();
        assert_eq!(old.domain, None);
    }

    #[test]
    fn redb_store_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = RedbStore::open(d.path()).unwrap();
            exercise(&mut s);
            s.set_override("u2", Some(&Override::new("q", None)))
                .unwrap();
            s.set_override("u2", None).unwrap();
            s.record_baseline(
                "u2",
                &[Change {
                    knob: Knob::CpuShares,
                    value: KnobValue::Unsigned(7),
                }],
            )
            .unwrap();
        }
        let mut s = RedbStore::open(d.path()).unwrap();
        assert_eq!(s.baseline("u2").unwrap().cpu_shares, Some(7));
        assert_eq!(
            s.ended_manuals("u2").unwrap().len(),
            1,
            "an end survives a restart"
        );
        assert_eq!(s.events(None, 0).unwrap().len(), 3);
        s.append_event(&Event {
            to: None,
            ..event(10, "a")
        })
        .unwrap();
        assert_eq!(
            s.events(None, 0).unwrap().last().unwrap().time,
            10,
            "event numbering continues after reopen"
        );
    }

    fn event(time: Millis, domain: &str) -> Event {
        Event::example(time, domain)
    }

    #[test]
    fn redb_history_comes_from_the_domain_index_and_old_events_leave_it() {
        let d = tempfile::tempdir().unwrap();
        let mut s = RedbStore::open_keeping(d.path(), 10).unwrap();
        for t in 0..25 {
            s.append_event(&event(t, if t % 5 == 0 { "rare" } else { "busy" }))
                .unwrap();
        }
        // 15..25 are kept: rare has 15 and 20
        let times = |v: Vec<Event>| v.iter().map(|e| e.time).collect::<Vec<_>>();
        assert_eq!(times(s.events(Some("rare"), 0).unwrap()), [15, 20]);
        assert_eq!(times(s.events(Some("rare"), 16).unwrap()), [20]);
        assert_eq!(s.events(Some("busy"), 0).unwrap().len(), 8);
        assert_eq!(times(s.events(None, 22).unwrap()), [22, 23, 24]);
        assert!(s.events(Some("nobody"), 0).unwrap().is_empty());
        // a page: the newest `limit`, oldest first
        assert_eq!(times(s.recent_events(None, 0, 3).unwrap()), [22, 23, 24]);
        assert_eq!(
            times(s.recent_events(Some("busy"), 0, 2).unwrap()),
            [23, 24]
        );
        let mut m = MemoryStore::default();
        for t in 0..10 {
            m.append_event(&event(t, "x")).unwrap();
        }
        assert_eq!(times(m.recent_events(None, 2, 3).unwrap()), [7, 8, 9]);
        let rx = s.db.begin_read().unwrap();
        assert_eq!(
            rx.open_table(EVENTS_BY_DOMAIN).unwrap().len().unwrap(),
            10,
            "evicted events leave the index too"
        );
    }

    #[test]
    fn a_damaged_state_file_is_kept_aside_and_observe_mode_is_asked_for() {
        let d = tempfile::tempdir().unwrap();
        // a good one first: no reason to observe
        let (s, why) = RedbStore::open_or_set_aside(d.path()).unwrap();
        assert!(why.is_none());
        drop(s);
        // garbage where the state file was
        let garbage: Vec<u8> = (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(d.path().join("state.redb"), &garbage).unwrap();
        match RedbStore::open(d.path()) {
            Err(StoreError::Damaged { .. }) => {}
            Err(e) => panic!("expected Damaged, got {e}"),
            Ok(_) => panic!("garbage opened as a database"),
        }
        let (mut s, why) = RedbStore::open_or_set_aside(d.path()).unwrap();
        let why = why.expect("observe");
        assert!(why.contains("state.redb.damaged-"), "{why}");
        s.append_event(&event(1, "a")).unwrap();
        drop(s);
        let kept: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.redb.damaged-")
            })
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(
            std::fs::read(kept[0].path()).unwrap(),
            garbage,
            "kept as it was"
        );
        // still observing at the next start, until the admin removes the kept file
        let (_, why) = RedbStore::open_or_set_aside(d.path()).unwrap();
        assert!(why.is_some());
        std::fs::remove_file(kept[0].path()).unwrap();
        let (s, why) = RedbStore::open_or_set_aside(d.path()).unwrap();
        assert!(why.is_none());
        assert_eq!(s.events(None, 0).unwrap().len(), 1, "the new file was kept");
    }

    #[test]
    fn redb_index_is_built_for_a_state_file_that_predates_it() {
        let d = tempfile::tempdir().unwrap();
        {
            let mut s = RedbStore::open(d.path()).unwrap();
            for t in 0..4 {
                s.append_event(&event(t, if t == 2 { "b" } else { "a" }))
                    .unwrap();
            }
            let tx = s.db.begin_write().unwrap();
            tx.delete_table(EVENTS_BY_DOMAIN).unwrap();
            tx.commit().unwrap();
        }
        let s = RedbStore::open(d.path()).unwrap();
        assert_eq!(s.events(Some("a"), 0).unwrap().len(), 3);
        assert_eq!(s.events(Some("b"), 0).unwrap()[0].time, 2);
    }

    #[test]
    fn history_chunks_survive_reopen_and_deletes() {
        use crate::history::{History, SeriesKey, DAY_MS, MINUTE_MS};
        let dir = tempfile::tempdir().unwrap();
        let k = SeriesKey::new("u-1", crate::model::persona::Metric::Cpu);
        let now = 1_793_577_600_000 + 5 * DAY_MS;
        let mut h = History::default();
        let pts = crate::history::ImportBatch {
            series: vec![k.clone()],
            points: (0..5 * 24 * 60)
                .map(|i| (0, now - 5 * DAY_MS + i * MINUTE_MS, i as f64))
                .collect(),
        };
        h.import(&pts, now, 14 * DAY_MS);
        let db = HistoryDb::open(dir.path()).unwrap();
        db.save(&h.take_changes()).unwrap();
        let before = h.series(&k, 900_000, now);
        drop(db);
        let db = HistoryDb::open(dir.path()).unwrap();
        let mut again = History::from_chunks(db.load().unwrap());
        assert_eq!(again.series(&k, 900_000, now), before);
        again.compact(now + 20 * DAY_MS, 14 * DAY_MS);
        db.save(&again.take_changes()).unwrap();
        assert!(db.load().unwrap().is_empty(), "all past the retention");
        // a damaged file is kept aside, not fatal
        drop(db);
        std::fs::write(dir.path().join("history.redb"), b"not a database at all").unwrap();
        let db = HistoryDb::open(dir.path()).unwrap();
        assert!(db.load().unwrap().is_empty());
        assert!(std::fs::read_dir(dir.path()).unwrap().flatten().any(|e| e
            .file_name()
            .to_string_lossy()
            .starts_with("history.redb.damaged-")));
    }

    /// Issued forecasts: stored, read back after a reopen, removed; a
    /// record that does not decode is skipped, the others read.
    #[test]
    fn issued_forecasts_survive_reopen_and_a_bad_record_is_skipped() {
        use crate::history::SeriesKey;
        use crate::issued::Issued;
        use crate::model::persona::Metric;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            SeriesKey::new("u-a", Metric::Cpu),
            SeriesKey::new("u-b", Metric::Cpu),
        );
        let log = vec![Issued {
            issued_at: 5,
            start: 900_000,
            value: vec![Some(1.5), None],
            lower: vec![Some(1.0), None],
            upper: vec![Some(2.0), None],
            peak_at: Some(0.1 + 0.2),
        }];
        let db = HistoryDb::open(dir.path()).unwrap();
        db.save_issued(&a, &log).unwrap();
        db.save_issued(&b, &log).unwrap();
        {
            let tx = db.db.begin_write().unwrap();
            tx.open_table(ISSUED)
                .unwrap()
                .insert("u-c/cpu", b"{not json".as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        drop(db);
        let db = HistoryDb::open(dir.path()).unwrap();
        let got = db.load_issued().unwrap();
        assert_eq!(
            got,
            vec![(a.clone(), log.clone()), (b.clone(), log.clone())]
        );
        db.save_issued(&a, &[]).unwrap();
        assert_eq!(db.load_issued().unwrap(), vec![(b, log)]);
    }
}
