//! A store in memory, with faults on request: a test tool in the spirit of
//! object_store's `memory.rs`. The conformance suite runs on it like on
//! every real store, and engine tests use its faults — a put that fails or
//! is torn half-way, a listing that lags behind writes, a lock document
//! that vanishes, slow answers — to show what the engines do when a real
//! store misbehaves.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::Store;
use crate::error::{Error, Result};
use crate::format::docs::{check_size, Doc, DocKey, DocKind};
use crate::format::keys::{check_prefix, ObjectKey, Verified};

/// Faults to inject. Puts are counted from 1 across objects (not docs).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// These puts fail with a transient error (nothing stored).
    pub fail_puts: Vec<usize>,
    /// These puts store only the first half of the bytes and report
    /// success: a torn write a reader must catch.
    pub tear_puts: Vec<usize>,
    /// Every call waits this long first.
    pub delay: Option<Duration>,
    /// Listings do not show the newest N objects yet (an eventually
    /// consistent listing).
    pub list_lag: usize,
    /// Every put fails permanently from this put on (a full disk).
    pub full_from: Option<usize>,
    /// These object reads fail with a transient error (counted from 1).
    pub fail_gets: Vec<usize>,
    /// Every object delete fails from this one on (counted from 1).
    pub fail_deletes_from: Option<usize>,
    /// At this put, before it stores anything, a gc breaks in: every lock
    /// document vanishes and these objects are deleted.
    pub break_in: Option<(usize, Vec<ObjectKey>)>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<ObjectKey, Bytes>,
    /// Object keys in the order they were written.
    order: VecDeque<ObjectKey>,
    docs: BTreeMap<DocKey, (Bytes, DateTime<Utc>)>,
    puts: usize,
    gets: usize,
    deletes: usize,
}

pub struct MemoryStore {
    state: Mutex<State>,
    faults: Mutex<Faults>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore {
            state: Mutex::new(State::default()),
            faults: Mutex::new(Faults::default()),
        }
    }

    pub fn with_faults(faults: Faults) -> MemoryStore {
        let s = MemoryStore::new();
        s.set_faults(faults);
        s
    }

    pub fn set_faults(&self, f: Faults) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = f;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many object puts were made (failed ones included).
    pub fn puts(&self) -> usize {
        self.state().puts
    }

    /// How many object reads were made (failed ones included).
    pub fn gets(&self) -> usize {
        self.state().gets
    }

    /// Removes a document behind its writer's back (a lock broken, or lost
    /// with a restored bucket).
    pub fn vanish_doc(&self, key: &DocKey) {
        self.state().docs.remove(key);
    }

    /// Replaces an object's bytes behind the store's back (bit rot).
    pub fn corrupt(&self, key: &ObjectKey, data: Bytes) {
        self.state().objects.insert(key.clone(), data);
    }

    async fn wait(&self) {
        if let Some(d) = self.faults().delay {
            tokio::time::sleep(d).await;
        }
    }

    fn write(&self, key: &ObjectKey, data: &Bytes) -> Result<bool> {
        let f = self.faults();
        let mut st = self.state();
        st.puts += 1;
        let n = st.puts;
        if let Some((_, swept)) = f.break_in.as_ref().filter(|(at, _)| *at == n) {
            st.docs.retain(|k, _| k.kind() != DocKind::Lock);
            for k in swept {
                st.objects.remove(k);
                st.order.retain(|o| o != k);
            }
        }
        if f.fail_puts.contains(&n) {
            return Err(Error::Remote {
                remote: "memory".into(),
                reason: format!("put {n} failed (injected)"),
                transient: true,
            });
        }
        if f.full_from.is_some_and(|from| n >= from) {
            return Err(Error::DiskFull("memory store".into()));
        }
        if st.objects.contains_key(key) {
            return Ok(false);
        }
        let stored = if f.tear_puts.contains(&n) {
            data.slice(..data.len() / 2)
        } else {
            data.clone()
        };
        st.objects.insert(key.clone(), stored);
        st.order.push_back(key.clone());
        Ok(true)
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn describe(&self) -> String {
        "memory".into()
    }

    async fn get(&self, key: &ObjectKey) -> Result<Option<Bytes>> {
        self.wait().await;
        let fail = self.faults().fail_gets;
        let data = {
            let mut st = self.state();
            st.gets += 1;
            if fail.contains(&st.gets) {
                return Err(Error::Remote {
                    remote: "memory".into(),
                    reason: format!("get {} failed (injected)", st.gets),
                    transient: true,
                });
            }
            st.objects.get(key).cloned()
        };
        match data {
            Some(d) if d.len() as u64 > key.max_size() => {
                Err(key.too_large(d.len() as u64, "the stored object is damaged"))
            }
            other => Ok(other),
        }
    }

    async fn put_if_absent(&self, obj: &Verified) -> Result<bool> {
        self.wait().await;
        self.write(obj.key(), obj.data())
    }

    async fn missing(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>> {
        self.wait().await;
        let st = self.state();
        Ok(keys
            .iter()
            .filter(|k| !st.objects.contains_key(k))
            .cloned()
            .collect())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectKey>> {
        check_prefix(prefix)?;
        self.wait().await;
        let lag = self.faults().list_lag;
        let st = self.state();
        let hidden: Vec<&ObjectKey> = st.order.iter().rev().take(lag).collect();
        Ok(st
            .objects
            .keys()
            .filter(|k| k.key().starts_with(prefix) && !hidden.contains(k))
            .cloned()
            .collect())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<()> {
        self.wait().await;
        let from = self.faults().fail_deletes_from;
        let mut st = self.state();
        st.deletes += 1;
        if from.is_some_and(|f| st.deletes >= f) {
            return Err(Error::Remote {
                remote: "memory".into(),
                reason: format!("delete {} refused (injected)", st.deletes),
                transient: false,
            });
        }
        st.objects.remove(key);
        st.order.retain(|k| k != key);
        Ok(())
    }

    async fn put_doc(&self, key: &DocKey, body: Bytes) -> Result<()> {
        check_size(key, body.len() as u64)?;
        self.wait().await;
        self.state().docs.insert(key.clone(), (body, Utc::now()));
        Ok(())
    }

    async fn list_docs(&self, kind: DocKind) -> Result<Vec<Doc>> {
        self.wait().await;
        Ok(self
            .state()
            .docs
            .iter()
            .filter(|(k, _)| k.kind() == kind)
            .map(|(k, (b, t))| Doc {
                key: k.clone(),
                body: b.clone(),
                modified: *t,
            })
            .collect())
    }

    async fn delete_doc(&self, key: &DocKey) -> Result<()> {
        self.wait().await;
        self.state().docs.remove(key);
        Ok(())
    }
}
