//! What changed in the manifest directory, as inotify tells: the poll of
//! [`super::dir`] then reads only the files named since its last look,
//! and nothing at all when nothing happened. Looking at every file (two
//! `stat`s, a path and a set entry each) cost 88 ms of CPU per poll at
//! 10,000 files, so an idle agent polling every 100 ms used 88 % of a CPU
//! (B6's full run).
//!
//! Whatever inotify cannot vouch for is a [`Changed::Unknown`], which the
//! poll answers with a look at the whole directory: no watch (inotify
//! unavailable, or the directory missing, retried on every call), a
//! queue overflow, the directory itself moved or deleted (watched again
//! on the next call). A change inotify does not report at all (a file
//! system without it, such as NFS, or the target of a link that lives
//! outside the directory) is found by the whole-directory look the poll
//! still makes now and then ([`super::dir::run`]).

use std::{
    collections::BTreeSet,
    ffi::OsString,
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor},
};
use tracing::{debug, warn};

/// What changed since the last call of [`DirWatch::changed`].
#[derive(Debug, PartialEq, Eq)]
pub enum Changed {
    Nothing,
    /// The entries of the directory with these names (created, written,
    /// renamed, deleted or with new attributes).
    Names(BTreeSet<OsString>),
    /// Anything may have changed: look at the whole directory.
    Unknown,
}

/// An inotify watch on one directory.
pub struct DirWatch {
    dir: PathBuf,
    inotify: Option<Inotify>,
    /// The directory's watch (`None`: the next call tries again). Events
    /// of any other (a directory moved away) are not this directory's.
    wd: Option<WatchDescriptor>,
    /// Whether the missing watch was already reported.
    warned: bool,
}

/// The events that change what a look at the directory would find.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
}

impl DirWatch {
    /// A watch on `dir`. Made before the first look at the directory, so
    /// that no change after that look goes unreported.
    pub fn new(dir: &Path) -> DirWatch {
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(i) => Some(i),
            Err(e) => {
                warn!("inotify is unavailable ({e}): {} is read whole on every poll", dir.display());
                None
            }
        };
        let mut w = DirWatch { dir: dir.to_path_buf(), inotify, wd: None, warned: false };
        w.watch();
        w
    }

    fn watch(&mut self) {
        let Some(inotify) = &self.inotify else { return };
        match inotify.add_watch(&self.dir, mask()) {
            Ok(wd) => {
                self.wd = Some(wd);
                self.warned = false;
            }
            Err(e) => {
                if !self.warned {
                    warn!("cannot watch {} ({e}): it is read whole on every poll until it can be", self.dir.display());
                    self.warned = true;
                }
            }
        }
    }

    /// What changed since the last call (the queue is drained).
    pub fn changed(&mut self) -> Changed {
        let Some(wd) = self.wd else {
            self.watch();
            // Whatever happened before the watch went unseen.
            return Changed::Unknown;
        };
        let Some(inotify) = &self.inotify else { return Changed::Unknown };
        let mut names = BTreeSet::new();
        let mut unknown = false;
        loop {
            let events = match inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    debug!("reading inotify events of {}: {e}", self.dir.display());
                    unknown = true;
                    break;
                }
            };
            for ev in events {
                if ev.mask.intersects(AddWatchFlags::IN_Q_OVERFLOW) {
                    unknown = true;
                    continue;
                }
                if ev.wd != wd {
                    continue;
                }
                if ev.mask.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_IGNORED) {
                    // The directory went (a moved one stays watched where
                    // it went: not any more): watched again, by its path,
                    // on the next call.
                    let _ = inotify.rm_watch(wd);
                    self.wd = None;
                    unknown = true;
                }
                if let Some(name) = ev.name {
                    names.insert(name);
                }
            }
        }
        if unknown {
            Changed::Unknown
        } else if names.is_empty() {
            Changed::Nothing
        } else {
            Changed::Names(names)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    /// A fresh directory of its own for a test.
    fn scratch(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-dirwatch-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(n: &[&str]) -> Changed {
        Changed::Names(n.iter().map(OsString::from).collect())
    }

    #[test]
    fn names_the_entries_that_changed_and_nothing_when_none_did() {
        let dir = scratch("names");
        fs::write(dir.join("a.yaml"), "a").unwrap();
        let mut w = DirWatch::new(&dir);
        assert_eq!(w.changed(), Changed::Nothing);
        fs::write(dir.join("b.yaml"), "b").unwrap();
        fs::write(dir.join(".tmp"), "c").unwrap();
        fs::rename(dir.join(".tmp"), dir.join("c.yaml")).unwrap();
        assert_eq!(w.changed(), names(&[".tmp", "b.yaml", "c.yaml"]));
        assert_eq!(w.changed(), Changed::Nothing);
        fs::remove_file(dir.join("a.yaml")).unwrap();
        assert_eq!(w.changed(), names(&["a.yaml"]));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_moved_away_and_back_is_read_whole_and_watched_again() {
        let root = scratch("moved");
        let dir = root.join("m");
        fs::create_dir(&dir).unwrap();
        let mut w = DirWatch::new(&dir);
        fs::rename(&dir, root.join("old")).unwrap();
        assert_eq!(w.changed(), Changed::Unknown);
        // Missing: read whole (and found missing) until it is back.
        assert_eq!(w.changed(), Changed::Unknown);
        fs::create_dir(&dir).unwrap();
        assert_eq!(w.changed(), Changed::Unknown, "the watch is made again; what came before is unknown");
        fs::write(dir.join("a.yaml"), "a").unwrap();
        // What happens in the old directory is not this one's.
        fs::write(root.join("old/b.yaml"), "b").unwrap();
        assert_eq!(w.changed(), names(&["a.yaml"]));
        fs::remove_dir_all(&root).unwrap();
    }
}
