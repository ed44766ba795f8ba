//! The manifest-directory source: polls a directory of YAML and sends a
//! complete list of both kinds whenever a file changed.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tracing::warn;

use super::{Batch, Invalid, Kind, Object, Sender, Update};
use crate::source::manifest;

/// Polls `dir` every `poll` until the receiver goes away. A directory that
/// cannot be read changes nothing (the last good state stays).
pub async fn run(dir: PathBuf, poll: Duration, tx: Sender) {
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: Option<Vec<(PathBuf, SystemTime, u64)>> = None;
    loop {
        ticker.tick().await;
        let fp = match fingerprint(&dir) {
            Ok(fp) => fp,
            Err(e) => {
                warn!("cannot list {}: {e}; keeping the current state", dir.display());
                continue;
            }
        };
        if seen.as_ref() == Some(&fp) {
            continue;
        }
        let Some(batch) = read(&dir) else {
            continue;
        };
        if tx.send(batch).await.is_err() {
            return;
        }
        seen = Some(fp);
    }
}

/// Everything in `dir` as one batch: a list of each kind.
pub fn read(dir: &Path) -> Option<Batch> {
    let objects = match manifest::read_dir(dir) {
        Ok(o) => o,
        Err(e) => {
            warn!("cannot read {}: {e}; keeping the current state", dir.display());
            return None;
        }
    };
    let invalid = objects.problems.into_iter().map(|problem| Invalid { kind: Kind::Service, key: None, problem }).collect();
    Some(Batch::now(vec![
        Update::Listed { kind: Kind::Service, objects: objects.services.into_iter().map(Object::Service).collect(), invalid },
        Update::Listed {
            kind: Kind::EndpointSlice,
            objects: objects.slices.into_iter().map(Object::EndpointSlice).collect(),
            invalid: Vec::new(),
        },
    ]))
}

fn fingerprint(dir: &Path) -> std::io::Result<Vec<(PathBuf, SystemTime, u64)>> {
    let mut fp = Vec::new();
    for file in manifest::manifest_files(dir)? {
        let meta = std::fs::metadata(&file)?;
        fp.push((file, meta.modified()?, meta.len()));
    }
    Ok(fp)
}
