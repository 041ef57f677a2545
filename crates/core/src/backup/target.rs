//! What a backup writes into. The engine sees one interface; the local
//! disk answers it through its synchronous fast path (`repo::Repo`:
//! chunks staged in batches and made durable together), any other store
//! through the `Repository` type (every put verified, retried, and
//! committed before a manifest). The second is how the engine's fault
//! tests run on the in-memory store.

use std::collections::HashSet;
use std::sync::Mutex;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::manifest::DefinitionRef;
use crate::format::repo_config::{RepoConfig, REPO_FORMAT};
use crate::format::{Id, Index, Manifest, ManifestKey};
use crate::lock::BlockingWriter;
use crate::repo::{ChunkWriter, Repo};
use crate::repository::Repository;
use crate::store::ObjectKey;

/// A repository a backup writes into.
pub trait Target: Sync {
    /// What to call it in messages.
    fn describe(&self) -> String;
    fn config(&self) -> &RepoConfig;
    /// Takes the writer lock that keeps a gc from deleting what this
    /// backup finds already stored, until its manifests are written.
    fn writer_lock(&self, what: &str) -> Result<BlockingWriter>;
    /// Every backup, with its protection.
    fn load_all(&self) -> Result<Vec<(ManifestKey, Manifest)>>;
    fn read_index(&self, id: &Id) -> Result<Index>;
    fn read_chunk(&self, id: &Id) -> Result<Vec<u8>>;
    fn has(&self, key: &ObjectKey) -> Result<bool>;
    /// Where one volume's new chunks go.
    fn chunk_sink(&self) -> Box<dyn ChunkSink + '_>;
    fn write_index(&self, index: &Index) -> Result<Id>;
    fn write_definition(&self, doc: &[u8]) -> Result<DefinitionRef>;
    /// Marks the repository as this lifeboat's format before manifests of
    /// that format go in (an older lifeboat then refuses it as a whole).
    fn upgrade_format(&self) -> Result<()>;
    /// Writes a manifest; everything it names is durable first.
    fn write_manifest(&self, m: &Manifest) -> Result<ManifestKey>;
}

/// Where the pipeline's workers put new chunks, from several threads.
pub trait ChunkSink: Sync {
    /// Whether the chunk is stored or being stored by this sink.
    fn known(&self, id: &Id) -> bool;
    /// Stores an encoded chunk; false when another worker stored it first.
    fn put(&self, id: &Id, encoded: &[u8]) -> Result<bool>;
    /// Called by the collecting thread between chunks, so that no worker
    /// stalls in a file-system sync.
    fn flush_if_due(&self) -> Result<()>;
    /// Every chunk put is durable under its id when this returns.
    fn commit(&self) -> Result<()>;
}

impl Target for Repo {
    fn describe(&self) -> String {
        self.root().display().to_string()
    }
    fn config(&self) -> &RepoConfig {
        &self.config
    }
    fn writer_lock(&self, what: &str) -> Result<BlockingWriter> {
        BlockingWriter::local(self.root(), what)
    }
    fn load_all(&self) -> Result<Vec<(ManifestKey, Manifest)>> {
        Repo::load_all(self)
    }
    fn read_index(&self, id: &Id) -> Result<Index> {
        Repo::read_index(self, id)
    }
    fn read_chunk(&self, id: &Id) -> Result<Vec<u8>> {
        Repo::read_chunk(self, id)
    }
    fn has(&self, key: &ObjectKey) -> Result<bool> {
        Ok(match key {
            ObjectKey::Chunk(id) => self.has_chunk(id),
            ObjectKey::Index(id) => self.has_index(id),
            other => self.path_of(&other.key()).exists(),
        })
    }
    fn chunk_sink(&self) -> Box<dyn ChunkSink + '_> {
        Box::new(self.chunk_writer())
    }
    fn write_index(&self, index: &Index) -> Result<Id> {
        Repo::write_index(self, index)
    }
    fn write_definition(&self, doc: &[u8]) -> Result<DefinitionRef> {
        Repo::write_definition(self, doc)
    }
    fn upgrade_format(&self) -> Result<()> {
        if self.config.format < REPO_FORMAT {
            Repo::upgrade_format(&mut self.clone())?;
        }
        Ok(())
    }
    fn write_manifest(&self, m: &Manifest) -> Result<ManifestKey> {
        Repo::write_manifest(self, m)
    }
}

impl ChunkSink for ChunkWriter<'_> {
    fn known(&self, id: &Id) -> bool {
        ChunkWriter::known(self, id)
    }
    fn put(&self, id: &Id, encoded: &[u8]) -> Result<bool> {
        ChunkWriter::put(self, id, encoded)
    }
    fn flush_if_due(&self) -> Result<()> {
        ChunkWriter::flush_if_due(self)
    }
    fn commit(&self) -> Result<()> {
        ChunkWriter::commit(self)
    }
}

/// A `Repository` in any store, driven from the backup's threads. Must
/// not be used from inside the runtime's own threads (its calls block).
pub struct StoreTarget {
    repo: Repository,
    handle: tokio::runtime::Handle,
}

impl StoreTarget {
    pub fn new(repo: Repository, handle: tokio::runtime::Handle) -> StoreTarget {
        StoreTarget { repo, handle }
    }

    pub fn repo(&self) -> &Repository {
        &self.repo
    }
}

impl Target for StoreTarget {
    fn describe(&self) -> String {
        self.repo.describe()
    }
    fn config(&self) -> &RepoConfig {
        self.repo.config()
    }
    fn writer_lock(&self, what: &str) -> Result<BlockingWriter> {
        BlockingWriter::start(self.repo.store().clone(), self.handle.clone(), what)
    }
    fn load_all(&self) -> Result<Vec<(ManifestKey, Manifest)>> {
        self.handle.block_on(self.repo.backups())
    }
    fn read_index(&self, id: &Id) -> Result<Index> {
        self.handle.block_on(self.repo.index(id))
    }
    fn read_chunk(&self, id: &Id) -> Result<Vec<u8>> {
        self.handle.block_on(self.repo.chunk(id))
    }
    fn has(&self, key: &ObjectKey) -> Result<bool> {
        self.handle.block_on(self.repo.has(key))
    }
    fn chunk_sink(&self) -> Box<dyn ChunkSink + '_> {
        Box::new(StoreSink {
            target: self,
            seen: Mutex::new(HashSet::new()),
        })
    }
    fn write_index(&self, index: &Index) -> Result<Id> {
        self.handle.block_on(self.repo.write_index(index))
    }
    fn write_definition(&self, doc: &[u8]) -> Result<DefinitionRef> {
        self.handle.block_on(self.repo.write_definition(doc))
    }
    fn upgrade_format(&self) -> Result<()> {
        let format = self.repo.config().format;
        if format < REPO_FORMAT {
            return Err(Error::BadInput(format!(
                "{} is a format-{format} repository and a backup writes format {REPO_FORMAT}: back up into a local repository (it upgrades itself) and push",
                self.repo.describe()
            )));
        }
        Ok(())
    }
    fn write_manifest(&self, m: &Manifest) -> Result<ManifestKey> {
        self.handle.block_on(self.repo.write_manifest(m))
    }
}

struct StoreSink<'a> {
    target: &'a StoreTarget,
    seen: Mutex<HashSet<Id>>,
}

impl StoreSink<'_> {
    fn seen(&self) -> Result<std::sync::MutexGuard<'_, HashSet<Id>>> {
        self.seen
            .lock()
            .map_err(|_| Error::Internal("chunk sink state poisoned by a panicked worker".into()))
    }
}

impl ChunkSink for StoreSink<'_> {
    fn known(&self, id: &Id) -> bool {
        if self.seen().is_ok_and(|s| s.contains(id)) {
            return true;
        }
        // An error here is not "known": the chunk is put, and the put
        // reports what is wrong.
        self.target.has(&ObjectKey::Chunk(*id)).unwrap_or(false)
    }
    fn put(&self, id: &Id, encoded: &[u8]) -> Result<bool> {
        if !self.seen()?.insert(*id) {
            return Ok(false);
        }
        let data = Bytes::copy_from_slice(encoded);
        let t = self.target;
        t.handle.block_on(t.repo.put(ObjectKey::Chunk(*id), data))
    }
    fn flush_if_due(&self) -> Result<()> {
        Ok(())
    }
    fn commit(&self) -> Result<()> {
        let t = self.target;
        t.handle
            .block_on(crate::retry::with_retry(5, || t.repo.store().commit()))
    }
}
