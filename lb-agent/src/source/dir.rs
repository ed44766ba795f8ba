//! The manifest-directory source: polls a directory of YAML and, like a
//! watch, sends complete lists of both kinds once, then what changed:
//! objects applied or deleted, and the problems that name no object.
//!
//! Only the files whose modification time, size or inode changed are read
//! and parsed again (under churn, parsing every file on every change was
//! most of the agent's CPU). The cache keeps no objects, only where each
//! one is defined (file and document) and each file's problems: the store
//! holds the one copy of the objects (B3 from manifests at 10,000 Services
//! x 10 endpoints: a cache of objects raised VmHWM from 104 to 136 MiB).
//!
//! The semantics are those of a full read of the directory: an object
//! defined twice is taken from the first file (in name order) and the
//! other copy is reported; a document that does not parse is skipped with
//! a warning naming its file, and reported until it is fixed; a file's
//! removal deletes its objects, and an object that it held a duplicate
//! of comes back from the next file that defines it.
//!
//! This agent's own Node (`--node-name`), when a file defines it, gives the
//! node's zone and addresses as the API source's Node watch does; it is
//! sent when it changes, and its removal clears them.

use std::{
    collections::{BTreeMap, BTreeSet},
    ffi::OsStr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tracing::warn;

use super::{
    Batch, Invalid, Kind, Object, ObjectKey, Sender, Update,
    dir_watch::{Changed, DirWatch},
    node::NodeFacts,
};
use crate::source::manifest::{self, Objects};

/// A file's modification time, size and inode (a file replaced through a
/// rename is another inode even within one tick of the clock behind
/// modification times).
type Stamp = (SystemTime, u64, u64);

fn stamp(file: &Path) -> std::io::Result<Stamp> {
    stamp_of(&std::fs::metadata(file)?)
}

fn stamp_of(m: &std::fs::Metadata) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    Ok((m.modified()?, m.len(), m.ino()))
}

/// A file as last read.
struct FileState {
    stamp: Stamp,
    /// Its documents that could not be read.
    problems: Vec<String>,
    /// What it says of this agent's Node, if it defines it: where, and what.
    node: Option<(String, NodeFacts)>,
}

/// Where an object is defined.
#[derive(Clone)]
struct Def {
    file: Arc<Path>,
    /// `file (document N)`, as the object's origin says.
    origin: Box<str>,
}

impl Def {
    fn is(&self, other: &Def) -> bool {
        Arc::ptr_eq(&self.file, &other.file) && self.origin == other.origin
    }
}

/// The identity of a file in the cache (its `Arc`), for sets of files.
fn file_id(file: &Arc<Path>) -> *const u8 {
    Arc::as_ptr(file) as *const u8
}

/// The directory as last read: each file's stamp and problems, and where
/// each object is defined.
#[derive(Default)]
pub struct DirCache {
    files: BTreeMap<Arc<Path>, FileState>,
    /// Every definition of each object, in file order: the first is the
    /// one in use, the others are reported as duplicates.
    defs: foldhash::HashMap<(Kind, ObjectKey), Vec<Def>>,
    /// Whether the first lists were sent.
    listed: bool,
    /// The duplicates reported so far (each is logged once).
    duplicates: BTreeSet<String>,
    /// This agent's Node name (`--node-name`): the Node read for its facts.
    node_name: Option<String>,
    /// The Node facts last sent (`None`: none sent yet).
    node_sent: Option<NodeFacts>,
}

impl DirCache {
    /// A cache that also follows the Node named `node_name`.
    pub fn for_node(node_name: Option<String>) -> DirCache {
        DirCache { node_name, ..DirCache::default() }
    }

    /// Reads what changed in `dir` since the last call: the first call
    /// gives a complete list of each kind, later ones the objects applied
    /// and deleted and, when a file changed, the problems (empty: nothing
    /// changed). `None` (and a warning) when the directory cannot be
    /// listed.
    pub fn refresh(&mut self, dir: &Path) -> Option<Vec<Update>> {
        let files = match manifest::manifest_files(dir) {
            Ok(f) => f,
            Err(e) => {
                warn!("cannot read {}: {e}; keeping the current state", dir.display());
                return None;
            }
        };
        // Files read again (changed or new), and files gone.
        let mut read: Vec<(Arc<Path>, Stamp)> = Vec::new();
        let mut present: BTreeSet<PathBuf> = BTreeSet::new();
        for file in files {
            // Gone between the listing and now: as if not listed.
            let Ok(stamp) = stamp(&file) else { continue };
            if self.files.get(file.as_path()).is_none_or(|f| f.stamp != stamp) {
                read.push((Arc::from(file.as_path()), stamp));
            }
            present.insert(file);
        }
        let gone: Vec<Arc<Path>> = self.files.keys().filter(|f| !present.contains(&***f)).cloned().collect();
        Some(self.update(read, gone))
    }

    /// [`refresh`](Self::refresh) of the entries `names` of `dir` alone (the
    /// ones inotify named since the last look; after a first `refresh`): a
    /// name that is no manifest now is gone. The same updates as a
    /// `refresh` of the whole directory, without a look at every file.
    /// A named directory (or link to one) is looked at as a change of the
    /// whole directory: the manifests may be links into it, as in a
    /// Kubernetes ConfigMap volume, whose update swaps its `..data` link.
    pub fn refresh_names<'a>(&mut self, dir: &Path, names: impl IntoIterator<Item = &'a OsStr>) -> Option<Vec<Update>> {
        let mut read: Vec<(Arc<Path>, Stamp)> = Vec::new();
        let mut gone: Vec<Arc<Path>> = Vec::new();
        for name in names {
            let file = dir.join(name);
            // One `stat` (through links) per name tells all of it.
            let meta = std::fs::metadata(&file);
            if meta.as_ref().is_ok_and(|m| m.is_dir()) {
                return self.refresh(dir);
            }
            let known = self.files.get_key_value(file.as_path());
            // A name that is no manifest file now (gone, renamed away, not
            // a file) takes its file's objects with it.
            let manifest = meta.ok().filter(|m| m.is_file() && manifest::is_manifest_name(&file));
            match manifest.map(|m| stamp_of(&m)) {
                Some(Ok(stamp)) => {
                    if known.is_none_or(|(_, f)| f.stamp != stamp) {
                        read.push((Arc::from(file.as_path()), stamp));
                    }
                }
                _ => gone.extend(known.map(|(k, _)| k.clone())),
            }
        }
        // In name order, as a whole read: the first definition wins.
        read.sort_by(|a, b| a.0.cmp(&b.0));
        Some(self.update(read, gone))
    }

    /// Takes in the files `read` (changed or new, with their stamps) and
    /// those `gone`: the updates to send.
    fn update(&mut self, read: Vec<(Arc<Path>, Stamp)>, gone: Vec<Arc<Path>>) -> Vec<Update> {
        if read.is_empty() && gone.is_empty() && self.listed {
            return Vec::new();
        }
        // The definitions of the files read again or gone are dropped:
        // `lost` keeps which definition was in use for those keys.
        let stale: foldhash::HashSet<*const u8> = read
            .iter()
            .filter_map(|(f, _)| self.files.get_key_value(&**f).map(|(k, _)| file_id(k)))
            .chain(gone.iter().map(file_id))
            .collect();
        let mut lost: Vec<((Kind, ObjectKey), Def)> = Vec::new();
        if !stale.is_empty() {
            self.defs.retain(|key, defs| {
                if defs.iter().any(|d| stale.contains(&file_id(&d.file))) {
                    lost.push((key.clone(), defs[0].clone()));
                    defs.retain(|d| !stale.contains(&file_id(&d.file)));
                }
                !defs.is_empty()
            });
        }
        for file in &gone {
            self.files.remove(&**file);
        }
        let read_ids: foldhash::HashSet<*const u8> = read.iter().map(|(f, _)| file_id(f)).collect();
        let mut parsed: Vec<(Arc<Path>, Objects)> = Vec::with_capacity(read.len());
        for (file, stamp) in read {
            let mut objects = Objects::default();
            manifest::read_file(&file, &mut objects);
            self.files.remove(&*file);
            let node = self.node_of(&objects);
            self.files.insert(file.clone(), FileState { stamp, problems: std::mem::take(&mut objects.problems), node });
            for obj in objects_of(&objects) {
                let defs = self.defs.entry((obj.0, obj.1)).or_default();
                // Before the definitions of later files.
                let at = defs.iter().position(|d| *d.file > *file).unwrap_or(defs.len());
                defs.insert(at, Def { file: file.clone(), origin: obj.2.into() });
            }
            parsed.push((file, objects));
        }

        // The objects of the files read, where they are the one in use.
        let mut objects: Vec<Object> = Vec::new();
        for (file, read) in parsed {
            let services = read.services.into_iter().map(|s| Object::Service(Box::new(s)));
            objects.extend(services.chain(read.slices.into_iter().map(Object::EndpointSlice)).filter(|o| self.in_use(&file, o)));
        }
        let mut updates = Vec::new();
        // Objects that lost their definition: deleted, or taken from the
        // next file that defines them (read again for it, unless it was
        // read above).
        let mut refetch: BTreeMap<Arc<Path>, BTreeSet<(Kind, ObjectKey)>> = BTreeMap::new();
        for ((kind, key), was) in lost {
            match self.defs.get(&(kind, key.clone())).map(|d| &d[0]) {
                None => updates.push(Update::Deleted { kind, key }),
                Some(now) if now.is(&was) || read_ids.contains(&file_id(&now.file)) => {}
                Some(now) => {
                    refetch.entry(now.file.clone()).or_default().insert((kind, key));
                }
            }
        }
        for (file, keys) in refetch {
            let mut again = Objects::default();
            manifest::read_file(&file, &mut again);
            let services = again.services.into_iter().map(|s| Object::Service(Box::new(s)));
            objects.extend(
                services
                    .chain(again.slices.into_iter().map(Object::EndpointSlice))
                    .filter(|o| keys.contains(&(o.kind(), o.key())) && self.in_use(&file, o)),
            );
        }

        let (service_problems, slice_problems) = self.problems();
        let node = self.node_update();
        if !self.listed {
            self.listed = true;
            let (services, slices): (Vec<Object>, Vec<Object>) = objects.into_iter().partition(|o| o.kind() == Kind::Service);
            let invalid = |kind, problems: Vec<String>| -> Vec<Invalid> {
                problems.into_iter().map(|problem| Invalid { kind, key: None, problem }).collect()
            };
            let mut lists = vec![
                Update::Listed { kind: Kind::Service, objects: services, invalid: invalid(Kind::Service, service_problems) },
                Update::Listed { kind: Kind::EndpointSlice, objects: slices, invalid: invalid(Kind::EndpointSlice, slice_problems) },
            ];
            lists.extend(node);
            return lists;
        }
        updates.extend(node);
        updates.extend(objects.into_iter().map(Update::Applied));
        updates.push(Update::Problems { kind: Kind::Service, problems: service_problems });
        updates.push(Update::Problems { kind: Kind::EndpointSlice, problems: slice_problems });
        updates
    }

    /// Whether `obj`, read from `file`, is the definition in use.
    /// What one file's objects say of this agent's Node (the first
    /// definition in the file), with where.
    fn node_of(&self, objects: &Objects) -> Option<(String, NodeFacts)> {
        let name = self.node_name.as_deref()?;
        let node = objects.nodes.iter().find(|n| n.obj.metadata.name.as_deref() == Some(name))?;
        Some((node.origin.clone(), NodeFacts::of(&node.obj)))
    }

    /// The Node update to send, if this agent's Node changed: the first
    /// file (in name order) that defines it wins, as for other objects;
    /// with none left, the zone and addresses are cleared.
    fn node_update(&mut self) -> Option<Update> {
        let mut defs = self.files.values().filter_map(|f| f.node.as_ref());
        let first = defs.next();
        if let Some((used, _)) = first {
            for (origin, _) in defs {
                warn!("{origin}: Node {} is also defined in {used}; this copy is skipped", self.node_name.as_deref().unwrap_or(""));
            }
        }
        let now = first.map(|(_, facts)| facts.clone()).unwrap_or_default();
        let unchanged = match &self.node_sent {
            Some(sent) => *sent == now,
            // Nothing sent yet: the store starts without zone and addresses.
            None => now == NodeFacts::default(),
        };
        if unchanged {
            return None;
        }
        self.node_sent = Some(now.clone());
        Some(Update::Node { zone: now.zone, internal_ips: now.internal_ips })
    }

    fn in_use(&self, file: &Arc<Path>, obj: &Object) -> bool {
        let def = self.defs.get(&(obj.kind(), obj.key())).map(|d| &d[0]);
        def.is_some_and(|d| Arc::ptr_eq(&d.file, file) && *d.origin == *obj.origin())
    }

    /// The problems of each kind: the documents that could not be read (as
    /// Services' problems, as before) and the duplicates; a new duplicate
    /// is logged.
    fn problems(&mut self) -> (Vec<String>, Vec<String>) {
        let mut services: Vec<String> = self.files.values().flat_map(|f| f.problems.iter().cloned()).collect();
        let mut dups: BTreeMap<Kind, Vec<String>> = BTreeMap::new();
        for ((kind, key), defs) in self.defs.iter().filter(|(_, d)| d.len() > 1) {
            for copy in &defs[1..] {
                let msg = format!("{}: {kind} {key} is also defined in {}; this copy is skipped", copy.origin, defs[0].origin);
                dups.entry(*kind).or_default().push(msg);
            }
        }
        let mut now = BTreeSet::new();
        for msgs in dups.values_mut() {
            msgs.sort();
            for msg in msgs.iter() {
                if !self.duplicates.contains(msg) {
                    warn!("{msg}");
                }
                now.insert(msg.clone());
            }
        }
        self.duplicates = now;
        services.extend(dups.remove(&Kind::Service).unwrap_or_default());
        (services, dups.remove(&Kind::EndpointSlice).unwrap_or_default())
    }
}

/// (kind, key, origin) of each object of a file's parse, in document order.
fn objects_of(objects: &Objects) -> impl Iterator<Item = (Kind, ObjectKey, &str)> {
    let services = objects.services.iter().map(|s| {
        let meta = &s.obj.metadata;
        (Kind::Service, ObjectKey::new(meta.namespace.as_deref(), meta.name.as_deref()), s.origin.as_str())
    });
    let slices = objects
        .slices
        .iter()
        .map(|s| (Kind::EndpointSlice, ObjectKey::new(s.obj.namespace.as_deref(), s.obj.name.as_deref()), s.origin.as_str()));
    services.chain(slices)
}

/// How often the poll looks at the whole directory even when inotify
/// reported nothing: for the changes it does not report (see
/// [`dir_watch`](super::dir_watch)). Kubernetes itself renews a ConfigMap
/// volume about once a minute.
const WHOLE_LOOK: Duration = Duration::from_secs(30);

/// Polls `dir` every `poll` until the receiver goes away: the files
/// inotify named since the last poll, or the whole directory (the first
/// time, every [`WHOLE_LOOK`], and whenever inotify cannot tell). A
/// directory that cannot be read changes nothing (the last good state
/// stays).
pub async fn run(dir: PathBuf, node_name: Option<String>, poll: Duration, tx: Sender) {
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cache = DirCache::for_node(node_name);
    // Before the first look, so that nothing after it goes unreported.
    let mut watch = DirWatch::new(&dir);
    let mut whole_at: Option<Instant> = None;
    loop {
        ticker.tick().await;
        // The events are taken before the look: a change during the look
        // is reported again on the next poll.
        let changed = watch.changed();
        let whole_due = whole_at.is_none_or(|at| at.elapsed() >= WHOLE_LOOK);
        let updates = match changed {
            Changed::Names(names) if !whole_due => match cache.refresh_names(&dir, names.iter().map(|n| n.as_os_str())) {
                Some(updates) => updates,
                None => continue,
            },
            Changed::Nothing if !whole_due => continue,
            // (Until a whole look succeeds, every poll makes one: the
            // first one lists everything.)
            _ => {
                let Some(updates) = cache.refresh(&dir) else {
                    continue;
                };
                whole_at = Some(Instant::now());
                updates
            }
        };
        if updates.is_empty() {
            continue;
        }
        if tx.send(Batch::now(updates)).await.is_err() {
            return;
        }
    }
}

/// Everything in `dir` as one batch: a list of each kind.
pub fn read(dir: &Path) -> Option<Batch> {
    DirCache::default().refresh(dir).map(Batch::now)
}

#[cfg(test)]
mod tests {
    use std::{fs, thread, time::Duration};

    use super::*;
    use crate::source::Store;

    fn service(name: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {ip}\n  ports:\n  - port: 80\n"
        )
    }

    /// A fresh directory of its own for a test.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-dircache-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Applies what the cache reads to `store`; says whether it sent
    /// anything.
    fn refresh(cache: &mut DirCache, dir: &Path, store: &mut Store) -> bool {
        let updates = cache.refresh(dir).unwrap();
        let sent = !updates.is_empty();
        for u in updates {
            store.apply(u);
        }
        sent
    }

    fn names(store: &Store) -> Vec<String> {
        store.services().map(|s| s.obj.metadata.name.clone().unwrap()).collect()
    }

    fn ip_and_origin(store: &Store, name: &str) -> (String, String) {
        let s = store.service(&ObjectKey::new(None, Some(name))).unwrap();
        (s.obj.spec.as_ref().unwrap().cluster_ip.clone().unwrap(), s.origin.clone())
    }

    #[test]
    fn only_changed_files_are_read_again_and_the_store_matches_a_full_read() {
        let dir = scratch("cache");
        fs::write(dir.join("a.yaml"), service("a", "10.96.0.1")).unwrap();
        fs::write(dir.join("b.yaml"), service("b", "10.96.0.2")).unwrap();
        fs::write(dir.join("bad.yaml"), "kind: Service\nmetadata: [").unwrap();
        let mut cache = DirCache::default();
        let mut store = Store::default();
        // The first read is a list of each kind.
        let first = cache.refresh(&dir).unwrap();
        assert!(matches!(first[..], [Update::Listed { kind: Kind::Service, .. }, Update::Listed { kind: Kind::EndpointSlice, .. }]));
        first.into_iter().for_each(|u| store.apply(u));
        assert!(store.ready());
        assert_eq!((names(&store), store.skipped()), (vec!["a".to_string(), "b".into()], 1));

        assert!(!refresh(&mut cache, &dir, &mut store), "nothing changed, nothing sent");
        assert_eq!((names(&store).len(), store.skipped()), (2, 1), "the problem is still reported");

        // A file the cache knows is not read again: replace its contents
        // in place behind the cache's back, keeping size and modification
        // time.
        let a = dir.join("a.yaml");
        let meta = fs::metadata(&a).unwrap();
        fs::write(&a, service("z", "10.96.0.1")).unwrap();
        fs::File::options().write(true).open(&a).unwrap().set_modified(meta.modified().unwrap()).unwrap();
        assert!(!refresh(&mut cache, &dir, &mut store), "a.yaml was not read again");
        assert_eq!(names(&store), ["a", "b"]);

        // A changed file is; so is one replaced through a rename with the
        // same size, even within the same modification time.
        thread::sleep(Duration::from_millis(10));
        fs::write(&a, service("renamed", "10.96.0.1")).unwrap();
        assert!(refresh(&mut cache, &dir, &mut store));
        assert_eq!(names(&store), ["b", "renamed"]);
        let tmp = dir.join(".a.tmp");
        fs::write(&tmp, service("samelen", "10.96.0.1")).unwrap();
        fs::File::options().write(true).open(&tmp).unwrap().set_modified(fs::metadata(&a).unwrap().modified().unwrap()).unwrap();
        fs::rename(&tmp, &a).unwrap();
        assert!(refresh(&mut cache, &dir, &mut store));
        assert_eq!(names(&store), ["b", "samelen"]);

        // A second definition of b, in a later file, is a duplicate: the
        // first one stays in use.
        fs::write(dir.join("c.yaml"), service("b", "10.96.0.22")).unwrap();
        assert!(refresh(&mut cache, &dir, &mut store));
        assert_eq!(ip_and_origin(&store, "b").0, "10.96.0.2");
        assert_eq!(store.skipped(), 2, "bad.yaml and the duplicate");

        // A removed file's objects go, or come from the next file that
        // defines them; a fixed file's problem goes.
        fs::remove_file(dir.join("b.yaml")).unwrap();
        fs::write(dir.join("bad.yaml"), service("d", "10.96.0.4")).unwrap();
        assert!(refresh(&mut cache, &dir, &mut store));
        assert_eq!(names(&store), ["b", "d", "samelen"]);
        let (ip, origin) = ip_and_origin(&store, "b");
        assert_eq!(ip, "10.96.0.22");
        assert!(origin.contains("c.yaml"), "{origin}");
        assert_eq!(store.skipped(), 0);
        fs::remove_file(dir.join("c.yaml")).unwrap();
        fs::remove_file(&a).unwrap();
        assert!(refresh(&mut cache, &dir, &mut store));
        assert_eq!(names(&store), ["d"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The services a store holds (name, address, origin) and its count
    /// of skipped documents.
    fn dump(store: &Store) -> (Vec<(String, String, String)>, usize) {
        let services = store
            .services()
            .map(|s| {
                let name = s.obj.metadata.name.clone().unwrap();
                (name, s.obj.spec.as_ref().unwrap().cluster_ip.clone().unwrap(), s.origin.clone())
            })
            .collect();
        (services, store.skipped())
    }

    #[test]
    fn the_files_inotify_names_give_what_a_look_at_the_whole_directory_gives() {
        let dir = scratch("names");
        fs::write(dir.join("a.yaml"), service("a", "10.96.0.1")).unwrap();
        fs::write(dir.join("b.yaml"), service("b", "10.96.0.2")).unwrap();
        let (mut whole, mut named) = (DirCache::default(), DirCache::default());
        let (mut whole_store, mut named_store) = (Store::default(), Store::default());
        let mut watch = DirWatch::new(&dir);
        refresh(&mut whole, &dir, &mut whole_store);
        refresh(&mut named, &dir, &mut named_store);
        let a = dir.join("a.yaml");
        let tmp = dir.join(".b.tmp");
        type Step<'a> = (&'static str, Box<dyn Fn() + 'a>);
        let steps: Vec<Step> = vec![
            ("a new file", Box::new(|| fs::write(dir.join("c.yaml"), service("c", "10.96.0.3")).unwrap())),
            ("a file written in place", Box::new(|| fs::write(&a, service("a2", "10.96.0.11")).unwrap())),
            (
                "a file replaced through a hidden file and a rename",
                Box::new(|| {
                    fs::write(&tmp, service("b2", "10.96.0.12")).unwrap();
                    fs::rename(&tmp, dir.join("b.yaml")).unwrap();
                }),
            ),
            (
                "a second definition, in a file before the first",
                Box::new(|| fs::write(dir.join("0.yaml"), service("c", "10.96.0.33")).unwrap()),
            ),
            ("a document that does not parse", Box::new(|| fs::write(dir.join("bad.yaml"), "kind: Service\nmetadata: [").unwrap())),
            ("the first definition removed", Box::new(|| fs::remove_file(dir.join("0.yaml")).unwrap())),
            ("a manifest renamed to a name that is none", Box::new(|| fs::rename(dir.join("c.yaml"), dir.join("c.yaml.off")).unwrap())),
            ("the bad document fixed", Box::new(|| fs::write(dir.join("bad.yaml"), service("d", "10.96.0.4")).unwrap())),
            ("a hidden file", Box::new(|| fs::write(dir.join(".swp.yaml"), service("e", "10.96.0.5")).unwrap())),
            (
                "a manifest that links into a ConfigMap volume's data",
                Box::new(|| {
                    fs::create_dir(dir.join("..v1")).unwrap();
                    fs::write(dir.join("..v1/cm.yaml"), service("f", "10.96.0.6")).unwrap();
                    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
                    std::os::unix::fs::symlink("..data/cm.yaml", dir.join("cm.yaml")).unwrap();
                }),
            ),
            (
                "the ConfigMap updated: its ..data link swapped (no manifest named)",
                Box::new(|| {
                    fs::create_dir(dir.join("..v2")).unwrap();
                    fs::write(dir.join("..v2/cm.yaml"), service("f2", "10.96.0.66")).unwrap();
                    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
                    fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
                    fs::remove_dir_all(dir.join("..v1")).unwrap();
                }),
            ),
        ];
        for (what, step) in steps {
            step();
            refresh(&mut whole, &dir, &mut whole_store);
            let Changed::Names(names) = watch.changed() else { panic!("{what}: no names") };
            for u in named.refresh_names(&dir, names.iter().map(|n| n.as_os_str())).unwrap() {
                named_store.apply(u);
            }
            assert_eq!(dump(&named_store), dump(&whole_store), "after {what}");
        }
        assert_eq!(dump(&named_store).0.len(), 4, "a2, b2, d and f2");
        assert_eq!(watch.changed(), Changed::Nothing);
        fs::remove_dir_all(&dir).unwrap();
    }

    fn node(name: &str, zone: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels: {{topology.kubernetes.io/zone: {zone}}}\n\
             status:\n  addresses: [{{type: InternalIP, address: \"{ip}\"}}]\n"
        )
    }

    fn node_facts(store: &Store) -> (Option<&str>, Vec<String>) {
        (store.node_zone(), store.node_internal_ips().iter().map(|ip| ip.to_string()).collect())
    }

    #[test]
    fn this_agents_node_gives_its_zone_and_addresses_until_it_goes() {
        let dir = scratch("node");
        fs::write(dir.join("a.yaml"), format!("{}---\n{}", service("a", "10.96.0.1"), node("other", "z9", "192.168.9.9"))).unwrap();
        fs::write(dir.join("nodes.yaml"), node("node-a", "z1", "fd00:50::1")).unwrap();
        let mut cache = DirCache::for_node(Some("node-a".into()));
        let mut store = Store::default();
        assert!(refresh(&mut cache, &dir, &mut store));
        assert!(store.ready());
        assert_eq!(node_facts(&store), (Some("z1"), vec!["fd00:50::1".to_string()]), "only this agent's Node counts");
        assert!(!refresh(&mut cache, &dir, &mut store), "nothing changed, nothing sent");

        // A change to another file does not resend it; a change to the Node
        // does.
        fs::write(dir.join("a.yaml"), service("b", "10.96.0.2")).unwrap();
        let updates = cache.refresh(&dir).unwrap();
        assert!(!updates.iter().any(|u| matches!(u, Update::Node { .. })));
        updates.into_iter().for_each(|u| store.apply(u));
        thread::sleep(Duration::from_millis(10));
        fs::write(dir.join("nodes.yaml"), node("node-a", "z2", "192.168.50.1")).unwrap();
        assert!(refresh(&mut cache, &dir, &mut store));
        assert_eq!(node_facts(&store), (Some("z2"), vec!["192.168.50.1".to_string()]));

        // A second definition in a later file is skipped; the Node's removal
        // clears what it gave.
        fs::write(dir.join("z.yaml"), node("node-a", "z3", "192.168.50.3")).unwrap();
        refresh(&mut cache, &dir, &mut store);
        assert_eq!(node_facts(&store).0, Some("z2"));
        fs::remove_file(dir.join("nodes.yaml")).unwrap();
        assert!(refresh(&mut cache, &dir, &mut store));
        assert_eq!(node_facts(&store).0, Some("z3"), "the next file's copy takes over");
        fs::remove_file(dir.join("z.yaml")).unwrap();
        assert!(refresh(&mut cache, &dir, &mut store));
        assert_eq!(node_facts(&store), (None, vec![]));

        // Without --node-name, Nodes are not read.
        fs::write(dir.join("nodes.yaml"), node("node-a", "z1", "fd00:50::1")).unwrap();
        let mut cache = DirCache::default();
        let mut store = Store::default();
        refresh(&mut cache, &dir, &mut store);
        assert_eq!(node_facts(&store), (None, vec![]));
        fs::remove_dir_all(&dir).unwrap();
    }
}
